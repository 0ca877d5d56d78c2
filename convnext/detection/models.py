"""Mask R-CNN and Cascade Mask R-CNN on ConvNeXt (paper §4.2, Table 3), as torchvision detectors.

    model = create_detector("mask_rcnn_convnext_tiny", num_classes=80, backbone_weights="convnext_tiny.fb_in1k")
    losses = model(images, targets)      # training: a dict of loss terms
    detections = model(images)           # eval: [{"boxes", "labels", "scores", "masks"}] in input coordinates

Every detector is a torchvision `GeneralizedRCNN`: the ConvNeXt backbone (convnext/backbone.py) + torchvision's FPN,
a region proposal network and R-CNN heads, so torchvision's own detection reference loop runs it. Every number
is the official config's (facebookresearch/ConvNeXt `object_detection/configs/_base_/models/
{mask_rcnn,cascade_mask_rcnn}_convnext_fpn.py` and the per-size files):
- FPN 256 channels, 5 levels (the 5th a stride-2 max-pool of the 4th); anchors 32..512 (scale 8 on strides
  4..64) x ratios {0.5, 1, 2};
- RPN: IoU 0.7 / 0.3 with low-quality matches of IoU >= 0.3, 256 anchors sampled at 0.5 positive; proposals:
  top 2000 per level before NMS 0.7, 1000 kept (Cascade: 2000) in training; 1000 / 1000 at test; box loss L1
  (Cascade: smooth L1, beta 1/9); anchors crossing the image border are ignored in training (Cascade only:
  `allowed_border=0`);
- R-CNN: RoIAlign 7 (boxes) / 14 (masks), sampling ratio 0 (adaptive), aligned (mmcv's default), levels chosen
  by floor(log2(sqrt(wh) / 56)); Mask R-CNN: 512 RoIs at 0.25 positive, IoU 0.5, 2 FC 1024, class-specific box
  deltas with stds (0.1, 0.1, 0.2, 0.2) and an L1 loss, 4-conv mask head to 28x28; Cascade: our
  `CascadeRoIHeads` (convnext/detection/cascade.py); test: score 0.05, NMS 0.5, 100 per image.
- Test scale (800, 1333): the shorter side to 800 unless the longer would pass 1333; inputs padded to a
  multiple of 32. In training the data pipeline resizes (convnext/detection/data.py: the configs' multi-scale
  policies), so the model's transform only normalises and pads.

Where torchvision's parts differ from mmdetection's and we kept torchvision's (none changes an architecture):
the RPN and R-CNN classifiers' background index (torchvision 0, mmdet last) and Mask R-CNN's class-specific
predictors carrying a background slot (4 x 81 deltas and 81 mask channels where mmdet has 4 x 80 and 80:
4,100 + 257 parameters more); mask targets cut from the ground-truth masks by torchvision's RoIAlign
(mmdet crops and resizes the bitmap); weight initialisation of the FPN and heads (torchvision's).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from convnext.backbone import ConvNeXtBackbone, load_backbone_weights
from convnext.checkpoint import read_checkpoint
from convnext.detection.cascade import CascadeRoIHeads
from convnext.detection.roi_align import roi_align
from convnext.errors import UserError
from convnext.model import VARIANTS
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD

# ----------------------------------------------------------------------------------------------------------
# The table: the paper's detectors with the official README's parameters (M, 80 classes) and Table 3's FLOPs
# (G, at 1280 x 800, counted by mmcv's get_flops; RESULTS.md explains how our count compares).
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSpec:
    method: str  # "mask_rcnn" | "cascade_mask_rcnn"
    backbone: str  # a hierarchical ConvNeXt of convnext/model.py
    params_m: float | None = None  # official README, 80 classes
    gflops: float | None = None  # paper Table 3, at 1280 x 800


DETECTORS: dict[str, DetectorSpec] = {
    "mask_rcnn_convnext_tiny": DetectorSpec("mask_rcnn", "convnext_tiny", 48, 262),
    "cascade_mask_rcnn_convnext_tiny": DetectorSpec("cascade_mask_rcnn", "convnext_tiny", 86, 741),
    "cascade_mask_rcnn_convnext_small": DetectorSpec("cascade_mask_rcnn", "convnext_small", 108, 827),
    "cascade_mask_rcnn_convnext_base": DetectorSpec("cascade_mask_rcnn", "convnext_base", 146, 964),
    "cascade_mask_rcnn_convnext_large": DetectorSpec("cascade_mask_rcnn", "convnext_large", 255, 1354),
    "cascade_mask_rcnn_convnext_xlarge": DetectorSpec("cascade_mask_rcnn", "convnext_xlarge", 407, 1898),
}
METHODS = ("cascade_mask_rcnn", "mask_rcnn")  # longest prefix first


def get_detector_spec(name: str) -> DetectorSpec:
    """The table's entry, or, for another hierarchical ConvNeXt, `<method>_<variant>` (e.g. mask_rcnn_convnext_atto)."""
    if name in DETECTORS:
        return DETECTORS[name]
    for method in METHODS:
        arch = name.removeprefix(method + "_")
        if arch != name and arch in VARIANTS and not VARIANTS[arch].isotropic:
            return DetectorSpec(method, arch)
    raise UserError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}, or mask_rcnn_<model> / "
                    f"cascade_mask_rcnn_<model> for any hierarchical ConvNeXt (e.g. mask_rcnn_convnext_atto)")


