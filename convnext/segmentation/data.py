"""Semantic segmentation data in ADE20K's released layout, and the official ConvNeXt ADE20K pipelines.

Layout (ADEChallengeData2016, and what `convnext data scenes` writes under DIR/ade):
root/images/<split>/**/<name>.jpg and root/annotations/<split>/**/<name>.png, splits `training` and `validation`
(data.train_split, data.eval_split). A label map is a single-channel PNG of the image's size holding one value per
pixel: ADE20K's 0 is "other" and 1..150 its classes, so with `seg_reduce_zero_label` (mmseg's reduce_zero_label,
on for ADE20K) 0 becomes 255, ignored by the loss and the metric, and 1..K become classes 0..K-1; 255 is ignored
either way. Class names: root/classes.txt if there is one (one name per label value, from 0), else ADE20K's 150.

The training transform is mmseg 0.x's (configs/_base_/datasets/ade20k.py, which the official configs use;
ade20k_640x640.py for the 22K models), each op with mmseg's semantics (see `train_transform`); the test transform
resizes to `seg_scale` keeping the aspect ratio (x each ratio of a multi-scale test), and the prediction is
compared with the label map at its original size (convnext/segmentation/evaluate.py).

Different from mmseg, on purpose:
- Resizing is torch's: the image bilinear without antialiasing on uint8 (cv2's INTER_LINEAR, which mmcv calls:
  values may differ by one grey level), labels nearest (cv2's INTER_NEAREST: floor(dst * in / out)).
- PhotoMetricDistortion's saturation and hue steps go through HSV in floating point (H in degrees) instead of
  cv2's 8-bit HSV (H in 2-degree steps, S and V in 1/255): the same distribution of changes, values within a grey
  level or so; the image is rounded back to uint8 after each step, as mmseg's.
- A label map of the wrong size, of more than one channel, or with a value that is no class (and not ignored) is
  a bad file (reported, or skipped and counted with data.skip_bad_images), where mmseg would train on it or
  fail inside a worker. An image without its label map is reported at start (or left out and counted).

Determinism (convnext/data.py): the epoch's order is `epoch_permutation(seed, epoch)`, micro-batches are
`micro_batch_slices`, and each sample draws from its own `random.Random(sample_seed(seed, epoch, position))`.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset

from convnext.data import check_bad_files, epoch_permutation, load_files, micro_batch_slices, open_rgb, subset_indices
from convnext.detection.data import rescale_size
from convnext.errors import UserError
from convnext.images import IMAGE_SUFFIXES
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convnext.seeding import sample_seed
from convnext.segmentation.models import IGNORE_INDEX

# ADE20K's 150 classes, labels 1..150 of its annotations (mmseg's ADE20KDataset.CLASSES)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
CLASSES_FILE = "classes.txt"  # optional: one class name per label value, from 0
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255  # mmseg's img_norm_cfg: 123.675, 116.28, 103.53
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # 58.395, 57.12, 57.375

# ------------------------------------------------------------------------------------------ reading files


def read_label(path: str, size: tuple[int, int], num_classes: int, reduce_zero_label: bool) -> torch.Tensor:
    """A label map as (H, W) uint8 classes 0..K-1 and 255 (ignored); ValueError with a reason if it cannot be used:
    not of `size` (h, w), not single-channel, or holding a value that is no class."""
    if not os.path.exists(path):
        raise FileNotFoundError("its label map is missing")
    with Image.open(path) as img:
        raw = np.asarray(img)  # mmcv's pillow backend with flag "unchanged": palette indices, not colours
    if raw.ndim != 2:
        raise ValueError(f"its label map {path} has {raw.shape[-1]} channels; a label map holds one value per pixel")
    if raw.shape != tuple(size):
        raise ValueError(f"its label map {path} is {raw.shape[1]}x{raw.shape[0]} pixels but the image is "
                         f"{size[1]}x{size[0]}")
    raw = raw.astype(np.int64)
    if reduce_zero_label:  # mmseg: 0 -> 255, then -1, so 1..K -> 0..K-1 and 255 stays 255
        label = np.where(raw == 0, IGNORE_INDEX, raw - 1)
        label[raw == IGNORE_INDEX] = IGNORE_INDEX
    else:
        label = raw
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(raw[bad][0])
        valid = f"1..{num_classes} (0: other)" if reduce_zero_label else f"0..{num_classes - 1}"
        raise ValueError(f"its label map {path} holds the value {value}, which is no class (the classes are {valid}, "
                         f"255 is ignored)")
    return torch.from_numpy(label.astype(np.uint8))


def read_image(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB, as stored (convnext.data.open_rgb, as every task reads images)."""
    if not os.path.exists(path):
        raise FileNotFoundError("no such file")
    return torch.from_numpy(np.ascontiguousarray(np.asarray(open_rgb(path)).transpose(2, 0, 1)))


