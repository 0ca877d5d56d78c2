"""COCO evaluation of detectors (convnext/detection/evaluate.py) and drawing of detections (draw.py).

The ground truth is a tiny COCO dataset built in memory: three images, six objects of every size, polygon and
RLE masks, and non-contiguous category ids (3, 7, 11) so a label -> category mistake shows. The expected APs of
the hand-made cases are computed here by a separate 101-point interpolation, not read back from pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from PIL import Image
from torchvision.ops import box_iou

from convnext.detection.draw import class_colour, detections_to_dict, draw_detections, save_image
from convnext.detection.evaluate import STATS, CocoEvaluator, box_records, mask_records, merge_shards
from convnext.distributed import Dist
from convnext.errors import UserError

# pycocotools' mask.decode trips numpy 2's __array__(copy=...) deprecation inside pycocotools itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}]
CATEGORY_IDS = [3, 7, 11]  # label 1 -> 3, 2 -> 7, 3 -> 11
IMAGES = {1: (128, 160), 2: (80, 80), 3: (64, 96)}  # id -> (height, width)
IMAGE_IDS = sorted(IMAGES)


def rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def disk_rle(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    rle = mask_util.encode(np.asfortranarray(((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


# (annotation id, image id, category id, segmentation): areas small < 32^2 <= medium < 96^2 <= large
OBJECTS = [
    (1, 1, 3, rect(10, 10, 110, 100)),  # large cat
    (2, 1, 7, rect(130, 10, 20, 20)),  # small dog
    (3, 2, 7, disk_rle(80, 80, 40, 40, 22)),  # medium dog, an RLE mask
    (4, 2, 11, rect(5, 5, 30, 40)),  # medium bird
    (5, 3, 3, [[10, 60, 50, 60, 30, 20]]),  # small cat, a triangle
    (6, 3, 11, rect(60, 10, 25, 25)),  # small bird
]


def make_coco() -> COCO:
    annotations = []
    for ann_id, image_id, category, segmentation in OBJECTS:
        h, w = IMAGES[image_id]
        rle = segmentation if isinstance(segmentation, dict) else mask_util.merge(
            mask_util.frPyObjects(segmentation, h, w))
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                            "segmentation": segmentation, "area": float(mask_util.area(rle)),
                            "bbox": mask_util.toBbox(rle).tolist()})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"}
                               for i, (h, w) in IMAGES.items()],
                    "categories": CATEGORIES, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture(scope="module")
def coco():
    return make_coco()


def detection(coco, ann_id, score=1.0, label=None, dx=0.0):
    """A perfect detection of one ground truth object (its box and mask), optionally relabelled or shifted right."""
    ann = coco.anns[ann_id]
    x, y, w, h = ann["bbox"]
    return {"box": [x + dx, y, x + w + dx, y + h], "score": score,
            "label": CATEGORY_IDS.index(ann["category_id"]) + 1 if label is None else label,
            "mask": torch.from_numpy(coco.annToMask(ann)).float()}


def output(image_id, dets):
    """A torchvision detector's eval-mode output holding `dets`."""
    h, w = IMAGES[image_id]
    if not dets:
        return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                "masks": torch.zeros(0, 1, h, w)}
    return {"boxes": torch.tensor([d["box"] for d in dets]),
            "labels": torch.tensor([d["label"] for d in dets], dtype=torch.int64),
            "scores": torch.tensor([d["score"] for d in dets]),
            "masks": torch.stack([d["mask"] for d in dets])[:, None]}


def perfect(coco, image_id, score=1.0):
    return output(image_id, [detection(coco, a, score) for a in coco.getAnnIds(imgIds=[image_id])])


def evaluate(coco, outputs: dict) -> dict:
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update(list(outputs), list(outputs.values()))
    return ev.summarize()


def ap101(hits: list[bool], n_gt: int) -> float:
    """COCO's AP of one category at one IoU: detections sorted by score (True = matched a ground truth object);
    the precision at each of the 101 recall points 0, 0.01, ..., 1 is the best precision at that recall or more."""
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / n_gt
    return float(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                          for r in np.linspace(0, 1, 101)]))


