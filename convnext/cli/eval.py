"""`convnext eval`: top-1/top-5 of weights on an ImageNet-layout folder's val/ (or Fashion-MNIST's test set), with
the official protocol and the weights' own preprocessing; or, for a detector's checkpoint, COCO box and mask AP on
a COCO-format folder's val2017 (convnext/detection/evaluate.py); or, for a segmenter's, mIoU / mAcc / aAcc and
per-class IoU on an ADE20K-layout folder's validation split, by the checkpoint's own test (its run's ratios and
flip; --flip: and the mirror image), multi-scale + flip, or the scales of --ratios (`--ratios 1`: the single scale
alone; convnext/segmentation/evaluate.py); or, with --suite, a robustness set of paper Table 8
(convnext/robustness.py). Correct under torchrun."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from convnext import distributed
from convnext.checkpoint import git_commit, read_checkpoint
from convnext.cli import common
from convnext.config import DataConfig
from convnext.data import build_data
from convnext.detection.data import build_coco_data
from convnext.detection.evaluate import CocoEvaluator
from convnext.detection.models import load_detector, parse_settings
from convnext.errors import UserError
from convnext.evaluate import evaluate
from convnext.robustness import evaluate_suite, plot, table
from convnext.robustness_sets import PAPER_TABLE8, SUITES
from convnext.runtime import Runtime
from convnext.segmentation.data import build_seg_data
from convnext.segmentation.evaluate import eval_protocol, evaluate_segmenter
from convnext.segmentation.models import load_segmenter


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_weights(p)
    p.add_argument("--data", required=True, help="ImageNet-layout folder (uses DATA/val), or fashion_mnist; for a "
                   "detector, a COCO-format folder (DATA/annotations/instances_val2017.json, DATA/val2017/)")
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the weights'); detectors: the test "
                   "scale's short side (default: the checkpoint's)")
    p.add_argument("--crop-pct", type=float, help="default 0.875 below 384, 1.0 at 384")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader workers")
    common.add_device(p)
    common.add_precision(p)
    p.add_argument("--split", help="detectors: the COCO split to evaluate (default val2017); segmenters: the "
                   "ADE20K-layout split (default validation)")
    p.add_argument("--multi-scale", action="store_true", help="segmenters: ratios 0.5-1.75 and flip (Table 4)")
    p.add_argument("--flip", action="store_true", help="segmenters: also the mirror image")
    p.add_argument("--ratios", type=float, nargs="+", metavar="R", help="segmenters: test at these ratios of the test "
                   "scale (e.g. 0.75 1 1.25; 1: the single scale), probabilities averaged; with --flip also mirrored")
    p.add_argument("--detector", nargs="+", default=[], metavar="NAME=VALUE", help="detectors: settings replacing "
                   "the checkpoint's, test-time ones (e.g. rpn_post_nms_top_n_test=300 box_detections_per_img=50)")
    p.add_argument("--results", metavar="PATH", help="detectors: also write the detections as a COCO results json")
    p.add_argument("--suite", choices=list(SUITES), help="a robustness set of paper Table 8, DATA in its released "
                   "layout: top-1 (A, R, Sketch), mCE (C), mean error (C-bar)")
    p.add_argument("--clean-error", type=float, metavar="PCT", help="imagenet-c: the clean top-1 error in %%, for "
                   "the relative mCE")
    p.add_argument("--clean-data", metavar="DIR", help="imagenet-c: an ImageNet folder whose val/<wnid>/ gives the "
                   "clean error, for the relative mCE")
    p.add_argument("--out", metavar="DIR", help="--suite: write robustness_<suite>.json and .png into DIR")
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return run_robustness(args)
    if args.checkpoint:
        obj = read_checkpoint(args.checkpoint)
        task = (obj.get("meta") or {}).get("task")
        if task == "detection":
            return run_detection(args)
    if args.detector:
        raise UserError(f"--detector sets a detector's settings; {args.checkpoint or args.pretrained} is not a "
                        f"detector checkpoint of ours")
    if args.checkpoint:
        if task == "segmentation" or "decode_head.conv_seg.weight" in (obj.get("state_dict") or {}):
            return run_segmentation(args)
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
        model = load_detector(args.checkpoint, ema=args.ema, **parse_settings(args.detector)).to(d.device)
        if args.img_size:  # another test scale than the checkpoint's (its short side; the long side cap stays)
            model.transform.min_size = (args.img_size,)
        # the data resize at the model's own test scale, which the model's transform then leaves as it is
        cfg = DataConfig(dataset="coco", root=args.data, eval_split=args.split or "val2017",
                         batch_size=args.batch_size, workers=args.workers,
                         det_test_scale=model.transform.min_size[-1], det_max_size=model.transform.max_size)
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
            print(f"{model.arch} on {args.data} {cfg.eval_split} ({data.num_eval} images at short side "
                  f"{cfg.det_test_scale}, {args.checkpoint}{' EMA' if args.ema else ''} weights)")
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


def run_segmentation(args: argparse.Namespace) -> int:
    """mIoU, mAcc, aAcc and per-class IoU of a segmenter's checkpoint on DATA's `--split` (ADE20K layout), by the
    checkpoint's own test (its scale and mode, at its run's ratios and flip; with --flip, and the mirrored image),
    with --multi-scale ratios 0.5-1.75 with flip in whole mode, or with --ratios those ratios of the test scale
    (and --flip)."""
    d = distributed.setup(common.device(args))
    try:
        model = load_segmenter(args.checkpoint, ema=args.ema).to(d.device)
        inf = model.inference
        cfg = DataConfig(dataset="ade20k", root=args.data, eval_split=args.split or "validation",
                         workers=args.workers, seg_num_classes=model.num_classes,
                         seg_reduce_zero_label=inf["reduce_zero_label"], seg_scale=tuple(inf["scale"]))
        data = build_seg_data(cfg, train=False)
        mode, ratios, flip, how = eval_protocol(inf, args.multi_scale, args.flip, args.ratios)
        rt = Runtime(d, args.precision)
        metric = evaluate_segmenter(model, data.eval_batches(d.world, d.rank, ratios=ratios), rt, model.num_classes,
                                    data.class_names, mode=mode, crop=inf["crop"], stride=inf["stride"], flip=flip)
        metrics = metric.summarize()
        if d.main:
            print(f"{model.arch} on {args.data} {cfg.eval_split} ({data.num_eval} images, {how}, {args.checkpoint}"
                  f"{' EMA' if args.ema else ''} weights)")
            print(metric.table())
            if data.skipped:
                print(f"  skipped {data.skipped} unreadable images", file=sys.stderr)
            common.write_json(args.json, {**metrics, "per_class": metric.per_class(), "images": metric.images})
    finally:
        distributed.teardown(d)
    return 0


def run_robustness(args: argparse.Namespace) -> int:
    """Paper Table 8's number for one set (convnext/robustness.py): printed, in --json, and with --out DIR, as
    DIR/robustness_<suite>.json and a chart beside it."""
    if (args.clean_error is not None or args.clean_data) and args.suite != "imagenet-c":
        raise UserError("--clean-error and --clean-data are for --suite imagenet-c (its relative mCE)")
    if args.clean_error is not None and args.clean_data:
        raise UserError("give the clean error either as --clean-error or by --clean-data, not both")
    d = distributed.setup(common.device(args))
    try:
        model, source = common.model_from_args(args)
        model = model.to(d.device)
        img_size = args.img_size or model.pretrained_cfg["preprocessing"].get("img_size", 224)
        rt, opts = Runtime(d, args.precision), dict(img_size=img_size, crop_pct=args.crop_pct,
                                                    batch_size=args.batch_size, workers=args.workers)
        clean = args.clean_error
        if args.clean_data:
            clean = evaluate_suite(model, "imagenet", args.clean_data, rt, **opts)["error"]
        r = evaluate_suite(model, args.suite, args.data, rt, clean_error=clean, **opts)
        paper = PAPER_TABLE8.get(model.pretrained_cfg.get("tag") or "", {}).get(args.suite)
        r.update(weights=f"{source}{' EMA' if args.ema else ''}", img_size=img_size, precision=args.precision,
                 paper_table8=paper, git_commit=git_commit(), argv=sys.argv)
        if d.main:
            print(f"{r['set']} at {args.data} ({r['weights']} weights, {img_size}px)")
            print(table(r, paper))
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                common.write_json(str(out / f"robustness_{args.suite}.json"), r)
                plot(r, out / f"robustness_{args.suite}.png")
            common.write_json(args.json, r)
    finally:
        distributed.teardown(d)
    return 0
