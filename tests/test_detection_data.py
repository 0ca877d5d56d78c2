"""COCO-format detection data (convnext/detection/data.py) and the offline scenes (convnext/detection/scenes.py):
exact masks and boxes, the official training transform's geometry, determinism, the annotation rules, and one
clear sentence for every bad input. Small images and scales throughout, so the whole file runs in seconds."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from convnext.config import DataConfig
from convnext.detection.data import (CocoData, build_coco_data, flip, random_crop, rescale_size, resize,
                                     train_transform)
from convnext.detection.scenes import TRAIN_PHOTOS, VAL_PHOTOS, make_scenes
from convnext.errors import UserError
from convnext.labels import FASHION_MNIST

# The official pipeline's shape at a tenth of the size: short sides, long-side cap, crop-policy sizes, crop range.
SMALL = dict(det_scales=(96, 128, 160), det_max_size=200, det_crop_scales=(100, 120, 140), det_crop_size=(48, 96))
SCENE_SIZE = (128, 160)


def cfg_for(root, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "coco", "root": str(root), "workers": 0, "batch_size": 2, **SMALL, **kw})


def extent(mask) -> list[int]:
    """[x1, y1, x2, y2] of a (H, W) mask's pixels, in the boxes' convention (x2 = last column + 1)."""
    mask = torch.as_tensor(mask).bool()
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def crop_tolerance(h, w) -> float:
    """How far a mask's extent may be from its box after the crop policy: masks live on a pixel grid, so the first
    resize leaves them up to 1 px off the (continuous) boxes, and the last resize magnifies that by up to
    max side / smallest crop; plus its own pixel (mmdet's masks do the same)."""
    return 1 + max(h, w) / SMALL["det_crop_size"][0]


def one_sentence(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    return out, make_scenes(out, num_train=8, num_val=4, size=SCENE_SIZE, seed=0, progress=False)


# ------------------------------------------------------------------------------------------------- the scenes


def test_scenes_are_coco_with_exact_masks(scenes):
    out, summary = scenes
    assert set(TRAIN_PHOTOS).isdisjoint(VAL_PHOTOS)
    for split, num in (("train2017", 8), ("val2017", 4)):
        d = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert [(c["id"], c["name"]) for c in d["categories"]] == list(enumerate(FASHION_MNIST, 1))
        assert len(d["images"]) == summary[split]["images"] == num
        assert len(d["annotations"]) == summary[split]["annotations"] == sum(summary[split]["per_class"].values())
        assert len({a["id"] for a in d["annotations"]}) == len(d["annotations"])
        for img in d["images"]:
            with Image.open(out / split / img["file_name"]) as f:
                assert (f.height, f.width) == (img["height"], img["width"]) == SCENE_SIZE
            anns = [a for a in d["annotations"] if a["image_id"] == img["id"]]
            assert 1 <= len(anns) <= 4
            masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns])
            assert masks.sum(0).max() == 1  # occlusion resolved: each pixel shows one item at most
            for a, m in zip(anns, masks):
                assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0
                assert 1 <= a["category_id"] <= 10
                assert a["area"] == int(m.sum()) > 0
                x1, y1, x2, y2 = extent(m)
                assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]


def test_scenes_are_deterministic_per_image(scenes, tmp_path):
    out, _ = scenes
    again = make_scenes(tmp_path / "a", num_train=2, num_val=1, size=SCENE_SIZE, seed=0, progress=False)
    other = make_scenes(tmp_path / "b", num_train=2, num_val=1, size=SCENE_SIZE, seed=1, progress=False)
    for split, n in (("train2017", 2), ("val2017", 1)):
        for i in range(1, n + 1):  # image i depends on (seed, split, i) only, not on how many were asked for
            name = f"{split}/{i:012d}.jpg"
            assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
            assert (tmp_path / "b" / name).read_bytes() != (out / name).read_bytes()
        first = json.loads((out / "annotations" / f"instances_{split}.json").read_text())["annotations"]
        same = json.loads((tmp_path / "a" / "annotations" / f"instances_{split}.json").read_text())["annotations"]
        assert same == first[: len(same)]
    assert again["train2017"]["images"] == 2 and other["seed"] == 1