# ------------------------------------------------------------------------------------ conversion


def test_box_records_are_xywh_with_the_coco_category_id():
    out = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0], [0.0, 0.0, 5.0, 5.0]]),
           "labels": torch.tensor([2, 3]), "scores": torch.tensor([0.75, 0.5])}
    records = box_records(4, out, CATEGORY_IDS)
    assert records == [{"image_id": 4, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 30.0], "score": 0.75},
                       {"image_id": 4, "category_id": 11, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5}]


def test_mask_records_threshold_at_one_half_and_encode_json_able_rle():
    probs = torch.zeros(2, 1, 6, 8)
    probs[0, 0, 1:3, 2:5] = 0.5  # exactly at the threshold: inside
    probs[0, 0, 4, 4] = 0.49  # just below: outside
    probs[1, 0, 5, 7] = 0.9
    out = {"labels": torch.tensor([1, 3]), "scores": torch.tensor([0.9, 0.8]), "masks": probs}
    records = mask_records(5, out, CATEGORY_IDS)
    assert [r["category_id"] for r in records] == [3, 11] and [r["image_id"] for r in records] == [5, 5]
    assert all(isinstance(r["segmentation"]["counts"], str) for r in records)
    json.dumps(records)
    for r, p in zip(records, probs):
        np.testing.assert_array_equal(mask_util.decode(r["segmentation"]), (p[0] >= 0.5).numpy())
    assert mask_util.area(records[0]["segmentation"]) == 6


def test_float_labels_still_map_to_categories():
    """A caller that casts every output tensor with .float() (the labels too) gets the same records."""
    out = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([3.0]), "scores": torch.tensor([1.0])}
    assert box_records(1, out, CATEGORY_IDS)[0]["category_id"] == 11


