"""COCO box and mask AP for detectors: pycocotools' COCOeval, the numbers every detection paper prints (the
ConvNeXt paper's Table 3 reports box AP and mask AP of Mask/Cascade Mask R-CNN on COCO val2017).

The detector's outputs become COCO result records as they arrive (`update`), so no full-size mask is kept: a
mask is thresholded and RLE-encoded at once. Under torchrun every process evaluates its own shard of the images,
`gather` gives every process all records, and `summarize` runs COCOeval once per IoU type.

What is not obvious:
- Labels are contiguous (1..K, 0 = background, as torchvision's detectors count); `category_ids[k - 1]` is the
  COCO category id of label k. COCO's ids are not contiguous (1..90 with gaps), so this map is where a
  wrong-category bug would hide; a label outside 1..K is an error, never a silent miss.
- Only the images seen are evaluated (COCOeval's `params.imgIds`), so evaluating a subset of val2017 gives the
  subset's AP instead of counting every unseen image's objects as missed. An image seen twice (a distributed
  sampler pads its last batch by repeating images) counts once: its first evaluation is kept.
- Only the detector's categories are evaluated (`params.catIds = category_ids`), so a detector trained on a
  subset of the categories is not charged for the others.
- Masks are binarized at probability >= 0.5, mmdet's `mask_thr_binary` for Mask R-CNN (the paper's detectors
  were trained and evaluated with mmdet).
- A metric COCOeval cannot define (e.g. AP_small when no small object is in the images evaluated; COCOeval
  returns -1) is NaN here, as detectron2 reports it, instead of a misleading -100.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from convnext.checkpoint import write_text
from convnext.distributed import Dist
from convnext.errors import UserError

IOU_TYPES = ("bbox", "segm")
PREFIX = {"bbox": "box", "segm": "mask"}  # metric names: box_AP, mask_AP, ...
# The 12 numbers of COCOeval.stats, in its order: AP over IoU 0.50:0.95, at 0.50 and 0.75, by object size
# (small < 32^2 px area <= medium < 96^2 <= large), then AR at 1/10/100 detections per image and by size.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MASK_THRESHOLD = 0.5  # mmdet's mask_thr_binary (module docstring)


# ------------------------------------------------------------------------------------ outputs -> records


def box_records(image_id: int, output: dict, category_ids: Sequence[int]) -> list[dict]:
    """COCO "bbox" result records of one image: xyxy boxes become xywh, labels 1..K become category ids."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    categories = to_category_ids(output["labels"], category_ids)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [{"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for b, c, s in zip(xywh, categories, scores)]


def mask_records(image_id: int, output: dict, category_ids: Sequence[int],
                 threshold: float = MASK_THRESHOLD) -> list[dict]:
    """COCO "segm" result records of one image: each mask (N,1,H,W probabilities or booleans) thresholded and
    RLE-encoded; the RLE's counts are a str, not bytes, so the records can go into JSON."""
    masks = output["masks"].detach()
    if masks.dim() == 4:
        masks = masks[:, 0]  # (N,1,H,W) as Mask R-CNN returns them -> (N,H,W)
    if masks.dtype != torch.bool:
        masks = masks >= threshold  # on the detector's device: only the booleans travel to the CPU
    categories = to_category_ids(output["labels"], category_ids)
    scores = output["scores"].detach().float().cpu().tolist()
    if len(categories) == 0:
        return []
    # pycocotools wants a Fortran-ordered (H, W, N) uint8 array
    rles = mask_util.encode(np.asfortranarray(masks.permute(1, 2, 0).to(torch.uint8).cpu().numpy()))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return [{"image_id": int(image_id), "category_id": c, "segmentation": r, "score": s}
            for r, c, s in zip(rles, categories, scores)]