# ------------------------------------------------------------------------------------------ reading the scenes


def test_coco_data_reads_the_scenes(scenes, capsys):
    out, summary = scenes
    data = build_coco_data(cfg_for(out))
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "crowd annotations ignored" in printed and "images for evaluation" in printed
    assert (data.num_train, data.num_eval, data.num_classes) == (8, 4, 10)
    assert data.class_names == list(FASHION_MNIST) and data.category_ids == list(range(1, 11))
    assert sorted(data.coco_eval.getImgIds()) == [1, 2, 3, 4]
    assert data.preprocessing.mean == (0.485, 0.456, 0.406) and data.preprocessing.img_size == 800
    for i in range(data.num_train):  # as stored: boxes are exactly the masks' extents
        img, t = data.train_sample(i)
        assert img.shape == (3, *SCENE_SIZE) and img.dtype == torch.float32 and 0 <= img.min() <= img.max() <= 1
        assert t["masks"].shape == (len(t["boxes"]), *SCENE_SIZE) and t["masks"].dtype == torch.uint8
        assert t["labels"].dtype == torch.int64 and 1 <= t["labels"].min() and t["labels"].max() <= 10
        for box, mask in zip(t["boxes"], t["masks"]):
            assert box.tolist() == extent(mask)

    shards = [list(data.eval_batches(world=2, rank=r)) for r in range(2)]
    ids = [m["image_id"] for shard in shards for _, metas in shard for m in metas]
    assert sorted(ids) == [1, 2, 3, 4]  # every image once over the ranks
    for shard in shards:
        for images, metas in shard:
            for img, m in zip(images, metas):
                assert img.shape == (3, *SCENE_SIZE) and m["orig_size"] == SCENE_SIZE and img.dtype == torch.float32
    subset = [m["image_id"] for _, metas in data.eval_batches(1, 0, limit=2) for m in metas]
    assert len(subset) == 2 and subset == data.eval_image_ids(limit=2)
    assert subset == [m["image_id"] for _, metas in data.eval_batches(1, 0, limit=2) for m in metas]

    eval_only = build_coco_data(cfg_for(out, train_split="nonexistent"), train=False)  # reads only val2017
    assert eval_only.num_train == 0 and eval_only.num_eval == 4


def test_training_batches_keep_masks_inside_boxes_at_the_pipeline_scales(scenes):
    data = build_coco_data(cfg_for(scenes[0]))
    for epoch in range(3):
        for images, targets in data.train_batches(epoch, range(4), accum=1, world=1, rank=0):
            for img, t in zip(images, targets):
                h, w = img.shape[-2:]
                assert max(h, w) <= SMALL["det_max_size"]
                assert min(h, w) in SMALL["det_scales"] or max(h, w) >= SMALL["det_max_size"] - 1
                assert t["masks"].shape[-2:] == (h, w) and len(t["masks"]) == len(t["boxes"]) == len(t["labels"])
                tol = crop_tolerance(h, w)
                for box, mask in zip(t["boxes"], t["masks"]):
                    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
                    if mask.any():  # a crop cuts the box, not the mask: the mask stays inside the box
                        x1, y1, x2, y2 = extent(mask)
                        assert x1 >= box[0] - tol and y1 >= box[1] - tol and x2 <= box[2] + tol and y2 <= box[3] + tol


