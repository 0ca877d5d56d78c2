"""Top-1/top-5 with the official protocol, correct under torchrun (each image counted once), and `convnext eval`."""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from convnext.errors import UserError


@torch.no_grad()
def evaluate(model: nn.Module, batches, device, dtype=None, channels_last: bool = False, d=None) -> dict:
    """Accuracy and loss over `batches` (this process's shard); sums are all-reduced over processes.

    Each process reads a disjoint shard (rank::world, no padding), so no image is counted twice.
    """
    from convnext.distributed import all_sum

    was_training = model.training
    model.eval()
    n = correct1 = correct5 = loss_sum = 0.0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in batches:
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == y[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(1).sum().item()
        n += len(y)
    if d is not None:
        n, correct1, correct5, loss_sum = all_sum([n, correct1, correct5, loss_sum], d)
    model.train(was_training)
    if n == 0:
        raise UserError("the evaluation set is empty")
    return {"top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "loss": loss_sum / n, "n": int(n)}


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--model", help="model name (default: the checkpoint's own)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", metavar="TAG", help="registry tag, e.g. convnext_tiny.fb_in1k")
    src.add_argument("--checkpoint", metavar="PATH", help="an official checkpoint or one of ours")
    p.add_argument("--data", required=True, help="ImageNet-layout folder (uses DATA/val), or 'fashion_mnist'")
    p.add_argument("--weights", choices=["model", "model_ema"], default="model",
                   help="raw or EMA weights of a checkpoint of ours (default: model)")
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the weights')")
    p.add_argument("--crop-pct", type=float, help="default 0.875 below 384, 1.0 at 384")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def run(args) -> int:
    from convnext import distributed
    from convnext.config import DataConfig
    from convnext.data import build_data
    from convnext.inference import load_model

    d = distributed.setup(args.device)
    model, meta = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, which=args.weights)
    pre = meta.get("preprocessing", {})
    img_size = args.img_size or pre.get("img_size", 224)
    if args.data == "fashion_mnist":
        cfg = DataConfig(dataset="fashion_mnist", img_size=img_size, batch_size=args.batch_size)
    else:
        cfg = DataConfig(dataset="imagefolder", root=args.data, img_size=img_size, batch_size=args.batch_size,
                         workers=args.workers, crop_pct=args.crop_pct)
    data = build_data(cfg, train=False)
    if data.num_classes != model.num_classes:
        raise UserError(f"the data has {data.num_classes} classes but the model's head has {model.num_classes}")
    model.to(d.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    r = evaluate(model, data.eval_batches(d.world, d.rank), d.device, dtype, d=d)
    if d.main:
        print(f"* Acc@1 {r['top1']:.3f} Acc@5 {r['top5']:.3f} loss {r['loss']:.3f} ({r['n']} images, "
              f"{args.weights if args.checkpoint else 'pretrained'} weights, {img_size}px)")
        if data.skipped:
            print(f"  skipped {data.skipped} unreadable images", file=sys.stderr)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=2)
    distributed.teardown(d)
    return 0