def list_detectors() -> list[str]:
    return list(DETECTORS)


# ----------------------------------------------------------------------------------------------------------
# The parts that differ from torchvision's defaults
# ----------------------------------------------------------------------------------------------------------


class FPNBackbone(nn.Module):
    """A body's four stage outputs (ours: ConvNeXt's, layer-normalised) through torchvision's FPN: levels "0".."3"
    and "pool" (a stride-2 max-pool of "3", stride 64). The module keys: backbone.body.*, backbone.fpn.*."""

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


class RoIAlignPyramid(nn.Module):
    """mmcv's SingleRoIExtractor: each RoI pooled from one FPN level, RoIAlign with `aligned=True` (pixel centres
    at +0.5, mmcv's default; torchvision's MultiScaleRoIAlign uses aligned=False) and the level
    floor(log2(sqrt(w h) / 56)) clamped to the levels there are (mmdet's `map_roi_levels`, finest_scale 56)."""

    def __init__(self, featmap_names=("0", "1", "2", "3"), strides=(4, 8, 16, 32), output_size: int = 7,
                 sampling_ratio: int = 0):
        super().__init__()
        self.featmap_names, self.strides = list(featmap_names), list(strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
        return torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        feats = [features[n] for n in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], self.output_size, self.output_size))
        levels = self.levels(rois[:, 1:])
        for lvl, (f, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(levels == lvl)[0]
            if len(idx):
                pooled = roi_align(f, rois[idx].to(f.dtype), self.output_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=self.sampling_ratio, aligned=True)
                out[idx] = pooled.to(out.dtype)
        return out


class MinIoUMatcher(Matcher):
    """mmdet's MaxIoUAssigner: besides the IoU thresholds, each ground truth also takes the anchors it overlaps
    most (`match_low_quality`), but only where that overlap is >= `min_pos_iou` (torchvision takes them at any
    IoU, and assigns them their own best ground truth rather than this one)."""

    def __init__(self, high: float, low: float, min_pos_iou: float):
        super().__init__(high, low, allow_low_quality_matches=True)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix):
        highest = match_quality_matrix.max(dim=1, keepdim=True).values
        gt, anchor = torch.where((match_quality_matrix == highest) & (highest >= self.min_pos_iou))
        matches[anchor] = gt


