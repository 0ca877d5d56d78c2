"""RoIAlign forward + backward on the CPU: ours (convnext/detection/roi_align.py) against torchvision's, alternating.

    .venv/bin/python benchmarks/roi_align_speed.py [--runs 7] [--out benchmarks/results/roi_align_speed.json]

Two cases: the offline detection demo's box RoIs (configs/scenes.py: 4 images, FPN level "0" 48 x 48 x 64 at
stride 4, 256 RoIs of 42-84 px, 7 x 7, aligned, adaptive sampling) and COCO's (2 images at 800 x 1344, level "0"
200 x 336 x 256, 1,024 RoIs of 20-112 px). fp32, contiguous, eager, the threads torch has. Each measurement is
milliseconds per forward + backward (the gradient of a sum); the ratio is torchvision's time over ours, the median
of the per-run ratios.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.ops import roi_align as tv_roi_align

from convnext.benchmark import alternate, provenance, summarise
from convnext.checkpoint import write_text
from convnext.detection.roi_align import roi_align

CASES = {  # (images, channels, height, width), stride, RoIs, smallest and largest RoI side in pixels
    "scenes_demo": ((4, 64, 48, 48), 4, 256, 42, 84),
    "coco": ((2, 256, 200, 336), 4, 1024, 20, 112),
}


def make_case(shape, stride, n_rois, lo, hi, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = shape
    x = torch.randn(*shape, generator=gen).requires_grad_()
    corner = torch.rand(n_rois, 2, generator=gen) * torch.tensor([w * stride - hi, h * stride - hi])
    size = lo + torch.rand(n_rois, 2, generator=gen) * (hi - lo)
    index = torch.randint(0, n, (n_rois, 1), generator=gen).float()
    return x, torch.cat([index, corner, corner + size], 1)


def timed(fn, x, boxes, stride, iters):
    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(iters):
            x.grad = None
            fn(x, boxes, 7, 1.0 / stride, 0, True).sum().backward()
        return (time.perf_counter() - t0) / iters * 1e3
    return once


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args()
    results = {}
    for name, (shape, stride, n_rois, lo, hi) in CASES.items():
        x, boxes = make_case(shape, stride, n_rois, lo, hi)
        contenders = {"torchvision": timed(tv_roi_align, x, boxes, stride, a.iters),
                      "ours": timed(roi_align, x, boxes, stride, a.iters)}
        for f in contenders.values():
            f()  # warm-up
        runs = alternate(contenders, a.runs)
        results[name] = summarise(runs, {"torchvision_over_ours": ("torchvision", "ours")})
        med = results[name]["median"]
        print(f"{name}: torchvision {med['torchvision']:.1f} ms, ours {med['ours']:.1f} ms per forward + backward, "
              f"ratio {results[name]['ratios']['torchvision_over_ours']:.2f} (median of {a.runs} runs)")
    if a.out:
        setting = dict(device="cpu", precision="fp32", batch_size="see cases", channels_last=False, compile="none")
        write_text(json.dumps({**provenance(**setting), "cases": {k: dict(zip(
            ("shape", "stride", "rois", "min_side", "max_side"), v)) for k, v in CASES.items()},
            "results": results}, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
