"""`convnext <command> ...`: the command line, one module per command, over the library.

Each module here has `add_arguments(parser)` and `run(args) -> int`; the library modules have no argparse.
Only the chosen command's module is imported (`convnext info` does not load the trainer). A UserError (a bad
path, an unknown name, a corrupt file) prints one sentence and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from convnext.errors import UserError

# command -> one line of help; the module is convnext.cli.<command>
COMMANDS = {
    "info": "parameters, GMACs and per-stage output shapes of a model",
    "bench": "inference/training throughput, optionally against timm in the same process",
    "train": "train or fine-tune with the paper's recipe (torchrun for many processes)",
    "eval": "top-1/top-5 of a classifier (official protocol), COCO box/mask AP of a detector, or mIoU of a segmenter",
    "predict": "classify image files",
    "export": "export to ONNX, TorchScript or torch.export",
    "roadmap": "the ResNet -> ConvNeXt modernization roadmap: table, chart, training",
    "detect": "detect and segment objects with a trained detector, drawing them onto the images",
    "segment": "label every pixel with a trained segmenter: colour overlays and label maps",
    "data": "make data sets: `data scenes`, the offline detection and segmentation set",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="convnext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # only its flags are needed (and only its module is imported)
            importlib.import_module(f"convnext.cli.{name}").add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(f"convnext.cli.{args.command}").run(args) or 0)
    except UserError as e:
        print(f"convnext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convnext {args.command}: interrupted", file=sys.stderr)
        return 130
