"""Does the training engine add overhead? Our whole trainer vs a plain loop, same model, batch, data and steps.

    .venv/bin/python benchmarks/train_overhead.py [--model convnext_atto] [--steps 60] [--runs 5] [--out results.json]

Three contenders, alternated run by run in one process by the package's harness (convnext.benchmark.alternate),
each run starting with a different one, so a shared, noisy machine slows all alike:
  trainer     convnext.train.train() on the demo config (Fashion-MNIST, 32 px, batch 64, fp32): per-step lr and
              seeding, parameter groups, EMA, the lagged loss check, progress; timed per step through the engine's
              on_step callback (start-up and the final evaluation are outside the timed steps)
  trainer-no-ema  the same with train.ema_decay=0: what the engine itself adds, the recipe's EMA aside
  plain-ours  a bare loop: our model, fused AdamW, label-smoothed cross-entropy, on the same batches (the demo's
              data source: the same images, flips and order), no EMA
  plain-timm  the same bare loop around timm's model of the same name
Each run's rate is the mean over its steps after the first `--skip`; reported: medians and the median per-run
ratios trainer / plain-ours, trainer-no-ema / plain-ours (the engine's own overhead) and trainer / plain-timm.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from convnext import create_model
from convnext.benchmark import StepTimer, alternate, make_peer, provenance, summarise
from convnext.checkpoint import write_text
from convnext.config import load_config, replace
from convnext.data import build_data
from convnext.train import train


def plain_loop(model, data, steps: int, skip: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)  # as the trainer
    model.train()
    timer = StepTimer()
    batches = data.train_batches(0, range(steps), 1, 1, 0)
    for _ in range(steps):
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer(None)
    return timer.mean_img_s(data.batch_size, skip)


def trainer_run(cfg, skip: int) -> float:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, on_step=timer)
    return timer.mean_img_s(cfg.data.batch_size, skip)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=3, help="steps per run left out of its rate (warm-up)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    cfg = load_config("demo")
    cfg = replace(cfg, **{"model.name": a.model, "train.max_steps": a.steps, "train.log_every": 10**6,
                          "data.limit_eval": 256})  # the run's closing evaluation is not timed; keep it short
    c, s, b = cfg.model.in_chans, cfg.data.img_size, cfg.data.batch_size
    data = build_data(cfg.data, seed=cfg.train.seed, in_chans=c)
    ours = create_model(a.model, num_classes=10, in_chans=c)
    peer = make_peer("timm", a.model, num_classes=10, in_chans=c)
    setting = dict(device="cpu", precision=cfg.train.precision, batch_size=b, img_size=s, in_chans=c,
                   channels_last=cfg.train.channels_last, compile="none", model=a.model, steps_per_run=a.steps,
                   skip=a.skip, runs=a.runs)
    print(" ".join(f"{k}={v}" for k, v in setting.items()) + f" threads={torch.get_num_threads()}", flush=True)
    plain_loop(ours, data, 3, 1), plain_loop(peer, data, 3, 1)  # warm-up
    no_ema = replace(cfg, **{"train.ema_decay": 0.0})
    contenders = {"trainer": lambda: trainer_run(cfg, a.skip),
                  "trainer-no-ema": lambda: trainer_run(no_ema, a.skip),
                  "plain-ours": lambda: plain_loop(ours, data, a.steps, a.skip),
                  "plain-timm": lambda: plain_loop(peer, data, a.steps, a.skip)}

    def progress(i, n, got):
        print(f"run {i}/{n}: " + "  ".join(f"{k} {v:.1f} img/s" for k, v in got.items()), flush=True)

    runs = alternate(contenders, a.runs, progress)
    result = summarise(runs, {"trainer/plain-ours": ("trainer", "plain-ours"),
                              "trainer-no-ema/plain-ours": ("trainer-no-ema", "plain-ours"),
                              "trainer/plain-timm": ("trainer", "plain-timm")})
    print("median img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in result["median"].items()))
    print("ratios (median of per-run ratios): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    if a.out:
        write_text(json.dumps({**provenance(**setting), **result}, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
