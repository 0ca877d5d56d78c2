"""`convnext detect PATH ... --checkpoint FILE --out DIR`: detect objects with a trained detector and draw them.

    convnext detect street.jpg photos/ --checkpoint runs/scenes/best.pt --out detections/ [--json -]

Each input is written to DIR under its own name (as PNG), with the boxes, class names, scores and masks of the
detections scoring at least --score-thresh. An unreadable input is reported for that file while the others are
processed; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from convnext.cli import common
from convnext.detection.draw import detections_to_dict, draw_detections, save_image
from convnext.detection.models import load_detector
from convnext.errors import UserError
from convnext.images import expand_paths, load_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (searched recursively), globs")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a detection run's checkpoint (best.pt, last.pt)")
    p.add_argument("--ema", action="store_true", help="the EMA weights of the checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the drawn images")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw and list detections scoring at least this")
    common.add_device(p)
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    dev = common.device(args)
    model = load_detector(args.checkpoint, ema=args.ema).to(dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = expand_paths(args.paths)
    quiet = args.json == "-"
    results, failed, names = [], 0, set()
    for path in paths:
        try:
            img = load_image(path)
        except UserError as e:
            failed += 1
            results.append({"source": path, "error": str(e)})
            print(f"{path}: error: {e}", file=sys.stderr, flush=True)
            continue
        pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        with torch.no_grad():
            det = model([pixels.to(dev).float() / 255])[0]
        det = {k: v.cpu() for k, v in det.items()}
        stem = Path(path).stem
        target = out / f"{stem}.png"
        n = 1
        while target.name in names:  # two inputs of the same name in different folders: keep both
            target, n = out / f"{stem}_{n}.png", n + 1
        names.add(target.name)
        save_image(draw_detections(pixels, det, model.class_names, args.score_thresh), target)
        found = detections_to_dict(det, model.class_names, args.score_thresh)
        results.append({"source": path, "output": str(target), "detections": found})
        if not quiet:
            text = ", ".join(f"{d['name']} {d['score']:.2f}" for d in found) or "nothing"
            print(f"{path}: {text} -> {target}", flush=True)
    common.write_json(args.json, {"checkpoint": str(args.checkpoint), "detector": model.arch,
                                  "score_thresh": args.score_thresh, "results": results})
    if failed:
        print(f"convnext detect: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
        return 1
    return 0