def test_batches_are_deterministic_and_resumable(scenes):
    def run(data, epoch, steps, world=1, rank=0):
        return [(imgs, tgts) for imgs, tgts in data.train_batches(epoch, steps, 1, world, rank)]

    def same(a, b):
        return all(len(x[0]) == len(y[0]) and all(torch.equal(i, j) for i, j in zip(x[0], y[0]))
                   and all(torch.equal(s["boxes"], t["boxes"]) and torch.equal(s["masks"], t["masks"])
                           and torch.equal(s["labels"], t["labels"]) and s["image_id"] == t["image_id"]
                           for s, t in zip(x[1], y[1])) for x, y in zip(a, b)) and len(a) == len(b)

    data = build_coco_data(cfg_for(scenes[0]))
    first = run(data, 0, range(3))
    assert same(first, run(build_coco_data(cfg_for(scenes[0])), 0, range(3)))  # a new process: the same batches
    assert same(first[1:], run(data, 0, range(1, 3)))  # resumed at step 1
    assert not same(first, run(data, 1, range(3)))  # another epoch: another order and other draws
    assert not same(first, run(build_coco_data(cfg_for(scenes[0]), seed=1), 0, range(3)))
    shapes = {}  # each image is augmented anew in each epoch
    for epoch in range(4):
        for images, targets in run(data, epoch, range(4)):
            for img, t in zip(images, targets):
                shapes.setdefault(t["image_id"], set()).add(tuple(img.shape))
    assert sum(len(s) > 1 for s in shapes.values()) >= 4
    # two processes of batch 1 read what one process of batch 2 reads, and worker processes change nothing
    one = build_coco_data(cfg_for(scenes[0], batch_size=1))
    halves = [run(one, 0, range(1), world=2, rank=r)[0] for r in range(2)]
    assert same([(halves[0][0] + halves[1][0], halves[0][1] + halves[1][1])], first[:1])
    assert same(first, run(build_coco_data(cfg_for(scenes[0], workers=1)), 0, range(3)))


def test_step_scale_gives_every_image_of_a_step_one_short_side_on_every_process(scenes):
    def short_sides(data, epoch, world, rank):
        return [{min(img.shape[-2:]) for img in images}
                for images, _ in data.train_batches(epoch, range(4), 1, world, rank)]

    # no long-side cap in reach (crops at most 1.5:1 at 160 is 240), so every short side is the drawn scale
    cfg = cfg_for(scenes[0], batch_size=1, det_step_scale=True, det_max_size=1000)
    per_rank = [short_sides(build_coco_data(cfg), 0, 2, r) for r in range(2)]
    assert all(len(a) == 1 and a == b for a, b in zip(*per_rank))  # one side per step, the same on both processes
    sides = [a.pop() for a in per_rank[0]]
    assert set(sides) <= set(SMALL["det_scales"]) and len(set(sides)) > 1  # drawn anew from step to step
    assert sides == [a.pop() for a in short_sides(build_coco_data(cfg), 0, 2, 1)]  # deterministic
    assert sides != [a.pop() for a in short_sides(build_coco_data(cfg), 1, 2, 0)]  # another epoch, other draws
    # without it, the images of one step differ in scale
    cfg = cfg_for(scenes[0], batch_size=4, det_max_size=1000)
    assert any(len(s) > 1 for e in range(3) for s in short_sides(build_coco_data(cfg), e, 1, 0))


# ---------------------------------------------------------------------------------- the transform's geometry


def rectangles(h=200, w=300):
    """An image of four disjoint coloured rectangles on black, their boxes and masks, and their colours."""
    rects = [(10, 20, 70, 80), (120, 30, 200, 70), (200, 100, 290, 190), (30, 120, 110, 180)]  # x1, y1, x2, y2
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)
    img, masks = torch.zeros(3, h, w, dtype=torch.uint8), torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        img[:, y1:y2, x1:x2] = colours[k, :, None, None]
        masks[k, y1:y2, x1:x2] = 1
    return img, torch.tensor(rects, dtype=torch.float32), masks, colours


