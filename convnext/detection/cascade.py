"""Cascade Mask R-CNN RoI heads (Cai & Vasconcelos 2018/2019) as the official ConvNeXt COCO configs build them.

    roi_heads = CascadeRoIHeads(num_classes=80, box_roi_pool=..., mask_roi_pool=...)
    model = GeneralizedRCNN(backbone, rpn, roi_heads, transform)   # as torchvision's RoIHeads

The numbers are facebookresearch/ConvNeXt `object_detection/configs/_base_/models/cascade_mask_rcnn_convnext_fpn.py`
with the per-size files' `ConvFCBBoxHead` ("giou_4conv1f"); the behaviour is mmdetection 2.11.0 as vendored by
SwinTransformer/Swin-Transformer-Object-Detection (the ConvNeXt README's base, tested at 6a979e2; read at c7b20110,
whose changes since add code this head does not use and move the sampler's randperm to the CPU):
`mmdet/models/roi_heads/cascade_roi_head.py` (`forward_train`, `simple_test`) and `bbox_heads/bbox_head.py`
(`loss`, `refine_bboxes`, `regress_by_class`, `get_bboxes`), with the samplers, assigner, coder, losses and
`multiclass_nms` they call.

- 3 stages, loss weights 1, 0.5, 0.25, each with its own box head and mask head.
- Training, stage t: match the proposals (with the ground-truth boxes put in front of them) at IoU 0.5 / 0.6 / 0.7,
  sample 512 per image at 0.25 positive; CE on the classes, 10 x GIoU on the decoded boxes of the positives (both
  averaged over all sampled RoIs), BCE on the positives' 28x28 masks. Stage t+1's proposals are stage t's sampled
  RoIs moved by stage t's deltas (of the assigned class; of the top-scoring object class for a negative), clipped
  to the image, without the ground-truth boxes (they are added again).
- Test: the proposals go through the 3 box heads in turn, each moving the RoIs by the deltas of its top object
  class; the class scores are the softmax of the stages' mean logits; the boxes are the last stage's
  class-specific deltas on the RoIs it saw; score > 0.05, NMS 0.5 per class, 100 per image; each detection's
  mask is the mean of the 3 mask heads' sigmoids on the final box, in its class's channel.

Where this differs from the official head, and why:
- Background is class 0 and logit column 0 (torchvision's labels, which the rest of the detector uses); mmdet
  puts it last. Converting official weights moves row 80 of each `fc_cls` to the front. The box deltas
  (4 x 80) and mask channels (80) have no background slot in either.
- Module names `box_heads.i` / `mask_heads.i` (mmdet: `bbox_head.i` / `mask_head.i`); inside a head the names
  are mmcv's (`shared_convs.j.conv|bn`, `shared_fcs.0`, `fc_cls`, `fc_reg`; `convs.j.conv`, `upsample`,
  `conv_logits`), so the rest of a converter is a rename of the prefix.
- nn.BatchNorm2d where the config has SyncBN: the caller converts it (nn.SyncBatchNorm.convert_sync_batchnorm).
- Box decoding is torchvision's BoxCoder (weights = 1 / stds), which clamps the log-size deltas at log(1000/16)
  from above only; mmdet clamps both ways. They differ only for boxes shrunk more than 62 times.
- GIoU is torchvision's, which adds eps to the union and enclosing areas; mmdet clamps them at eps (1e-6 in both
  here). They differ only for boxes of zero area.
- Without poolers passed in, torchvision's MultiScaleRoIAlign (sampling ratio 0 as the config) is built; it
  pools with aligned=False where mmcv's RoIAlign is aligned=True: pass aligned poolers to match.
- Not carried over: test-time augmentation (`aug_test`), ignored boxes (`gt_bboxes_ignore`), the logged
  accuracy `acc`, and `mask_thr_binary` (torchvision's transform pastes the soft masks; threshold them there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.ops import (MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss,
                             roi_align)

# The official config's per-stage values (train_cfg.rcnn[i].assigner and bbox_head[i].bbox_coder.target_stds).
STAGE_IOU = (0.5, 0.6, 0.7)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
BOX_ROI_SIZE, MASK_ROI_SIZE = 7, 14  # RoIAlign outputs; the mask head's deconv doubles 14 to the 28x28 targets
FC_CHANNELS = 1024  # ConvFCBBoxHead fc_out_channels


class ConvModule(nn.Module):
    """3x3 conv (+ BN, then no conv bias) + ReLU, named as mmcv's ConvModule so official keys map one to one."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        # mmcv ConvModule.init_weights: kaiming normal, fan_out, for ReLU; bias 0; the norm starts as identity.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvFCBoxHead(nn.Module):
    """mmdet ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1), the configs' "4conv1f": 4 shared 3x3 convs with
    BN, one shared FC 1024, then a classifier over background + classes and class-specific box deltas."""

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256,
                 fc_channels: int = FC_CHANNELS, roi_size: int = BOX_ROI_SIZE, num_convs: int = 4):
        super().__init__()
        self.shared_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_channels, conv_channels, norm=True) for i in range(num_convs))
        self.shared_fcs = nn.ModuleList([nn.Linear(conv_channels * roi_size * roi_size, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)  # column 0: background
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)  # (dx, dy, dw, dh) for class k in slot k - 1
        # mmdet BBoxHead / ConvFCBBoxHead.init_weights
        nn.init.xavier_uniform_(self.shared_fcs[0].weight)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        for fc in (self.shared_fcs[0], self.fc_cls, self.fc_reg):
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for conv in self.shared_convs:
            x = conv(x)
        x = F.relu(self.shared_fcs[0](x.flatten(1)))  # (R, C*7*7) -> (R, 1024)
        return self.fc_cls(x), self.fc_reg(x)  # (R, num_classes + 1), (R, 4 * num_classes)


class MaskHead(nn.Module):
    """mmdet FCNMaskHead: 4 x (3x3 conv + ReLU), a 2x2 stride-2 deconv + ReLU (14 -> 28), a 1x1 conv to one
    logit map per class (no background channel)."""

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256, num_convs: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_channels, conv_channels, norm=False) for i in range(num_convs))
        self.upsample = nn.ConvTranspose2d(conv_channels, conv_channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)
        for m in (self.upsample, self.conv_logits):  # FCNMaskHead.init_weights
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))  # (R, num_classes, 28, 28)


