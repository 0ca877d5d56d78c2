"""COCO-format detection data (boxes, labels, instance masks) and the official ConvNeXt COCO training pipeline.

Layout: root/annotations/instances_<split>.json and root/<split>/<file_name> (COCO 2017: train2017, val2017;
`convnext.detection.scenes` writes the same). Labels are contiguous, 1..K by ascending COCO category id, 0 =
background (torchvision's detectors); `category_ids[k - 1]` and `class_names[k - 1]` belong to label k, and
`num_classes` is K (no background), as convnext/detection/models.py and evaluate.py count.

Which annotations are training targets follows mmdetection 2.x `CocoDataset._parse_ann_info` (the official code
trained with it): crowd regions (iscrowd=1) are not targets (mmdet keeps them as gt_bboxes_ignore, which the
Mask R-CNN assigners here never read); a box with area <= 0, w < 1 or h < 1, or none of it inside the image, is
dropped; a box reaching outside the image is clipped to it (mmdet clips in Resize; doing it at load gives the same
boxes, as flipping commutes with clipping). Each of these is counted and printed once, at construction.

The training transform is the official `train_pipeline` of
object_detection/configs/convnext/mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py
("augmentation strategy originates from DETR / Sparse RCNN"), with mmdet 2.x's semantics for each op (see
`train_transform`). Normalisation and padding to a multiple of 32 are the model's (convnext/detection/models.py).

Different from mmdetection, on purpose:
- An image whose annotations are all crowd or degenerate is not trained on; mmdet's `filter_empty_gt` drops only
  images with no annotation at all and trains on the rest with empty targets. (Its other filter, images under
  32 px on a side, `_filter_imgs(min_size=32)`, is kept.)
- Resizing is torch's (bilinear without antialiasing on uint8, like cv2's INTER_LINEAR that mmcv calls: values
  may differ by one grey level; masks: nearest, like cv2's INTER_NEAREST). The image stays uint8 until the end, as
  in mmdet, which also makes it bit-identical whatever the thread count (float bilinear is not, by ~1e-7).
- A polygon of fewer than 3 points is dropped (mmdet's LoadAnnotations does the same) and an annotation with no
  usable segmentation gets its box as its mask, where mmdet would fail.
- The image is decoded as stored (convnext.data.open_rgb, as classification trains), where mmcv's cv2 reader
  would apply an EXIF rotation; the json's width/height describe the stored pixels, and an image whose decoded
  size differs from them is reported as a bad image instead of being trained on with misplaced boxes.

Determinism (convnext/data.py): the epoch's order is `epoch_permutation(seed, epoch)`, micro-batches are
`micro_batch_slices`, and each sample draws from its own `random.Random(sample_seed(seed, epoch, position))`, so
a resumed run, any number of workers and any number of processes see the same samples.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from convnext.data import (check_bad_files, epoch_permutation, load_files, micro_batch_slices, open_rgb,
                           subset_indices)
from convnext.errors import UserError
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convnext.seeding import sample_seed

# ------------------------------------------------------------------------------------------ reading annotations


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def read_coco(root: Path, split: str) -> COCO:
    """The pycocotools COCO of root/annotations/instances_<split>.json, with a UserError for anything else."""
    path = annotation_file(root, split)
    if not path.is_file():
        raise UserError(f"{path} not found: a COCO-format data.root holds annotations/instances_<split>.json and the "
                        f"images in <split>/ (data.train_split and data.eval_split name the splits)")
    try:
        with open(path, "rb") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it should be a COCO instances file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(dataset, dict) or not isinstance(dataset.get(k), list)]
    if missing:
        raise UserError(f"{path} is not a COCO instances file: it has no {', '.join(missing)} list")
    coco = COCO()  # COCO(path) would print two lines per file; build the index ourselves, quietly
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not a COCO instances file: an entry lacks the field {e}") from None
    return coco


MIN_SIZE = 32  # mmdet 2.x CocoDataset._filter_imgs(min_size=32): smaller training images are skipped


@dataclass
class Counts:
    """What `parse_split` did with a split's annotations (printed once, kept as `CocoData.counts`)."""

    images: int = 0  # images kept
    empty: int = 0  # images without a usable annotation, not trained on
    crowd: int = 0  # iscrowd=1 annotations, not targets
    degenerate: int = 0  # area <= 0, w < 1, h < 1 or outside the image
    clipped: int = 0  # boxes reaching outside the image, clipped to it
    unknown: int = 0  # annotations of a category the json does not list
    small: int = 0  # images under MIN_SIZE px on a side, not trained on

    def describe(self, where: str) -> str:
        extra = f", {self.unknown:,} annotations of unlisted categories ignored" if self.unknown else ""
        extra += f", {self.small:,} images under {MIN_SIZE} px skipped" if self.small else ""
        return (f"{where}: {self.images:,} images ({self.empty:,} without annotations skipped), {self.crowd:,} crowd "
                f"annotations ignored, {self.degenerate:,} degenerate boxes dropped, {self.clipped:,} boxes clipped "
                f"to the image{extra}")