def test_labels_outside_1_to_k_are_refused(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    for bad in (0, 4):
        out = output(1, [detection(coco, 1, label=bad)])
        with pytest.raises(UserError, match=f"label {bad}"):
            ev.update([1], [out])


def test_mistakes_get_one_clear_sentence(coco):
    with pytest.raises(UserError, match=r"category ids \[5\]"):
        CocoEvaluator(coco, [3, 5])
    with pytest.raises(UserError, match="IoU type"):
        CocoEvaluator(coco, CATEGORY_IDS, iou_types=("keypoints",))
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    with pytest.raises(UserError, match="image id 99"):
        ev.update([99], [perfect(coco, 1)])
    no_masks = {k: v for k, v in perfect(coco, 1).items() if k != "masks"}
    with pytest.raises(UserError, match="no masks"):
        ev.update([1], [no_masks])
    with pytest.raises(UserError, match="paste the masks back"):
        ev.update([2], [perfect(coco, 1)])  # image 1's 128x160 masks for the 80x80 image 2
    with pytest.raises(UserError, match="no images"):
        ev.summarize()
    boxes_only = CocoEvaluator(coco, CATEGORY_IDS, iou_types=("bbox",))
    boxes_only.update([1], [no_masks])  # a box detector is fine when only boxes are evaluated
    assert set(boxes_only.summarize()) == {f"box_{s}" for s in STATS}


# ------------------------------------------------------------------------------------ known APs


def test_predicting_the_ground_truth_gives_100(coco):
    metrics = evaluate(coco, {i: perfect(coco, i) for i in IMAGE_IDS})
    assert set(metrics) == {f"{p}_{s}" for p in ("box", "mask") for s in STATS}
    assert all(v == pytest.approx(100.0) for v in metrics.values()), metrics


def test_one_of_two_objects_found(coco):
    """Cat has two objects (ids 1 and 5); only object 1 is found: recall 1/2 at precision 1."""
    outputs = {1: perfect(coco, 1), 2: perfect(coco, 2), 3: output(3, [detection(coco, 6)])}
    metrics = evaluate(coco, outputs)
    cat = ap101([True], n_gt=2)
    assert cat == pytest.approx(51 / 101)  # recall points 0.00..0.50 have precision 1, the rest 0
    for prefix in ("box", "mask"):
        assert metrics[f"{prefix}_AP"] == pytest.approx(100 * (cat + 1 + 1) / 3)
        assert metrics[f"{prefix}_AP50"] == pytest.approx(100 * (cat + 1 + 1) / 3)
        assert metrics[f"{prefix}_AR100"] == pytest.approx(100 * (0.5 + 1 + 1) / 3)
        assert metrics[f"{prefix}_APl"] == pytest.approx(100.0)  # the large object (the cat in image 1) was found


def test_per_class_ap50_by_name(coco):
    """Cat: one of its two objects found (51/101 at IoU 0.5); dog and bird all found; names from the annotations."""
    outputs = {1: perfect(coco, 1), 2: perfect(coco, 2), 3: output(3, [detection(coco, 6)])}
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update(list(outputs), list(outputs.values()))
    ev.summarize()
    for iou_type in ("bbox", "segm"):
        got = ev.per_class_ap50(iou_type)
        names = {c["id"]: c["name"] for c in CATEGORIES}
        assert list(got) == [names[i] for i in sorted(CATEGORY_IDS)]
        assert got[names[3]] == pytest.approx(100 * 51 / 101)
        assert got[names[7]] == pytest.approx(100.0) and got[names[11]] == pytest.approx(100.0)


def test_a_false_positive_scored_above_the_true_ones(coco):
    """A dog is 'found' in image 3, which has none, with a higher score than both real dogs."""
    false_dog = detection(coco, 6, score=0.95, label=2)  # the bird's box and mask, called a dog
    outputs = {1: output(1, [detection(coco, 1), detection(coco, 2, score=0.9)]),
               2: output(2, [detection(coco, 3, score=0.8), detection(coco, 4)]),
               3: output(3, [detection(coco, 5), detection(coco, 6), false_dog])}
    metrics = evaluate(coco, outputs)
    dog = ap101([False, True, True], n_gt=2)
    assert dog == pytest.approx(2 / 3)
    for prefix in ("box", "mask"):
        assert metrics[f"{prefix}_AP"] == pytest.approx(100 * (1 + dog + 1) / 3)
        assert metrics[f"{prefix}_AR100"] == pytest.approx(100.0)  # every object was still found


def test_a_loose_box_counts_only_at_the_lower_iou_thresholds(coco):
    """The large cat's box shifted right to IoU ~0.63 with a lower score than the other cat: a hit at IoU
    0.50, 0.55, 0.60, a false positive after a hit at 0.65..0.95. Its mask is untouched, so mask AP stays 100."""
    w = coco.anns[1]["bbox"][2]
    loose = detection(coco, 1, score=0.5, dx=0.23 * w)
    iou = box_iou(torch.tensor([loose["box"]]), torch.tensor([detection(coco, 1)["box"]])).item()
    assert 0.6 < iou < 0.65
    outputs = {1: output(1, [loose, detection(coco, 2)]), 2: perfect(coco, 2), 3: perfect(coco, 3)}
    metrics = evaluate(coco, outputs)
    cat_strict = ap101([True, False], n_gt=2)  # the other cat (score 1) first, then the loose box
    cat = (3 * 1.0 + 7 * cat_strict) / 10  # COCO's AP averages the 10 IoU thresholds 0.50:0.05:0.95
    assert metrics["box_AP"] == pytest.approx(100 * (cat + 1 + 1) / 3)
    assert metrics["box_AP50"] == pytest.approx(100.0)
    assert metrics["box_AP75"] == pytest.approx(100 * (cat_strict + 1 + 1) / 3)
    assert metrics["mask_AP"] == pytest.approx(100.0)


def test_a_wrong_category_scores_nothing(coco):
    shifted = {}
    for i in IMAGE_IDS:
        out = perfect(coco, i)
        shifted[i] = {**out, "labels": out["labels"] % 3 + 1}  # cat -> dog -> bird -> cat
    metrics = evaluate(coco, shifted)
    assert metrics["box_AP"] == 0.0 and metrics["mask_AP"] == 0.0 and metrics["box_AR100"] == 0.0


def test_only_the_detectors_categories_are_evaluated(coco):
    """A two-class detector (cat, dog) on this dataset is not charged for the birds it cannot know."""
    ev = CocoEvaluator(coco, [3, 7])
    for i in IMAGE_IDS:
        cats_and_dogs = [a for a in coco.getAnnIds(imgIds=[i]) if coco.anns[a]["category_id"] != 11]
        ev.update([i], [output(i, [detection(coco, a) for a in cats_and_dogs])])
    assert ev.summarize()["box_AP"] == pytest.approx(100.0)


def test_only_the_images_seen_are_evaluated(coco):
    assert evaluate(coco, {1: perfect(coco, 1), 2: perfect(coco, 2)})["box_AP"] == pytest.approx(100.0)
    # the same predictions with image 3 seen but nothing found there: its objects are missed
    missed = evaluate(coco, {1: perfect(coco, 1), 2: perfect(coco, 2), 3: output(3, [])})
    assert missed["box_AP"] < 90 and missed["mask_AP"] < 90


def test_a_size_without_objects_is_nan_not_minus_100(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update([2], [perfect(coco, 2)])  # image 2 has only medium objects
    metrics = ev.summarize()
    assert math.isnan(metrics["box_APs"]) and math.isnan(metrics["mask_APl"])
    assert metrics["box_APm"] == pytest.approx(100.0)
    assert "-" in ev.table().splitlines()[1]


def test_no_predictions_give_zeros(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update(IMAGE_IDS, [output(i, []) for i in IMAGE_IDS])
    metrics = ev.summarize()
    assert len(metrics) == 24 and all(v == 0.0 for v in metrics.values()), metrics
    lines = ev.table().splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "box" and lines[2].split()[0] == "mask"
    assert lines[1].split()[1:] == ["0.0"] * 12


def test_an_image_seen_twice_counts_once(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update([1, 2, 3], [perfect(coco, i) for i in IMAGE_IDS])
    ev.update([1], [perfect(coco, 1)])  # a padded sampler's repeat
    assert len(ev.records("bbox")) == len(OBJECTS) and ev.summarize()["box_AP"] == pytest.approx(100.0)


def test_table_prints_the_numbers(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update(IMAGE_IDS, [perfect(coco, i) for i in IMAGE_IDS])
    lines = ev.table().splitlines()
    assert lines[0].split() == list(STATS)
    assert lines[1].split() == ["box"] + ["100.0"] * 12 and lines[2].split() == ["mask"] + ["100.0"] * 12


def test_write_results_gives_a_file_coco_can_load(coco, tmp_path):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update(IMAGE_IDS, [perfect(coco, i, score=0.8) for i in IMAGE_IDS])
    path = ev.write_results(tmp_path / "sub" / "results.json")
    records = json.loads(path.read_text())
    assert len(records) == len(OBJECTS)
    assert {r["category_id"] for r in records} == set(CATEGORY_IDS)
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in records)
    with contextlib.redirect_stdout(io.StringIO()):
        for iou_type in ("bbox", "segm"):
            ev_coco = COCOeval(coco, coco.loadRes(str(path)), iou_type)
            ev_coco.evaluate()
            ev_coco.accumulate()
            ev_coco.summarize()
            assert ev_coco.stats[0] == pytest.approx(1.0)
    assert not list(path.parent.glob(".*.tmp"))  # written through the atomic writer


# ------------------------------------------------------------------------------------ distributed


def test_merge_shards_keeps_each_image_once():
    a = {1: {"bbox": ["a1"]}, 3: {"bbox": ["a3"]}}
    b = {2: {"bbox": ["b2"]}, 1: {"bbox": ["b1"]}}
    assert merge_shards([a, b]) == {1: {"bbox": ["a1"]}, 3: {"bbox": ["a3"]}, 2: {"bbox": ["b2"]}}


def gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One process of a 2-process gloo group: evaluates its shard of a padded sampler, gathers, summarizes."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        coco = make_coco()
        ev = CocoEvaluator(coco, CATEGORY_IDS)
        shard = [1, 2, 3, 1][rank::world]  # 3 images padded to 4 by repeating image 1: rank 0 [1, 3], rank 1 [2, 1]
        ev.update(shard, [perfect(coco, i) for i in shard])
        ev.gather(Dist(rank=rank, world=world))
        result = {"metrics": ev.summarize(), "images": sorted(ev.results), "n": len(ev.records("segm"))}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_gather_over_two_processes(tmp_path):
    mp.spawn(gather_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]  # every rank holds everything
    assert results[0]["images"] == IMAGE_IDS and results[0]["n"] == len(OBJECTS)  # image 1 counted once
    assert all(v == pytest.approx(100.0) for v in results[0]["metrics"].values())


def test_gather_is_a_no_op_in_one_process(coco):
    ev = CocoEvaluator(coco, CATEGORY_IDS)
    ev.update([1], [perfect(coco, 1)])
    ev.gather(Dist())
    assert sorted(ev.results) == [1]


# ------------------------------------------------------------------------------------ drawing

NAMES = ["cat", "dog"]


def one_detection(score=0.9, label=1):
    mask = torch.full((1, 60, 80), 0.1)
    mask[0, 15:35, 15:35] = 0.9
    return {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([label]),
            "scores": torch.tensor([score]), "masks": mask[None]}


def test_draw_paints_the_box_and_mask_and_nothing_far_away():
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    drawn = draw_detections(image, one_detection(), NAMES)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert image.sum() == 0  # the input is not drawn on
    assert drawn[:, 10, 25].tolist() == list(class_colour(1))  # the box's top edge in the class colour
    assert (drawn[:, 30, 30] > 0).any()  # inside the mask
    assert (drawn[:, 38, 38] == 0).all()  # inside the box, outside the mask (probability 0.1 < 0.5)
    assert (drawn[:, 45:, :] == 0).all() and (drawn[:, :, 70:] == 0).all()  # well outside


def test_draw_keeps_one_colour_per_class():
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    dog = draw_detections(image, one_detection(label=2), NAMES)
    assert dog[:, 10, 25].tolist() == list(class_colour(2)) != list(class_colour(1))
    assert draw_detections(image, one_detection(label=2), NAMES).equal(dog)


def test_draw_respects_the_score_threshold_and_no_detections():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    assert draw_detections(image, one_detection(score=0.3), NAMES).equal(image)
    assert not draw_detections(image, one_detection(score=0.3), NAMES, score_thresh=0.2).equal(image)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 60, 80)}
    assert draw_detections(image, empty, NAMES).equal(image)
    with pytest.raises(UserError, match="label 3"):
        draw_detections(image, one_detection(label=3), NAMES)


def test_detections_to_dict_is_json_with_names():
    out = {"boxes": torch.tensor([[1.234, 2.0, 30.0, 40.5], [0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([2, 1]),
           "scores": torch.tensor([0.87654, 0.2])}
    got = detections_to_dict(out, NAMES, score_thresh=0.5)
    assert got == [{"label": 2, "name": "dog", "score": 0.8765, "box": [1.23, 2.0, 30.0, 40.5]}]
    json.dumps(got)
    assert len(detections_to_dict(out, NAMES, score_thresh=0.1)) == 2


def test_save_image_png_and_jpeg(tmp_path):
    image = draw_detections(torch.zeros(3, 60, 80, dtype=torch.uint8), one_detection(), NAMES)
    png = save_image(image, tmp_path / "out" / "a.png")
    assert torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1).equal(image)  # PNG is lossless
    jpg = save_image(image, tmp_path / "b.JPG")
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and Image.open(jpg).size == (80, 60)
    with pytest.raises(UserError, match="png"):
        save_image(image, tmp_path / "c.gif")
