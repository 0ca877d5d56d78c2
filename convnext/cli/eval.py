"""`convnext eval`: top-1/top-5 of weights on an ImageNet-layout folder's val/ (or Fashion-MNIST's test set), with
the official protocol and the weights' own preprocessing; correct under torchrun (convnext/evaluate.py)."""
from __future__ import annotations

import argparse
import os
import sys

from convnext import distributed
from convnext.cli import common
from convnext.config import DataConfig
from convnext.data import build_data
from convnext.errors import UserError
from convnext.evaluate import evaluate
from convnext.runtime import Runtime


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_weights(p)
    p.add_argument("--data", required=True, help="ImageNet-layout folder (uses DATA/val), or fashion_mnist")
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the weights')")
    p.add_argument("--crop-pct", type=float, help="default 0.875 below 384, 1.0 at 384")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")
    common.add_device(p)
    common.add_precision(p)
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    d = distributed.setup(common.device(args))
    try:
        model, source = common.model_from_args(args)
        pre = model.pretrained_cfg["preprocessing"]
        img_size = args.img_size or pre.get("img_size", 224)
        if args.data == "fashion_mnist":
            cfg = DataConfig(dataset="fashion_mnist", img_size=img_size, batch_size=args.batch_size)
        else:
            cfg = DataConfig(dataset="imagefolder", root=args.data, img_size=img_size, batch_size=args.batch_size,
                             workers=args.workers, crop_pct=args.crop_pct)
        data = build_data(cfg, train=False, in_chans=model.in_chans)
        if data.num_classes != model.num_classes:
            raise UserError(f"the data has {data.num_classes} classes but the model's head has {model.num_classes}")
        rt = Runtime(d, args.precision)
        r = evaluate(model.to(d.device), data.eval_batches(d.world, d.rank), rt)
        if d.main:
            print(f"* Acc@1 {r['top1']:.3f} Acc@5 {r['top5']:.3f} loss {r['loss']:.3f} ({r['n']} images, "
                  f"{source}{' EMA' if args.ema else ''} weights, {img_size}px)")
            if data.skipped:
                print(f"  skipped {data.skipped} unreadable images", file=sys.stderr)
            common.write_json(args.json, r)
    finally:
        distributed.teardown(d)
    return 0