def erode(m):
    out = m.clone()
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    out[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return out


def test_flip_resize_crop_keep_image_boxes_and_masks_together():
    cfg = cfg_for("unused")
    flips = kept_all = cropped = empty = instances = 0
    for seed in range(40):
        img0, boxes0, masks0, colours = rectangles()
        img, boxes, masks, keep = train_transform(img0, boxes0, masks0, cfg, random.Random(seed))
        h, w = img.shape[-2:]
        assert masks.shape == (len(keep), h, w) and boxes.shape == (len(keep), 4)
        resized_only = (h, w) in {rescale_size(200, 300, s, cfg.det_max_size) for s in cfg.det_scales}  # policy (a)
        cropped += not resized_only
        kept_all += len(keep) == 4
        tol = 1.0 if resized_only else crop_tolerance(h, w)
        for box, mask, k in zip(boxes, masks, keep.tolist()):
            instances += 1
            if not mask.any():  # a sliver of a box under a pixel wide at the crop's edge (mmdet keeps those too)
                empty += 1
                continue
            assert (box - torch.tensor(extent(mask), dtype=box.dtype)).abs().max() <= tol
            inner = erode(erode(mask.bool()))
            if inner.any():  # the image shows this instance's colour under its mask
                close = ((img[:, inner].float() - colours[k][:, None]).abs().max(0).values < 64).float().mean()
                assert close > 0.95
        if len(keep) == 4 and 0 in keep.tolist():
            flips += bool(boxes[0, 0] > w / 2)  # rectangle 0 starts on the left; after a flip, on the right
    assert 8 <= cropped <= 32 and kept_all >= 8  # both AutoAugment policies are drawn
    assert empty <= instances // 20
    assert flips >= 3


def test_rescale_is_mmcv_and_flip_mirrors_boxes():
    assert rescale_size(480, 640, 800, 1333) == (800, 1067)  # short side to 800
    assert rescale_size(300, 1000, 800, 1333) == (400, 1333)  # long side capped at 1333
    assert rescale_size(1000, 300, 480, 1333) == (1333, 400)
    img, boxes, masks, _ = rectangles()
    fi, fb, fm = flip(img, boxes, masks)
    assert torch.equal(fi, img.flip(-1)) and torch.equal(fm.flip(-1), masks)
    assert [extent(m) for m in fm] == fb.int().tolist()
    ri, rb, rm = resize(img, boxes, masks, (100, 150))
    assert ri.shape == (3, 100, 150) and rm.shape == (4, 100, 150) and torch.allclose(rb, boxes / 2)
    assert [extent(m) for m in rm] == rb.int().tolist()


def test_random_crop_sizes_and_dropped_instances():
    h, w = 120, 300
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([ys, xs, xs * 0]).float()  # the pixels say where they came from
    boxes = torch.tensor([[0, 0, 20, 20], [280, 100, 300, 120], [100, 40, 200, 80]], dtype=torch.float32)
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    sizes = set()
    for seed in range(60):
        ci, cb, cm, keep = random_crop(img, boxes, masks, (48, 96), random.Random(seed))
        ch, cw = ci.shape[-2:]
        sizes.add((ch, cw))
        assert 48 <= ch <= 96 and 48 <= cw <= 96 and cm.shape == (len(keep), ch, cw)
        y0, x0 = int(ci[0, 0, 0]), int(ci[1, 0, 0])
        for k in range(3):
            x1, y1, x2, y2 = boxes[k].tolist()
            overlaps = min(x2, x0 + cw) > max(x1, x0) and min(y2, y0 + ch) > max(y1, y0)
            assert overlaps == (k in keep.tolist())
        for box, mask in zip(cb, cm):
            assert box.int().tolist() == extent(mask)
    assert len(sizes) > 20  # the crop size is drawn, not fixed
    small = random_crop(img[:, :40], boxes, masks[:, :40], (48, 96), random.Random(0))[0]
    assert small.shape[1] == 40  # an image smaller than the range is kept whole on that side (mmdet)


# ----------------------------------------------------------------------------- annotation rules and bad input


def write_coco(root, images, annotations, categories=None, splits=("train2017", "val2017"), pictures=True):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in splits:
        (root / split).mkdir(exist_ok=True)
        if pictures:
            for img in images:
                pixels = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / img["file_name"])
        coco = {"images": images, "annotations": annotations,
                "categories": categories or [{"id": 1, "name": "a"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def image(i, h=40, w=60):
    return {"id": i, "file_name": f"{i}.png", "height": h, "width": w}


def ann(i, image_id, bbox, category=1, **kw):
    x, y, w, h = bbox
    poly = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"id": i, "image_id": image_id, "category_id": category, "bbox": bbox, "area": w * h,
            "segmentation": poly, "iscrowd": 0, **kw}


def test_crowd_degenerate_empty_clipped_and_category_order(tmp_path, capsys):
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((6, 8), np.uint8), ((10, 24), (30, 22)))))
    rle["counts"] = rle["counts"].decode()  # compressed RLE as in a json: counts as str
    crowd = {"size": [40, 60], "counts": [100, 50, 2250]}  # uncompressed RLE, as COCO stores crowds
    anns = [
        ann(1, 1, [10, 5, 20, 10], category=7),
        ann(2, 1, [0, 0, 30, 20], iscrowd=1, segmentation=crowd),
        ann(3, 1, [50, 30, 20, 20], category=3),  # reaches outside the 60 x 40 image: clipped
        ann(4, 2, [5, 5, 10, 10], iscrowd=1, segmentation=crowd),  # image 2: only a crowd
        ann(5, 4, [5, 5, 0.5, 10]),  # w < 1: degenerate; image 4 left empty
        ann(6, 5, [5, 5, 10, 10], area=0),  # area 0: degenerate
        ann(7, 5, [30, 10, 8, 6], segmentation=rle),
        ann(8, 5, [1, 1, 5, 5], category=99),  # a category the json does not list
        ann(9, 6, [100, 10, 10, 10]),  # wholly outside the image: degenerate
        ann(10, 6, [3, 4, 11, 9], segmentation=[]),  # no segmentation: the box is the mask
        ann(11, 7, [2, 2, 5, 5]),  # on a 20 x 20 image: under mmdet's 32 px minimum
    ]
    cats = [{"id": 7, "name": "c"}, {"id": 1, "name": "a"}, {"id": 3, "name": "b"}]
    images = [image(i) for i in range(1, 7)] + [image(7, 20, 20)]  # image 3 has no annotation at all
    root = write_coco(tmp_path, images, anns, cats)
    data = build_coco_data(cfg_for(root))
    printed = capsys.readouterr().out
    assert printed.count(f"{root / 'train2017'}: 3 images (3 without annotations skipped), 2 crowd annotations "
                         f"ignored, 3 degenerate boxes dropped, 1 boxes clipped to the image, 1 annotations of "
                         f"unlisted categories ignored, 1 images under 32 px skipped") == 1
    c = data.counts
    assert (c.images, c.empty, c.crowd, c.degenerate, c.clipped, c.unknown, c.small) == (3, 3, 2, 3, 1, 1, 1)
    assert data.category_ids == [1, 3, 7] and data.class_names == ["a", "b", "c"] and data.num_classes == 3
    assert data.num_train == 3 and data.num_eval == 7  # evaluation reads every image (COCOeval scores them all)

    _, t = data.train_sample(0)  # image 1: category 7 -> label 3, category 3 -> label 2; the crowd is gone
    assert t["image_id"] == 1 and t["labels"].tolist() == [3, 2]
    assert t["boxes"].tolist() == [[10, 5, 30, 15], [50, 30, 60, 40]]
    for box, mask in zip(t["boxes"], t["masks"]):
        assert (torch.tensor(extent(mask)) - box).abs().max() <= 1
    _, t = data.train_sample(1)  # image 5: only the RLE annotation is a target
    assert t["labels"].tolist() == [1] and extent(t["masks"][0]) == [30, 10, 38, 16] == t["boxes"][0].tolist()
    _, t = data.train_sample(2)  # image 6: the box-only annotation
    assert extent(t["masks"][0]) == [3, 4, 14, 13] and int(t["masks"][0].sum()) == 11 * 9


