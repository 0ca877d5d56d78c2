"""Time the README's main job (the Fashion-MNIST demo) end to end and record its accuracy.

    .venv/bin/python benchmarks/demo_time.py [--out benchmarks/results/demo.json] [KEY=VALUE ...]

Runs `convnext train --config demo` in a fresh process (set-up excluded: the venv and data are in place),
measures the wall-clock time from launch to exit (start-up, data loading, training and every evaluation
included), and reads the final and best top-1 on the 10,000 test images from the run's summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from convnext.benchmark import provenance
from convnext.checkpoint import write_text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "convnext", "train", "--config", "demo", "--out", run, *a.overrides]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        summary = json.load(open(os.path.join(run, "summary.json")))
        metrics = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
        cfg = json.load(open(os.path.join(run, "config.json")))["config"]
    d, t = cfg["data"], cfg["train"]
    setting = dict(device="cpu", precision=t["precision"], batch_size=d["batch_size"], img_size=d["img_size"],
                   channels_last=t["channels_last"], compile="default" if t["compile"] else "none",
                   model=cfg["model"]["name"], epochs=t["epochs"], overrides=a.overrides)
    result = {**provenance(**setting), "wall_s": round(wall, 1), "summary": summary, "metrics": metrics}
    print(f"demo: {wall:.0f} s wall-clock, final top-1 {summary['final_top1']:.2f}, best {summary['best_top1']:.2f}, "
          f"EMA final {summary['final_ema_top1']:.2f} ({' '.join(f'{k}={v}' for k, v in setting.items())}, "
          f"{result['device']})")
    if a.out:
        write_text(json.dumps(result, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