class RPN(RegionProposalNetwork):
    """torchvision's RPN with the config's box loss (`l1` or `smooth_l1` with beta 1/9) and, with
    `allowed_border=0`, anchors reaching outside the image (before padding) ignored in training."""

    def __init__(self, *args, box_loss: str = "l1", allowed_border: int = -1, min_pos_iou: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.proposal_matcher = MinIoUMatcher(self.proposal_matcher.high_threshold,
                                              self.proposal_matcher.low_threshold, min_pos_iou)
        self.box_loss, self.allowed_border = box_loss, allowed_border
        self._image_sizes: list[tuple[int, int]] = []

    def forward(self, images, features, targets=None):
        self._image_sizes = list(images.image_sizes)  # assign_targets_to_anchors needs them for the border rule
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        if self.allowed_border >= 0:
            b = self.allowed_border
            for lab, a, (h, w) in zip(labels, anchors, self._image_sizes):
                inside = (a[:, 0] >= -b) & (a[:, 1] >= -b) & (a[:, 2] < w + b) & (a[:, 3] < h + b)
                lab[~inside] = -1.0  # neither positive nor negative: never sampled
        return labels, matched

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if self.box_loss == "smooth_l1":  # torchvision's own loss is the cascade config's
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        # averaged over all sampled anchors, positives and negatives (mmdet's avg_factor with a sampler)
        box = F.l1_loss(pred_bbox_deltas[pos], regression_targets[pos], reduction="sum") / max(1, sampled.numel())
        obj = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return obj, box


class MaskRCNNRoIHeads(RoIHeads):
    """torchvision's RoIHeads with the config's L1 box loss in training (torchvision: smooth L1, beta 1/9);
    inference is torchvision's."""

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets are needed in training")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        y, t = torch.cat(labels), torch.cat(regression_targets)
        pos = torch.where(y > 0)[0]
        deltas = deltas.reshape(len(y), -1, 4)[pos, y[pos]]  # class-specific: the deltas of the assigned class
        losses = {"loss_classifier": F.cross_entropy(logits, y),
                  "loss_box_reg": F.l1_loss(deltas, t[pos], reduction="sum") / max(1, y.numel())}
        keep = [torch.where(lab > 0)[0] for lab in labels]  # the mask head trains on the positives only
        boxes = [p[k] for p, k in zip(proposals, keep)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        losses["loss_mask"] = maskrcnn_loss(mask_logits, boxes, [tg["masks"] for tg in targets],
                                            [tg["labels"] for tg in targets],
                                            [m[k] for m, k in zip(matched_idxs, keep)])
        return [], losses


# ----------------------------------------------------------------------------------------------------------
# The factory
# ----------------------------------------------------------------------------------------------------------

# Overrides create_detector accepts, with their defaults (the official configs' values).
DEFAULTS = dict(
    drop_path_rate=0.0,  # training configs set the paper's (configs/coco.py); 0 for inference
    layer_scale_init_value=None,  # the variant's default; the official detection configs pass 1.0 (overwritten)
    in_chans=3,
    min_size=800, max_size=1333,  # test scale
    image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    fpn_channels=256,
    rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=None, rpn_post_nms_top_n_test=1000,  # None: 1000 (Mask R-CNN), 2000 (Cascade)
    rpn_nms_thresh=0.7, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
    box_batch_size_per_image=512, box_positive_fraction=0.25,
    box_fc_channels=1024,  # the box heads' FC width (mmdet fc_out_channels: 2 FCs in Mask R-CNN, 1 per cascade stage)
    mask_convs=4,  # the mask heads' 3x3 convs before the deconv (mmdet FCNMaskHead num_convs)
    box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
    grad_checkpointing=False,
)


def parse_settings(items: tuple[str, ...] | list[str]) -> dict:
    """`("box_batch_size_per_image=128", "fpn_channels=128")` -> {name: int, float or str}: detector settings as
    a config holds them (`model.detector`); names are checked by create_detector."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise UserError(f"detector setting {item!r} is not of the form name=value (e.g. fpn_channels=128)")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(text)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = text
    return out


def create_detector(name: str, num_classes: int = 80, backbone_weights: str | os.PathLike | None = None,
                    **overrides) -> GeneralizedRCNN:
    """A detector of the table by name, with `num_classes` object classes (no background; COCO: 80).

    `backbone_weights`: classification weights for the backbone (a registry tag such as `convnext_tiny.fb_in1k`,
    or a checkpoint file of any origin `convnext` reads); what is not used and what is new is printed.
    `overrides`: any key of DEFAULTS (e.g. `drop_path_rate=0.4`, `min_size=640`); a training run stores them in
    its checkpoints' meta ("settings"), from which `load_detector` rebuilds the same model.
    """
    spec = get_detector_spec(name)
    s = _settings(overrides)
    body = ConvNeXtBackbone(spec.backbone, drop_path_rate=s["drop_path_rate"],
                            layer_scale_init_value=s["layer_scale_init_value"], in_chans=s["in_chans"])
    if backbone_weights:
        load_backbone_weights(body, backbone_weights)
    if s["grad_checkpointing"]:
        body.set_grad_checkpointing(True)
    model = detector_on(body, spec.method, num_classes, **overrides)
    model.arch = name  # type: ignore[attr-defined]
    return model


def _settings(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown detector setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **overrides}


def detector_on(body: nn.Module, method: str, num_classes: int = 80, **overrides) -> GeneralizedRCNN:
    """The detector `method` ("mask_rcnn" or "cascade_mask_rcnn") with the config's neck and heads on any `body`
    that returns {"0".."3": features at strides 4..32} and lists their widths in `body.out_channels`: ours
    (create_detector), or another network's for a comparison at equal heads (benchmarks/detection_speed.py)."""
    if method not in METHODS:
        raise UserError(f"unknown detection method {method!r}; choose one of {', '.join(METHODS)}")
    if num_classes < 1:
        raise UserError(f"num_classes={num_classes}: a detector needs at least one object class")
    s = _settings(overrides)
    cascade = method == "cascade_mask_rcnn"
    if s["rpn_post_nms_top_n_train"] is None:
        s["rpn_post_nms_top_n_train"] = 2000 if cascade else 1000
    backbone = FPNBackbone(body, s["fpn_channels"])
    c = s["fpn_channels"]
    anchors = AnchorGenerator(sizes=tuple((32 * 2**i,) for i in range(5)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    rpn = RPN(anchors, RPNHead(c, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
              batch_size_per_image=s["rpn_batch_size_per_image"], positive_fraction=s["rpn_positive_fraction"],
              pre_nms_top_n=dict(training=s["rpn_pre_nms_top_n_train"], testing=s["rpn_pre_nms_top_n_test"]),
              post_nms_top_n=dict(training=s["rpn_post_nms_top_n_train"], testing=s["rpn_post_nms_top_n_test"]),
              nms_thresh=s["rpn_nms_thresh"], score_thresh=0.0,
              box_loss="smooth_l1" if cascade else "l1", allowed_border=0 if cascade else -1, min_pos_iou=0.3)
    box_pool, mask_pool = RoIAlignPyramid(output_size=7), RoIAlignPyramid(output_size=14)
    test = dict(score_thresh=s["box_score_thresh"], nms_thresh=s["box_nms_thresh"],
                detections_per_img=s["box_detections_per_img"])
    if cascade:
        roi_heads = CascadeRoIHeads(num_classes, out_channels=c, box_roi_pool=box_pool, mask_roi_pool=mask_pool,
                                    batch_size_per_image=s["box_batch_size_per_image"],
                                    positive_fraction=s["box_positive_fraction"], fc_channels=s["box_fc_channels"],
                                    mask_convs=s["mask_convs"], **test)
    else:
        roi_heads = MaskRCNNRoIHeads(
            box_pool, TwoMLPHead(c * 7 * 7, s["box_fc_channels"]),
            FastRCNNPredictor(s["box_fc_channels"], num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=s["box_batch_size_per_image"],
            positive_fraction=s["box_positive_fraction"], bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), **test,
            mask_roi_pool=mask_pool, mask_head=MaskRCNNHeads(c, [c] * s["mask_convs"], 1),  # the config: 4 x 256
            mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1))
    # _skip_resize: in training the data pipeline has resized (multi-scale); at test the transform resizes
    transform = GeneralizedRCNNTransform(s["min_size"], s["max_size"], list(s["image_mean"]), list(s["image_std"]),
                                         size_divisible=32, _skip_resize=True)
    model = GeneralizedRCNN(backbone, rpn, roi_heads, transform)
    model.arch, model.num_classes = method, num_classes  # type: ignore[attr-defined]
    return model


def load_detector(path: str | os.PathLike, *, ema: bool = False, **settings) -> GeneralizedRCNN:
    """A detector from one of our checkpoints (a detection run's best.pt / last.pt / best_ema.pt), in eval mode,
    with `model.class_names` and `model.category_ids` from its meta. `settings` replace the checkpoint's
    create_detector settings: test-time ones (`rpn_post_nms_top_n_test=300`, `box_score_thresh=0.3`, ...)."""
    obj = read_checkpoint(path)
    meta = obj.get("meta") or {}
    if meta.get("task") != "detection":
        raise UserError(f"{path} is not a detector checkpoint of ours (it was written by "
                        f"{meta.get('task') or 'something else'}); pass a detection run's best.pt or last.pt")
    key = "model_ema" if ema else "model"
    if key not in obj:
        raise UserError(f"{path} has no EMA weights; leave out the EMA option")
    model = create_detector(meta["arch"], meta["num_classes"], **{**meta.get("settings", {}), **settings})
    try:
        model.load_state_dict(obj[key])
    except RuntimeError as e:
        raise UserError(f"{path} does not fit {meta['arch']}: {str(e).splitlines()[0]}") from None
    model.class_names = meta.get("class_names") or [str(i) for i in range(1, meta["num_classes"] + 1)]
    model.category_ids = meta.get("category_ids") or list(range(1, meta["num_classes"] + 1))
    return model.eval()


def count_detector_gmacs(model: GeneralizedRCNN, height: int = 800, width: int = 1280, rois: int = 1000,
                         mask_rois: int = 100) -> dict[str, float]:
    """Multiply-adds (G) of a detector at one input size, part by part, as mmdet's `get_flops` measures a two-stage
    detector (`forward_dummy`): backbone + neck + RPN head on the image, the box head(s) on `rois` proposals and
    the mask head(s) on the first `mask_rois` (per stage for the cascade). Convs, linears and transposed convs
    are counted (torch.utils.flop_counter: 2 FLOPs per multiply-add, halved here); RoIAlign, NMS and
    normalisation are not (RESULTS.md compares this with Table 3)."""
    def macs(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 2 / 1e9

    model = model.eval()
    device = next(model.parameters()).device  # "meta" counts without computing
    x = torch.zeros(1, model.backbone.body.in_chans, height, width, device=device)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["backbone"] = macs(lambda: model.backbone.body(x))
        feats = model.backbone.body(x)
        out["fpn"] = macs(lambda: model.backbone.fpn(feats))
        pyramid = model.backbone.fpn(feats)
        out["rpn_head"] = macs(lambda: model.rpn.head(list(pyramid.values())))
        heads = model.roi_heads
        c = model.backbone.out_channels  # RoIAlign's outputs: the heads' cost does not depend on the boxes
        pooled = torch.zeros(rois, c, 7, 7, device=device)
        mpooled = torch.zeros(mask_rois, c, 14, 14, device=device)
        if isinstance(heads, CascadeRoIHeads):
            out["box_heads"] = sum(macs(lambda h=h: h(pooled)) for h in heads.box_heads)
            out["mask_heads"] = sum(macs(lambda h=h: h(mpooled)) for h in heads.mask_heads)
        else:
            out["box_heads"] = macs(lambda: heads.box_predictor(heads.box_head(pooled)))
            out["mask_heads"] = macs(lambda: heads.mask_predictor(heads.mask_head(mpooled)))
    out["total"] = sum(out.values())
    return out