def parse_split(coco: COCO, label_of: dict[int, int], where: Path) -> tuple[list[tuple], Counts]:
    """Training records (image_id, file_name, h, w, boxes (n,4) xyxy float32, labels (n,) int64, segmentations)
    of the images with at least one target, by the rules in the module docstring."""
    records, n = [], Counts()
    try:
        for img in coco.dataset["images"]:
            h, w = int(img["height"]), int(img["width"])
            if min(h, w) < MIN_SIZE:
                n.small += 1
                continue
            boxes, labels, segs = [], [], []
            for ann in coco.imgToAnns.get(img["id"], []):
                if ann.get("ignore", False):  # mmdet: an annotation marked ignore is never read
                    continue
                if ann.get("iscrowd", 0):
                    n.crowd += 1
                    continue
                if ann["category_id"] not in label_of:
                    n.unknown += 1
                    continue
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
                if ann.get("area", bw * bh) <= 0 or bw < 1 or bh < 1 or x2 <= x1 or y2 <= y1:
                    n.degenerate += 1
                    continue
                n.clipped += (x1, y1, x2, y2) != (x, y, x + bw, y + bh)
                boxes.append((x1, y1, x2, y2))
                labels.append(label_of[ann["category_id"]])
                segs.append(ann.get("segmentation"))
            if not boxes:
                n.empty += 1
                continue
            records.append((img["id"], img["file_name"], h, w, np.array(boxes, np.float32),
                            np.array(labels, np.int64), segs))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where} is not a COCO instances file: an image or annotation has a missing or malformed "
                        f"field ({type(e).__name__}: {e})") from None
    n.images = len(records)
    return records, n


def decode_mask(seg, box, h: int, w: int) -> np.ndarray:
    """One annotation's (h, w) uint8 mask: `COCO.annToMask` (pycocotools coco.py annToRLE: polygons, uncompressed
    or compressed RLE) without the COCO object, so that DataLoader workers need only the record. Polygons of fewer
    than 3 points are dropped (mmdet LoadAnnotations); with no usable segmentation, the box is the mask."""
    if isinstance(seg, list):
        seg = [p for p in seg if len(p) >= 6]
    if not seg:
        m = np.zeros((h, w), np.uint8)
        x1, y1, x2, y2 = box
        m[int(y1): math.ceil(y2), int(x1): math.ceil(x2)] = 1
        return m
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle)


class Packed:
    """A list of records as one byte buffer (detectron2's `DatasetFromList(serialize=True)`): DataLoader workers
    share one numpy array instead of touching, and so copying on write, a million small Python objects (COCO)."""

    def __init__(self, items: list):
        blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in items]
        self.ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self.buf = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)

    def __len__(self):
        return len(self.ends)

    def __getitem__(self, i: int):
        start = int(self.ends[i - 1]) if i else 0
        return pickle.loads(self.buf[start: int(self.ends[i])].tobytes())


def read_image(path: str, h: int, w: int) -> torch.Tensor:
    """(3, H, W) uint8 RGB, as stored (no EXIF rotation); OSError/ValueError with a reason if it cannot be used."""
    if not os.path.exists(path):
        raise FileNotFoundError("no such file")
    img = open_rgb(path)
    if img.size != (w, h):
        raise ValueError(f"it is {img.width}x{img.height} pixels but the annotations say {w}x{h}")
    pixels = np.asarray(img).transpose(2, 0, 1)  # (3, H, W), a view
    return torch.from_numpy(np.ascontiguousarray(pixels))  # one writable copy (cheaper than torch .contiguous())


# ------------------------------------------------------------------------- the training transform (mmdet 2.x)


