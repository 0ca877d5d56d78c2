"""An offline detection and instance-segmentation set in COCO format: Fashion-MNIST items on real photographs.

For training and testing the detection task where COCO (20 GB) is not at hand. The backgrounds are random crops
of the colour photographs bundled with scikit-image (no download); the objects are Fashion-MNIST items (Debian's
dataset-fashion-mnist, 10 classes: convnext.labels.FASHION_MNIST), scaled 2x-4x (56-112 px) and coloured: each
item's grey level modulates a random colour, so it reads as a textured object, not as a hole in the photograph.

What is not obvious:
- The masks are exact: an item's mask is its resized pixels above THRESHOLD, and exactly those pixels are
  painted. Later items occlude earlier ones; every mask is what is left visible, and every box is that visible
  mask's extent (COCO bbox x, y, w, h with w = x2 - x1 in whole pixels).
- A paste that would leave an earlier item (or itself, when it hangs over the border) with less than
  MIN_VISIBLE of its pixels is not made, and the item is tried elsewhere: dropping the earlier item instead would
  leave its visible pieces in the picture without an annotation, which a detector would be taught to ignore.
- Train and val share nothing: train backgrounds come from TRAIN_PHOTOS and items from Fashion-MNIST's train
  split; val from VAL_PHOTOS and the test split.
- Deterministic given `seed`: image i of a split draws from numpy's generator seeded by (seed, split, i).
- The same scenes are also written in ADE20K's layout for semantic segmentation (convnext/segmentation/data.py):
  out/ade/images/{training,validation}/<name>.jpg (the same files) and out/ade/annotations/<split>/<name>.png,
  whose pixels hold 0 where the photograph shows and k + 1 where Fashion-MNIST class k does (the exact visible
  masks), and out/ade/classes.txt naming the values 0 ("background") to 10.
"""
from __future__ import annotations

import colorsys
import json
import shutil
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from convnext.data import load_fashion_mnist
from convnext.errors import UserError
from convnext.labels import FASHION_MNIST

# skimage.data's colour photographs that ship with the package (no pooch download), split by photograph.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "motorcycle_left")
VAL_PHOTOS = ("chelsea", "immunohistochemistry")
THRESHOLD = 0.1  # an item pixel (grey level / 255, after resizing) above this belongs to the item
MIN_VISIBLE = 0.3  # an item keeps at least this fraction of its pixels visible (occlusion, image border)
OVERHANG = 0.25  # an item may hang this fraction of its size over the image border
TRIES = 10  # places tried for an item before it is left out
JPEG_QUALITY = 90
SPLITS = {"train2017": 0, "val2017": 1}  # COCO's split names, so that convnext/detection/data.py reads it as is
ADE_SPLITS = {"train2017": "training", "val2017": "validation"}  # ADE20K's names, for convnext/segmentation/data.py