def test_bad_input_is_one_clear_sentence(tmp_path):
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(tmp_path / "nowhere"))
    one_sentence(e, "nowhere", "does not exist")
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(tmp_path))
    one_sentence(e, "instances_val2017.json", "not found")

    (tmp_path / "annotations").mkdir()
    for text, words in (("{not json", ("not valid JSON",)), ("[1, 2]", ("not a COCO instances file",)),
                        ('{"images": [], "annotations": []}', ("not a COCO instances file", "categories")),
                        ('{"images": [], "annotations": [{"x": 1}], "categories": []}', ("lacks the field",))):
        (tmp_path / "annotations" / "instances_val2017.json").write_text(text)
        with pytest.raises(UserError) as e:
            build_coco_data(cfg_for(tmp_path), train=False)
        one_sentence(e, "instances_val2017.json", *words)

    root = write_coco(tmp_path / "noimg", [image(1)], [ann(1, 1, [1, 1, 5, 5])], pictures=False)
    (root / "val2017").rmdir()
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(root), train=False)
    one_sentence(e, "val2017", "does not exist")

    root = write_coco(tmp_path / "empty", [], [])
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(root))
    one_sentence(e, "lists no images")
    root = write_coco(tmp_path / "crowds", [image(1), image(2)],
                      [ann(1, 1, [1, 1, 5, 5], iscrowd=1), ann(2, 2, [1, 1, 0, 5])])
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(root))
    one_sentence(e, "none of the 2 images", "usable annotation", "nothing to train on")


