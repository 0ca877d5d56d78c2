"""Paper Table 1's speed comparison on this machine: ConvNeXt-T against Swin-T, fp32, inference and a training step,
batch 16 and 64, as ratios measured in one process.

    .venv/bin/python benchmarks/table1_speed.py --out benchmarks/results/table1_speed_cpu.json   # the full run
    .venv/bin/python benchmarks/table1_speed.py --batch-sizes 1 --img-size 64 --runs 2 --iters 1 --warmup 1 \\
        --out /tmp/table1_smoke.json                                                             # a smoke run

Swin-T is torchvision's `swin_t` (28.3M parameters, as in Table 1); both models have random weights (speed does not
depend on the values). For each (mode, batch) the two are timed by the package's harness (convnext.benchmark.compare):
alternating run by run, each run starting with the other model, so that a noisy machine slows both alike; each
number is the median over runs of `iters` batches, the ratio the median of the per-run ratios ConvNeXt-T / Swin-T.
A training step is forward + cross-entropy + backward + AdamW step. Every result carries its setting and provenance
(device, threads, versions, load average, git commit, date). Run the full one on a quiet machine.

The paper's ratios, on GPUs: Table 1 (V100, "following Swin", batch and precision not stated) 774.7 / 757.9 img/s =
1.022; Table 12 (A100, TF32, channels_last, PyTorch 1.10) 1943.5 / 1325.6 = 1.466. Both are inference. A CPU ratio
need not match either: it is a different machine, and the one this script measures is printed with it.
"""
from __future__ import annotations

import argparse
import json

import torch

from convnext import create_model
from convnext.benchmark import Setting, compare, make_peer, num_threads
from convnext.checkpoint import write_text
from convnext.runtime import PRECISIONS

PAPER = {"table1_v100": 774.7 / 757.9, "table12_a100": 1943.5 / 1325.6}  # ConvNeXt-T / Swin-T inference img/s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fp32 as in Table 1 (default)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--modes", nargs="+", choices=["inference", "train"], default=["inference", "train"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (Table 12's setting)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per model first")
    p.add_argument("--iters", type=int, default=3, help="batches per timed run")
    p.add_argument("--runs", type=int, default=7, help="timed runs per model (medians are reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--note", default="", help="free text stored with the result, e.g. 'quiet machine'")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()

    results = []
    with num_threads(args.threads):
        for mode in args.modes:
            for batch in args.batch_sizes:
                s = Setting(device=args.device, precision=args.precision, batch_size=batch, img_size=args.img_size,
                            channels_last=args.channels_last, train=mode == "train")
                print(s.describe(), flush=True)
                torch.manual_seed(0)  # the same random weights in every setting
                models = {"convnext_tiny": create_model("convnext_tiny"), "swin_t": make_peer("swin_t", "")}

                def progress(i, n, got):
                    print(f"  run {i}/{n} (img/s): " + "  ".join(f"{k} {v:7.1f}" for k, v in got.items()), flush=True)

                r = compare(models, s, warmup=args.warmup, iters=args.iters, runs=args.runs, progress=progress)
                results.append({"mode": mode, "batch_size": batch, **r})

    print(f"\nConvNeXt-T / Swin-T, {args.precision}, {args.img_size}px, {results[0]['device']} "
          f"(medians of {args.runs} runs of {args.iters} batches)")
    print(f"{'mode':10s} {'batch':>5s} {'ConvNeXt-T img/s':>17s} {'Swin-T img/s':>13s} {'ratio':>7s}")
    for r in results:
        med = r["median"]
        print(f"{r['mode']:10s} {r['batch_size']:5d} {med['convnext_tiny']:17.1f} {med['swin_t']:13.1f} "
              f"{r['ratios']['convnext_tiny/swin_t']:7.3f}")
    print("paper (GPU inference): " + ", ".join(f"{k} {v:.3f}" for k, v in PAPER.items()))
    doc = {"script": "benchmarks/table1_speed.py", "note": args.note, "paper_ratios": PAPER, "results": results}
    write_text(json.dumps(doc, indent=2) + "\n", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