def photograph(name: str) -> np.ndarray:
    """(H, W, 3) uint8 photograph of skimage.data by name (motorcycle_left: the left view of the stereo pair)."""
    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def background(photos: list[np.ndarray], size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop (of the aspect of `size`, 50-100% of the largest such crop) of a random photograph, maybe
    mirrored, resized to `size` (H, W)."""
    photo = photos[rng.integers(len(photos))]
    (ph, pw), (h, w) = photo.shape[:2], size
    largest = min(ph / h, pw / w)  # crop (h, w) * scale fits for scale <= largest
    scale = largest * rng.uniform(0.5, 1.0)
    ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
    y0, x0 = rng.integers(ph - ch + 1), rng.integers(pw - cw + 1)
    crop = photo[y0: y0 + ch, x0: x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BILINEAR)).copy()


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour (0-255), so that items stand out from most backgrounds."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))) * 255


def compose(bg: np.ndarray, items: np.ndarray, labels: np.ndarray, n: int, scale: tuple[float, float],
            rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], int]:
    """Paste `n` random items on `bg` (in place). Returns the image, [(label, visible mask)] and the number of
    items left out because no place kept everyone MIN_VISIBLE visible (module docstring)."""
    h, w = bg.shape[:2]
    owner = np.full((h, w), -1, np.int16)  # which item each pixel shows (-1: the photograph)
    full: list[int] = []  # each placed item's pixel count, on or off the canvas
    placed_labels: list[int] = []
    visible = np.zeros(n, np.int64)
    left_out = 0
    for _ in range(n):
        for _ in range(TRIES):
            j = rng.integers(len(items))
            side = min(int(round(28 * rng.uniform(*scale))), h, w)
            grey = np.asarray(Image.fromarray(items[j]).resize((side, side), Image.BILINEAR), np.float32) / 255
            mask = grey > THRESHOLD
            area = int(mask.sum())
            if not area:
                continue
            over = int(side * OVERHANG)
            y0, x0 = rng.integers(-over, h - side + over + 1), rng.integers(-over, w - side + over + 1)
            ys, xs = slice(max(y0, 0), min(y0 + side, h)), slice(max(x0, 0), min(x0 + side, w))
            sub = mask[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]  # the part on the canvas
            k = len(full)
            covered = owner[ys, xs][sub]
            lost = np.bincount(covered[covered >= 0], minlength=k)[:k]
            ok_self = sub.sum() >= MIN_VISIBLE * area
            if not ok_self or any(visible[i] - lost[i] < MIN_VISIBLE * full[i] for i in range(k)):
                continue
            visible[:k] -= lost
            visible[k] = int(sub.sum())
            full.append(area)
            placed_labels.append(int(labels[j]))
            owner[ys, xs][sub] = k
            shade = (0.3 + 0.7 * grey[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0])[..., None]
            painted = np.clip(shade * random_colour(rng), 0, 255).astype(np.uint8)
            bg[ys, xs][sub] = painted[sub]
            break
        else:
            left_out += 1
    return bg, [(placed_labels[k], owner == k) for k in range(len(full))], left_out


def annotation(mask: np.ndarray, label: int, image_id: int, ann_id: int) -> dict:
    """A COCO instance annotation of a visible mask: compressed RLE (counts as str), area, bbox of its extent."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1, "segmentation": rle,
            "area": int(mask.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}


def write_split(out: Path, split: str, num: int, photos: list[np.ndarray], items: np.ndarray, labels: np.ndarray,
                size: tuple[int, int], per_image: tuple[int, int], scale: tuple[float, float], seed: int,
                progress: bool) -> dict:
    (out / split).mkdir(parents=True, exist_ok=True)
    ade_images, ade_labels = (out / "ade" / d / ADE_SPLITS[split] for d in ("images", "annotations"))
    ade_images.mkdir(parents=True, exist_ok=True)
    ade_labels.mkdir(parents=True, exist_ok=True)
    images, anns, left_out, nbytes = [], [], 0, 0
    per_class = [0] * len(FASHION_MNIST)
    for i in tqdm(range(num), desc=f"scenes {split}", disable=not progress, unit="img"):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        n = int(rng.integers(per_image[0], per_image[1] + 1))
        img, objects, dropped = compose(background(photos, size, rng), items, labels, n, scale, rng)
        left_out += dropped
        image_id = i + 1
        name = f"{image_id:012d}.jpg"  # COCO's file naming
        path = out / split / name
        Image.fromarray(img).save(path, quality=JPEG_QUALITY)
        nbytes += path.stat().st_size
        images.append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        semantic = np.zeros(size, np.uint8)  # the ADE layout's label map: 0 = the photograph, k + 1 = class k
        for label, mask in objects:
            anns.append(annotation(mask, label, image_id, len(anns) + 1))
            per_class[label] += 1
            semantic[mask] = label + 1  # visible masks are disjoint: each pixel shows one item at most
        shutil.copyfile(path, ade_images / name)
        Image.fromarray(semantic).save(ade_labels / f"{path.stem}.png")
    coco = {"info": {"description": f"Fashion-MNIST items on scikit-image photographs, {split} (seed {seed})"},
            "images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": name, "supercategory": "fashion"}
                           for k, name in enumerate(FASHION_MNIST)]}
    ann_path = out / "annotations" / f"instances_{split}.json"
    ann_path.write_text(json.dumps(coco, separators=(",", ":")))
    nbytes += ann_path.stat().st_size
    return {"images": num, "annotations": len(anns), "per_class": dict(zip(FASHION_MNIST, per_class)),
            "left_out": left_out, "bytes": nbytes}


def make_scenes(out, num_train: int = 1000, num_val: int = 200, size: tuple[int, int] = (320, 320),
                items: tuple[int, int] = (1, 4), scale: tuple[float, float] = (2.0, 4.0), seed: int = 0,
                progress: bool = True) -> dict:
    """Write the set to `out` (out/train2017/*.jpg, out/val2017/*.jpg, out/annotations/instances_<split>.json, and
    the same scenes with per-pixel labels in ADE20K's layout under out/ade, module docstring):
    `size` (H, W) images with `items` (min, max) Fashion-MNIST items each, scaled by `scale` (x 28 px).
    Returns a summary: per split the image, annotation and per-class counts, items left out, bytes written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a folder to write the scenes to")
    if not 1 <= items[0] <= items[1] or min(size) < 32 or not 0 < scale[0] <= scale[1]:
        raise UserError(f"scenes need 1 <= items min <= max (got {items}), a size of at least 32 px (got {size}) "
                        f"and 0 < scale min <= max (got {scale})")
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_fashion_mnist()
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "ade").mkdir(parents=True, exist_ok=True)
    (out / "ade" / "classes.txt").write_text("\n".join(["background", *FASHION_MNIST]) + "\n")
    summary = {"out": str(out), "ade": str(out / "ade"), "size": list(size), "seed": seed}
    for split, num, photos, x, y in (("train2017", num_train, TRAIN_PHOTOS, x_train, y_train),
                                     ("val2017", num_val, VAL_PHOTOS, x_test, y_test)):
        summary[split] = write_split(out, split, num, [photograph(p) for p in photos], x.numpy(), y.numpy(),
                                     size, items, scale, seed, progress)
        summary[split]["photographs"] = list(photos)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary
