"""The Cascade Mask R-CNN RoI heads (convnext/detection/cascade.py): losses and their weights, the pieces of one
training stage on hand-made cases, the test-time rule against a direct computation of mmdetection 2.x's
`CascadeRoIHead.simple_test`, the official head's parameter count, and the heads inside torchvision's
GeneralizedRCNN."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from convnext.detection.cascade import (STAGE_STDS, CascadeRoIHeads, ConvFCBoxHead, MaskHead, RoISample,
                                        box_losses, mask_targets, refine_rois, sample_rois)

H, W, CH, NUM_CLASSES = 64, 96, 16, 3


def features(batch=2, channels=CH, seed=0):
    """FPN-like maps at strides 4, 8, 16, 32 of a 64x96 input."""
    g = torch.Generator().manual_seed(seed)
    return {str(i): torch.randn(batch, channels, H // 2 ** (i + 2), W // 2 ** (i + 2), generator=g) for i in range(4)}


def proposals(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([W - 30.0, H - 30.0])
        out.append(torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 20], dim=1))
    return out


def target(boxes, labels):
    """Boxes with rectangular masks filling them."""
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(boxes), H, W, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        m[y1:y2, x1:x2] = 1
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


TARGETS = [target([[10, 10, 40, 30], [50, 20, 90, 60]], [1, 3]), target([[5, 30, 35, 60]], [2])]
EMPTY = target([], [])
SHAPES = [(H, W), (H, W)]


def heads(**kw):
    kw = {"out_channels": CH, "batch_size_per_image": 32, **kw}
    return CascadeRoIHeads(NUM_CLASSES, **kw)


# ----------------------------------------------------------------------------------------------------------
# Training


def test_training_gives_nine_finite_losses_that_reach_every_head():
    torch.manual_seed(0)
    m = heads().train()
    detections, losses = m(features(), proposals(), SHAPES, TARGETS)
    assert detections == []
    assert sorted(losses) == sorted(f"loss_{k}_s{t}" for k in ("cls", "box", "mask") for t in range(3))
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_images_without_objects_train():
    torch.manual_seed(0)
    m = heads().train()
    _, losses = m(features(), proposals(), SHAPES, [TARGETS[0], EMPTY])  # one image without objects
    assert all(torch.isfinite(v) for v in losses.values())
    _, losses = m(features(), proposals(), SHAPES, [EMPTY, EMPTY])  # no object anywhere: only negatives
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(losses[f"loss_{k}_s{t}"] == 0 for k in ("box", "mask") for t in range(3))
    assert all(losses[f"loss_cls_s{t}"] > 0 for t in range(3))
    sum(losses.values()).backward()  # the zeros stay in the graph: backward runs as in any other step


def test_stage_weights_multiply_each_stage():
    a = heads(stage_loss_weights=(1.0, 1.0, 1.0)).train()
    b = heads().train()  # the config's (1, 0.5, 0.25)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    _, la = a(features(), proposals(), SHAPES, TARGETS)
    torch.manual_seed(0)  # the same random sampling
    _, lb = b(features(), proposals(), SHAPES, TARGETS)
    for t, w in enumerate((1.0, 0.5, 0.25)):
        for k in ("cls", "box", "mask"):
            torch.testing.assert_close(lb[f"loss_{k}_s{t}"], w * la[f"loss_{k}_s{t}"])


def test_sampling_puts_the_ground_truth_first_and_uses_the_stage_threshold():
    gt = torch.tensor([[0.0, 0, 20, 20]])
    props = torch.tensor([[0.0, 0, 20, 22],    # IoU 0.91
                          [0.0, 0, 20, 36],    # IoU 0.56: positive at 0.5, negative at 0.6
                          [60.0, 40, 80, 60]])  # IoU 0
    big = BalancedPositiveNegativeSampler(512, 0.25)
    s = sample_rois(props, gt, torch.tensor([2]), 0.5, big)
    assert s.labels.tolist() == [2, 2, 2, 0] and s.gt_index.tolist() == [0, 0, 0, -1]
    assert s.is_gt.tolist() == [True, False, False, False] and torch.equal(s.boxes[0], gt[0])
    assert s.num_pos == 3
    s = sample_rois(props, gt, torch.tensor([2]), 0.6, big)
    assert s.labels.tolist() == [2, 2, 0, 0] and s.is_gt.tolist() == [True, False, False, False]
    s = sample_rois(props, gt, torch.tensor([2]), 0.5, BalancedPositiveNegativeSampler(4, 0.25))
    assert s.num_pos == 1 and len(s.boxes) == 2  # 1 of the 3 positives, and the only negative
    s = sample_rois(props, gt[:0], torch.zeros(0, dtype=torch.int64), 0.5, big)  # no objects: all negative
    assert s.labels.tolist() == [0, 0, 0] and not s.is_gt.any()


def test_box_losses_average_over_all_sampled_rois():
    # 1 positive (a 10x10 roi on a 10x20 box: IoU 0.5 = GIoU) and 3 negatives, all logits 0, all deltas 0
    s = RoISample(boxes=torch.tensor([[0.0, 0, 10, 10], [30, 30, 40, 40], [50, 0, 60, 10], [0, 40, 10, 50]]),
                  labels=torch.tensor([1, 0, 0, 0]), gt_index=torch.tensor([0, -1, -1, -1]),
                  is_gt=torch.zeros(4, dtype=torch.bool))
    gt = torch.tensor([[0.0, 0, 10, 20]])
    loss_cls, loss_box = box_losses(torch.zeros(4, NUM_CLASSES + 1), torch.zeros(4, 4 * NUM_CLASSES), [s], [gt],
                                    BoxCoder((10.0, 10.0, 5.0, 5.0)), giou_weight=10.0)
    torch.testing.assert_close(loss_cls, torch.tensor(math.log(NUM_CLASSES + 1)))
    torch.testing.assert_close(loss_box, torch.tensor(10 * (1 - 0.5) / 4))  # divided by 4 rois, not 1 positive


def test_mask_targets_clip_the_roi_and_binarise():
    gt = torch.zeros(1, 20, 20, dtype=torch.uint8)
    gt[0, :10] = 1  # the top half
    top = mask_targets(gt, torch.tensor([[0.0, 0, 40, 10]]), torch.tensor([0]), 28)  # clipped to [0, 0, 20, 10]
    assert torch.equal(top, torch.ones(1, 28, 28))
    whole = mask_targets(gt, torch.tensor([[0.0, 0, 20, 20]]), torch.tensor([0]), 28)
    assert set(whole.unique().tolist()) == {0.0, 1.0}  # the blurred edge row is rounded
    assert whole[0, :14].eq(1).all() and whole[0, 14:].eq(0).all()


def test_refine_moves_rois_by_their_class_and_drops_the_ground_truth():
    # 3 sampled rois of a 50x74 image: a ground-truth box (class 2), a positive of class 1, a negative
    s = RoISample(boxes=torch.tensor([[10.0, 10, 30, 30], [12, 12, 32, 32], [50, 20, 70, 40]]),
                  labels=torch.tensor([2, 1, 0]), gt_index=torch.tensor([0, 0, -1]),
                  is_gt=torch.tensor([True, False, False]))
    cls_logits = torch.tensor([[0.0, 0, 9, 0], [0, 9, 0, 0], [5, 0, 0, 1]])  # the negative: class 3 of the objects
    deltas = torch.zeros(3, 4 * NUM_CLASSES)
    for k in range(1, NUM_CLASSES + 1):
        deltas[:, 4 * (k - 1)] = k  # class k moves a roi right by 0.1 k of its width (std 0.1)
    coder = BoxCoder(tuple(1 / v for v in STAGE_STDS[0]))
    (out,) = refine_rois([s], cls_logits, deltas, coder, [(50, 74)])
    expected = torch.tensor([[14.0, 12, 34, 32],  # class 1: + 2 px; the ground truth is gone
                             [56.0, 20, 74, 40]])  # class 3 (not the background): + 6 px, clipped at x = 74
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------------------------------------
# Test time


def test_eval_outputs_and_detections_per_image():
    torch.manual_seed(0)
    m = heads(detections_per_img=7).eval()
    props = proposals()
    out, losses = m(features(), [props[0], props[1][:0]], SHAPES)  # the 2nd image has no proposals
    assert losses == {} and len(out) == 2
    d = out[0]
    assert len(d["boxes"]) == 7  # ~0.25 scores from a fresh head: far more than 7 candidates pass 0.05
    assert d["boxes"].shape == (7, 4) and d["scores"].shape == (7,) and d["masks"].shape == (7, 1, 28, 28)
    assert d["boxes"].dtype == d["scores"].dtype == d["masks"].dtype == torch.float32
    assert d["labels"].dtype == torch.int64 and d["labels"].min() >= 1 and d["labels"].max() <= NUM_CLASSES
    assert (d["scores"] > 0.05).all() and torch.equal(d["scores"], d["scores"].sort(descending=True).values)
    assert (d["boxes"][:, 0::2] >= 0).all() and (d["boxes"][:, 0::2] <= W).all() and (d["boxes"][:, 1::2] <= H).all()
    assert (d["masks"] >= 0).all() and (d["masks"] <= 1).all()
    e = out[1]
    assert e["boxes"].shape == (0, 4) and e["labels"].shape == (0,) and e["masks"].shape == (0, 1, 28, 28)


class Fixed(nn.Module):
    """A head that returns given outputs, whatever RoIs it is shown (their number must fit)."""

    def __init__(self, *outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        assert len(x) == len(self.outputs[0])
        return self.outputs if len(self.outputs) > 1 else self.outputs[0]


def decode(box, d, stds, shape):
    """mmdet delta2bbox on one box, written out: centre moves by d * std * size, size grows by exp(d * std)."""
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + w / 2 + d[0] * stds[0] * w, box[1] + h / 2 + d[1] * stds[1] * h
    w, h = w * math.exp(d[2] * stds[2]), h * math.exp(d[3] * stds[3])
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return [min(max(x1, 0), shape[1]), min(max(y1, 0), shape[0]), min(max(x2, 0), shape[1]), min(max(y2, 0), shape[0])]


def test_test_time_rule_is_mmdetection_simple_test():
    """2 classes, 2 proposals; the 3 box heads and 3 mask heads return fixed outputs."""
    props = [[10.0, 10, 30, 30], [40, 20, 80, 50]]
    logits = [torch.tensor([[0.0, 2, 1], [3, 0, 1]]),  # stage 0's top objects: class 1, class 2
              torch.tensor([[1.0, 0, 2], [0, 1, 0]]),  # stage 1's: class 2, class 1
              torch.tensor([[0.0, 1, 0.5], [2, 0, 0.3]])]  # no two mean logits tie
    deltas = [torch.tensor([[1.0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1, 0, 0]]),
              torch.tensor([[0.0, 0, 0, 0, 0, 0, 1, 1], [10, 0, 0, 0, 0, 0, 0, 0]]),  # roi 1 leaves the image
              torch.tensor([[0.5, -0.5, 1, 2, -1, 1, 0.5, -1], [1, 2, -2, 1, 0.5, 0.5, 1, 1]])]
    mask_logits = [torch.randn(4, 2, 28, 28, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    m = CascadeRoIHeads(2, out_channels=CH, score_thresh=0.0, nms_thresh=1.0).eval()  # keep every (roi, class)
    m.box_heads = nn.ModuleList(Fixed(lg, d) for lg, d in zip(logits, deltas))
    m.mask_heads = nn.ModuleList(Fixed(ml) for ml in mask_logits)
    (out,), _ = m(features(batch=1), [torch.tensor(props)], [(H, W)])

    # The direct computation. Stages 0 and 1 move each roi by their top object class's deltas, clipped:
    rois = props
    for t in (0, 1):
        labels = [int(lg[1:].argmax()) + 1 for lg in logits[t]]
        rois = [decode(r, deltas[t][i, 4 * (c - 1):4 * c].tolist(), STAGE_STDS[t], (H, W))
                for i, (r, c) in enumerate(zip(rois, labels))]
    assert rois[1][2] == W  # the clipping was exercised
    # scores: softmax of the mean logits (mmdet averages the logits; get_bboxes takes the softmax)
    scores = torch.softmax(sum(logits) / 3, dim=1)
    assert not torch.allclose(scores, sum(torch.softmax(lg, dim=1) for lg in logits) / 3, atol=1e-2)
    # boxes: the last stage's deltas of each class on the rois it saw
    expected = sorted(((float(scores[i, c]), c, decode(rois[i], deltas[2][i, 4 * (c - 1):4 * c].tolist(),
                                                       STAGE_STDS[2], (H, W)), i)
                       for i in range(2) for c in (1, 2)), reverse=True)
    torch.testing.assert_close(out["scores"], torch.tensor([e[0] for e in expected]))
    assert out["labels"].tolist() == [e[1] for e in expected]
    torch.testing.assert_close(out["boxes"], torch.tensor([e[2] for e in expected]))
    # masks: the mean of the 3 stages' sigmoids, in the detection's class channel
    probs = sum(ml.sigmoid() for ml in mask_logits) / 3
    torch.testing.assert_close(out["masks"], torch.stack([probs[k, e[1] - 1] for k, e in enumerate(expected)])[:, None])


# ----------------------------------------------------------------------------------------------------------
# The official head's size, errors, and the heads inside torchvision's detector


def test_parameter_count_of_the_official_heads():
    c, fc, k = 256, 1024, 80
    box = (4 * (9 * c * c + 2 * c)  # 4 convs without bias (BN follows) + BN's weight and bias
           + (c * 7 * 7 * fc + fc)  # the shared FC on the flattened 7x7 RoI
           + (fc * (k + 1) + k + 1)  # classes + background
           + (fc * 4 * k + 4 * k))  # class-specific deltas, no background slot
    mask = 4 * (9 * c * c + c) + (4 * c * c + c) + (c * k + k)  # 4 convs, 2x2 deconv, 1x1 to 80 maps
    assert box == 15_618_449 and mask == 2_643_280
    assert sum(p.numel() for p in ConvFCBoxHead(k).parameters()) == box
    assert sum(p.numel() for p in MaskHead(k).parameters()) == mask
    # 3 stages: 54.8M, which with ConvNeXt-T (27.82M without its classifier, +2,880 output norms), the FPN (2.73M)
    # and the RPN head (0.59M) makes the official README's 86M for Cascade Mask R-CNN ConvNeXt-T
    assert sum(p.numel() for p in CascadeRoIHeads(k).parameters()) == 3 * (box + mask) == 54_785_187


def test_errors_say_what_to_do():
    m = heads().train()
    with pytest.raises(ValueError, match="needs targets"):
        m(features(), proposals(), SHAPES)
    with pytest.raises(ValueError, match=r"labels outside 1\.\.3"):
        m(features(), proposals(), SHAPES, [target([[0, 0, 10, 10]], [0]), EMPTY])
    with pytest.raises(ValueError, match="has no masks"):
        m(features(), proposals(), SHAPES, [{"boxes": TARGETS[0]["boxes"], "labels": TARGETS[0]["labels"]}, EMPTY])
    with pytest.raises(ValueError, match="output_size=7"):
        heads(box_roi_pool=MultiScaleRoIAlign(["0"], 14, 0))
    with pytest.raises(ValueError, match="one entry per stage"):
        heads(stage_iou=(0.5, 0.6))


def tiny_detector():
    """A 4-level conv net + torchvision's FPN and RPN around the cascade heads."""
    def down(cin, stride):
        return nn.Sequential(nn.Conv2d(cin, 8, 3, stride=stride, padding=1), nn.ReLU())
    body = nn.Sequential(OrderedDict(c1=down(3, 4), c2=down(8, 2), c3=down(8, 2), c4=down(8, 2)))
    backbone = BackboneWithFPN(body, {"c1": "0", "c2": "1", "c3": "2", "c4": "3"}, [8] * 4, CH)  # + "pool"
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    rpn = RegionProposalNetwork(anchors, RPNHead(CH, 3), 0.7, 0.3, 64, 0.5, dict(training=100, testing=60),
                                dict(training=40, testing=30), 0.7)
    transform = GeneralizedRCNNTransform(H, W, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # 64x96 unscaled
    return GeneralizedRCNN(backbone, rpn, heads(), transform)


def test_inside_torchvision_generalized_rcnn():
    torch.manual_seed(0)
    model = tiny_detector().train()
    images = list(torch.rand(2, 3, H, W))
    losses = model(images, [TARGETS[0], EMPTY])
    assert {f"loss_{k}_s{t}" for k in ("cls", "box", "mask") for t in range(3)} <= set(losses)
    assert {"loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.roi_heads.parameters())

    out = model.eval()(images)
    assert len(out) == 2 and all(len(d["boxes"]) > 0 for d in out)
    for d in out:  # masks pasted into the image by GeneralizedRCNNTransform.postprocess
        assert d["masks"].shape == (len(d["boxes"]), 1, H, W) and d["masks"].max() <= 1
        assert d["labels"].min() >= 1 and d["labels"].max() <= NUM_CLASSES
