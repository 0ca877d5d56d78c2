"""`convnext roadmap`: the steps of Table 10 / 11 with the paper's numbers beside ours, a Figure-2-style chart,
and training every step (convnext/roadmap.py, roadmap_report.py).

    convnext roadmap                                  # ResNet-50 -> ConvNeXt-T (Table 10)
    convnext roadmap --regime resnet200 --plot roadmap200.png --json roadmap200.json
    convnext roadmap --out runs/roadmap/resnet50      # adds the measured top-1 of finished runs
    convnext roadmap --train --data /path/to/imagenet --out runs/roadmap/resnet50   # train every step
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convnext.cli import common
from convnext.errors import UserError
from convnext.roadmap import REGIMES
from convnext.roadmap_report import format_table, plot, read_measured, table, to_json, train_steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regime", choices=REGIMES, default="resnet50",
                   help="resnet50: ResNet-50 -> ConvNeXt-T (Table 10); resnet200: ResNet-200 -> ConvNeXt-B (Table 11)")
    p.add_argument("--plot", metavar="PATH", help="also draw the steps as a Figure-2-style chart (PNG)")
    common.add_json(p)
    p.add_argument("--out", metavar="DIR", help="the roadmap's run directory, one sub-directory per step: "
                   "adds their measured top-1 (default with --train: runs/roadmap/<regime>)")
    p.add_argument("--train", action="store_true", help="train every step with the project's trainer first")
    p.add_argument("--data", metavar="DATA", help="with --train: an ImageNet-style data root, or fashion_mnist "
                   "(the embedded set)")
    p.add_argument("--config", help="with --train: the recipe for every step (default: roadmap:imagenet, or "
                   "roadmap:fashion_mnist with --data fashion_mnist)")
    p.add_argument("--steps", metavar="NAME,...", help="with --train: only these steps (default: all)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="with --train: recipe overrides, e.g. train.epochs=5")


def run(args: argparse.Namespace) -> int:
    for path in (args.json, args.plot):  # fail before the work, not after it
        if path and path != "-" and not Path(path).resolve().parent.is_dir():
            raise UserError(f"cannot write {path}: the directory {Path(path).parent} does not exist")
    if (args.data or args.overrides or args.config or args.steps) and not args.train:
        raise UserError("--data, --config, --steps and overrides are only used with --train; add --train")
    if args.train:
        if not args.data:
            raise UserError("--train needs --data DATA, the data set to train every step on")
        args.out = args.out or str(Path("runs") / "roadmap" / args.regime)
        train_steps(args.regime, args.data, args.out, args.config, args.steps.split(",") if args.steps else None,
                    list(args.overrides))
    measured = read_measured(args.regime, args.out) if args.out else {}
    rows = table(args.regime, measured)
    print(format_table(args.regime, rows))
    if args.json:
        common.write_json(args.json, to_json(args.regime, rows))
        print(f"wrote {args.json}")
    if args.plot:
        plot(args.regime, rows, args.plot)
        print(f"wrote {args.plot}")
    return 0
