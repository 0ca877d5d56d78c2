"""UperNet inference speed with a ConvNeXt-T backbone against the same segmenter on Swin-T and ResNet-50 (Table 4).

    .venv/bin/python benchmarks/segmentation_speed.py [--size 512] [--runs 5] [--out results.json]

Three contenders, alternated run by run in one process (convnext.benchmark.alternate), each the UperNet of the
official configs (convnext.segmentation.models.segmenter_on: UPerHead 512 wide with pyramid pooling 1/2/3/6, 150
classes; the auxiliary head is training-only and not run) on a different body, each body's four stage outputs
at strides 4-32 (the bodies of benchmarks/detection_speed.py):
  convnext_tiny  ours (convnext/backbone.py: stage outputs layer-normalised, as the official backbone)
  swin_t         torchvision's Swin-T (each stage output layer-normalised, as Swin's segmentation backbone)
  resnet50       torchvision's ResNet-50 (layer1..layer4)
Random weights (speed does not depend on them); one size x size image per call (the training crop; the
single-scale test runs the model on such windows), fp32, eager, contiguous, eval mode, logits at the input's
resolution; img/s = images / seconds in inference mode. The paper prints no segmentation throughput (Table 4
compares parameters and FLOPs at 2048 x 512).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from detection_speed import ResNetBody, SwinBody  # the same bodies as the detection comparison (this folder)

from convnext.backbone import ConvNeXtBackbone
from convnext.benchmark import alternate, count_params, provenance, summarise
from convnext.checkpoint import write_text
from convnext.segmentation.models import segmenter_on


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="image side (default 512, the 1K models' crop)")
    p.add_argument("--channels", type=int, default=512, help="UPerHead width (default 512, the official)")
    p.add_argument("--iters", type=int, default=2, help="images per contender per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    bodies = {"convnext_tiny": ConvNeXtBackbone("convnext_tiny"), "swin_t": SwinBody(), "resnet50": ResNetBody()}
    models = {k: segmenter_on(b, 150, channels=a.channels).eval() for k, b in bodies.items()}
    image = torch.randn(1, 3, a.size, a.size)
    setting = dict(device="cpu", precision="fp32", batch_size=1, height=a.size, width=a.size, channels=a.channels,
                   channels_last=False, compile="none", mode="inference", iters=a.iters, runs=a.runs,
                   params={k: count_params(m) for k, m in models.items()})
    print(" ".join(f"{k}={v}" for k, v in setting.items()) + f" threads={torch.get_num_threads()}", flush=True)

    def timed(model) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(a.iters):
                out = model(image)
            seconds = time.perf_counter() - t0
        assert out.shape == (1, 150, a.size, a.size), "every contender returns logits at the input's resolution"
        return a.iters / seconds

    for m in models.values():  # warm-up
        timed(m)

    def progress(i, n, got):
        print(f"run {i}/{n}: " + "  ".join(f"{k} {v:.3f} img/s" for k, v in got.items()), flush=True)

    runs = alternate({k: (lambda m=m: timed(m)) for k, m in models.items()}, a.runs, progress)
    result = summarise(runs, {"convnext_tiny/swin_t": ("convnext_tiny", "swin_t"),
                              "convnext_tiny/resnet50": ("convnext_tiny", "resnet50")})
    print("median img/s: " + ", ".join(f"{k} {v:.3f}" for k, v in result["median"].items()))
    print("ratios (median of per-run ratios): " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))
    if a.out:
        write_text(json.dumps({**provenance(**setting), **result}, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