# ----------------------------------------------------------------------------------------------------------
# Training: sample, stage losses, refine


@dataclass
class RoISample:
    """The RoIs one stage trains on in one image, positives first (mmdet's SamplingResult)."""
    boxes: Tensor     # (S, 4) xyxy
    labels: Tensor    # (S,) int64: the matched ground truth's class 1..C, 0 for a negative
    gt_index: Tensor  # (S,) the matched ground-truth box, -1 for a negative
    is_gt: Tensor     # (S,) bool: a ground-truth box added as a proposal

    @property
    def num_pos(self) -> int:
        return int((self.labels > 0).sum())


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_threshold: float,
                sampler: BalancedPositiveNegativeSampler) -> RoISample:
    """mmdet MaxIoUAssigner (pos_iou_thr = neg_iou_thr = min_pos_iou, match_low_quality=False) + RandomSampler
    (add_gt_as_proposals=True): every RoI whose best IoU with a ground truth reaches the threshold takes that
    ground truth, all others are negatives; the ground-truth boxes go in front and each takes itself
    (`AssignResult.add_gt_`); then a random subset at the positive fraction."""
    gt_boxes = gt_boxes.to(proposals.dtype)
    boxes = torch.cat([gt_boxes, proposals])
    num_gt = len(gt_boxes)
    gt_index = torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)
    labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    if num_gt:
        best_iou, best_gt = box_iou(gt_boxes, boxes).max(dim=0)
        gt_index = torch.where(best_iou >= iou_threshold, best_gt, gt_index)
        gt_index[:num_gt] = torch.arange(num_gt, device=boxes.device)
        labels = torch.where(gt_index >= 0, gt_labels[gt_index.clamp(min=0)], labels)
    (pos,), (neg,) = sampler([labels])
    keep = torch.cat([torch.where(pos)[0], torch.where(neg)[0]])
    is_gt = torch.arange(len(boxes), device=boxes.device) < num_gt
    return RoISample(boxes[keep], labels[keep], gt_index[keep], is_gt[keep])


