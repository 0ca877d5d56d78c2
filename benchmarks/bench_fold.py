"""Inference throughput of ConvNeXt folded for inference (convnext/fold.py) vs as trained, and vs timm's.

    .venv/bin/python benchmarks/bench_fold.py --out benchmarks/results/fold_cpu.json
    .venv/bin/python benchmarks/bench_fold.py --device cuda --dtype bf16 --out benchmarks/results/fold_cuda.json

For each memory format (contiguous, channels_last), three models are timed in one process: ours unfolded,
ours folded, and timm's model of the same name (random weights: speed does not depend on the values).
They alternate run by run, each run starting with a different model, so that a noisy or shared machine
slows all three alike; each number is the median over runs of `iters` batches, and each ratio is the
median of the per-run ratios. Every line says device, dtype, batch size, memory format and compile mode,
and the JSON also records the machine's load average before and after (a shared machine shows there).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convnext import create_model  # noqa: E402
from convnext.benchmark import Runner, Setting, make_peer, num_threads  # noqa: E402
from convnext.fold import fold_for_inference  # noqa: E402

RATIOS = {  # name: (numerator, denominator), both in images per second
    "folded/unfolded": ("ours_folded", "ours_unfolded"),
    "unfolded/timm": ("ours_unfolded", "timm"),
    "folded/timm": ("ours_folded", "timm"),
}


def time_setting(name: str, s: Setting, warmup: int, iters: int, runs: int) -> dict:
    torch.manual_seed(0)
    ours = create_model(name)
    models = {"ours_unfolded": ours, "ours_folded": fold_for_inference(ours), "timm": make_peer("timm", name)}
    runners = {k: Runner(m, s) for k, m in models.items()}
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    names = list(runners)
    got: dict[str, list[float]] = {k: [] for k in names}
    for i in range(runs):
        for k in names[i % 3:] + names[: i % 3]:  # rotate who goes first
            got[k].append(runners[k].time(iters))
        line = "  ".join(f"{k} {got[k][-1]:7.1f}" for k in names)
        print(f"  run {i + 1}/{runs} (img/s): {line}", flush=True)
    ratios = {r: statistics.median(a / b for a, b in zip(got[num], got[den])) for r, (num, den) in RATIOS.items()}
    return {
        "setting": vars(s) | {"describe": s.describe()},
        "img_s": {k: statistics.median(v) for k, v in got.items()},
        "runs": got,
        "ratios": ratios,
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"])
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per model first")
    p.add_argument("--iters", type=int, default=2, help="batches per timed run")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model (medians are reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--note", default="", help="free text stored with the result, e.g. 'shared machine'")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()

    load_before = os.getloadavg()
    results = []
    with num_threads(args.threads):
        for channels_last in (False, True):
            s = Setting(device=args.device, dtype=args.dtype, batch_size=args.batch_size, img_size=args.img_size,
                        channels_last=channels_last, compile=args.compile)
            print(f"{args.model}, {s.describe()}", flush=True)
            t0 = time.perf_counter()
            res = time_setting(args.model, s, args.warmup, args.iters, args.runs)
            res["wall_s"] = time.perf_counter() - t0
            results.append(res)
            for k, v in res["img_s"].items():
                print(f"  {k:14s} {v:8.1f} img/s (median of {args.runs} runs of {args.iters} batches)")
            for k, v in res["ratios"].items():
                print(f"  {k:16s} {v:.3f} (median of per-run ratios)")
    doc = {
        "script": "benchmarks/bench_fold.py", "argv": sys.argv[1:], "model": args.model, "git_commit": _git_commit(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(), "note": args.note, "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