def rescale_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """mmcv.imrescale's size for img_scale (long, short): the largest factor that keeps the short side <= short
    and the long side <= long, rounded half up (mmcv `rescale_size`, `_scale_size`)."""
    factor = min(long / max(h, w), short / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def flip(img, boxes, masks):
    """mmdet RandomFlip, horizontal: x1' = W - x2, x2' = W - x1."""
    w = img.shape[-1]
    return img.flip(-1), torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1), masks.flip(-1)


def resize(img, boxes, masks, size: tuple[int, int]):
    """mmdet Resize to `size` (h, w): the image bilinear (cv2 INTER_LINEAR: half-pixel centres, no antialias;
    uint8 in, uint8 out), boxes scaled by the actual factors and clipped to the image, masks nearest
    (BitmapMasks.rescale)."""
    (h, w), (nh, nw) = img.shape[-2:], size
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
    boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    boxes = torch.stack([boxes[:, 0].clamp(0, nw), boxes[:, 1].clamp(0, nh),
                         boxes[:, 2].clamp(0, nw), boxes[:, 3].clamp(0, nh)], 1)
    if len(masks):
        masks = F.interpolate(masks[None], size=size, mode="nearest")[0]  # cv2 INTER_NEAREST: floor(dst * in/out)
    else:
        masks = masks.new_zeros((0, nh, nw))
    return img, boxes, masks


def random_crop(img, boxes, masks, crop_size: tuple[int, int], rng: random.Random):
    """mmdet RandomCrop(crop_type="absolute_range", allow_negative_crop=True): crop h in [min(H, lo), min(H, hi)]
    and w likewise (`_get_crop_size`), at a random offset; boxes shifted and clipped to the crop, those left with
    no area removed with their masks (even if that leaves none). Returns the kept instances' indices too."""
    (h, w), (lo, hi) = img.shape[-2:], crop_size
    ch, cw = rng.randint(min(h, lo), min(h, hi)), rng.randint(min(w, lo), min(w, hi))  # randint: both ends
    y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    b = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    b = torch.stack([b[:, 0].clamp(0, cw), b[:, 1].clamp(0, ch), b[:, 2].clamp(0, cw), b[:, 3].clamp(0, ch)], 1)
    keep = ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).nonzero().flatten()
    return img[:, y0: y0 + ch, x0: x0 + cw], b[keep], masks[keep][:, y0: y0 + ch, x0: x0 + cw], keep


def train_transform(img, boxes, masks, cfg, rng: random.Random, scale: int | None = None):
    """The official train_pipeline: RandomFlip(cfg.hflip), then AutoAugment picks one policy with probability 1/2:
    (a) Resize(keep_ratio) to a short side from det_scales (long side <= det_max_size);
    (b) Resize to a short side from det_crop_scales, RandomCrop(absolute_range det_crop_size), Resize(override) to
        a short side from det_scales (long side <= det_max_size).
    `scale`, when given, is the short side of the last resize instead of a draw from det_scales (data.det_step_scale).
    img (3, H, W) uint8 (or float), boxes (N, 4) xyxy float32, masks (N, H, W) uint8 -> the same, and the indices
    (into the N inputs) of the instances kept, for their labels."""
    keep = torch.arange(len(boxes))
    if rng.random() < cfg.hflip:
        img, boxes, masks = flip(img, boxes, masks)
    if rng.random() < 0.5:  # AutoAugment: np.random.choice(policies), two policies
        s = rng.choice(cfg.det_scales) if scale is None else scale
        img, boxes, masks = resize(img, boxes, masks, rescale_size(*img.shape[-2:], s, cfg.det_max_size))
    else:
        s = rng.choice(cfg.det_crop_scales)
        img, boxes, masks = resize(img, boxes, masks, rescale_size(*img.shape[-2:], s, cfg.det_max_size))
        img, boxes, masks, keep = random_crop(img, boxes, masks, cfg.det_crop_size, rng)
        s = rng.choice(cfg.det_scales) if scale is None else scale
        img, boxes, masks = resize(img, boxes, masks, rescale_size(*img.shape[-2:], s, cfg.det_max_size))
    return img, boxes, masks, keep


# ------------------------------------------------------------------------------------------------ the samples


