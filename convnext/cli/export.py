"""`convnext export`: ONNX, TorchScript or torch.export (.pt2), checked against PyTorch (convnext/export.py)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from convnext import export, labels
from convnext.cli import common
from convnext.fold import fold_for_inference
from convnext.model import get_variant
from convnext.preprocessing import from_cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_weights(p, random_init=True)  # exports and checks on the CPU
    p.add_argument("--no-fold", action="store_true",
                   help="do not fold (LN affine, layer scale, GRN beta: convnext/fold.py)")
    p.add_argument("--format", required=True, choices=export.FORMATS,
                   help="onnx (opset 18), torchscript (traced; deprecated in PyTorch) or exported (torch.export .pt2)")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--img-size", type=int, help="input resolution (default: the weights' own)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="any height and width that are multiples of the network's stride (64 to 2048 px), "
                        "not only --img-size; checked at two sizes")


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        export.require_onnx()
    reference, source = common.model_from_args(args)  # the unfolded model: the reference for the check
    reference = reference.cpu()
    arch = reference.arch
    pre = from_cfg(getattr(reference, "pretrained_cfg", None), reference.in_chans)
    size = args.img_size or pre.img_size
    get_variant(arch).check_img_size(size)
    model = reference if args.no_fold else fold_for_inference(reference)
    metadata = {"arch": arch, "weights": source, "folded": not args.no_fold,
                "preprocessing": {**asdict(pre), "img_size": size}, "class_names": labels.of_model(reference)}
    stride = get_variant(arch).stride
    shape = (f"(batch, {pre.in_chans}, H, W), H and W multiples of {stride} from {2 * stride} to {export.MAX_SIDE}"
             if args.dynamic_size else f"(batch, {pre.in_chans}, {size}, {size})")
    metadata["dynamic_size"] = {"multiple_of": stride, "min": 2 * stride, "max": export.MAX_SIDE} \
        if args.dynamic_size else None
    print(f"convnext export: {arch} ({source}), {'not folded' if args.no_fold else 'folded'}, "
          f"input {shape} with a dynamic batch -> {args.format}", flush=True)
    out = export.export_model(model, args.format, args.out, size, pre.in_chans, metadata, args.dynamic_size, stride)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    if args.format == "onnx":
        ops = export.onnx_op_counts(out)
        print(f"  opset {export.ONNX_OPSET}, {sum(ops.values())} nodes, {ops['LayerNormalization']} LayerNormalization "
              f"(the model has {export.count_layernorms(reference)} LayerNorms)")
    runtime = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "exported": "torch.export.load"}[args.format]
    sizes = export.check_sizes(size, args.dynamic_size, stride)
    diff = export.check(reference, args.format, out, sizes, pre.in_chans)
    ok = diff <= export.ATOL
    print(f"check: {runtime} vs PyTorch (unfolded, fp32) on random inputs at batch "
          f"{' and '.join(map(str, export.CHECK_BATCHES))}, {' and '.join(f'{h} x {w}' for h, w in sizes)}: "
          f"max |difference| {diff:.2e} "
          f"{'<=' if ok else '>'} {export.ATOL:.0e}: {'OK' if ok else 'FAILED'}")
    if not ok:
        print(f"convnext export: the exported model differs from PyTorch by more than {export.ATOL:.0e}",
              file=sys.stderr)
        return 1
    return 0
