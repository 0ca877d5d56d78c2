"""Does the training pipeline add overhead? Our full trainer vs a plain loop, same model size, batch and data.

    .venv/bin/python benchmarks/train_overhead.py [--model convnext_atto] [--steps 60] [--runs 5] [--out results.json]

Three contenders, alternated run by run in one process (a shared, noisy machine slows all alike):
  trainer     convnext.train.train() on the demo config (Fashion-MNIST, 32 px, batch 128): data slicing and
              augmentation, per-step lr, seeding, EMA, loss checks, progress - everything but evaluation
  plain-ours  a bare loop: our model, AdamW, cross-entropy on the same pre-made batches
  plain-timm  the same bare loop around timm's model of the same name
Reported: img/s medians and the ratios trainer / plain-timm and trainer / plain-ours.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch


def plain_loop(model, batches, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)  # as the trainer
    model.train()
    t0 = time.perf_counter()
    n = 0
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += len(x)
    return n / (time.perf_counter() - t0)


def trainer_run(cfg, steps):
    from convnext.train import train

    with tempfile.TemporaryDirectory() as out:
        train(cfg, out)
        rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
    return sum(r["img_s"] * r["time_s"] for r in rows) / sum(r["time_s"] for r in rows)


def main():
    import timm

    from convnext import create_model
    from convnext.config import load_config, replace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    cfg = load_config("demo")
    cfg = replace(cfg, **{"model.name": a.model, "train.max_steps": a.steps, "train.eval_every": 10**6,
                          "train.log_every": 10**6})
    c, s, b = cfg.model.in_chans, cfg.data.img_size, cfg.data.batch_size
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, c, s, s, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(8)]
    ours = create_model(a.model, num_classes=10, in_chans=c)
    peer = timm.create_model(a.model, num_classes=10, in_chans=c)
    setting = (f"device=cpu ({platform.machine()}, {torch.get_num_threads()} threads) dtype=fp32 batch={b} img={s} "
               f"memory_format=contiguous compile=none model={a.model} steps/run={a.steps} torch={torch.__version__} "
               f"timm={timm.__version__}")
    print(setting)
    # the trainer's eval runs at the end of its run; it is excluded by reading the train-only img/s it logs
    res = {"trainer": [], "plain-ours": [], "plain-timm": []}
    plain_loop(ours, batches, 3), plain_loop(peer, batches, 3)  # warm-up
    for r in range(a.runs):
        order = ["trainer", "plain-ours", "plain-timm"]
        order = order[r % 3:] + order[: r % 3]
        for k in order:
            if k == "trainer":
                res[k].append(trainer_run(cfg, a.steps))
            else:
                res[k].append(plain_loop(ours if k == "plain-ours" else peer, batches, a.steps))
        print(f"run {r + 1}/{a.runs}: " + "  ".join(f"{k} {v[-1]:.1f} img/s" for k, v in res.items()), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    ratios = {"trainer/plain-timm": med["trainer"] / med["plain-timm"],
              "trainer/plain-ours": med["trainer"] / med["plain-ours"]}
    print("median img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"setting": setting, "runs": res, "median": med, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