class _Samples(Dataset):
    """Records of one split; an index is (record, seed, scale). Training records give (image, target): as stored
    when seed is None, else augmented from random.Random(seed) (at short side `scale` when not None); evaluation
    records give (image, meta). A file that cannot be used comes back as (None, path, reason), for the main process
    to report or count."""

    def __init__(self, records: Packed, img_dir: Path, cfg, train: bool):
        self.records, self.img_dir, self.cfg, self.train = records, img_dir, cfg, train

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        i, seed, scale = key
        image_id, file_name, h, w, *ann = self.records[i]
        path = str(self.img_dir / file_name)
        try:
            img = read_image(path, h, w)
            if self.train:
                boxes, labels, segs = ann
                masks = [decode_mask(s, b, h, w) for s, b in zip(segs, boxes)]
                if any(m.shape != (h, w) for m in masks):
                    raise ValueError(f"a mask of its annotations is not {w}x{h} like the image")
        except (FileNotFoundError, ValueError) as e:  # our own reasons: already a phrase
            return None, path, str(e)
        except Exception as e:  # any decoder error: report the file, never crash a worker  # noqa: BLE001
            return None, path, f"{type(e).__name__}: {e}"
        if not self.train:
            return img.float().div_(255), {"image_id": image_id, "orig_size": (h, w)}, None
        boxes, masks = torch.from_numpy(boxes), torch.from_numpy(np.stack(masks))
        keep = torch.arange(len(boxes))
        if seed is not None:
            img, boxes, masks, keep = train_transform(img, boxes, masks, self.cfg, random.Random(seed), scale)
        target = {"boxes": boxes, "labels": torch.from_numpy(labels)[keep], "masks": masks, "image_id": image_id}
        return img.float().div_(255), target, None


def _collate(items):
    good = [(x, t) for x, t, err in items if err is None]
    bad = [(path, err) for _, path, err in items if err is not None]
    return [g[0] for g in good], [g[1] for g in good], bad


