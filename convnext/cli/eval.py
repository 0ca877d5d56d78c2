"""`convnext eval`: top-1/top-5 of weights on an ImageNet-layout folder's val/ (or Fashion-MNIST's test set), with
the official protocol and the weights' own preprocessing; or, for a detector's checkpoint, COCO box and mask AP on
a COCO-format folder's val2017 (convnext/detection/evaluate.py). Correct under torchrun."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from convnext import distributed
from convnext.checkpoint import read_checkpoint
from convnext.cli import common
from convnext.config import DataConfig
from convnext.data import build_data
from convnext.detection.data import build_coco_data
from convnext.detection.evaluate import CocoEvaluator
from convnext.detection.models import load_detector
from convnext.errors import UserError
from convnext.evaluate import evaluate
from convnext.runtime import Runtime


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_weights(p)
    p.add_argument("--data", required=True, help="ImageNet-layout folder (uses DATA/val), or fashion_mnist; for a "
                   "detector, a COCO-format folder (DATA/annotations/instances_val2017.json, DATA/val2017/)")
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the weights')")
    p.add_argument("--crop-pct", type=float, help="default 0.875 below 384, 1.0 at 384")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")
    common.add_device(p)
    common.add_precision(p)
    p.add_argument("--split", default="val2017", help="detectors: the COCO split to evaluate (default val2017)")
    p.add_argument("--results", metavar="PATH", help="detectors: also write the detections as a COCO results json")
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and (read_checkpoint(args.checkpoint).get("meta") or {}).get("task") == "detection":
        return run_detection(args)
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


def run_detection(args: argparse.Namespace) -> int:
    """COCO box and mask AP of a detector's checkpoint on DATA's `--split`, at the checkpoint's test scale."""
    d = distributed.setup(common.device(args))
    try:
        model = load_detector(args.checkpoint, ema=args.ema).to(d.device)
        cfg = DataConfig(dataset="coco", root=args.data, eval_split=args.split, batch_size=args.batch_size,
                         workers=args.workers)
        data = build_coco_data(cfg, train=False)
        if data.num_classes != model.num_classes:
            raise UserError(f"the data has {data.num_classes} classes but the detector has {model.num_classes}")
        rt = Runtime(d, args.precision)
        evaluator = CocoEvaluator(data.coco_eval, data.category_ids)
        with torch.no_grad():
            for images, metas in data.eval_batches(d.world, d.rank):
                with rt.autocast():
                    outputs = model([x.to(d.device) for x in images])
                evaluator.update([m["image_id"] for m in metas], outputs)
        evaluator.gather(d)
        metrics = evaluator.summarize()
        if d.main:
            print(f"{model.arch} on {args.data} {args.split} ({data.num_eval} images, {args.checkpoint}"
                  f"{' EMA' if args.ema else ''} weights)")
            print(evaluator.table())
            per_class = {t: evaluator.per_class_ap50(t) for t in evaluator.iou_types}
            print("AP50 per class (box / mask): " + ", ".join(
                f"{name} {per_class['bbox'][name]:.1f} / {per_class['segm'][name]:.1f}" for name in per_class["bbox"]))
            if args.results:
                evaluator.write_results(args.results)
            common.write_json(args.json, {**metrics, "per_class_AP50": per_class})
    finally:
        distributed.teardown(d)
    return 0