def decode_by_class(coder: BoxCoder, deltas: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
    """Each box moved by the deltas of its class (1..C, slot C - 1): mmdet `BBoxHead.regress_by_class`."""
    per_class = deltas.reshape(len(deltas), deltas.shape[1] // 4, 4)  # (R, C, 4), R may be 0
    picked = per_class[torch.arange(len(deltas), device=deltas.device), labels - 1]
    return coder.decode_single(picked.float(), boxes.float())


def box_losses(cls_logits: Tensor, deltas: Tensor, samples: list[RoISample], gt_boxes: list[Tensor],
               coder: BoxCoder, giou_weight: float) -> tuple[Tensor, Tensor]:
    """mmdet BBoxHead.loss with CrossEntropyLoss and GIoULoss(loss_weight=10), reg_decoded_bbox=True: the class
    loss is the mean over the sampled RoIs; the box loss sums 1 - GIoU(decoded box of the true class, its ground
    truth) over the positives and divides by the number of sampled RoIs too (avg_factor = bbox_targets.size(0))."""
    labels = torch.cat([s.labels for s in samples])
    rois = torch.cat([s.boxes for s in samples])
    targets = torch.cat([g[s.gt_index.clamp(min=0)] if len(g) else torch.zeros_like(s.boxes)
                         for s, g in zip(samples, gt_boxes)])
    count = max(len(labels), 1)
    loss_cls = F.cross_entropy(cls_logits.float(), labels, reduction="sum") / count
    pos = labels > 0
    boxes = decode_by_class(coder, deltas[pos], rois[pos], labels[pos])  # no clipping here, as mmdet
    loss_box = giou_weight * generalized_box_iou_loss(boxes, targets[pos].float(), reduction="sum", eps=1e-6)
    return loss_cls, loss_box / count


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """mmdet mask_target: each positive RoI, clipped to the mask, cut from its ground-truth mask by RoIAlign
    (aligned, sampling ratio 0) and binarised at 0.5 (`BitmapMasks.crop_and_resize`). (torchvision's
    `project_masks_on_boxes` keeps soft targets and uses aligned=False.)"""
    boxes = clip_boxes_to_image(boxes.float(), tuple(gt_masks.shape[-2:]))
    rois = torch.cat([gt_index[:, None].to(boxes), boxes], dim=1)
    cut = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                    aligned=True)
    return (cut[:, 0] >= 0.5).to(boxes)


def mask_loss(mask_logits: Tensor, samples: list[RoISample], gt_masks: list[Tensor]) -> Tensor:
    """mmdet FCNMaskHead.loss: BCE with logits on the positives' own class channel, mean over all pixels."""
    labels = torch.cat([s.labels[:s.num_pos] for s in samples])
    if len(labels) == 0:
        return mask_logits.sum() * 0  # no positive anywhere: a zero that keeps the graph (mmdet: pred.sum())
    size = mask_logits.shape[-1]
    targets = torch.cat([mask_targets(m, s.boxes[:s.num_pos], s.gt_index[:s.num_pos], size)
                         for s, m in zip(samples, gt_masks)])
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels - 1]
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


@torch.no_grad()
def refine_rois(samples: list[RoISample], cls_logits: Tensor, deltas: Tensor, coder: BoxCoder,
                image_shapes: list[tuple[int, int]]) -> list[Tensor]:
    """The next stage's proposals (mmdet `CascadeRoIHead.forward_train` + `BBoxHead.refine_bboxes`): every sampled
    RoI moved by the deltas of its assigned class, a negative by those of its top-scoring object class, clipped to
    the image; the positives that are ground-truth boxes are dropped (the next stage adds them again)."""
    labels = torch.cat([s.labels for s in samples])
    labels = torch.where(labels > 0, labels, cls_logits[:, 1:].argmax(dim=1) + 1)
    boxes = decode_by_class(coder, deltas, torch.cat([s.boxes for s in samples]), labels)
    out = []
    for s, b, shape in zip(samples, boxes.split([len(s.boxes) for s in samples]), image_shapes):
        out.append(clip_boxes_to_image(b, shape)[~s.is_gt])
    return out


# ----------------------------------------------------------------------------------------------------------
# Test: combine the stages


def combine_stage_scores(stage_logits: list[Tensor]) -> Tensor:
    """mmdet `CascadeRoIHead.simple_test`: the class logits are averaged over the stages, then
    `BBoxHead.get_bboxes` takes the softmax: softmax(mean of logits), not the mean of the softmaxes."""
    return F.softmax(torch.stack([s.float() for s in stage_logits]).mean(dim=0), dim=-1)