class CocoData:
    """A COCO-format training split and evaluation split, for the engine (convnext/engine.py) and the detection
    evaluator (convnext/detection/evaluate.py). `counts` holds what `parse_split` did (printed once)."""

    def __init__(self, cfg, seed: int = 0, train: bool = True):
        root = Path(cfg.root)
        if not cfg.root or not root.is_dir():
            raise UserError(f"detection data directory {cfg.root!r} does not exist (set data.root=PATH to a folder "
                            f"with annotations/instances_<split>.json and one image folder per split)")
        if not cfg.det_scales or not cfg.det_crop_scales or not cfg.det_crop_size[0] <= cfg.det_crop_size[1]:
            raise UserError(f"data.det_scales and data.det_crop_scales need at least one size each, and "
                            f"data.det_crop_size (min, max) needs min <= max (got {cfg.det_crop_size})")
        self.cfg, self.seed, self.skipped = cfg, seed, 0
        self.coco_eval = read_coco(root, cfg.eval_split)
        self.eval_dir = self._image_dir(root, cfg.eval_split)
        cats = sorted(self.coco_eval.dataset["categories"], key=lambda c: c["id"])
        if not cats:
            raise UserError(f"{annotation_file(root, cfg.eval_split)} lists no categories")
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self.num_classes = len(cats)
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}  # 0 is the background

        images = self.coco_eval.dataset["images"]
        if not images:
            raise UserError(f"{annotation_file(root, cfg.eval_split)} lists no images")
        try:
            evals = [(img["id"], img["file_name"], int(img["height"]), int(img["width"])) for img in images]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{annotation_file(root, cfg.eval_split)} is not a COCO instances file: an image has a "
                            f"missing or malformed field ({type(e).__name__}: {e})") from None
        evals = [evals[i] for i in subset_indices(len(evals), cfg.limit_eval).tolist()]
        self.eval_records, self.num_eval = Packed(evals), len(evals)
        self.eval_ids = [e[0] for e in evals]  # the COCO ids eval_batches reads, in order
        report = f"{root / cfg.eval_split}: {self.num_eval:,} images for evaluation"

        self.train_records, self.num_train, self.counts = Packed([]), 0, Counts()
        self.train_dir = root / cfg.train_split
        if train:
            coco = read_coco(root, cfg.train_split)
            self.train_dir = self._image_dir(root, cfg.train_split)
            train_ids = [int(c["id"]) for c in sorted(coco.dataset["categories"], key=lambda c: c["id"])]
            if train_ids != self.category_ids:
                raise UserError(f"{cfg.train_split} and {cfg.eval_split} list different categories "
                                f"({len(train_ids)} vs {len(self.category_ids)}); both must list the same ones")
            path = annotation_file(root, cfg.train_split)
            if not coco.dataset["images"]:
                raise UserError(f"{path} lists no images")
            records, self.counts = parse_split(coco, label_of, path)
            if not records:
                raise UserError(f"none of the {len(coco.dataset['images']):,} images in {path} has a usable "
                                f"annotation ({self.counts.crowd:,} crowd, {self.counts.degenerate:,} degenerate): "
                                f"nothing to train on")
            if cfg.limit_train and cfg.limit_train < len(records):
                records = [records[i] for i in subset_indices(len(records), cfg.limit_train).tolist()]
            self.train_records, self.num_train = Packed(records), len(records)
            subset = f" (training on a fixed subset of {self.num_train:,})" if cfg.limit_train else ""
            report = f"{self.counts.describe(str(root / cfg.train_split))}{subset}; {report}"
        self.report = report  # one line
        if os.environ.get("RANK", "0") == "0":  # torchrun: one process prints
            print(self.report, flush=True)
        # What a checkpoint stores for inference: ImageNet mean/std (the backbone's), the test scale as img_size
        # (short side det_test_scale, long side <= det_max_size: the official test_pipeline), no crop.
        self.preprocessing = Preprocessing(cfg.det_test_scale, IMAGENET_MEAN, IMAGENET_STD, 1.0, 3, "bilinear")

    @staticmethod
    def _image_dir(root: Path, split: str) -> Path:
        d = root / split
        if not d.is_dir():
            raise UserError(f"{d} does not exist: the images of {split} go there (the json's file_name is "
                            f"relative to it)")
        return d

    def train_sample(self, i: int, seed: int | None = None):
        """Training record i as (image, target): as stored when seed is None, else augmented with that seed."""
        img, target, err = _Samples(self.train_records, self.train_dir, self.cfg, True)[i, seed, None]
        self.skipped += check_bad_files([(target, err)] if err else [], self.cfg.skip_bad_images)
        return img, target

    def train_batches(self, epoch: int, steps: range, accum: int, world: int, rank: int) -> Iterator:
        """(images: list of (3, H, W) float [0, 1], targets: list of {"boxes" (N, 4) xyxy float32, "labels" (N,)
        int64 in 1..K, "masks" (N, H, W) uint8, "image_id"}) per micro-batch of this rank."""
        perm = epoch_permutation(self.num_train, self.seed, epoch).tolist()
        batches = [[(perm[p], sample_seed(self.seed, epoch, p), self._step_scale(epoch, t))
                    for p in range(sl.start, min(sl.stop, len(perm)))]
                   for t, _, sl in micro_batch_slices(steps, accum, world, rank, self.cfg.batch_size)]
        dataset = _Samples(self.train_records, self.train_dir, self.cfg, True)
        for images, targets, bad in load_files(dataset, [b for b in batches if b], _collate, self.cfg.workers):
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if images:
                yield images, targets

    def _step_scale(self, epoch: int, step: int) -> int | None:
        """Step `step` of `epoch`'s short side under data.det_step_scale (the same on every process), else None."""
        if not self.cfg.det_step_scale:
            return None
        return random.Random(f"step-scale/{self.seed}/{epoch}/{step}").choice(self.cfg.det_scales)

    def eval_batches(self, world: int, rank: int, limit: int = 0) -> Iterator:
        """(images at their original size, (3, H, W) float [0, 1], metas: list of {"image_id", "orig_size": (h, w)})
        of this rank's shard (rank::world) of all evaluation images, or of a fixed subset of `limit`."""
        idx = subset_indices(self.num_eval, limit)[rank::world].tolist()
        bs = self.cfg.batch_size
        batches = [[(i, None, None) for i in idx[j: j + bs]] for j in range(0, len(idx), bs)]
        dataset = _Samples(self.eval_records, self.eval_dir, self.cfg, False)
        for images, metas, bad in load_files(dataset, batches, _collate, self.cfg.workers):
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if images:
                yield images, metas

    def eval_image_ids(self, limit: int = 0) -> list[int]:
        """The COCO ids of the images `eval_batches(..., limit)` reads over all ranks."""
        return [self.eval_ids[i] for i in subset_indices(self.num_eval, limit).tolist()]


def build_coco_data(cfg, seed: int = 0, train: bool = True) -> CocoData:
    """The COCO-format data of `cfg` (a DataConfig); train=False reads only the evaluation split."""
    return CocoData(cfg, seed, train)
