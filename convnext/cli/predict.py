"""`convnext predict PATH ...`: classify image files, folders and globs (convnext/predict.py: the Classifier)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from convnext.cli import common
from convnext.images import expand_paths
from convnext.predict import Classifier


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (searched recursively), globs")
    common.add_weights(p)
    p.add_argument("--no-fold", action="store_true",
                   help="do not fold (LN affine, layer scale, GRN beta: convnext/fold.py)")
    common.add_device(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    model, source = common.model_from_args(args)
    clf = Classifier(model, fold=not args.no_fold, device=common.device(args), batch_size=max(1, args.batch_size),
                     source=source)
    paths = expand_paths(args.paths)
    print(f"convnext predict: {clf.describe()}", file=sys.stderr, flush=True)
    results = []
    quiet = args.json == "-"  # the JSON document is the output
    for pred in clf.iter_predict(paths, args.topk):
        results.append(pred)
        if not quiet:
            text = f"error: {pred.error}" if pred.error else " | ".join(f"{l.name} {l.prob:.2%}" for l in pred.top)
            print(f"{pred.source}: {text}", flush=True)
    common.write_json(args.json, {"model": clf.arch, "weights": clf.source, "folded": clf.folded,
                                  "preprocessing": asdict(clf.preprocessing),
                                  "results": [r.to_dict() for r in results]})
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"convnext predict: {failed} of {len(results)} inputs could not be classified", file=sys.stderr)
        return 1
    return 0
