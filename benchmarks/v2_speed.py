"""ConvNeXt V2-T speed: ours against timm's convnextv2_tiny, and against our ConvNeXt-T (what GRN costs).

    .venv/bin/python benchmarks/v2_speed.py --out benchmarks/results/v2_speed_cpu.json
    .venv/bin/python benchmarks/v2_speed.py --device cuda --precision bf16 --batch-size 128 \\
        --out benchmarks/results/v2_speed_cuda.json

For inference, then for a training step (forward, cross-entropy, backward, AdamW), three models are timed in one
process by the package's harness (convnext.benchmark.compare): ours V2-T, timm's convnextv2_tiny and our V1
ConvNeXt-T, random weights (speed does not depend on the values). They alternate run by run, each run starting
with a different model, so that a noisy machine slows all three alike; each number is the median over runs of
`iters` batches, each ratio the median of the per-run ratios: v2/timm_v2 (the implementation) and v2/v1 (the
architecture: GRN in, layer scale out; on GPUs, timm's results CSVs put V2-T at 1.85-2.4x V1-T's time in eager
mode and 7-9% above it compiled).
Each result carries its setting and provenance (device, versions, threads, load average, git commit, date).
"""
from __future__ import annotations

import argparse
import json

import torch

from convnext import create_model
from convnext.benchmark import Setting, compare, make_peer, num_threads
from convnext.checkpoint import write_text
from convnext.runtime import PRECISIONS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default="none", choices=["none", "default", "max-autotune"])
    p.add_argument("--modes", default="inference,train", help="comma-separated: inference, train")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per model first")
    p.add_argument("--iters", type=int, default=2, help="batches per timed run")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model (medians are reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--note", default="", help="free text stored with the result, e.g. 'shared machine'")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()

    results = []
    with num_threads(args.threads):
        for mode in args.modes.split(","):
            if mode not in ("inference", "train"):
                p.error(f"unknown mode {mode!r}; choose inference and/or train")
            s = Setting(device=args.device, precision=args.precision, batch_size=args.batch_size,
                        img_size=args.img_size, channels_last=args.channels_last, compile=args.compile,
                        train=mode == "train")
            print(f"convnextv2_tiny, {s.describe()}", flush=True)
            torch.manual_seed(0)
            models = {"v2": create_model("convnextv2_tiny"), "timm_v2": make_peer("timm", "convnextv2_tiny"),
                      "v1": create_model("convnext_tiny")}  # the first is compared with each other one

            def progress(i, n, got):
                print(f"  run {i}/{n} (img/s): " + "  ".join(f"{k} {v:7.1f}" for k, v in got.items()), flush=True)

            r = compare(models, s, warmup=args.warmup, iters=args.iters, runs=args.runs, progress=progress)
            r["mode"] = mode
            results.append(r)
            for k, v in r["median"].items():
                print(f"  {k:8s} {v:8.1f} img/s (median of {args.runs} runs of {args.iters} batches)")
            for k, v in r["ratios"].items():
                print(f"  {k:10s} {v:.3f} (median of per-run ratios; > 1: ours V2 is faster)")
    doc = {"script": "benchmarks/v2_speed.py", "model": "convnextv2_tiny", "note": args.note, "results": results}
    write_text(json.dumps(doc, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
