"""`convnext <command> ...`: one thin entry point over the library.

Each command lives with its concern: the module named in COMMANDS provides `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported, so `convnext info` starts fast.
A UserError (bad path, unknown name, corrupt file) prints one sentence and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# command -> (module, one line of help)
COMMANDS = {
    "info": ("convnext.cli_bench", "parameters, GMACs and per-stage output shapes of a model"),
    "bench": ("convnext.cli_bench", "inference/training throughput, optionally against timm in the same process"),
    "train": ("convnext.train", "train or fine-tune with the paper's recipe (torchrun for many processes)"),
    "eval": ("convnext.evaluate", "top-1/top-5 on an ImageFolder with the official protocol"),
    "predict": ("convnext.predict", "classify image files"),
    "export": ("convnext.export", "export to ONNX, TorchScript or torch.export"),
    "roadmap": ("convnext.roadmap_cli", "the ResNet -> ConvNeXt modernization roadmap: table, chart, training"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {c: v for c, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def main(argv: list[str] | None = None) -> int:
    from convnext.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    parser = argparse.ArgumentParser(prog="convnext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in commands else None
    for name, (module, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            importlib.import_module(module).add_arguments(p, name)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(commands[args.command][0]).run(args) or 0)
    except UserError as e:
        print(f"convnext {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convnext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
