"""Flags that several commands share, spelled the same in each, and what they turn into."""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from convnext.checkpoint import write_text
from convnext.errors import UserError
from convnext.factory import create_model, load_model
from convnext.runtime import PRECISIONS


def add_weights(p: argparse.ArgumentParser, random_init: bool = False) -> None:
    """--model and exactly one source of weights, and --ema (predict, export, eval)."""
    p.add_argument("--model", metavar="NAME", help="model name (with --checkpoint: default, the one the file names)")
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--pretrained", metavar="TAG", help="official weights: a tag such as fb_in1k, or NAME.TAG")
    w.add_argument("--checkpoint", metavar="PATH", help="a checkpoint file: official, ours, timm's, or .safetensors")
    if random_init:
        w.add_argument("--random-init", action="store_true", help="no weights: a seeded random model (for testing)")
    p.add_argument("--ema", action="store_true", help="with --checkpoint: the EMA weights of a training checkpoint")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu or cuda[:i] (default: cuda when available)")


def add_precision(p: argparse.ArgumentParser, default: str = "fp32") -> None:
    p.add_argument("--precision", choices=list(PRECISIONS), default=default,
                   help=f"autocast precision (default {default}), as train.precision in a config")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH (- for standard output)")


def device(args: argparse.Namespace) -> str:
    name = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but no CUDA device is available")
    return name


def model_from_args(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """(model in eval mode, where its weights came from) for add_weights' flags."""
    if getattr(args, "random_init", False):
        if not args.model:
            raise UserError("--random-init needs --model NAME")
        if args.ema:
            raise UserError("--ema applies to --checkpoint only")
        torch.manual_seed(0)
        return create_model(args.model).eval(), "random init, seed 0"
    if args.checkpoint:
        return load_model(args.checkpoint, name=args.model, ema=args.ema), str(args.checkpoint)
    if args.ema:
        raise UserError("--ema applies to --checkpoint only (the official files hold one set of weights)")
    if not args.model and "." not in args.pretrained:
        raise UserError(f"--pretrained {args.pretrained} needs --model NAME (or pass NAME.{args.pretrained})")
    model = load_model(args.pretrained, name=args.model or args.pretrained.partition(".")[0])
    return model, model.pretrained_cfg["tag"]


def write_json(path: str | None, obj) -> None:
    """--json PATH: the result as JSON in PATH (atomically), or on standard output for "-"."""
    if not path:
        return
    text = json.dumps(obj, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        write_text(text, path)
