"""Robustness evaluation (paper Table 8, convnext/robustness.py): the published class lists and AlexNet constants,
the mCE formula on hand-made tables, each set's released layout run end to end through `convnext eval --suite`
with a random ConvNeXt-atto at 32 px (its numbers checked against the same model's predictions, computed here
directly), sharding over processes, and one sentence for each kind of bad input."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import AlexNet_Weights

from convnext import create_model
from convnext.cli import main
from convnext.distributed import Dist
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from convnext.robustness import count, mce, scan, transform_for
from convnext.robustness_sets import (ALEXNET_CLEAN_ERR, ALEXNET_ERR, IMAGENET_C, IMAGENET_C_BAR, SEVERITIES,
                                      imagenet_1k_wnids, subset_wnids)
from convnext.runtime import Runtime
from convnext.transforms import eval_transform

SIZE = 32  # the evaluation size of these tests; ImageNet-C-like images are made at it (the release's are at 224)

# google-research/augmix @ 9b9824c7c19bf7e72df2d085d97b99b3bfb00ba4, imagenet.py: CORRUPTIONS and ALEXNET_ERR
PUBLISHED_CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                         "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                         "jpeg_compression"]
PUBLISHED_ALEXNET_ERR = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
                         0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]


def _sha(items) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- the published data


def test_imagenet_1k_wnids_are_the_sorted_synsets():
    w = imagenet_1k_wnids()
    assert len(w) == len(set(w)) == 1000 and list(w) == sorted(w)
    assert w[:2] == ("n01440764", "n01443537") and w[-2:] == ("n13133613", "n15075141")
    assert _sha(w) == "385e0240499426c022b773be1ae4da780f057b89c9694c7f47199f62746b6edd"


@pytest.mark.parametrize("suite, first, last, first_idx, last_idx, digest", [
    # hendrycks/natural-adv-examples @ 0777070 eval.py: indices_in_1k begins 6, 11, 13, 15 and ends 984, 986, 987, 988
    ("imagenet-a", ("n01498041", "n01531178", "n01534433"), ("n12057211", "n12144580", "n12267677"),
     [6, 11, 13, 15], [984, 986, 987, 988], "f6aa4b23244554d9b864fd715ae20048f6a9686388911b2dfbf1ada01bf0f520"),
    # hendrycks/imagenet-r @ 3131cac eval.py: the commented imagenet_r_indices begins 1, 2, 4, 6, ends 980 ... 988
    ("imagenet-r", ("n01443537", "n01484850", "n01494475"), ("n09835506", "n10565667", "n12267677"),
     [1, 2, 4, 6], [980, 981, 983, 988], "e19a59d84e3746fafd34d2ccf6ae604a44e9a0500a596f343c878a89e30ce624"),
])
def test_200_class_lists_are_the_published_ones(suite, first, last, first_idx, last_idx, digest):
    w = subset_wnids(suite)
    assert len(w) == len(set(w)) == 200 and set(w) <= set(imagenet_1k_wnids())
    assert w[:3] == first and w[-3:] == last and _sha(w) == digest
    idx = [imagenet_1k_wnids().index(x) for x in w]
    assert idx == sorted(idx) and idx[:4] == first_idx and idx[-4:] == last_idx  # the published order: 1K order
    assert subset_wnids("imagenet-sketch") == imagenet_1k_wnids()


def test_alexnet_constants_are_the_published_ones():
    assert list(ALEXNET_ERR) == list(IMAGENET_C) == PUBLISHED_CORRUPTIONS
    assert list(ALEXNET_ERR.values()) == PUBLISHED_ALEXNET_ERR
    groups = list(IMAGENET_C.values())
    assert [groups.count(g) for g in ("noise", "blur", "weather", "digital")] == [3, 4, 4, 4]
    # AlexNet's clean error: 1 - torchvision's published top-1 of the AlexNet weights ImageNet-C was measured with
    acc1 = AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert acc1 == 56.522 and ALEXNET_CLEAN_ERR == pytest.approx(1 - acc1 / 100, abs=1e-12)
    # facebookresearch/augmentation-corruption @ ba4d5a5 README.md: the preprocessed ImageNet-C-bar's 10 corruptions
    assert IMAGENET_C_BAR == ("blue_noise_sample", "brownish_noise", "caustic_refraction", "checkerboard_cutout",
                              "cocentric_sine_waves", "inverse_sparkles", "perlin_noise", "plasma_noise",
                              "single_frequency_greyscale", "sparkles")


def test_mce_on_hand_made_tables():
    # AlexNet itself: CE 100 on every corruption, mCE 100; relative mCE 100 with its own clean error
    r = mce({c: [100 * e] * 5 for c, e in ALEXNET_ERR.items()}, clean_error=100 * ALEXNET_CLEAN_ERR)
    assert all(v == pytest.approx(100) for v in r["ce"].values()) and r["mce"] == pytest.approx(100)
    assert r["relative_mce"] == pytest.approx(100)
    # errors 0, 25, 50, 75, 100 % everywhere: CE_c = 50 / E^AlexNet_c, e.g. 50 / 0.886428 = 56.406 for Gaussian noise
    # and 50 / 0.564592 = 88.560 for brightness; mCE = (50 / 15) x sum_c 1 / E^AlexNet_c = 64.673. Clean error 20 %:
    # relative CE_c = (50 - 20) / (E^AlexNet_c - 0.43478), 66.423 and 231.103 there; relative mCE 97.677.
    r = mce({c: [0, 25, 50, 75, 100] for c in ALEXNET_ERR}, clean_error=20)
    assert r["ce"]["gaussian_noise"] == pytest.approx(56.406, abs=1e-3)
    assert r["ce"]["brightness"] == pytest.approx(88.560, abs=1e-3)
    assert r["mce"] == pytest.approx(64.673, abs=1e-3)
    assert r["relative_ce"]["gaussian_noise"] == pytest.approx(66.423, abs=1e-3)
    assert r["relative_ce"]["brightness"] == pytest.approx(231.103, abs=1e-3)
    assert r["relative_mce"] == pytest.approx(97.677, abs=1e-3)
    assert "relative_mce" not in mce({c: [10.0] * 5 for c in ALEXNET_ERR})
    with pytest.raises(ValueError, match="15 corruptions"):
        mce({c: [10.0] * 5 for c in list(ALEXNET_ERR)[:14]})


# ------------------------------------------------------------------------------------------- fake releases


@pytest.fixture(scope="module")
def atto(tmp_path_factory):
    """A random ConvNeXt-atto and its weights as an official-layout file."""
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    path = tmp_path_factory.mktemp("weights") / "atto.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def _jpegs(d, n: int, size: int, seed: int) -> list:
    """n JPEG files of smooth random images (a colour gradient each), size x size."""
    d.mkdir(parents=True, exist_ok=True)
    rng, ramp = np.random.default_rng(seed), np.linspace(0, 1, size)[:, None, None]
    out = []
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = (a * ramp + b * ramp.transpose(1, 0, 2) + rng.normal(0, 20, (size, size, 3))).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
        out.append(d / f"{i}.jpg")
    return out


def _predict(model, paths, suite: str) -> list[str]:
    """The WordNet IDs the model predicts for these files, computed directly: the ImageNet eval transform (resize
    only for the corruption sets), the argmax over the set's classes."""
    crop = 1.0 if suite in ("imagenet-c", "imagenet-c-bar") else None
    tf = eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD, crop)
    with torch.no_grad():
        logits = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    allowed = [imagenet_1k_wnids().index(w) for w in subset_wnids(suite)]
    return [imagenet_1k_wnids()[allowed[i]] for i in logits[:, allowed].argmax(1).tolist()]


