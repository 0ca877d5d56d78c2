"""mIoU as the benchmark computes it, and the official test-time inference (single scale by sliding windows;
multi-scale + flip), correct under torchrun.

The metric is mmseg's (`mmseg/core/evaluation/metrics.py`, which the paper's Tables 4 and 7 were computed with):
per class, the pixels of intersection, union, prediction and label are *summed over the whole set*, then
IoU = intersection / union and Acc = intersection / label area per class; mIoU and mAcc are their means over
the classes where they are defined (NaN, i.e. a class absent from both the labels and the predictions, is left
out: numpy's nanmean), aAcc = all intersections / all labelled pixels. Pixels labelled 255 are ignored, whatever
is predicted there. Under torchrun each process evaluates its own images (rank::world, none twice) and the four
sums are added over processes (`SegMetric.gather`), which gives exactly the one-process numbers.

Inference (mmseg 0.x `EncoderDecoder`): "slide" runs the model on crop x crop windows at `stride`, the last
window of a row or column moved back to end at the border, and averages the *logits* where windows overlap
(the official ConvNeXt `_ss` configs: crop 512 / stride 341, 640 / 426 for the 22K models); "whole" runs the
image at once (the `_ms` configs). The logits are resized to the original image (bilinear, align_corners=False)
and softmaxed; multi-scale + flip (`--aug-test`: ratios 0.5-1.75, in whole mode) averages those probabilities
over the scales and the mirrored image; other ratios (`convnext eval --ratios`) run in the checkpoint's own mode,
as mmseg's aug_test does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convnext.distributed import Dist, all_sum
from convnext.errors import UserError
from convnext.segmentation.models import IGNORE_INDEX, resize

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg tools/test.py --aug-test


def eval_protocol(inference: dict, multi_scale: bool = False, flip: bool = False,
                  ratios: Sequence[float] | None = None) -> tuple[str, tuple, bool, str]:
    """(mode, ratios, flip, its description) of a segmenter's test: by default its checkpoint's own (sliding
    windows or whole image at its test scale, at the ratios of it and with the flip its run was tested with: a
    single scale unless the run set data.seg_test_ratios / seg_test_flip); with `flip` also the mirrored image
    (mmseg's MultiScaleFlipAug with flip); with `multi_scale` the paper's Table 4 column, ratios
    0.5-1.75 and flip, whole image at each scale (mmseg's --aug-test); with `ratios`, those ratios of the test scale
    in the checkpoint's own mode (mmseg's img_ratios set by hand: a model trained at one scale may gain from ratios
    near 1 where 0.5-1.75 loses), and the mirrored image with `flip`."""
    if ratios:
        if multi_scale:
            raise UserError("--multi-scale is the paper's ratios 0.5-1.75; give either it or --ratios, not both")
        if any(not (r > 0 and math.isfinite(r)) for r in ratios):
            raise UserError(f"--ratios {' '.join(map(str, ratios))}: each ratio of the test scale must be > 0")
        ratios = tuple(float(r) for r in ratios)
    elif multi_scale:
        return "whole", MS_RATIOS, True, "multi-scale + flip"
    else:  # the checkpoint's own test
        ratios, flip = tuple(float(r) for r in inference.get("ratios", (1.0,))), flip or bool(inference.get("flip"))
    scales = "single scale" if ratios == (1.0,) else f"ratios {', '.join(f'{r:g}' for r in ratios)}"
    return inference["mode"], ratios, flip, f"{scales}{' + flip' if flip else ''}, {inference['mode']}"


# ------------------------------------------------------------------------------------------------ inference


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Where mmseg's slide_inference puts its windows along one side: every `stride`, the last one moved back to
    end at the border; one window from 0 when the side is no longer than the crop."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(n)]


def slide_logits(model: nn.Module, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """(N, K, H, W) logits of `x` (N, 3, H, W) averaged over the sliding windows that cover each pixel."""
    h, w = x.shape[-2:]
    out = count = None
    for y0 in window_starts(h, crop, stride):
        for x0 in window_starts(w, crop, stride):
            logits = model(x[..., y0: y0 + crop, x0: x0 + crop]).float()
            if out is None:
                out = logits.new_zeros((x.shape[0], logits.shape[1], h, w))
                count = logits.new_zeros((1, 1, h, w))
            out[..., y0: y0 + crop, x0: x0 + crop] += logits
            count[..., y0: y0 + crop, x0: x0 + crop] += 1
    return out / count


MIN_SIDE = 32  # the backbone's total stride: a smaller input has no stride-32 feature map


def logits_at(model: nn.Module, x: torch.Tensor, mode: str = "whole", crop: int = 512,
              stride: int = 341) -> torch.Tensor:
    """The model's (N, K, H, W) logits of `x` at its own size, by `mode` ("slide" or "whole"). An input under 32 px
    on a side (a small image at a multi-scale ratio of 0.5) is padded at the bottom and right with 0, the mean colour
    as training's Pad, and its logits cropped back; mmseg would fail on it."""
    if mode not in ("slide", "whole"):
        raise UserError(f"unknown test mode {mode!r}; use slide or whole")
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIDE:
        x = F.pad(x, (0, max(0, MIN_SIDE - w), 0, max(0, MIN_SIDE - h)))
    logits = slide_logits(model, x, crop, stride) if mode == "slide" else model(x).float()
    return logits[..., :h, :w]


def predict_probs(model: nn.Module, inputs: Sequence[torch.Tensor], size: tuple[int, int], *, mode: str = "whole",
                  crop: int = 512, stride: int = 341, flip: bool = False) -> torch.Tensor:
    """Class probabilities (K, H, W) at the original `size` from the test `inputs` (one normalised (3, h, w) image
    per scale): per scale (and mirrored, with `flip`), logits resized to `size`, softmaxed, averaged."""
    total, n = None, 0
    for x in inputs:
        for mirrored in ((False, True) if flip else (False,)):
            xx = x[None].flip(-1) if mirrored else x[None]
            p = F.softmax(resize(logits_at(model, xx, mode, crop, stride), size), dim=1)[0]
            p = p.flip(-1) if mirrored else p
            total, n = (p if total is None else total + p), n + 1
    return total / n


# ------------------------------------------------------------------------------------------------ the metric


class SegMetric:
    """Intersection, union, prediction and label areas per class, summed over every image seen (module docstring).

    `summarize()` returns percentages: mIoU, mAcc, aAcc; `per_class()` each class's IoU and Acc (NaN where
    undefined)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names or [str(k) for k in range(num_classes)])
        self.area = torch.zeros(4, num_classes, dtype=torch.float64)  # intersect, union, pred, label
        self.images = 0

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image (or a batch): `pred` predicted classes, `label` the labels (255 ignored), same shape."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size")
        keep = label != self.ignore_index
        p, t = pred[keep].long(), label[keep].long()
        if len(t) and int(t.max()) >= self.num_classes:
            raise UserError(f"a label holds class {int(t.max())} but the model has {self.num_classes} classes; the "
                            f"checkpoint was trained for different data")
        k = self.num_classes
        inter = torch.bincount(t[p == t], minlength=k)[:k]
        area_p, area_t = torch.bincount(p, minlength=k)[:k], torch.bincount(t, minlength=k)[:k]
        counts = torch.stack([inter, area_p + area_t - inter, area_p, area_t]).double().cpu()
        self.area += counts
        self.images += pred.shape[0] if pred.dim() == 3 else 1  # a batch (N, H, W), or one image

    def gather(self, d: Dist) -> None:
        """Sum the areas (and image counts) over every process: each has seen its own images."""
        if not d.enabled:
            return
        summed = all_sum(self.area.flatten().tolist() + [float(self.images)], d)
        self.area = torch.tensor(summed[:-1], dtype=torch.float64).view(4, self.num_classes)
        self.images = int(summed[-1])

    def per_class(self) -> dict[str, dict[str, float]]:
        """{class name: {"IoU", "Acc"}} in percent; NaN where the class has no union (IoU) or no label (Acc)."""
        inter, union, _, label = self.area
        with torch.no_grad():
            iou = (inter / union).tolist()  # 0 / 0 -> nan: a class neither labelled nor predicted
            acc = (inter / label).tolist()
        return {n: {"IoU": 100 * i, "Acc": 100 * a} for n, i, a in zip(self.class_names, iou, acc)}

    def summarize(self) -> dict[str, float]:
        if self.area[3].sum() == 0:
            raise UserError("no labelled pixels were evaluated (the evaluation set is empty, or every pixel is "
                            "ignored); there is no mIoU to compute")
        classes = self.per_class().values()
        return {"mIoU": _nanmean([c["IoU"] for c in classes]), "mAcc": _nanmean([c["Acc"] for c in classes]),
                "aAcc": 100 * float(self.area[0].sum() / self.area[3].sum())}

    def table(self) -> str:
        """Per-class IoU and Acc as text lines, then the summary."""
        lines = [f"{'class':<24}{'IoU':>8}{'Acc':>8}"]
        for name, c in self.per_class().items():
            cells = "".join("       -" if math.isnan(v) else f"{v:8.2f}" for v in (c["IoU"], c["Acc"]))
            lines.append(f"{name[:23]:<24}{cells}")
        m = self.summarize()
        lines.append(f"mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}  ({self.images} images)")
        return "\n".join(lines)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def label_map(scores: torch.Tensor) -> torch.Tensor:
    """(K, H, W) class scores -> (H, W) class indices: the first largest score, as `argmax(0)` gives, taken as
    `max(0).indices` (the same first index on ties), which PyTorch's CPU kernel reduces over the leading dimension
    several times faster."""
    return scores.max(0).indices


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, batches, rt, num_classes: int, class_names=None, *, mode: str = "slide",
                       crop: int = 512, stride: int = 341, flip: bool = False) -> SegMetric:
    """Run `model` (eval mode) over `batches` of (test inputs, label) and return the gathered SegMetric."""
    metric = SegMetric(num_classes, class_names)
    for inputs, label in batches:
        with rt.autocast():
            probs = predict_probs(model, [rt.images(x[None])[0] for x in inputs], tuple(label.shape), mode=mode,
                                  crop=crop, stride=stride, flip=flip)
        metric.update(label_map(probs), rt.to_device(label))
    metric.gather(rt.dist)
    return metric
