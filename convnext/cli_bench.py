"""`convnext info` and `convnext bench`: the command-line side of convnext/benchmark.py."""
from __future__ import annotations

import argparse
import json

import torch

from convnext.errors import UserError


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("model", help="model name (see `convnext info --list`)" if command == "info" else "model name")
    p.add_argument("--img-size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    if command == "bench":
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
        p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
        p.add_argument("--compile", choices=["none", "default", "max-autotune"], default="none")
        p.add_argument("--train", action="store_true", help="time forward + backward + AdamW step")
        p.add_argument("--compare", choices=["timm"], help="time timm's model of the same name, alternating")
        p.add_argument("--fold", action="store_true", help="time the inference-folded model (fold_for_inference)")
        p.add_argument("--runs", type=int, default=7, help="timed runs (the median is reported)")
        p.add_argument("--iters", type=int, default=3, help="batches per timed run")
        p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
        p.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def run(args: argparse.Namespace) -> int:
    return info(args) if args.command == "info" else bench_cmd(args)


def _model(args, device="meta"):
    from convnext import create_model

    with torch.device(device):
        return create_model(args.model, num_classes=args.num_classes)


def _check_size(model, size: int) -> None:
    from convnext import get_variant

    stride = get_variant(model.arch).stride
    if size % stride:
        raise UserError(f"--img-size {size} is not divisible by {stride}, the network's total stride")


def info(args) -> int:
    from convnext import get_variant
    from convnext.benchmark import count_gmacs, count_params, stage_shapes

    model = _model(args)
    _check_size(model, args.img_size)
    v = get_variant(model.arch)
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


def bench_cmd(args) -> int:
    from convnext.benchmark import Setting, bench, make_peer, num_threads

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    s = Setting(
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, img_size=args.img_size,
        channels_last=args.channels_last, compile=args.compile, train=args.train,
    )
    with num_threads(args.threads):
        torch.manual_seed(0)
        model = _model(args, "cpu")
        _check_size(model, args.img_size)
        if args.fold:
            if args.train:
                raise UserError("--fold is for inference; it cannot be combined with --train")
            from convnext.fold import fold_for_inference

            model = fold_for_inference(model)
        peer = make_peer(args.compare, args.model) if args.compare else None
        print(s.describe(), flush=True)

        def progress(i, n, a, b):
            tail = f"  {args.compare} {b:8.1f} img/s  ratio {a / b:.3f}" if b else ""
            print(f"  run {i}/{n}: ours {a:8.1f} img/s{tail}", flush=True)

        r = bench(model, s, peer_model=peer, peer=args.compare, warmup=args.warmup, iters=args.iters,
                  runs=args.runs, progress=progress)
    line = f"{args.model}: ours {r.ours_img_s:.1f} img/s (median of {args.runs})"
    if r.peer:
        line += f", {r.peer} {r.peer_img_s:.1f} img/s, ratio ours/{r.peer} {r.ratio:.3f} (median of per-run ratios)"
    print(line)
    if r.ours_peak_mb is not None:
        print(f"  peak memory: ours {r.ours_peak_mb:.0f} MiB" + (f", {r.peer} {r.peer_peak_mb:.0f} MiB" if r.peer else ""))
    if args.json:
        from dataclasses import asdict

        with open(args.json, "w") as f:
            json.dump({"model": args.model, "describe": s.describe(), **asdict(r)}, f, indent=2)
    return 0