# ------------------------------------------------------------------------- the transforms (mmseg 0.x)


def resize_pair(img: torch.Tensor, label: torch.Tensor | None, size: tuple[int, int]):
    """mmseg Resize to `size` (h, w): the image bilinear (uint8 in, uint8 out), the label nearest."""
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None], size=size, mode="nearest")[0, 0]
    return img, label


def scaled_size(h: int, w: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """mmseg Resize(img_scale=scale, keep_ratio=True) at `ratio`: the scale (long, short) x ratio, truncated
    (`random_sample_ratio`), then the largest size within it keeping the aspect (mmcv.imrescale)."""
    long, short = int(max(scale) * ratio), int(min(scale) * ratio)
    return rescale_size(h, w, short, long)


def random_crop(img: torch.Tensor, label: torch.Tensor, crop: int, cat_max_ratio: float, rng: random.Random,
                object_p: float = 0.0, regions: dict | None = None):
    """mmseg RandomCrop(crop_size=(crop, crop), cat_max_ratio): a random window (the whole side where the image is
    smaller); with cat_max_ratio < 1, up to 10 windows are drawn until one shows more than one class with none
    covering `cat_max_ratio` or more of its labelled pixels (255 not counted); after 10 misses the 11th is taken.
    Where the crop covers the whole image there is one window only, and re-drawing it would change nothing: it is
    taken at once (the same crop mmseg returns; 60% of a 128 px scene's data time went to those re-draws).
    With probability `object_p` (not mmseg's; data.seg_object_crop) the window is `object_window`'s instead
    (`regions`: the label's `object_regions`, where they are kept from an earlier call)."""
    h, w = label.shape
    if h <= crop and w <= crop:
        return img, label
    if object_p > 0 and rng.random() < object_p:
        y0, x0 = object_window(label, crop, rng, regions)
        return img[:, y0: y0 + crop, x0: x0 + crop], label[y0: y0 + crop, x0: x0 + crop]

    def window():
        y0, x0 = rng.randint(0, max(h - crop, 0)), rng.randint(0, max(w - crop, 0))  # both ends included
        return y0, x0

    y0, x0 = window()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = torch.bincount(label[y0: y0 + crop, x0: x0 + crop].flatten().long(), minlength=IGNORE_INDEX + 1)
            counts = counts[:IGNORE_INDEX][counts[:IGNORE_INDEX] > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, x0 = window()
    return img[:, y0: y0 + crop, x0: x0 + crop], label[y0: y0 + crop, x0: x0 + crop]


def object_regions(label: torch.Tensor) -> dict[int, list[tuple[slice, slice]]]:
    """{class: the bounding slices of each of its connected regions (8-connected)} of a label map, 255 aside."""
    lab = label.numpy()
    out = {}
    for c in np.unique(lab).tolist():
        if c != IGNORE_INDEX:
            regions, _ = ndimage.label(lab == c, structure=np.ones((3, 3), bool))
            out[c] = ndimage.find_objects(regions)
    return out


def object_window(label: torch.Tensor, crop: int, rng: random.Random,
                  regions: dict | None = None) -> tuple[int, int]:
    """(y0, x0) of a crop x crop window around one object of `label` (H, W): a class present (255 aside) drawn
    uniformly, one of its connected regions (8-connected) drawn uniformly, and a window drawn uniformly among those
    that hold the region's whole extent on each axis (where the extent is larger than the window: among those
    inside it), moved into the image where it would stick out. nnU-Net's foreground oversampling, by region: a
    crop that shows a whole object rather than pieces of several. `regions`: `object_regions(label)`, if kept."""
    regions = object_regions(label) if regions is None else regions
    h, w = label.shape
    if not regions:  # nothing labelled: any window
        return rng.randint(0, max(h - crop, 0)), rng.randint(0, max(w - crop, 0))
    classes = sorted(regions)
    boxes = regions[classes[rng.randrange(len(classes))]]
    box = boxes[rng.randrange(len(boxes))]
    start = []
    for sl, size in zip(box, (h, w)):
        lo, hi = (sl.stop - crop, sl.start) if sl.stop - sl.start <= crop else (sl.start, sl.stop - crop)
        start.append(min(max(rng.randint(lo, hi), 0), max(size - crop, 0)))
    return start[0], start[1]


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> HSV with H in degrees [0, 360), S and V in [0, 1]."""
    r, g, b = x
    v, _ = x.max(0)
    c = v - x.min(0).values
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    cc = c.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / cc, torch.where(v == g, 2 + (b - r) / cc, 4 + (r - g) / cc))
    h = torch.where(c > 0, (h * 60) % 360, torch.zeros_like(h))
    return torch.stack([h, s, v])


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_hsv`."""
    h, s, v = x
    k = torch.stack([(5 + h / 60) % 6, (3 + h / 60) % 6, (1 + h / 60) % 6])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """mmseg's `convert`: clip to [0, 255], then astype(uint8), which truncates."""
    return x.clamp(0, 255).to(torch.uint8)


def photometric_distortion(img: torch.Tensor, rng: random.Random, brightness: float = 32,
                           contrast: tuple[float, float] = (0.5, 1.5), saturation: tuple[float, float] = (0.5, 1.5),
                           hue: int = 18) -> torch.Tensor:
    """mmseg PhotoMetricDistortion on a uint8 (3, H, W) image: each step with probability 1/2 — brightness
    +U(-32, 32); contrast x U(0.5, 1.5), first or last (a coin decides); saturation x U(0.5, 1.5); hue + an
    integer in [-18, 18) half-degrees (cv2's 8-bit hue unit), modulo the circle. mmseg draws the coin for each step
    before its value; so does this."""
    def coin() -> bool:
        return rng.randint(0, 1) == 1  # numpy random.randint(2)

    if coin():
        img = _to_uint8(img.float() + rng.uniform(-brightness, brightness))
    contrast_first = rng.randint(0, 1) == 1  # mmseg: mode 1 -> contrast before saturation and hue
    if contrast_first and coin():
        img = _to_uint8(img.float() * rng.uniform(*contrast))
    if coin():
        hsv = rgb_to_hsv(img.float() / 255)
        hsv[1] = (hsv[1] * rng.uniform(*saturation)).clamp(0, 1)
        img = _to_uint8((hsv_to_rgb(hsv) * 255).round())
    if coin():
        hsv = rgb_to_hsv(img.float() / 255)
        hsv[0] = (hsv[0] + 2 * rng.randint(-hue, hue - 1)) % 360
        img = _to_uint8((hsv_to_rgb(hsv) * 255).round())
    if not contrast_first and coin():
        img = _to_uint8(img.float() * rng.uniform(*contrast))
    return img


def normalize(img: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float, normalised with ImageNet's mean and std (mmseg Normalize, to_rgb)."""
    return (img.float() - MEAN) / STD


def pad_to(img: torch.Tensor, label: torch.Tensor, crop: int):
    """mmseg Pad(size=(crop, crop)): at the bottom and right, the (normalised) image with 0, the label with 255."""
    dh, dw = crop - img.shape[-2], crop - img.shape[-1]
    if dh > 0 or dw > 0:
        img = F.pad(img, (0, max(dw, 0), 0, max(dh, 0)), value=0.0)
        label = F.pad(label, (0, max(dw, 0), 0, max(dh, 0)), value=IGNORE_INDEX)
    return img, label


def train_transform(img: torch.Tensor, label: torch.Tensor, cfg, rng: random.Random):
    """The official train_pipeline: Resize(img_scale=seg_scale, ratio_range=seg_ratio_range, keep_ratio),
    RandomCrop(seg_crop_size, cat_max_ratio=seg_cat_max_ratio), RandomFlip(hflip), PhotoMetricDistortion (when
    seg_photometric), Normalize, Pad(seg_crop_size; label 255). uint8 (3, H, W) and (H, W) in, a normalised float
    (3, crop, crop) image and a uint8 (crop, crop) label out; or a `Prepared` pair (data.seg_cache) and None, for
    the same output from the same rng."""
    lo, hi = cfg.seg_ratio_range
    ratio = rng.random() * (hi - lo) + lo  # numpy random_sample() * (max - min) + min
    img, label, regions = _resized(img, label, cfg, ratio)
    img, label = random_crop(img, label, cfg.seg_crop_size, cfg.seg_cat_max_ratio, rng, cfg.seg_object_crop, regions)
    if rng.random() < cfg.hflip:
        img, label = img.flip(-1), label.flip(-1)
    if cfg.seg_photometric:
        img = photometric_distortion(img, rng)
    return pad_to(normalize(img), label, cfg.seg_crop_size)


def _resized(img: torch.Tensor, label: torch.Tensor, cfg, ratio: float):
    """train_transform's resize: (image, label, their object regions or None). A `Prepared` pair is already at the
    fixed scale (data.seg_cache), with its regions."""
    if isinstance(img, Prepared):
        if img.resized:
            return img.img, img.label, img.regions
        img, label = img.img, img.label
    img, label = resize_pair(img, label, scaled_size(*label.shape, cfg.seg_scale, ratio))
    return img, label, None


@dataclass
class Prepared:
    """A training pair as data.seg_cache keeps it: decoded, and where the scale is fixed (seg_ratio_range (r, r))
    resized with its object regions found, so that later passes start at the crop."""
    img: torch.Tensor
    label: torch.Tensor
    resized: bool
    regions: dict | None = None


def eval_inputs(img: torch.Tensor, scale: tuple[int, int], ratios=(1.0,)) -> list[torch.Tensor]:
    """The test pipeline: for each ratio, the uint8 (3, H, W) image resized keeping its aspect to scale x ratio
    (mmseg MultiScaleFlipAug + Resize(keep_ratio=True)), then normalised."""
    h, w = img.shape[-2:]
    return [normalize(resize_pair(img, None, scaled_size(h, w, scale, r))[0]) for r in ratios]


# ------------------------------------------------------------------------------------------------ the samples


def scan_split(root: Path, split: str, skip: bool) -> tuple[list[tuple[str, str]], int]:
    """[(image path, label path)] of a split, sorted, and how many images without a label map were left out
    (only with `skip`; else that is a UserError)."""
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise UserError(f"{d} does not exist: an ADE20K-layout data.root holds images/<split>/*.jpg and "
                            f"annotations/<split>/*.png (data.train_split and data.eval_split name the splits)")
    images = sorted(p for p in img_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{img_dir} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}): nothing to read")
    pairs = [(str(p), str(ann_dir / p.relative_to(img_dir).with_suffix(".png"))) for p in images]
    kept = [(i, lab) for i, lab in pairs if os.path.isfile(lab)]
    missing = len(pairs) - len(kept)
    if missing and not skip:
        first = next(lab for _, lab in pairs if not os.path.isfile(lab))
        raise UserError(f"{missing} of the {len(pairs)} images in {img_dir} have no label map (e.g. {first}); add "
                        f"them, or pass data.skip_bad_images=true to leave those images out")
    if not kept:
        raise UserError(f"none of the {len(pairs)} images in {img_dir} has a label map in {ann_dir}")
    return kept, missing


def prepare(img: torch.Tensor, label: torch.Tensor, cfg) -> Prepared:
    """What data.seg_cache keeps of a decoded training pair: at a fixed scale the resized pair and (with object
    crops) its regions, the work every pass would repeat; else the decoded pair."""
    if cfg.seg_ratio_range[0] != cfg.seg_ratio_range[1]:
        return Prepared(img, label, resized=False)  # _resized resizes it at each draw's ratio
    img, label = resize_pair(img, label, scaled_size(*label.shape, cfg.seg_scale, cfg.seg_ratio_range[0]))
    return Prepared(img, label, resized=True, regions=object_regions(label) if cfg.seg_object_crop > 0 else None)


class _Samples(Dataset):
    """(image path, label path) records; an index is (record, seed). Training gives (image, label): augmented with
    random.Random(seed), or as stored (normalised) when seed is None; evaluation gives (the test inputs at each
    ratio, the label at the original size). A file that cannot be used comes back as (None, path, reason)."""

    def __init__(self, records: list[tuple[str, str]], cfg, train: bool, ratios=(1.0,), cache: dict | None = None):
        self.records, self.cfg, self.train, self.ratios = records, cfg, train, tuple(ratios)
        self.cache = cache  # data.seg_cache: record -> Prepared, filled as records are first read for training

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        i, seed = key
        path, label_path = self.records[i]
        c = self.cfg
        if self.train and seed is not None and self.cache is not None and i in self.cache:
            return *train_transform(self.cache[i], None, c, random.Random(seed)), None
        try:
            img = read_image(path)
            label = read_label(label_path, tuple(img.shape[-2:]), c.seg_num_classes, c.seg_reduce_zero_label)
        except (FileNotFoundError, ValueError) as e:  # our own reasons: already a phrase
            return None, path, str(e)
        except Exception as e:  # any decoder error: report the file, never crash a worker  # noqa: BLE001
            return None, path, f"{type(e).__name__}: {e}"
        if not self.train:
            return eval_inputs(img, c.seg_scale, self.ratios), label, None
        if seed is None:
            return normalize(img), label, None
        if self.cache is not None:
            self.cache[i] = prepared = prepare(img, label, c)
            return *train_transform(prepared, None, c, random.Random(seed)), None
        return *train_transform(img, label, c, random.Random(seed)), None


def _collate_train(items):
    good = [(x, y) for x, y, err in items if err is None]
    bad = [(path, err) for _, path, err in items if err is not None]
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.stack([g[1] for g in good]), bad


def _collate_eval(items):
    (first, second, err), = items  # one image per batch: images differ in size
    if err is not None:
        return None, None, [(second, err)]  # (None, path, reason)
    return first, second, []


def class_names(root: Path, num_classes: int, reduce_zero_label: bool) -> list[str]:
    """root/classes.txt (one name per label value from 0; with reduce_zero_label the first, "other", is dropped),
    else ADE20K's names for its 150 classes, else class_<k>."""
    path = root / CLASSES_FILE
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        names = names[1:] if reduce_zero_label else names
        if len(names) != num_classes:
            after = " after the first (other)" if reduce_zero_label else ""
            raise UserError(f"{path} names {len(names)} classes{after} but data.seg_num_classes is {num_classes}; "
                            f"make them agree")
        return names
    if num_classes == len(ADE20K_CLASSES) and reduce_zero_label:
        return list(ADE20K_CLASSES)
    return [f"class_{k}" for k in range(num_classes)]


class SegData:
    """An ADE20K-layout training split and evaluation split, for the engine and the segmentation task."""

    def __init__(self, cfg, seed: int = 0, train: bool = True):
        root = Path(cfg.root)
        if not cfg.root or not root.is_dir():
            raise UserError(f"segmentation data directory {cfg.root!r} does not exist (set data.root=PATH to a folder "
                            f"with images/<split>/ and annotations/<split>/, the ADE20K layout)")
        lo, hi = cfg.seg_ratio_range
        if cfg.seg_num_classes < 1 or cfg.seg_crop_size < 32 or not 0 < lo <= hi or not 0 <= cfg.seg_object_crop <= 1:
            raise UserError(f"data.seg_num_classes must be >= 1 (got {cfg.seg_num_classes}), data.seg_crop_size >= 32 "
                            f"(got {cfg.seg_crop_size}), data.seg_ratio_range 0 < min <= max "
                            f"(got {cfg.seg_ratio_range}) and data.seg_object_crop within 0..1 "
                            f"(got {cfg.seg_object_crop})")
        if cfg.seg_cache and cfg.workers:
            raise UserError(f"data.seg_cache keeps the training images in the process that reads them; it needs "
                            f"data.workers=0 (got {cfg.workers}), or set data.seg_cache=false")
        self.cfg, self.seed, self.skipped = cfg, seed, 0
        self.cache = {} if cfg.seg_cache else None  # record -> Prepared (data.seg_cache)
        self.num_classes = cfg.seg_num_classes
        self.class_names = class_names(root, cfg.seg_num_classes, cfg.seg_reduce_zero_label)
        evals, missing = scan_split(root, cfg.eval_split, cfg.skip_bad_images)
        self.eval_records = [evals[i] for i in subset_indices(len(evals), cfg.limit_eval).tolist()]
        self.num_eval, self.skipped = len(self.eval_records), missing
        report = f"{root / 'images' / cfg.eval_split}: {self.num_eval:,} images for evaluation"
        self.train_records, self.num_train = [], 0
        if train:
            records, missing = scan_split(root, cfg.train_split, cfg.skip_bad_images)
            self.skipped += missing
            self.train_records = [records[i] for i in subset_indices(len(records), cfg.limit_train).tolist()]
            self.num_train = len(self.train_records)
            report = f"{root / 'images' / cfg.train_split}: {self.num_train:,} training images; {report}"
        if self.skipped:
            report += f"; {self.skipped} images without a label map left out"
        self.report = report
        if os.environ.get("RANK", "0") == "0":  # torchrun: one process prints
            print(self.report, flush=True)
        # What a checkpoint stores for inference: mean/std; img_size is the test scale's short side
        self.preprocessing = Preprocessing(min(cfg.seg_scale), IMAGENET_MEAN, IMAGENET_STD, 1.0, 3, "bilinear")
        self.inference = {"scale": tuple(cfg.seg_scale), "mode": cfg.seg_test_mode, "crop": cfg.seg_crop_size,
                          "stride": cfg.seg_stride, "reduce_zero_label": cfg.seg_reduce_zero_label,
                          "ratios": tuple(cfg.seg_test_ratios), "flip": cfg.seg_test_flip}

    def train_sample(self, i: int, seed: int | None = None):
        """Training record i as (image, label): normalised as stored when seed is None, else augmented."""
        img, label, err = _Samples(self.train_records, self.cfg, True, cache=self.cache)[i, seed]
        if err is not None:
            self.skipped += check_bad_files([(label, err)], self.cfg.skip_bad_images)
            return None, None
        return img, label

    def train_batches(self, epoch: int, steps: range, accum: int, world: int, rank: int) -> Iterator:
        """(images (B, 3, crop, crop) float, labels (B, crop, crop) uint8) per micro-batch of this rank."""
        perm = epoch_permutation(self.num_train, self.seed, epoch).tolist()
        batches = [[(perm[p], sample_seed(self.seed, epoch, p)) for p in range(sl.start, min(sl.stop, len(perm)))]
                   for _, _, sl in micro_batch_slices(steps, accum, world, rank, self.cfg.batch_size)]
        dataset = _Samples(self.train_records, self.cfg, True, cache=self.cache)
        for x, y, bad in load_files(dataset, [b for b in batches if b], _collate_train, self.cfg.workers):
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if x is not None:
                yield x, y

    def eval_batches(self, world: int, rank: int, limit: int = 0, ratios=(1.0,)) -> Iterator:
        """(the test inputs, one normalised (3, h, w) image per ratio, and the (H, W) uint8 label at the original
        size) for each image of this rank's shard (rank::world: no image twice), or of a fixed subset of `limit`."""
        idx = subset_indices(self.num_eval, limit)[rank::world].tolist()
        dataset = _Samples(self.eval_records, self.cfg, False, ratios)
        for inputs, label, bad in load_files(dataset, [[(i, None)] for i in idx], _collate_eval, self.cfg.workers):
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if inputs is not None:
                yield inputs, label


def build_seg_data(cfg, seed: int = 0, train: bool = True) -> SegData:
    """The ADE20K-layout data of `cfg` (a DataConfig); train=False reads only the evaluation split."""
    return SegData(cfg, seed, train)

