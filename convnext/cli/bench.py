"""`convnext bench NAME`: inference or training-step throughput, optionally against a peer timed in the same process,
alternating run by run (convnext/benchmark.py): timm's model of the same name, or torchvision's Swin-T, ResNet-50 or
ViT-B/16 (random weights), with the ratio ours / peer."""
from __future__ import annotations

import argparse

import torch

from convnext.benchmark import PEERS, Setting, compare, count_params, make_peer, num_threads
from convnext.cli import common
from convnext.errors import UserError
from convnext.factory import create_model
from convnext.fold import fold_for_inference
from convnext.model import get_variant


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name")
    p.add_argument("--img-size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    common.add_device(p)
    common.add_precision(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--compile", choices=["none", "default", "max-autotune"], default="none")
    p.add_argument("--train", action="store_true", help="time forward + backward + AdamW step")
    p.add_argument("--compare", choices=PEERS, help="time a peer, alternating: timm's model of the same name, or "
                   "torchvision's swin_t, resnet50 or vit_b_16")
    p.add_argument("--fold", action="store_true", help="time the inference-folded model (fold_for_inference)")
    p.add_argument("--runs", type=int, default=7, help="timed runs (the median is reported)")
    p.add_argument("--iters", type=int, default=3, help="batches per timed run")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    if args.fold and args.train:
        raise UserError("--fold is for inference; it cannot be combined with --train")
    get_variant(args.model).check_img_size(args.img_size)
    s = Setting(device=common.device(args), precision=args.precision, batch_size=args.batch_size,
                img_size=args.img_size, channels_last=args.channels_last, compile=args.compile, train=args.train)
    with num_threads(args.threads):
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=args.num_classes)
        models = {"ours": fold_for_inference(model) if args.fold else model}
        if args.compare:
            models[args.compare] = make_peer(args.compare, args.model, img_size=args.img_size,
                                             num_classes=args.num_classes)
        print(s.describe(), flush=True)

        def progress(i, n, got):
            line = "  ".join(f"{k} {v:8.1f} img/s" for k, v in got.items())
            print(f"  run {i}/{n}: {line}", flush=True)

        r = compare(models, s, warmup=args.warmup, iters=args.iters, runs=args.runs, progress=progress)
    med = r["median"]
    line = f"{args.model}: ours {med['ours']:.1f} img/s (median of {args.runs})"
    if args.compare:
        line += (f", {args.compare} {med[args.compare]:.1f} img/s, ratio ours/{args.compare} "
                 f"{r['ratios'][f'ours/{args.compare}']:.3f} (median of per-run ratios)")
    print(line)
    if r["peak_mb"]["ours"] is not None:
        print("  peak memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in r["peak_mb"].items()))
    # what each contender is, so that a ratio says what it compares (a peer's class, e.g. torchvision's SwinTransformer)
    what = {k: {"class": f"{type(m).__module__}.{type(m).__name__}", "params": count_params(m)}
            for k, m in models.items()}
    common.write_json(args.json, {"model": args.model, "fold": args.fold, "models": what, **r})
    return 0
