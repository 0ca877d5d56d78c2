"""Inference throughput of ConvNeXt folded for inference (convnext/fold.py) vs as trained, and vs timm's.

    .venv/bin/python benchmarks/bench_fold.py --out benchmarks/results/fold_cpu.json
    .venv/bin/python benchmarks/bench_fold.py --device cuda --precision bf16 --out benchmarks/results/fold_cuda.json

For each memory format (contiguous, channels_last), three models are timed in one process by the package's
harness (convnext.benchmark.compare): ours folded, ours unfolded, and timm's model of the same name (random
weights: speed does not depend on the values). They alternate run by run, each run starting with a different
model, so that a noisy machine slows all three alike; each number is the median over runs of `iters` batches,
each ratio the median of the per-run ratios. Each result carries its setting and provenance (device, versions,
threads, load average, git commit, date).
"""
from __future__ import annotations

import argparse
import json

import torch

from convnext import create_model, fold_for_inference
from convnext.benchmark import Setting, compare, make_peer, num_threads, ratio
from convnext.checkpoint import write_text
from convnext.runtime import PRECISIONS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
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

    results = []
    with num_threads(args.threads):
        for channels_last in (False, True):
            s = Setting(device=args.device, precision=args.precision, batch_size=args.batch_size,
                        img_size=args.img_size, channels_last=channels_last, compile=args.compile)
            print(f"{args.model}, {s.describe()}", flush=True)
            torch.manual_seed(0)
            ours = create_model(args.model)
            models = {"folded": fold_for_inference(ours), "unfolded": ours, "timm": make_peer("timm", args.model)}

            def progress(i, n, got):
                print(f"  run {i}/{n} (img/s): " + "  ".join(f"{k} {v:7.1f}" for k, v in got.items()), flush=True)

            r = compare(models, s, warmup=args.warmup, iters=args.iters, runs=args.runs, progress=progress)
            r["ratios"]["unfolded/timm"] = ratio(r["runs"]["unfolded"], r["runs"]["timm"])
            results.append(r)
            for k, v in r["median"].items():
                print(f"  {k:10s} {v:8.1f} img/s (median of {args.runs} runs of {args.iters} batches)")
            for k, v in r["ratios"].items():
                print(f"  {k:16s} {v:.3f} (median of per-run ratios)")
    doc = {"script": "benchmarks/bench_fold.py", "model": args.model, "note": args.note, "results": results}
    write_text(json.dumps(doc, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