def to_category_ids(labels: torch.Tensor, category_ids: Sequence[int]) -> list[int]:
    """Contiguous labels 1..K -> COCO category ids (`category_ids[k - 1]`)."""
    labels = labels.detach().cpu().long().tolist()  # a caller's blanket .float() must not break the lookup
    bad = [k for k in labels if not 1 <= k <= len(category_ids)]
    if bad:
        raise UserError(f"the detector predicted label {bad[0]} but the dataset has {len(category_ids)} categories "
                        f"(labels 1..{len(category_ids)}); the checkpoint was trained for a different dataset")
    return [int(category_ids[k - 1]) for k in labels]


def merge_shards(shards: Iterable[dict[int, dict]]) -> dict[int, dict]:
    """One {image_id: records} from every process's; an image evaluated by two processes counts once (the first)."""
    merged: dict[int, dict] = {}
    for shard in shards:
        for image_id, records in shard.items():
            merged.setdefault(image_id, records)
    return merged


# ------------------------------------------------------------------------------------ the evaluator


class CocoEvaluator:
    """Collects a detector's outputs image by image and computes COCO's box and mask AP (module docstring).

    `summarize()` returns percentages (0-100, as papers print them): box_AP, box_AP50, box_AP75, box_APs,
    box_APm, box_APl, box_AR1, box_AR10, box_AR100, box_ARs, box_ARm, box_ARl, and mask_* likewise; NaN where
    COCOeval cannot define a number (no ground truth object of that size among the images evaluated).
    """

    def __init__(self, coco_gt: COCO, category_ids: Sequence[int], iou_types: Sequence[str] = IOU_TYPES):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown or not iou_types:
            raise UserError(f"unknown COCO IoU type {unknown[0] if unknown else '(none)'}; use 'bbox' and/or 'segm'")
        missing = sorted(set(category_ids) - set(coco_gt.getCatIds()))
        if missing:
            raise UserError(f"category ids {missing} are not in the COCO annotations (which have "
                            f"{sorted(coco_gt.getCatIds())}); the class list does not belong to this dataset")
        self.coco_gt = coco_gt
        self.category_ids = [int(c) for c in category_ids]
        self.iou_types = tuple(iou_types)
        self.results: dict[int, dict[str, list[dict]]] = {}  # image id -> {iou type: records}, empty lists kept
        self.metrics: dict[str, float] | None = None
        self._precision: dict[str, np.ndarray] = {}  # COCOeval's precision array per IoU type (per_class_ap50)

    def update(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        """Add a batch: `outputs[i]` is the detector's eval-mode output for `image_ids[i]`, already in the original
        image's coordinates ("boxes" (N,4) xyxy, "labels" (N,) in 1..K, "scores" (N,), "masks" (N,1,H,W))."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids for {len(outputs)} outputs")
        for image_id, output in zip(image_ids, outputs):
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise UserError(f"image id {image_id} is not in the COCO annotations; the images and the "
                                f"annotation file do not belong together")
            if image_id in self.results:  # a padded sampler's repeat (module docstring)
                continue
            records = {}
            if "bbox" in self.iou_types:
                records["bbox"] = box_records(image_id, output, self.category_ids)
            if "segm" in self.iou_types:
                self._check_masks(image_id, output)
                records["segm"] = mask_records(image_id, output, self.category_ids)
            self.results[image_id] = records
        self.metrics = None

    def _check_masks(self, image_id: int, output: dict) -> None:
        if "masks" not in output:
            raise UserError("the detector returns no masks, so there is no mask AP to compute; evaluate boxes only "
                            "(iou_types=('bbox',))")
        info = self.coco_gt.imgs[image_id]
        size = tuple(output["masks"].shape[-2:])
        if size != (info["height"], info["width"]):
            raise UserError(f"the masks for image {image_id} are {size[0]}x{size[1]} but the image is "
                            f"{info['height']}x{info['width']}; paste the masks back at the original image size")

    def gather(self, d: Dist) -> None:
        """Give every process the records of all processes (each evaluated its own shard); no image counts twice."""
        if not d.enabled:
            return
        shards: list = [None] * d.world
        dist.all_gather_object(shards, self.results)
        self.results = merge_shards(shards)
        self.metrics = None

    def records(self, iou_type: str) -> list[dict]:
        """All result records of one IoU type, image by image in id order."""
        return [r for image_id in sorted(self.results) for r in self.results[image_id][iou_type]]

    def summarize(self) -> dict[str, float]:
        """The 12 COCO numbers per IoU type, in percent (class docstring); COCOeval's printing is swallowed."""
        if not self.results:
            raise UserError("no images were evaluated; the evaluation set is empty")
        metrics = {}
        for iou_type in self.iou_types:
            stats = self._cocoeval(iou_type)
            for name, value in zip(STATS, stats):
                # COCOeval's -1 means "not defined for these images" (module docstring)
                metrics[f"{PREFIX[iou_type]}_{name}"] = float("nan") if value < 0 else 100.0 * float(value)
        self.metrics = metrics
        return metrics

    def _cocoeval(self, iou_type: str) -> np.ndarray:
        records = self.records(iou_type)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its own table
            if records:
                # loadRes adds keys to the records it is given: hand it copies
                coco_dt = self.coco_gt.loadRes([dict(r) for r in records])
            else:
                # loadRes cannot take an empty list; an empty result set scores 0 where ground truth exists
                coco_dt = COCO()
                coco_dt.dataset = {"images": list(self.coco_gt.dataset["images"]),
                                   "categories": list(self.coco_gt.dataset["categories"]), "annotations": []}
                coco_dt.createIndex()
            ev = COCOeval(self.coco_gt, coco_dt, iou_type)
            ev.params.imgIds = sorted(self.results)
            ev.params.catIds = sorted(self.category_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        self._precision[iou_type] = ev.eval["precision"]
        return ev.stats

    def per_class_ap50(self, iou_type: str = "bbox") -> dict[str, float]:
        """AP at IoU 0.5 of each category (percent, by category name; NaN where it has no ground truth among the
        images seen): COCOeval's precision at IoU 0.5, all areas, 100 detections, averaged over its 101 recall
        points. Call after `summarize`."""
        if iou_type not in self._precision:
            self.summarize()
        p = self._precision[iou_type][0, :, :, 0, -1]  # (recall points, categories in sorted-id order)
        out = {}
        for k, cid in enumerate(sorted(self.category_ids)):
            v = p[:, k]
            out[self.coco_gt.cats[cid]["name"]] = float(100 * v[v > -1].mean()) if (v > -1).any() else float("nan")
        return out

    def write_results(self, path: str | Path) -> Path:
        """The COCO results JSON (a list of records, detectron2's layout: one record per detection with its bbox,
        score, category_id and, when masks are evaluated, its RLE segmentation), written atomically.
        `coco_gt.loadRes(path)` reads it back."""
        boxes = self.records("bbox") if "bbox" in self.iou_types else None
        masks = self.records("segm") if "segm" in self.iou_types else None
        if boxes is None:
            merged = masks
        elif masks is None:
            merged = boxes
        else:  # the same detections in the same order: one record with both
            merged = [{**b, "segmentation": m["segmentation"]} for b, m in zip(boxes, masks)]
        return write_text(json.dumps(merged), path)

    def table(self) -> str:
        """The 12 numbers per IoU type as a small text table (percent; "-" where not defined)."""
        metrics = self.metrics if self.metrics is not None else self.summarize()
        lines = [f"{'':5}" + "".join(f"{name:>7}" for name in STATS)]
        for iou_type in self.iou_types:
            prefix = PREFIX[iou_type]
            cells = (metrics[f"{prefix}_{name}"] for name in STATS)
            lines.append(f"{prefix:5}" + "".join("      -" if math.isnan(v) else f"{v:7.1f}" for v in cells))
        return "\n".join(lines)