@pytest.mark.parametrize("damage, words", [
    ("delete", ("cannot read image", "1.png", "no such file", "skip_bad_images")),
    ("garbage", ("cannot read image", "1.png", "UnidentifiedImageError")),
    ("resize", ("cannot read image", "1.png", "30x20 pixels but the annotations say 60x40")),
])
def test_unreadable_images_stop_or_are_counted(tmp_path, damage, words):
    images = [image(i) for i in (1, 2, 3)]
    root = write_coco(tmp_path, images, [ann(i, i, [5, 5, 20, 20]) for i in (1, 2, 3)])
    for split in ("train2017", "val2017"):
        bad = root / split / "1.png"
        if damage == "delete":
            bad.unlink()
        elif damage == "garbage":
            bad.write_bytes(b"this is not an image")
        else:
            Image.new("RGB", (30, 20)).save(bad)
    data = build_coco_data(cfg_for(root, batch_size=3))
    with pytest.raises(UserError) as e:
        list(data.train_batches(0, range(1), 1, 1, 0))
    one_sentence(e, *words)
    with pytest.raises(UserError) as e:
        list(data.eval_batches(1, 0))
    one_sentence(e, *words)

    data = build_coco_data(cfg_for(root, batch_size=3, skip_bad_images=True))
    (images_, targets), = list(data.train_batches(0, range(1), 1, 1, 0))
    assert len(images_) == 2 and 1 not in [t["image_id"] for t in targets] and data.skipped == 1
    ids = [m["image_id"] for _, metas in data.eval_batches(1, 0) for m in metas]
    assert ids == [2, 3] and data.skipped == 2


def test_bad_pipeline_settings_are_refused(scenes):
    with pytest.raises(UserError) as e:
        build_coco_data(cfg_for(scenes[0], det_crop_size=(96, 48)))
    one_sentence(e, "det_crop_size")
    with pytest.raises(UserError) as e:
        CocoData(cfg_for(scenes[0], det_scales=()))
    one_sentence(e, "det_scales")
