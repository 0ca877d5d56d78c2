"""`convnext info NAME`: parameters, multiply-adds and per-stage output shapes of a model (meta device, instant)."""
from __future__ import annotations

import argparse

import torch

from convnext.benchmark import count_gmacs, count_params, stage_shapes
from convnext.model import build_model, get_variant


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (convnext_tiny, convnext_atto, convnext_isotropic_small, ...)")
    p.add_argument("--img-size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=1000)


def run(args: argparse.Namespace) -> int:
    v = get_variant(args.model)
    v.check_img_size(args.img_size)
    with torch.device("meta"):
        model = build_model(args.model, num_classes=args.num_classes)
    print(f"{args.model}: depths {list(v.depths)}, widths {list(v.dims)}{' (isotropic)' if v.isotropic else ''}")
    print(f"  parameters: {count_params(model):,} ({args.num_classes} classes)")
    print(f"  GMACs at {args.img_size}px: {count_gmacs(model, args.img_size):.2f} (multiply-adds of convs and linears)")
    paper = {224: v.gmacs_224, 384: v.gmacs_384}.get(args.img_size)
    if paper is not None:
        print(f"  paper: {v.params_m}M params, {paper} GFLOPs at {args.img_size}px")
    shapes = stage_shapes(model, args.img_size)
    if v.isotropic:
        print(f"  blocks: {len(shapes)} x {tuple(shapes[-1][1:])}")
    else:
        for i, s in enumerate(shapes):
            print(f"  stage {i}: {tuple(s[1:])}  (stride {args.img_size // s[-1]})")
    return 0
