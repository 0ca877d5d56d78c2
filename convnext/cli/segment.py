"""`convnext segment PATH ... --checkpoint FILE --out DIR`: label every pixel with a trained segmenter.

    convnext segment room.jpg photos/ --checkpoint runs/upernet_t/last.pt --out segmented/ [--multi-scale] [--json -]

For each input, DIR/overlay/<name>.png (the image with each class's colour blended over its pixels) and
DIR/labels/<name>.png (the label map in the dataset's own encoding: ADE20K's 1..150, 0 never predicted), by the
checkpoint's test protocol (its test scale, sliding window or whole image, its run's test ratios and flip; --flip:
and the mirrored image; --multi-scale: ratios 0.5-1.75 and the mirrored image, as the paper's Table 4; --ratios
R ...: those ratios of the test scale, `--ratios 1` the single scale alone). An unreadable input is reported for
that file while the others are processed; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from convnext.cli import common
from convnext.detection.draw import save_image
from convnext.errors import UserError
from convnext.images import expand_paths, load_image
from convnext.segmentation.data import eval_inputs
from convnext.segmentation.draw import class_fractions, encode_labels, overlay, save_labels
from convnext.segmentation.evaluate import eval_protocol, label_map, predict_probs
from convnext.segmentation.models import load_segmenter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (searched recursively), globs")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a segmentation run's checkpoint (best.pt, last.pt) or an official mmseg UperNet file")
    p.add_argument("--ema", action="store_true", help="the EMA weights of the checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlays and label maps")
    p.add_argument("--multi-scale", action="store_true", help="ratios 0.5-1.75 and flip (whole image at each scale)")
    p.add_argument("--flip", action="store_true", help="also the mirror image")
    p.add_argument("--ratios", type=float, nargs="+", metavar="R", help="test at these ratios of the test "
                   "scale (e.g. 0.75 1 1.25; 1: the single scale), probabilities averaged; with --flip also mirrored")
    common.add_device(p)
    common.add_json(p)


def run(args: argparse.Namespace) -> int:
    dev = common.device(args)
    model = load_segmenter(args.checkpoint, ema=args.ema).to(dev)
    inf = model.inference
    mode, ratios, flip, _ = eval_protocol(inf, args.multi_scale, args.flip, args.ratios)
    out = Path(args.out)
    (out / "overlay").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
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
            inputs = [x.to(dev) for x in eval_inputs(pixels, tuple(inf["scale"]), ratios)]
            pred = label_map(predict_probs(model, inputs, tuple(pixels.shape[-2:]), mode=mode, crop=inf["crop"],
                                           stride=inf["stride"], flip=flip)).cpu()
        stem = Path(path).stem
        name, n = f"{stem}.png", 1
        while name in names:  # two inputs of the same name in different folders: keep both
            name, n = f"{stem}_{n}.png", n + 1
        names.add(name)
        save_image(overlay(pixels, pred, model.class_names, inf["reduce_zero_label"]), out / "overlay" / name)
        save_labels(encode_labels(pred, inf["reduce_zero_label"]), out / "labels" / name)
        found = class_fractions(pred, model.class_names)
        results.append({"source": path, "overlay": str(out / "overlay" / name), "labels": str(out / "labels" / name),
                        "classes": found})
        if not quiet:
            top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(found.items())[:5])
            print(f"{path}: {top} -> {out / 'overlay' / name}", flush=True)
    common.write_json(args.json, {"checkpoint": str(args.checkpoint), "segmenter": model.arch,
                                  "multi_scale": args.multi_scale, "ratios": list(ratios), "results": results})
    if failed:
        print(f"convnext segment: {failed} of {len(paths)} inputs could not be read", file=sys.stderr)
        return 1
    return 0
