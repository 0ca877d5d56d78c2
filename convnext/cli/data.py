"""`convnext data scenes --out DIR`: make the offline detection and segmentation set (convnext/detection/scenes.py).

    convnext data scenes --out data/scenes                       # 2,000 train + 500 val scenes, 256 x 256
    convnext train --config scenes --data data/scenes --out runs/scenes
    convnext train --config scenes_seg --data data/scenes/ade --out runs/scenes_seg

Fashion-MNIST items (the Debian package dataset-fashion-mnist) pasted at random scales and positions onto crops
of real photographs (scikit-image's data images), with exact boxes and masks, written in COCO format:
DIR/{train2017,val2017}/ and DIR/annotations/instances_{train2017,val2017}.json; and with per-pixel labels in
ADE20K's layout: DIR/ade/images/{training,validation}/, DIR/ade/annotations/{training,validation}/ (PNG label maps:
0 the photograph, k + 1 Fashion-MNIST class k), DIR/ade/classes.txt.
"""
from __future__ import annotations

import argparse
import json

from convnext.detection.scenes import make_scenes


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = sub.add_parser("scenes", help="the offline detection/segmentation set of pasted Fashion-MNIST items",
                       description=__doc__.splitlines()[0])
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write the set into")
    s.add_argument("--train", type=int, default=4000, help="training scenes (default 4000)")
    s.add_argument("--val", type=int, default=500, help="held-out scenes (default 500)")
    s.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    summary = make_scenes(args.out, num_train=args.train, num_val=args.val, size=(args.size, args.size),
                          seed=args.seed)
    print(json.dumps(summary, indent=2, default=str))
    return 0