def _other(wnid: str, suite: str) -> str:
    """A class of the set that is not `wnid` (a wrong label)."""
    w = subset_wnids(suite)
    return w[(w.index(wnid) + 1) % len(w)]


def _place(src, folder, name: str):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / name)


def _eval(args: list[str], atto_path, tmp_path) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    rc = main(["eval", *args, "--checkpoint", str(atto_path), "--model", "convnext_atto", "--img-size", str(SIZE),
               "--workers", "0", "--batch-size", "4", "--out", str(out)])
    files = list(out.glob("robustness_*.json"))
    return rc, json.loads(files[0].read_text()) if files else None


@pytest.mark.parametrize("suite, suffix", [("imagenet-a", ".jpg"), ("imagenet-r", ".jpg"),
                                           ("imagenet-sketch", ".JPEG")])
def test_top1_sets_end_to_end(suite, suffix, atto, tmp_path, capsys):
    model, path = atto
    files = _jpegs(tmp_path / "staging", 6, 40, seed=1)
    pred = _predict(model, files, suite)
    root = tmp_path / suite
    for i, (f, p) in enumerate(zip(files, pred)):  # every other image in the folder of the predicted class
        _place(f, root / (p if i % 2 == 0 else _other(p, suite)), f"img{i}{suffix}")
    rc, r = _eval(["--suite", suite, "--data", str(root)], path, tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert r["top1"] == pytest.approx(50.0) and r["images"] == 6
    assert sum(v["images"] for v in r["per_class"].values()) == 6
    assert "top-1 50.00% over 6 images" in capsys.readouterr().out
    assert (tmp_path / "out" / f"robustness_{suite}.png").stat().st_size > 0
    if suite != "imagenet-sketch":  # the restriction matters here: 1000-way argmaxes fall outside the set
        with torch.no_grad():
            full = model(torch.stack([transform_for(suite, SIZE)(Image.open(f).convert("RGB")) for f in files]))
        assert any(imagenet_1k_wnids()[i] not in subset_wnids(suite) for i in full.argmax(1).tolist())


def test_corruption_images_are_used_as_released_at_224():
    """ImageNet-C/-C-bar images are 224 x 224 crops already: at 224 their transform is only ToTensor + Normalize
    (as hendrycks/robustness test.py), while A/R/Sketch get the ImageNet evaluation's resize 256 + centre crop."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    as_is = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, 1.0).transforms[-2:]  # ToTensor, Normalize
    plain = as_is[1](as_is[0](img))
    for suite in ("imagenet-c", "imagenet-c-bar"):
        assert torch.equal(transform_for(suite, 224)(img), plain)
    cropped = transform_for("imagenet-a", 224)(img)
    assert cropped.shape == plain.shape and not torch.allclose(cropped, plain, atol=0.1)
    assert transform_for("imagenet-c", 384)(img).shape == (3, 384, 384)  # a 384 model sees them upsampled


def _corruption_release(root, names, model, suite, tmp_path) -> dict:
    """A release-like corruption set: DIR/<corruption>/<1-5>/<wnid>/*.JPEG, two images per folder, placed so that
    folder k gets 0, 1 or 2 wrong labels; returns the expected error (%) per corruption and severity."""
    files = _jpegs(tmp_path / "staging_c", 5, SIZE, seed=2)
    pred = _predict(model, files, suite)
    expected: dict[str, list[float]] = {}
    for k, (c, s) in enumerate((c, s) for c in names for s in SEVERITIES):
        wrong = 0
        for j in range(2):
            i = (k + j) % len(files)
            ok = (k + 2 * j) % 3 != 0
            wrong += not ok
            _place(files[i], root / c / s / (pred[i] if ok else _other(pred[i], suite)), f"ILSVRC2012_val_{k}{j}.JPEG")
        expected.setdefault(c, []).append(50.0 * wrong)
    return expected


def test_imagenet_c_end_to_end(atto, tmp_path, capsys):
    model, path = atto
    root = tmp_path / "imagenet-c"
    expected = _corruption_release(root, list(IMAGENET_C), model, "imagenet-c", tmp_path)
    _place(_jpegs(tmp_path / "x", 1, SIZE, 3)[0], root / "speckle_noise" / "1" / "n01440764", "a.JPEG")  # an extra
    clean = tmp_path / "imagenet"  # the clean val: 4 images, 3 of them in their predicted class -> error 25 %
    files = _jpegs(tmp_path / "staging_clean", 4, 40, seed=4)
    for i, (f, p) in enumerate(zip(files, _predict(model, files, "imagenet-sketch"))):
        _place(f, clean / "val" / (_other(p, "imagenet-sketch") if i == 0 else p), f"{i}.JPEG")
    rc, r = _eval(["--suite", "imagenet-c", "--data", str(root), "--clean-data", str(clean)], path, tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert r["errors"] == expected and r["images"] == 150 and r["ignored"] == ["speckle_noise"]
    assert r["clean_error"] == pytest.approx(25.0)
    means = {c: sum(e) / 5 for c, e in expected.items()}
    alex = dict(zip(PUBLISHED_CORRUPTIONS, PUBLISHED_ALEXNET_ERR))
    assert r["mce"] == pytest.approx(sum(means[c] / alex[c] for c in alex) / 15)
    assert r["relative_mce"] == pytest.approx(sum((means[c] - 25) / (alex[c] - 0.43478) for c in alex) / 15)
    assert 0 < min(means.values()) < max(means.values()) < 100  # a table that tells corruptions apart
    out = capsys.readouterr().out
    assert f"mCE {r['mce']:.1f}%" in out and "noise/gaussian_noise" in out and "speckle_noise" in out
    assert (tmp_path / "out" / "robustness_imagenet-c.png").stat().st_size > 0
    rc, r2 = _eval(["--suite", "imagenet-c", "--data", str(root), "--clean-error", "25"], path, tmp_path)
    assert rc == 0 and r2["relative_mce"] == pytest.approx(r["relative_mce"])


def test_imagenet_c_bar_end_to_end(atto, tmp_path, capsys):
    model, path = atto
    root = tmp_path / "imagenet-c-bar"
    expected = _corruption_release(root, list(IMAGENET_C_BAR), model, "imagenet-c-bar", tmp_path)
    rc, r = _eval(["--suite", "imagenet-c-bar", "--data", str(root)], path, tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert r["errors"] == expected and "mce" not in r
    assert r["error"] == pytest.approx(sum(map(sum, expected.values())) / 50)  # over its 10 x 5 folders
    assert f"mean error {r['error']:.2f}%" in capsys.readouterr().out


def test_counts_are_summed_over_processes_without_counting_twice(atto, tmp_path, monkeypatch):
    model, _ = atto
    root = tmp_path / "imagenet-a"
    for i, f in enumerate(_jpegs(tmp_path / "s", 7, 40, seed=5)):
        _place(f, root / subset_wnids("imagenet-a")[i % 3], f"{i}.jpg")
    images, tf = scan("imagenet-a", root), transform_for("imagenet-a", SIZE)
    whole = count(model, images, Runtime(), tf, batch_size=2)
    # each rank's shard, with all_sum as the sum over the two ranks done here
    monkeypatch.setattr("convnext.robustness.all_sum", lambda values, d: values)
    shards = [count(model, images, Runtime(Dist(rank=r, world=2)), tf, batch_size=2) for r in range(2)]
    assert [s["folders"]["all"][0] for s in shards] == [4, 3]
    for key in ("folders", "classes"):
        summed = {k: tuple(a + b for a, b in zip(shards[0][key].get(k, (0, 0)), shards[1][key].get(k, (0, 0))))
                  for k in whole[key]}
        assert summed == whole[key]


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Small folders in the right and the wrong layouts."""
    root = tmp_path_factory.mktemp("layouts")
    img = _jpegs(root / "staging", 1, SIZE, seed=6)[0]
    _place(img, root / "a" / "n01498041", "0.jpg")
    _place(img, root / "r_only" / "n01443537", "0.jpg")  # an ImageNet-R class that ImageNet-A does not have
    for c in IMAGENET_C:
        for s in SEVERITIES:
            if not (c == "fog" and s == "4"):
                _place(img, root / "c_no_fog4" / c / s / "n01440764", "0.JPEG")
            if c != "snow":
                _place(img, root / "c_no_snow" / c / s / "n01440764", "0.JPEG")
    _place(img, root / "sketch_bad" / "n01440764", "0.JPEG")
    (root / "sketch_bad" / "n01440764" / "1.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    return root


@pytest.mark.parametrize("suite, folder, extra, message", [
    ("imagenet-a", "missing", [], "does not exist: ImageNet-A's layout is DIR/<wnid>/*.jpg"),
    ("imagenet-a", "c_no_snow", [], "is not ImageNet-A's layout: its folder 'brightness' is not one of"),
    ("imagenet-a", "r_only", [], "its folder 'n01443537' is not one of ImageNet-A's 200 classes"),
    ("imagenet-c", "a", [], "is not ImageNet-C's layout: none of its 15 corruption folders"),
    ("imagenet-c-bar", "c_no_snow", [], "is not ImageNet-C-bar's layout: none of its 10 corruption folders"),
    ("imagenet-c", "c_no_snow", [], "lacks ImageNet-C's corruption folders snow"),
    ("imagenet-c", "c_no_fog4", [], "has no severity folder 4"),
    ("imagenet-sketch", "sketch_bad", [], "cannot read image"),
    ("imagenet-a", "a", ["--clean-error", "20"], "--clean-error and --clean-data are for --suite imagenet-c"),
    ("imagenet-c", "c_no_snow", ["--clean-error", "2", "--clean-data", "x"], "not both"),
])
def test_bad_input_is_one_sentence(suite, folder, extra, message, layouts, atto, tmp_path, capsys):
    rc, r = _eval(["--suite", suite, "--data", str(layouts / folder), *extra], atto[1], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and r is None
    assert err.startswith("convnext eval: error: ") and err.count("\n") == 1 and message in err, err
