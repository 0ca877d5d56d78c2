"""mIoU as mmseg computes it (hand-made confusion cases, the ignore index, accumulation over the set, two processes)
and the official test-time inference (mmseg's sliding-window grid, slide == whole where one window covers the
image, multi-scale + flip)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from convnext.distributed import Dist
from convnext.errors import UserError
from convnext.runtime import Runtime
from convnext.segmentation.evaluate import (SegMetric, evaluate_segmenter, label_map, logits_at, predict_probs,
                                            slide_logits, window_starts)
from convnext.segmentation.models import create_segmenter

# ------------------------------------------------------------------------------------------ the metric

# 3 classes; the last pixel is ignored (255) whatever is predicted there
LABEL = torch.tensor([0, 0, 1, 1, 2, 255])
PRED = torch.tensor([0, 1, 1, 1, 0, 2])


def test_the_metric_on_a_hand_made_confusion():
    """Labelled pixels: class 0 twice (one right), class 1 twice (both right), class 2 once (called 0).
    Intersections 1, 2, 0; predictions 2, 3, 0; labels 2, 2, 1; unions 3, 3, 1:
    IoU 1/3, 2/3, 0 -> mIoU 1/3; Acc 1/2, 1, 0 -> mAcc 1/2; aAcc 3/5."""
    m = SegMetric(3, ["a", "b", "c"])
    m.update(PRED, LABEL)
    r = m.summarize()
    assert r["mIoU"] == pytest.approx(100 / 3) and r["mAcc"] == pytest.approx(50) and r["aAcc"] == pytest.approx(60)
    per = m.per_class()
    assert [per[c]["IoU"] for c in "abc"] == pytest.approx([100 / 3, 200 / 3, 0])
    assert m.area[:, 2].tolist() == [0, 1, 0, 1]  # the 2 predicted on the ignored pixel counts nowhere


def test_a_class_absent_from_labels_and_predictions_is_left_out():
    m = SegMetric(4)  # class 3 never appears: its IoU and Acc are NaN, not 0, and not in the means
    m.update(PRED, LABEL)
    assert math.isnan(m.per_class()["3"]["IoU"]) and m.summarize()["mIoU"] == pytest.approx(100 / 3)
    m.update(torch.tensor([3]), torch.tensor([0]))  # predicted but never labelled: IoU 0, counted
    assert m.per_class()["3"]["IoU"] == 0 and math.isnan(m.per_class()["3"]["Acc"])
    assert m.summarize()["mIoU"] == pytest.approx((100 / 4 + 200 / 3 + 0 + 0) / 4)


def test_areas_are_summed_over_the_set_not_averaged_per_image():
    """Image 1 is all class 0, right; image 2 is 3 pixels of class 1 called 0. Per image the mIoUs would be 100
    and 0; over the set class 0 has IoU 1/4 (1 px of intersection, union 4) and class 1 0: mIoU 12.5."""
    m = SegMetric(2)
    m.update(torch.tensor([0]), torch.tensor([0]))
    m.update(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]))
    assert m.summarize()["mIoU"] == pytest.approx(12.5) and m.summarize()["aAcc"] == pytest.approx(25)
    assert m.images == 2


def test_label_map_is_argmax_ties_included():
    g = torch.Generator().manual_seed(0)
    for shape in ((11, 37, 53), (150, 16, 24), (1, 5, 5)):
        scores = (torch.randn(shape, generator=g) * 2).round() / 2  # half-steps: many ties
        assert torch.equal(label_map(scores), scores.argmax(0))
    scores = torch.zeros(4, 3, 3)
    scores[1] = scores[3] = 1.0
    assert label_map(scores).eq(1).all()  # the first of the tied largest


def test_errors():
    m = SegMetric(2)
    with pytest.raises(UserError, match="no labelled pixels"):
        m.summarize()
    m.update(torch.tensor([0]), torch.tensor([255]))
    with pytest.raises(UserError, match="no labelled pixels"):
        m.summarize()
    with pytest.raises(UserError, match="class 5"):
        m.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="differ in size"):
        m.update(torch.zeros(2, 2), torch.zeros(2, 3))


def gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One process of a 2-process gloo group: its own pixels, then the gathered metric."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = SegMetric(3)
        m.update(PRED[rank::world], LABEL[rank::world])
        m.gather(Dist(rank=rank, world=world))
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"metrics": m.summarize(), "images": m.images}, f)
    finally:
        dist.destroy_process_group()


def test_gather_over_two_processes_gives_the_one_process_numbers(tmp_path):
    mp.spawn(gather_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    one = SegMetric(3)
    one.update(PRED, LABEL)
    assert results[0] == results[1] and results[0]["images"] == 2
    assert results[0]["metrics"] == pytest.approx(one.summarize())


# ------------------------------------------------------------------------------------------ inference


def test_window_grid_is_mmsegs():
    """h_grids = ceil((H - crop) / stride) + 1, the last window moved back to end at the border."""
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(400, 512, 341) == [0]  # smaller than the crop: one window, the image itself
    assert window_starts(683, 512, 341) == [0, 171]
    assert window_starts(2048, 512, 341) == [0, 341, 682, 1023, 1364, 1536]
    assert window_starts(853, 512, 341) == [0, 341]


class Pointwise(nn.Module):
    """A per-pixel model: its logits at a pixel depend on that pixel only, so any window gives the same there."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


