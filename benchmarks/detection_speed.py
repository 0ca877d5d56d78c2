"""Mask R-CNN inference speed with a ConvNeXt-T backbone against the same detector on Swin-T and ResNet-50 (Table 3).

    .venv/bin/python benchmarks/detection_speed.py [--height 800 --width 1333] [--runs 5] [--out results.json]

Three contenders, alternated run by run in one process (convnext.benchmark.alternate), each the detector of the
official Mask R-CNN config (convnext.detection.models.detector_on: FPN 256, RPN, RoIAlign 7/14, 2-FC box head,
4-conv mask head, 80 classes) on a different body, each body's four stage outputs at strides 4-32:
  convnext_tiny  ours (convnext/backbone.py: stage outputs layer-normalised, as the official detection backbone)
  swin_t         torchvision's Swin-T (its features' four stages, each layer-normalised as Swin's detection
                 backbone does, NHWC -> NCHW)
  resnet50       torchvision's ResNet-50 (layer1..layer4)
Random weights: speed does not depend on the values, but the number of detections does, and with it the mask
head's work, so the score threshold is 0 and every image yields the full 100 detections in every contender.
One image per call, fp32, eager, contiguous; img/s = images / seconds of `model([image])` in inference mode. The
paper (Table 3, A100, mmdetection): ConvNeXt-T 25.6 FPS, Swin-T 23.1 (ratio 1.108); ResNet-50 is not in the
Mask R-CNN rows.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet50, swin_t
from torchvision.models._utils import IntermediateLayerGetter

from convnext.backbone import ConvNeXtBackbone
from convnext.benchmark import alternate, count_params, provenance, summarise
from convnext.checkpoint import write_text
from convnext.detection.models import detector_on


class SwinBody(nn.Module):
    """torchvision's Swin-T as a detection body: the four stage outputs, each layer-normalised (Swin's
    detection backbone has a norm per output, like ConvNeXt's), as NCHW."""

    def __init__(self):
        super().__init__()
        self.features = swin_t().features  # [patch embed, stage 1, merge, stage 2, merge, stage 3, merge, stage 4]
        self.out_channels = [96, 192, 384, 768]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)

    def forward(self, x):
        outs = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:  # after each stage
                k = i // 2
                outs[str(k)] = self.norms[k](x).permute(0, 3, 1, 2)  # NHWC -> NCHW
        return outs


class ResNetBody(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = IntermediateLayerGetter(resnet50(), {f"layer{i + 1}": str(i) for i in range(4)})
        self.out_channels = [256, 512, 1024, 2048]

    def forward(self, x):
        return self.body(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--iters", type=int, default=2, help="images per contender per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    bodies = {"convnext_tiny": ConvNeXtBackbone("convnext_tiny"), "swin_t": SwinBody(), "resnet50": ResNetBody()}
    models = {k: detector_on(b, "mask_rcnn", 80, box_score_thresh=0.0).eval() for k, b in bodies.items()}
    image = torch.rand(3, a.height, a.width)
    setting = dict(device="cpu", precision="fp32", batch_size=1, height=a.height, width=a.width,
                   channels_last=False, compile="none", mode="inference", iters=a.iters, runs=a.runs,
                   params={k: count_params(m) for k, m in models.items()})
    print(" ".join(f"{k}={v}" for k, v in setting.items()) + f" threads={torch.get_num_threads()}", flush=True)

    def timed(model) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(a.iters):
                out = model([image])
            seconds = time.perf_counter() - t0
        assert len(out[0]["boxes"]) == 100, "every contender must do the same mask-head work"
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
