"""`convnext train`: train or fine-tune with a config from configs/: a classifier (convnext/train.py) or a detector
(convnext/detection/task.py), whichever task the config names, on the one engine (convnext/engine.py).

    convnext train --config demo
    convnext train --config in1k:tiny --data /data/imagenet optim.lr=2e-3
    torchrun --nproc_per_node=8 -m convnext train --config in1k:tiny --data /data/imagenet --out runs/t
    convnext train --config coco:mask_rcnn_tiny --data /data/coco --out runs/mrcnn
    convnext train --out runs/t --resume
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convnext.checkpoint import load_run_checkpoint
from convnext.cli import common
from convnext.config import apply_overrides, dumps, from_dict, load_config
from convnext.tasks import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3")
    p.add_argument("--config", default="demo", help="config file or name in configs/ (default: demo); "
                   "FILE:ARG passes ARG to get_config, e.g. in1k:small")
    p.add_argument("--out", help="run directory (default: runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--data", help="shortcut for data.root=PATH")
    p.add_argument("--model", help="shortcut for model.name=NAME")
    p.add_argument("--init", help="shortcut for model.init=TAG|PATH (fine-tune from these weights)")
    common.add_device(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{Path(args.config.partition(':')[0]).stem}")
    if args.resume and (out / "last.pt").exists():
        # the stored recipe is the run's recipe; overrides given now apply on top (e.g. more epochs)
        cfg = from_dict(load_run_checkpoint(out / "last.pt")["meta"]["config"])
    else:
        cfg = load_config(args.config)
    shortcuts = [f"data.root={args.data}"] if args.data else []
    shortcuts += [f"model.name={args.model}"] if args.model else []
    shortcuts += [f"model.init={args.init}"] if args.init else []
    cfg = apply_overrides(cfg, shortcuts + list(args.overrides))
    if args.print_config:
        print(dumps(cfg))
        return 0
    train(cfg, out, resume=args.resume, device=args.device)
    return 0
