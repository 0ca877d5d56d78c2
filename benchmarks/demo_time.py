"""Time a demo end to end and record its result: the README's main job (the Fashion-MNIST classifier), the
offline detection or segmentation demo, or the FCMAE / V2 fine-tuning demos.

    .venv/bin/python benchmarks/demo_time.py [--out benchmarks/results/demo.json] [KEY=VALUE ...]
    .venv/bin/python benchmarks/demo_time.py --config scenes --data data/scenes --nproc 2 --out scenes.json
    .venv/bin/python benchmarks/demo_time.py --config scenes_seg --data data/scenes/ade --nproc 2 --out seg.json

Runs `convnext train --config CONFIG` in a fresh process, or N under torchrun with `--nproc N` (as the detection
and segmentation demos run; set-up excluded: the venv and data are in place),
measures the wall-clock time from launch to exit (start-up, data loading, training and every evaluation
included), and reads the run's final metrics from its summary.json (top-1 on the 10,000 Fashion-MNIST test
images; box and mask AP, or mIoU / mAcc / aAcc, on the held-out scenes).
"""
from __future__ import annotations

import argparse
import contextlib
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
    p.add_argument("--config", default="demo", help="the config to run (default: demo)")
    p.add_argument("--data", help="data.root for the config (the scenes folder for --config scenes)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (default: a temporary folder)")
    p.add_argument("--nproc", type=int, default=1, help="processes (torchrun, one thread each; default: 1)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    with (contextlib.nullcontext(a.keep) if a.keep else tempfile.TemporaryDirectory()) as run:
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}"] if a.nproc > 1 else []
        cmd = [sys.executable, *launch, "-m", "convnext", "train", "--config", a.config, "--out", run, *a.overrides]
        cmd += ["--data", a.data] if a.data else []
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        summary = json.load(open(os.path.join(run, "summary.json")))
        metrics = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
        cfg = json.load(open(os.path.join(run, "config.json")))["config"]
    d, t = cfg["data"], cfg["train"]
    task = cfg.get("task")  # a detector's test scale, a segmenter's crop (its whole-image test size here)
    size = (d["det_test_scale"] if task == "detection" else d["seg_crop_size"] if task == "segmentation"
            else d["img_size"])
    setting = dict(device="cpu", precision=t["precision"], batch_size=d["batch_size"], img_size=size,
                   channels_last=t["channels_last"], compile="default" if t["compile"] else "none",
                   model=cfg["model"]["name"], epochs=t["epochs"], processes=a.nproc, overrides=a.overrides)
    result = {**provenance(**setting), "wall_s": round(wall, 1), "summary": summary, "metrics": metrics}
    shown = ("final_top1", "best_top1", "final_ema_top1", "final_box_AP", "final_box_AP50", "final_mask_AP",
             "final_mask_AP50", "final_mIoU", "final_mAcc", "final_aAcc", "final_eval_loss")
    numbers = ", ".join(f"{k} {summary[k]:.2f}" for k in shown if summary.get(k) is not None)
    print(f"{a.config}: {wall:.0f} s wall-clock, {numbers} ({' '.join(f'{k}={v}' for k, v in setting.items())}, "
          f"{result['device']})")
    if a.out:
        write_text(json.dumps(result, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