def multiclass_nms(boxes: Tensor, scores: Tensor, score_thresh: float, nms_thresh: float,
                   max_detections: int) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet multiclass_nms: boxes (R, C, 4) and object scores (R, C); every (RoI, class) with score >
    score_thresh, NMS within each class, the top `max_detections`. Returns boxes, scores, labels 1..C."""
    labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(scores)
    keep = scores > score_thresh
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]  # sorted by score
    return boxes[keep], scores[keep], labels[keep]


def merge_stage_masks(stage_mask_logits: list[Tensor], labels: Tensor) -> Tensor:
    """mmdet `simple_test` + merge_aug_masks: the mean of the stages' sigmoid masks, in the detection's class
    channel. (N, 1, 28, 28) probabilities, as torchvision's `paste_masks_in_image` takes them."""
    probs = torch.stack([m.float().sigmoid() for m in stage_mask_logits]).mean(dim=0)
    return probs[torch.arange(len(labels), device=labels.device), labels - 1][:, None]


# ----------------------------------------------------------------------------------------------------------


def check_pool_size(pool: nn.Module, size: int, name: str) -> None:
    """The heads are built for the config's RoI sizes; a pooler of another size would fail later, less clearly."""
    out = getattr(pool, "output_size", None)
    if out is not None and tuple(out if isinstance(out, (tuple, list)) else (out, out)) != (size, size):
        raise ValueError(f"{name} pools to {out}, but the heads are built for {size}x{size} RoIs; "
                         f"build it with output_size={size}")