def test_slide_equals_whole_where_it_must():
    torch.manual_seed(0)
    point = Pointwise().eval()
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():  # overlapping windows average identical logits
        torch.testing.assert_close(slide_logits(point, x, 32, 21), point(x))
        seg = create_segmenter("upernet_convnext_atto", 4, channels=16, aux_channels=8).eval()
        # one window covers the image (the crop is at least its size): the same call, the same logits
        torch.testing.assert_close(logits_at(seg, x, "slide", 80, 53), logits_at(seg, x, "whole"))
        torch.testing.assert_close(logits_at(seg, x, "slide", 70, 21)[..., :45, :70], seg(x))
        # several windows over a real network: each pixel is the mean of the windows' logits
        y = torch.randn(1, 3, 32, 48)
        want = torch.zeros(1, 4, 32, 48)
        want[..., :32] += seg(y[..., :32])
        want[..., 16:] += seg(y[..., 16:])
        want[..., 16:32] /= 2
        torch.testing.assert_close(slide_logits(seg, y, 32, 16), want)
    with pytest.raises(UserError, match="unknown test mode"):
        logits_at(seg, x, "tiles")


def test_multi_scale_and_flip():
    torch.manual_seed(0)
    seg = create_segmenter("upernet_convnext_atto", 4, channels=16, aux_channels=8).eval()
    inputs = [torch.randn(3, 32, 48), torch.randn(3, 64, 96)]  # two scales of an image of 40 x 60
    with torch.no_grad():
        p = predict_probs(seg, inputs, (40, 60), flip=True)
        assert p.shape == (4, 40, 60)
        torch.testing.assert_close(p.sum(0), torch.ones(40, 60))
        one = predict_probs(seg, inputs[:1], (40, 60))
        mirrored = predict_probs(seg, [inputs[0].flip(-1)], (40, 60)).flip(-1)
        both = predict_probs(seg, inputs[:1], (40, 60), flip=True)
        torch.testing.assert_close(both, (one + mirrored) / 2)  # flip: the mirrored image's, mirrored back
        point = Pointwise().eval()  # a per-pixel model is flip-equivariant: flipping changes nothing
        torch.testing.assert_close(predict_probs(point, inputs[:1], (32, 48), flip=True),
                                   predict_probs(point, inputs[:1], (32, 48)))


def test_evaluate_segmenter_end_to_end():
    """A model that returns the labels' one-hot logits scores 100; the same with two classes swapped scores 0 on
    them."""
    label = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 255]], dtype=torch.uint8)

    class Oracle(nn.Module):
        def __init__(self, swap=False):
            super().__init__()
            self.swap = swap

        def forward(self, x):
            lab = label.long().clamp(max=2)
            if self.swap:
                lab = torch.where(lab == 0, 1, torch.where(lab == 1, 0, lab))
            return nn.functional.one_hot(lab, 3).permute(2, 0, 1)[None].float() * 10

    batches = [([torch.zeros(3, 2, 4)], label)]
    m = evaluate_segmenter(Oracle(), batches, Runtime(), 3, mode="whole")
    assert m.summarize() == pytest.approx({"mIoU": 100, "mAcc": 100, "aAcc": 100})
    m = evaluate_segmenter(Oracle(swap=True), batches, Runtime(), 3, mode="whole")
    assert m.per_class()["0"]["IoU"] == 0 and m.per_class()["2"]["IoU"] == 100
