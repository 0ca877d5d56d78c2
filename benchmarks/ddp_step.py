"""What a detection demo step costs under DDP on a 2-core CPU, and what the engine's and the config's choices save.

    .venv/bin/python benchmarks/ddp_step.py [--config scenes] [--data data/scenes] [--steps 110] [--runs 3] \\
        [--out benchmarks/results/ddp_step_cpu.json]

The offline detection demo (configs/scenes.py) runs as two one-thread processes (torchrun, gloo). Each contender
is one such run of the real trainer, stopped after `--steps` optimizer steps (its rate: the mean over the steps
after the first 10, through the engine's on_step callback; start-up and evaluation are outside it); contenders are
alternated run by run, each run starting with another one:
  shipped      the engine and the config as they are: gradients as views into DDP's buckets, one short side per
               step for all images of the step on both processes (data.det_step_scale)
  bucket-copy  DDP copying gradients into its buckets (gradient_as_bucket_view=False, PyTorch's default)
  image-scale  a short side drawn per image (data.det_step_scale=false, mmdet's rule): a batch is padded to its
               largest image, and the process with the larger images sets the pace of both
Reported: the median img/s (images of both processes) of each and the median per-run ratios shipped / other.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = 10


def worker(args: list[str]) -> None:
    """Inside torchrun: one run of the trainer, the rate printed by rank 0 after `steps` steps."""
    import torch.nn as nn

    from convnext.benchmark import StepTimer
    from convnext.config import apply_overrides, load_config
    from convnext.tasks import train

    variant, config, data, steps, out, *overrides = args
    if variant == "bucket-copy":
        ddp = nn.parallel.DistributedDataParallel

        def copying(module, **kw):
            return ddp(module, **{**kw, "gradient_as_bucket_view": False})
        nn.parallel.DistributedDataParallel = copying
    if variant == "image-scale":
        overrides.append("data.det_step_scale=false")
    cfg = apply_overrides(load_config(config), [f"data.root={data}", "train.log_every=1000000", *overrides])
    timer, steps = StepTimer(), int(steps)

    def on_step(run):
        timer(run)
        if len(timer.stamps) == steps:
            if run.main:
                images = cfg.data.batch_size * run.rt.dist.world
                print(f"RATE {timer.mean_img_s(images, SKIP):.4f}", flush=True)
            os._exit(0)  # both processes at the same step: no evaluation, no teardown to wait for
    train(cfg, out, on_step=on_step)


def one_run(variant: str, a) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={a.nproc}",
               __file__, "--worker", variant, a.config, a.data, str(a.steps), out, *a.overrides]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rate = re.search(r"^RATE (\S+)$", res.stdout, re.M)
    if rate is None:
        sys.exit(f"the {variant} run failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return float(rate.group(1))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    from convnext.benchmark import alternate, provenance, summarise
    from convnext.checkpoint import write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="scenes")
    p.add_argument("--data", default="data/scenes")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=110, help=f"optimizer steps per run (the first {SKIP} not timed)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out")
    p.add_argument("overrides", nargs="*", help="config overrides for every contender")
    a = p.parse_args()
    names = ("shipped", "bucket-copy", "image-scale")

    def progress(i, n, got):
        print(f"run {i}/{n}: " + "  ".join(f"{k} {v:.2f} img/s" for k, v in got.items()), flush=True)

    runs = alternate({k: (lambda k=k: one_run(k, a)) for k in names}, a.runs, progress)
    result = summarise(runs, {f"shipped/{k}": ("shipped", k) for k in names[1:]})
    print("median img/s: " + ", ".join(f"{k} {v:.2f}" for k, v in result["median"].items()))
    print("ratios (median of per-run ratios): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    if a.out:
        setting = dict(device="cpu", precision="fp32", batch_size="2 per process", processes=a.nproc,
                       threads_per_process=1, channels_last=False, compile="none", config=a.config,
                       steps_per_run=a.steps, skip=SKIP, runs=a.runs, overrides=a.overrides)
        write_text(json.dumps({**provenance(**setting), **result}, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