class CascadeRoIHeads(nn.Module):
    """The cascade's R-CNN part, called as torchvision's RoIHeads: `(features, proposals, image_shapes, targets)`
    -> `([], losses)` in training, `(detections, {})` in eval.

    `num_classes` counts object classes (COCO: 80); labels are 1..num_classes, 0 is background. `out_channels` is
    the FPN's width, which is also the heads' conv width (both 256 in the config). Losses: `loss_cls_s{t}`,
    `loss_box_s{t}`, `loss_mask_s{t}`, already multiplied by stage t's weight. Detections: "boxes" (N, 4),
    "labels" (N,), "scores" (N,), "masks" (N, 1, 28, 28) probabilities in each box."""

    def __init__(self, num_classes: int, *, out_channels: int = 256, featmap_names=("0", "1", "2", "3"),
                 stage_iou=STAGE_IOU, stage_stds=STAGE_STDS, stage_loss_weights=STAGE_LOSS_WEIGHTS,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, giou_weight: float = 10.0,
                 with_mask: bool = True, box_roi_pool: nn.Module | None = None,
                 mask_roi_pool: nn.Module | None = None, fc_channels: int = FC_CHANNELS, mask_convs: int = 4):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes counts object classes without background and must be >= 1, "
                             f"got {num_classes}")
        if not len(stage_iou) == len(stage_stds) == len(stage_loss_weights) >= 1:
            raise ValueError(f"stage_iou, stage_stds and stage_loss_weights need one entry per stage; got "
                             f"{len(stage_iou)}, {len(stage_stds)} and {len(stage_loss_weights)}")
        self.num_classes, self.with_mask = num_classes, with_mask
        self.stage_iou, self.stage_loss_weights = tuple(stage_iou), tuple(stage_loss_weights)
        # torchvision's BoxCoder divides the deltas by its weights where mmdet multiplies them by the stds
        self.box_coders = [BoxCoder(tuple(1.0 / s for s in stds)) for stds in stage_stds]
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.giou_weight = giou_weight

        names = list(featmap_names)
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(names, BOX_ROI_SIZE, sampling_ratio=0)
        self.box_roi_pool = box_roi_pool
        check_pool_size(self.box_roi_pool, BOX_ROI_SIZE, "box_roi_pool")
        self.box_heads = nn.ModuleList(ConvFCBoxHead(num_classes, out_channels, out_channels, fc_channels)
                                       for _ in stage_iou)
        self.mask_roi_pool = self.mask_heads = None
        if with_mask:
            if mask_roi_pool is None:
                mask_roi_pool = MultiScaleRoIAlign(names, MASK_ROI_SIZE, sampling_ratio=0)
            self.mask_roi_pool = mask_roi_pool
            check_pool_size(self.mask_roi_pool, MASK_ROI_SIZE, "mask_roi_pool")
            self.mask_heads = nn.ModuleList(MaskHead(num_classes, out_channels, out_channels, mask_convs)
                                            for _ in stage_iou)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            self.check_targets(targets)
            return [], self.losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    def check_targets(self, targets: list[dict[str, Tensor]] | None) -> None:
        if targets is None:
            raise ValueError("CascadeRoIHeads is in training mode and needs targets; call .eval() to detect")
        need = ("boxes", "labels", "masks") if self.with_mask else ("boxes", "labels")
        for i, t in enumerate(targets):
            missing = [k for k in need if k not in t]
            if missing:
                raise ValueError(f"target {i} has no {', '.join(missing)} (each target needs {', '.join(need)})")
            if len(t["labels"]) and not (1 <= int(t["labels"].min()) and int(t["labels"].max()) <= self.num_classes):
                raise ValueError(f"target {i} has labels outside 1..{self.num_classes} (0 is background): "
                                 f"{t['labels'].tolist()}")

    def losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        """mmdet `CascadeRoIHead.forward_train`: sample, the stage's box and mask losses, refine; 3 times."""
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses = {}
        for t, (iou, coder, weight) in enumerate(zip(self.stage_iou, self.box_coders, self.stage_loss_weights)):
            samples = [sample_rois(p, b, lab, iou, self.sampler) for p, b, lab in zip(proposals, gt_boxes, gt_labels)]
            pooled = self.box_roi_pool(features, [s.boxes for s in samples], image_shapes)
            cls_logits, deltas = self.box_heads[t](pooled)
            loss_cls, loss_box = box_losses(cls_logits, deltas, samples, gt_boxes, coder, self.giou_weight)
            losses[f"loss_cls_s{t}"], losses[f"loss_box_s{t}"] = weight * loss_cls, weight * loss_box
            if self.with_mask:
                pooled = self.mask_roi_pool(features, [s.boxes[:s.num_pos] for s in samples], image_shapes)
                loss = mask_loss(self.mask_heads[t](pooled), samples, [tg["masks"] for tg in targets])
                losses[f"loss_mask_s{t}"] = weight * loss
            if t + 1 < len(self.box_heads):
                proposals = refine_rois(samples, cls_logits.detach(), deltas.detach(), coder, image_shapes)
        return losses

    @torch.no_grad()
    def detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        """mmdet `CascadeRoIHead.simple_test` (the rule in the module docstring), in the input image's pixels."""
        counts = [len(p) for p in proposals]
        rois = torch.cat(proposals)
        stage_logits = []
        for t, (head, coder) in enumerate(zip(self.box_heads, self.box_coders)):
            cls_logits, deltas = head(self.box_roi_pool(features, list(rois.split(counts)), image_shapes))
            stage_logits.append(cls_logits)
            if t + 1 < len(self.box_heads):  # move each RoI by the deltas of its top-scoring object class
                moved = decode_by_class(coder, deltas, rois, cls_logits[:, 1:].argmax(dim=1) + 1)
                rois = torch.cat([clip_boxes_to_image(b, s) for b, s in zip(moved.split(counts), image_shapes)])
        scores = combine_stage_scores(stage_logits)[:, 1:]  # drop background
        boxes = self.box_coders[-1].decode_single(deltas.float(), rois.float())  # the last stage's, every class
        detections = []
        for b, s, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            b = clip_boxes_to_image(b.reshape(-1, 4), shape).reshape(len(b), self.num_classes, 4)
            b, s, labels = multiclass_nms(b, s, self.score_thresh, self.nms_thresh, self.detections_per_img)
            detections.append({"boxes": b, "labels": labels, "scores": s})
        if self.with_mask:
            pooled = self.mask_roi_pool(features, [d["boxes"] for d in detections], image_shapes)
            labels = torch.cat([d["labels"] for d in detections])
            masks = merge_stage_masks([head(pooled) for head in self.mask_heads], labels)
            for d, m in zip(detections, masks.split([len(d["boxes"]) for d in detections])):
                d["masks"] = m
        return detections
