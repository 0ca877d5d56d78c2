"""ADE20K-layout data (convnext/segmentation/data.py) and the scenes' ADE copy: the label mapping, the official
training transform's ops (resize ratio, crop with the category-ratio rule, flip, photometric distortion, padding),
the test inputs, sharding, and one clear sentence (or a counted skip) for every bad input. Tiny images
throughout."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from convnext.config import DataConfig
from convnext.detection.scenes import make_scenes
from convnext.errors import UserError
from convnext.labels import FASHION_MNIST
from convnext.segmentation.data import (ADE20K_CLASSES, build_seg_data, eval_inputs, hsv_to_rgb, normalize,
                                        object_window, pad_to, photometric_distortion, random_crop, read_label,
                                        rgb_to_hsv, scaled_size, train_transform)

SMALL = dict(seg_scale=(128, 32), seg_crop_size=32, seg_stride=21)  # the ADE20K pipeline at 1/16 of its scale


def cfg_for(root, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "ade20k", "root": str(root), "workers": 0, "batch_size": 2,
                         "train_split": "training", "eval_split": "validation", **SMALL, **kw})


def write_pair(root, split, name, label: np.ndarray, size=None):
    """An image (random pixels) and its label map in the ADE20K layout."""
    h, w = size or label.shape
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{name}.jpg")
    Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")


def fake_ade(root, n_train=3, n_val=2, h=40, w=56):
    """A tiny ADE20K-layout set: label values 0 ("other") and 1..150, in bands."""
    for split, n in (("training", n_train), ("validation", n_val)):
        for i in range(n):
            label = np.zeros((h, w), np.uint8)
            label[:, w // 3: 2 * w // 3] = 1 + i
            label[:, 2 * w // 3:] = 150
            write_pair(root, split, f"ADE_{split}_{i:08d}", label)
    return root


def one_sentence(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------------------------------ labels


def test_label_mapping(tmp_path):
    raw = np.array([[0, 1, 2, 150, 255]], np.uint8)
    Image.fromarray(raw).save(tmp_path / "a.png")
    reduced = read_label(str(tmp_path / "a.png"), (1, 5), 150, reduce_zero_label=True)
    assert reduced.tolist() == [[255, 0, 1, 149, 255]] and reduced.dtype == torch.uint8  # 0 -> ignored, k -> k-1
    Image.fromarray(np.array([[0, 1, 10, 255]], np.uint8)).save(tmp_path / "b.png")
    assert read_label(str(tmp_path / "b.png"), (1, 4), 11, reduce_zero_label=False).tolist() == [[0, 1, 10, 255]]
    Image.fromarray(np.array([[151]], np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="holds the value 151, which is no class"):
        read_label(str(tmp_path / "c.png"), (1, 1), 150, reduce_zero_label=True)
    with pytest.raises(ValueError, match="holds the value 10, .* 0..9"):  # 10 classes, no "other": 0..9 and 255
        read_label(str(tmp_path / "b.png"), (1, 4), 10, reduce_zero_label=False)
    with pytest.raises(ValueError, match="is 4x1 pixels but the image is 5x1"):
        read_label(str(tmp_path / "b.png"), (1, 5), 11, reduce_zero_label=False)
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="3 channels"):
        read_label(str(tmp_path / "rgb.png"), (1, 4), 11, reduce_zero_label=False)


# ------------------------------------------------------------------------------------------ the transforms


def test_resize_scale_is_mmsegs():
    """Resize(img_scale=(2048, 512), ratio_range, keep_ratio): the scale x ratio, truncated, then mmcv.imrescale."""
    assert scaled_size(512, 683, (2048, 512)) == (512, 683)
    assert scaled_size(512, 683, (2048, 512), 0.5) == (256, 342)  # long 1024, short 256: factor 0.5, half up
    assert scaled_size(300, 2000, (2048, 512)) == (307, 2048)  # a panorama: the long side caps it
    assert scaled_size(512, 683, (2048, 512), 1.7) == (870, 1161)  # short int(870.4); 683 x 870/512 + 0.5


def test_random_crop_follows_the_category_ratio_rule():
    """A crop where one class covers >= 75% of the labelled pixels is drawn again, up to 10 times."""
    label = torch.zeros(64, 128, dtype=torch.uint8)  # class 0 everywhere but a mixed strip at the right
    label[:, 96:] = torch.arange(32).remainder(3).to(torch.uint8)[None] + 1
    img = torch.zeros(3, 64, 128, dtype=torch.uint8)
    def passes(lab) -> bool:
        counts = torch.bincount(lab.flatten().long())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < 0.75

    # a window passes when it takes > 16 columns of the strip: 16 of its 65 offsets; with 10 re-draws that is
    # 1 - (49/65)^10 = 94% of the crops, without the rule 25%
    ok = sum(passes(random_crop(img, label, 64, 0.75, random.Random(s))[1]) for s in range(50))
    plain = sum(passes(random_crop(img, label, 64, 1.0, random.Random(s))[1]) for s in range(50))
    assert ok >= 40 and plain <= 22
    a = random_crop(img, label, 64, 0.75, random.Random(3))[1]
    assert torch.equal(a, random_crop(img, label, 64, 0.75, random.Random(3))[1])  # a function of the seed
    small, lab = random_crop(torch.zeros(3, 20, 30, dtype=torch.uint8), torch.zeros(20, 30, dtype=torch.uint8),
                             64, 0.75, random.Random(0))
    assert small.shape == (3, 20, 30) and lab.shape == (20, 30)  # smaller than the crop: all of it (then padded)
    rng, whole = random.Random(0), label[:, :64].clone()
    state = rng.getstate()
    same_img, same_lab = random_crop(img[:, :, :64], whole, 64, 0.75, rng)  # fails the rule, but has one window
    assert torch.equal(same_lab, whole) and same_img.shape == (3, 64, 64) and rng.getstate() == state


def test_object_crop_holds_a_whole_region():
    """data.seg_object_crop: the window holds the whole extent of one connected region of a class present, drawn
    uniformly (both classes here, and both squares of class 2), moved into the image where it would stick out."""
    label = torch.zeros(100, 120, dtype=torch.uint8)
    label[5:25, 90:115] = 2  # two regions of class 2: one at the top right, one at the bottom left
    label[70:95, 2:20] = 2
    label[40:60, 40:60] = 255  # ignored: never a class to crop around
    img = torch.arange(100 * 120, dtype=torch.int32).view(1, 100, 120).expand(3, -1, -1)
    seen = set()
    for s in range(60):
        rng = random.Random(s)
        rng.random()  # random_crop's draw against object_p
        y0, x0 = object_window(label, 48, rng)
        assert 0 <= y0 <= 52 and 0 <= x0 <= 72  # inside the image
        if label[y0: y0 + 48, x0: x0 + 48].eq(2).sum() in (20 * 25, 25 * 18):  # one whole square in view
            seen.add("top" if y0 < 30 else "bottom")
        cropped, lab = random_crop(img, label, 48, 0.75, random.Random(s), object_p=1.0)
        assert torch.equal(cropped[0], img[0, y0: y0 + 48, x0: x0 + 48]) and torch.equal(lab, label[y0: y0 + 48,
                                                                                                   x0: x0 + 48])
    assert seen == {"top", "bottom"}
    big = torch.ones(100, 120, dtype=torch.uint8)  # one region larger than the window: a window inside it
    assert all(0 <= v <= 72 for v in object_window(big, 48, random.Random(1)))
    # without object_p the crop is the category-ratio rule's, draw for draw
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert torch.equal(random_crop(img, label, 48, 0.75, rng_a)[1], random_crop(img, label, 48, 0.75, rng_b,
                                                                                 object_p=0.0)[1])


def test_padding_and_normalisation():
    img = torch.full((3, 20, 30), 128, dtype=torch.uint8)
    x, y = pad_to(normalize(img), torch.ones(20, 30, dtype=torch.uint8), 32)
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert (x[:, 20:] == 0).all() and (x[:, :, 30:] == 0).all()  # after Normalize: 0 is the mean colour
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all() and (y[:20, :30] == 1).all()
    # mmseg's img_norm_cfg on 0-255: (128 - 123.675) / 58.395 in the red channel
    assert x[0, 0, 0].item() == pytest.approx((128 - 123.675) / 58.395, abs=1e-5)


def test_hsv_and_photometric_distortion():
    x = torch.rand(3, 16, 16)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    h = rgb_to_hsv(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))  # red: hue 0, full saturation and value
    assert h.flatten().tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert rgb_to_hsv(torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1))[0].item() == pytest.approx(240.0)
    img = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    changed = 0
    for seed in range(16):
        out = photometric_distortion(img, random.Random(seed))
        assert out.dtype == torch.uint8 and out.shape == img.shape
        assert torch.equal(out, photometric_distortion(img, random.Random(seed)))
        changed += not torch.equal(out, img)
    assert 12 <= changed < 16  # every step skipped with probability 1/2^4 (and the order coin)


def test_train_transform_shapes_and_labels():
    cfg = cfg_for("/nowhere")
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    label = torch.full((40, 56), 3, dtype=torch.uint8)
    label[:, :10] = 255
    for seed in range(8):
        x, y = train_transform(img, label, cfg, random.Random(seed))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 32)
        assert set(y.unique().tolist()) <= {3, 255}


def test_test_inputs_keep_the_aspect():
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    outs = eval_inputs(img, (128, 32), ratios=(0.5, 1.0, 1.75))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 22), (32, 45), (56, 78)]


# ------------------------------------------------------------------------------------------ the loader


def test_ade_layout_loader(tmp_path, capsys):
    root = fake_ade(tmp_path)
    data = build_seg_data(cfg_for(root))
    assert "3 training images" in capsys.readouterr().out
    assert (data.num_train, data.num_eval, data.num_classes) == (3, 2, 150)
    assert data.class_names == list(ADE20K_CLASSES) and data.class_names[0] == "wall"
    assert data.inference == {"scale": (128, 32), "mode": "slide", "crop": 32, "stride": 21,
                              "reduce_zero_label": True, "ratios": (1.0,), "flip": False}
    img, label = data.train_sample(0)  # as stored: the bands, 0 -> 255, 1 -> 0, 150 -> 149
    assert img.shape == (3, 40, 56) and label[:, 0].eq(255).all() and label[:, -1].eq(149).all()
    batches = list(data.train_batches(0, range(1), accum=1, world=1, rank=0))
    assert len(batches) == 1 and batches[0][0].shape == (2, 3, 32, 32) and batches[0][1].shape == (2, 32, 32)
    again = list(data.train_batches(0, range(1), accum=1, world=1, rank=0))
    assert torch.equal(batches[0][0], again[0][0])  # (seed, epoch, position) decide everything
    shards = [list(data.eval_batches(2, r)) for r in range(2)]
    assert [len(s) for s in shards] == [1, 1]  # rank::world: each image once
    inputs, label = shards[0][0]
    assert len(inputs) == 1 and inputs[0].shape == (3, 32, 45) and label.shape == (40, 56)
    ms = list(data.eval_batches(1, 0, ratios=(0.5, 1.0)))
    assert [tuple(x.shape[-2:]) for x in ms[0][0]] == [(16, 22), (32, 45)]
    (root / "classes.txt").write_text("other\n" + "\n".join(f"c{i}" for i in range(150)) + "\n")
    assert build_seg_data(cfg_for(root)).class_names[:2] == ["c0", "c1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, num_train=4, num_val=2, size=(64, 80), items=(1, 3), scale=(1.0, 2.0), seed=0, progress=False)
    return out


def test_scenes_ade_layout_matches_the_coco_masks(scenes):
    """Every label map is the scene's visible masks: 0 where none is, category id (k + 1) where it is; the images
    are the COCO files themselves."""
    assert (scenes / "ade" / "classes.txt").read_text().split("\n")[:2] == ["background", FASHION_MNIST[0]]
    for split, ade in (("train2017", "training"), ("val2017", "validation")):
        coco = json.loads((scenes / "annotations" / f"instances_{split}.json").read_text())
        for img in coco["images"]:
            stem = img["file_name"].rsplit(".", 1)[0]
            assert (scenes / "ade" / "images" / ade / img["file_name"]).read_bytes() == \
                (scenes / split / img["file_name"]).read_bytes()
            label = np.asarray(Image.open(scenes / "ade" / "annotations" / ade / f"{stem}.png"))
            want = np.zeros((img["height"], img["width"]), np.uint8)
            for a in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
                want[mask_utils.decode(a["segmentation"]).astype(bool)] = a["category_id"]
            assert np.array_equal(label, want) and label.max() >= 1


def test_the_scenes_load_with_or_without_the_background_class(scenes):
    root = scenes / "ade"
    with_bg = build_seg_data(cfg_for(root, seg_num_classes=11, seg_reduce_zero_label=False))
    assert with_bg.class_names == ["background", *FASHION_MNIST] and with_bg.num_train == 4
    _, label = with_bg.train_sample(0)
    assert label.min() == 0 and label.max() <= 10
    ignored = build_seg_data(cfg_for(root, seg_num_classes=10))
    assert ignored.class_names == list(FASHION_MNIST)
    _, label = ignored.train_sample(0)
    assert (label == 255).any() and set(label.unique().tolist()) <= set(range(10)) | {255}
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(root, seg_num_classes=150))
    one_sentence(e, "classes.txt", "names 10 classes")


@pytest.mark.parametrize("ratios", [(1.0, 1.0), (0.5, 2.0)])
def test_the_cache_gives_the_same_samples(scenes, ratios, monkeypatch):
    """data.seg_cache: pass after pass, the same batches as reading every file each time (at a fixed scale the kept
    pairs are resized, with their object regions; under random rescaling only decoded), and the files are read once."""
    kw = dict(seg_num_classes=11, seg_reduce_zero_label=False, seg_scale=(160, 40), seg_ratio_range=ratios,
              seg_object_crop=0.5, seg_crop_size=32)
    plain, cached = build_seg_data(cfg_for(scenes / "ade", **kw)), build_seg_data(cfg_for(scenes / "ade", **kw,
                                                                                          seg_cache=True))
    assert plain.cache is None and cached.cache == {}
    for epoch in range(3):
        a = list(plain.train_batches(epoch, range(2), accum=1, world=1, rank=0))
        b = list(cached.train_batches(epoch, range(2), accum=1, world=1, rank=0))
        assert len(a) == len(b) == 2
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(cached.cache) == [0, 1, 2, 3]
    fixed = ratios[0] == ratios[1]
    assert all(p.resized == fixed and (p.regions is not None) == fixed for p in cached.cache.values())
    if fixed:
        assert all(p.label.shape == (40, 50) for p in cached.cache.values())  # 64 x 80 at the short side 40

    def no_reading(path):
        raise AssertionError(f"{path} read again")
    monkeypatch.setattr("convnext.segmentation.data.read_image", no_reading)
    assert len(list(cached.train_batches(3, range(2), accum=1, world=1, rank=0))) == 2
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(scenes / "ade", **kw, seg_cache=True, workers=2))
    one_sentence(e, "data.seg_cache", "data.workers=0")


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_sentence_or_a_counted_skip(tmp_path):
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(tmp_path / "nowhere"))
    one_sentence(e, "does not exist")
    (tmp_path / "images" / "validation").mkdir(parents=True)  # the images but not their label maps
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(tmp_path))
    one_sentence(e, "annotations/validation does not exist")
    root = fake_ade(tmp_path / "set")
    (root / "images" / "training" / "extra.jpg").write_bytes((root / "images" / "training" /
                                                              "ADE_training_00000000.jpg").read_bytes())
    with pytest.raises(UserError) as e:  # an image without its label map
        build_seg_data(cfg_for(root))
    one_sentence(e, "1 of the 4 images", "extra.png", "skip_bad_images")
    data = build_seg_data(cfg_for(root, skip_bad_images=True))
    assert data.num_train == 3 and data.skipped == 1
    # a label map of the wrong size, and one with a value that is no class: reported when read, or skipped
    write_pair(root, "training", "ADE_training_00000000", np.zeros((10, 10), np.uint8), size=(40, 56))
    write_pair(root, "training", "ADE_training_00000001", np.full((40, 56), 200, np.uint8))
    (root / "images" / "training" / "extra.jpg").unlink()
    data = build_seg_data(cfg_for(root))
    with pytest.raises(UserError) as e:
        list(data.train_batches(0, range(1), accum=1, world=1, rank=0))
    one_sentence(e, "cannot read image", "skip_bad_images")
    data = build_seg_data(cfg_for(root, skip_bad_images=True, batch_size=3))
    got = list(data.train_batches(0, range(1), accum=1, world=1, rank=0))
    assert data.skipped == 2 and len(got) == 1 and got[0][0].shape[0] == 1
    empty = tmp_path / "empty"
    for d in ("images/training", "images/validation", "annotations/training", "annotations/validation"):
        (empty / d).mkdir(parents=True)
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(empty))
    one_sentence(e, "holds no images")
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(root, seg_crop_size=8))
    one_sentence(e, "seg_crop_size")
    with pytest.raises(UserError) as e:
        build_seg_data(cfg_for(root, seg_object_crop=1.5))
    one_sentence(e, "seg_object_crop within 0..1 (got 1.5)")
