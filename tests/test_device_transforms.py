"""data.pipeline=gpu against the reference (timm's PIL transform, convnext/transforms.py), on the CPU: every op on the
same parameters, the crop's resize, the eval transform, the parameter distributions, determinism, decoding and bad
files, and the pipeline end to end through build_data and the trainer.

Bounds, |device - PIL| in grey levels on photographs (skimage.data), the same parameters on both sides (measured:
benchmarks/device_pipeline.py --equivalence, on the CPU):

| step                                   | measured max | measured mean | test bound (max, mean) | why not 0          |
|----------------------------------------|--------------|---------------|------------------------|--------------------|
| each RandAugment op (all 15 of inc1)   | 0            | 0             | 0                      |                    |
| flip + 2 RandAugment layers, normalise | 0            | 0             | 0                      |                    |
| RandomResizedCrop's bicubic resize     | 7            | 0.17          | 10, 0.25               | float32, one pass  |
| eval transform (resize + centre crop)  | 5            | 0.18          | 10, 0.25               | the same resize    |
| JPEG/PNG decode (torchvision CPU, PIL) | 0            | 0             | 0                      |                    |

The resize differs because PIL resizes in fixed point with a rounding between its two passes; interpolate rounds once.
"""
from __future__ import annotations

import importlib.util
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos
from timm.data import auto_augment
from timm.data.transforms import RandomResizedCropAndInterpolation

from convnext.config import DataConfig
from convnext.data import DeviceImageFolderData, ImageFolderData, build_data
from convnext.device_transforms import (AFFINE, BLENDS, LEVELS, LUTS, EvalTransform, RandAugmentOps, Sample,
                                        TrainTransform, apply_op, crop_box, decode_batch, erase_boxes, normalize)
from convnext.errors import UserError
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convnext.transforms import eval_transform, train_transform

ROOT = Path(__file__).resolve().parent.parent
FILL = (124, 116, 104)  # timm's img_mean fill: round(255 * ImageNet mean)
# Arguments per op: the range ends and a middle value of each (rand-m9-mstd0.5-inc1), both signs where signed.
OP_ARGS = {
    "AutoContrast": [None], "Equalize": [None], "Invert": [None], "Rotate": [0.0, 13.7, -27.0, 30.0],
    "PosterizeIncreasing": [1, 2, 4], "SolarizeIncreasing": [0, 26, 128, 256], "SolarizeAdd": [0, 99, 110],
    "ColorIncreasing": [0.1, 0.55, 1.0, 1.9], "ContrastIncreasing": [0.1, 0.55, 1.9],
    "BrightnessIncreasing": [0.1, 0.73, 1.9], "SharpnessIncreasing": [0.1, 0.6, 1.9], "ShearX": [0.27, -0.3],
    "ShearY": [0.1, -0.27], "TranslateXRel": [0.405, -0.2], "TranslateYRel": [0.3, -0.45],
}
OP_BOUNDS = {name: 0 for name in OP_ARGS}  # max |device - PIL| per op: exact, every one
RESIZE_MAX, RESIZE_MEAN = 10, 0.25  # the crop's resize and the eval transform (module docstring)


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(getattr(photos, name)()).resize(size, Image.BICUBIC)


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def as_array(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy().astype(int)


def reference(size: int = 32):
    return train_transform(DataConfig(img_size=size))


@pytest.fixture(scope="module")
def images():
    return [photo("astronaut", (96, 72)), photo("chelsea", (80, 64)), photo("coffee", (64, 64))]


# ------------------------------------------------------------------------------------------- the ops vs PIL


@pytest.mark.parametrize("name", sorted(OP_ARGS))
def test_op_equals_timms_pil_op(name, images):
    """Each RandAugment op against timm's own op function on the same argument (PIL underneath)."""
    worst = 0
    for img in images:
        x = as_tensor(img)[None]
        for arg in OP_ARGS[name]:
            ref = auto_augment.NAME_TO_OP[name](img, *([] if arg is None else [arg]), fillcolor=FILL,
                                                resample=Image.Resampling.BICUBIC)
            out = apply_op(name, x, [arg], FILL)[0]
            assert out.dtype == torch.uint8 and out.shape == x.shape[1:]
            worst = max(worst, np.abs(as_array(out) - np.asarray(ref).astype(int)).max())
    assert worst <= OP_BOUNDS[name]


def test_every_level_has_an_op():
    """timm's RandAugment op names we draw arguments for are exactly those we apply, in one of the three kinds."""
    assert set(LEVELS) == set(LUTS) | set(BLENDS) | set(AFFINE)
    assert not (set(LUTS) & set(BLENDS) or set(LUTS) & set(AFFINE) or set(BLENDS) & set(AFFINE))
    assert set(OP_ARGS) <= set(LEVELS) and set(OP_ARGS) == {op.name for op in reference().transforms[2].ops}


def test_augment_chain_equals_pil_on_the_same_parameters():
    """Flip and two RandAugment layers, batched by op across images (each image its own ops), then ToTensor and
    Normalize: exactly timm's ops applied to each PIL image in turn."""
    ref = reference(48)
    tf, to_tensor, norm = TrainTransform(ref), ref.transforms[-3], ref.transforms[-2]
    rng = random.Random(0)
    imgs = [photo(n, (48, 48)) for n in ("astronaut", "chelsea", "coffee", "rocket")] * 6
    names = sorted(OP_ARGS)
    samples = []
    for k in range(len(imgs)):  # every op in both layers somewhere in the batch, some layers skipped
        ops = [(n, rng.choice(OP_ARGS[n])) for n in (names[k % 15], names[(k * 7 + 3) % 15])]
        samples.append(Sample((0, 0, 48, 48), flip=k % 3 == 0, ops=[ops[0], None if k % 5 == 0 else ops[1]]))
    x = tf.augment([as_tensor(i) for i in imgs], samples)
    got = normalize(x, tf.mean, tf.std)
    for k, (img, p) in enumerate(zip(imgs, samples)):
        if p.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for op in p.ops:
            if op is not None:
                img = auto_augment.NAME_TO_OP[op[0]](img, *([] if op[1] is None else [op[1]]), fillcolor=FILL,
                                                     resample=Image.Resampling.BICUBIC)
        assert np.array_equal(as_array(x[k]), np.asarray(img).astype(int)), (k, p)
        assert torch.equal(got[k], norm(to_tensor(img)))


def test_resized_crop_close_to_pil():
    """RandomResizedCrop's boxes on 500 x 375 photographs, resized to 224 and 64: bicubic with antialiasing in one
    float32 pass against PIL's two fixed-point passes."""
    rng = random.Random(0)
    srcs = [photo(n, (500, 375)) for n in ("astronaut", "chelsea", "coffee")]
    diffs = []
    for t in range(24):
        img, size = srcs[t % 3], (224 if t % 2 else 64)
        top, left, h, w = crop_box(rng, 375, 500, (0.08, 1.0), (3 / 4, 4 / 3))
        ref = np.asarray(img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)).astype(int)
        out = TrainTransform(reference(size)).augment([as_tensor(img)], [Sample((top, left, h, w))])[0]
        diffs.append(np.abs(as_array(out) - ref))
    assert max(d.max() for d in diffs) <= RESIZE_MAX
    assert np.mean([d.mean() for d in diffs]) < RESIZE_MEAN
    assert max((d > 1).mean() for d in diffs) < 0.01  # off by more than a level: under 1% of any image's pixels


@pytest.mark.parametrize("size, crop_pct", [(64, 0.875), (64, 1.0), (224, 0.875)])
def test_eval_transform_close_to_pil(size, crop_pct):
    ev = EvalTransform(Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, crop_pct, 3))
    ref = eval_transform(size, IMAGENET_MEAN, IMAGENET_STD, crop_pct)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for img in (photo("astronaut", (500, 375)), photo("chelsea", (300, 411)), photo("coffee", (257, 257))):
        out = ev([as_tensor(img)])[0]
        levels = ((out - ref(img)) * std * 255).abs()
        assert out.shape == (3, size, size) and levels.max() <= RESIZE_MAX + 0.01 and levels.mean() < RESIZE_MEAN


# ------------------------------------------------------------------------------------ the random parameters


def ks(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov distance: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def test_randaugment_draws_match_timm():
    """timm's RandAugment (the reference transform's, Posterize clamped) with its op functions replaced by recorders,
    seeded through Python's and NumPy's generators, against ours seeded per image: the same number of ops per image,
    the same op frequencies, the same distribution of each op's argument (magnitude noise, clipping, signs). The
    tolerances are 4 standard deviations of the difference, or the KS distance at p ~ 1e-4 (a fixed seed: no flakes)."""
    ra = reference().transforms[2]
    seen: list = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *args, **kw: seen[-1].append((name, args[0] if args else None)) or img)(
            op.name)
    random.seed(0)
    np.random.seed(0)
    n = 20_000
    for _ in range(n):
        seen.append([])
        ra(None)
    mine = RandAugmentOps(ra)
    ours = [[op for op in mine.sample(random.Random(s)) if op is not None] for s in range(n)]
    per_image = [np.bincount([len(ops) for ops in draws], minlength=3) / n for draws in (seen, ours)]
    assert np.abs(per_image[0] - per_image[1]).max() < 0.015  # 0, 1, 2 ops: 1/4, 1/2, 1/4
    timm_ops = [op for ops in seen for op in ops]
    our_ops = [op for ops in ours for op in ops]
    expected = len(timm_ops) / 15  # each op 1/15 of the applied ones
    for name in OP_ARGS:
        ta, oa = [v for k, v in timm_ops if k == name], [v for k, v in our_ops if k == name]
        assert abs(len(ta) - len(oa)) < 4 * math.sqrt(2 * expected), name
        if OP_ARGS[name] != [None]:
            assert ks(ta, oa) < 0.08, name
    for args in ([v for k, v in timm_ops if k == "Rotate"], [v for k, v in our_ops if k == "Rotate"]):
        assert max(np.abs(args)) == 30.0 and 0.01 < np.mean(np.abs(args) == 30.0) < 0.04  # magnitude clipped at 10


@pytest.mark.parametrize("size", [(375, 500), (40, 400)])  # (40, 400): too wide for the ratios, the fallback
def test_crop_box_draws_match_timm(size):
    h, w = size
    random.seed(0)
    img = Image.new("RGB", (w, h))
    t = [RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(5000)]
    o = [crop_box(random.Random(s), h, w, (0.08, 1.0), (3 / 4, 4 / 3)) for s in range(5000)]
    for f in (lambda b: b[2] * b[3], lambda b: b[3] / b[2], lambda b: b[0] / max(1, h - b[2]), lambda b: b[1]):
        assert ks([f(b) for b in t], [f(b) for b in o]) < 0.05


def test_erasing_draws_match_timm():
    """timm's RandomErasing (the reference transform's: p 0.25, pixel mode) on a constant image, the erased box read
    back from the changed pixels, against our boxes."""
    er = reference().transforms[-1]
    random.seed(0)
    torch.manual_seed(0)
    t = []
    for _ in range(6000):
        changed = (er(torch.full((3, 32, 32), 1e3)) != 1e3).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        t.append((int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)) if changed.any() else None)
    o = [erase_boxes(random.Random(s), 32, 32, er) for s in range(6000)]
    o = [(b[0][2], b[0][3]) if b else None for b in o]
    assert abs(np.mean([b is not None for b in t]) - np.mean([b is not None for b in o])) < 0.03
    assert 0.22 < np.mean([b is not None for b in o]) < 0.28
    for f in (lambda b: b[0] * b[1], lambda b: math.log(b[0] / b[1])):
        assert ks([f(b) for b in t if b], [f(b) for b in o if b]) < 0.08


def test_the_augmentation_is_a_function_of_the_seed(images):
    """Same seed, same output, whatever else is in the batch; another seed, another output."""
    tf = TrainTransform(reference(32))
    xs = [as_tensor(i) for i in images]
    a, b = tf(xs, [11, 12, 13]), tf(xs, [11, 12, 13])
    assert torch.equal(a, b) and a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(tf(xs[1:2], [12])[0], a[1])
    assert not torch.equal(tf(xs, [21, 22, 23])[0], a[0])


def test_unsupported_settings_are_refused():
    with pytest.raises(UserError, match="ColorJitter"):
        TrainTransform(train_transform(DataConfig(img_size=32, randaug="")))  # timm's colour jitter without RA
    with pytest.raises(UserError, match="weighted"):
        TrainTransform(train_transform(DataConfig(img_size=32, randaug="rand-m9-tweights")))


# --------------------------------------------------------------------------------------------------- decoding


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_decode_batch_equals_pil_and_reports_bad_files():
    img = photo("astronaut", (90, 60))
    files = {
        "rgb.jpg": encoded(img, "JPEG", quality=90), "progressive.jpg": encoded(img, "JPEG", progressive=True),
        "grey.jpg": encoded(img.convert("L"), "JPEG"), "cmyk.jpg": encoded(img.convert("CMYK"), "JPEG"),
        "rgb.png": encoded(img, "PNG"), "rgba.png": encoded(img.convert("RGBA"), "PNG"),
        "palette.png": encoded(img.convert("P"), "PNG"),
        "grey16.png": encoded(Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 200), "PNG"),
        "truncated.jpg": encoded(img, "JPEG")[:300], "text.jpg": b"not an image at all",
    }
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in files.values()]
    out, bad = decode_batch(data, "cpu", list(files))
    assert [p for p, _ in bad] == ["truncated.jpg", "text.jpg"] and all(reason for _, reason in bad)
    for (name, raw), x in zip(files.items(), out):
        if name in ("truncated.jpg", "text.jpg"):
            assert x is None
            continue
        ref = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(int)
        assert x.dtype == torch.uint8 and np.array_equal(as_array(x), ref), name


def make_jpeg_folder(root: Path, per_class: int = 8, val: int = 3) -> Path:
    """root/{train,val}/<photo>/*.jpg: random crops of one skimage photograph per class, 120 x 90."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("astronaut", "chelsea", "coffee")):
        src = getattr(photos, name)()
        for split, n in (("train", per_class), ("val", val)):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = src.shape[:2]
                y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
                Image.fromarray(src[y: y + 2 * h // 3, x: x + 2 * w // 3]).resize((120, 90)).save(d / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def test_unreadable_file_named_then_skipped(tmp_path):
    root = make_jpeg_folder(tmp_path / "data", per_class=4, val=1)
    (root / "train" / "chelsea" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # 13 files
    (root / "train" / "coffee" / "3.jpg").unlink()  # 12: three batches of 4 read every file
    cfg = DataConfig(root=str(root), img_size=32, batch_size=4, workers=0, pipeline="gpu")
    with pytest.raises(UserError, match=r"broken\.jpg.*skip_bad_images"):
        list(build_data(cfg).train_batches(0, range(3), 1, 1, 0))
    data = build_data(DataConfig(**{**vars(cfg), "skip_bad_images": True}))
    sizes = [len(y) for _, y in data.train_batches(0, range(3), 1, 1, 0)]
    assert data.skipped == 1 and sorted(sizes) == [3, 4, 4]


# --------------------------------------------------------------------------------------------- end to end


def test_gpu_pipeline_through_build_data(jpeg_folder):
    """The same files in the same order as the PIL pipeline; device tensors of the right shape and type; the eval
    batches within the resize bound of the PIL pipeline's."""
    cfg = DataConfig(root=str(jpeg_folder), img_size=32, batch_size=4, workers=0, pipeline="gpu")
    gpu, pil = build_data(cfg), build_data(DataConfig(**{**vars(cfg), "pipeline": "pil"}))
    assert isinstance(gpu, DeviceImageFolderData) and type(pil) is ImageFolderData
    assert gpu.device_batches.device == torch.device("cpu")
    steps = range(1, 4)  # a resumed epoch: steps 1..3 of epoch 2
    got, want = list(gpu.train_batches(2, steps, 1, 1, 0)), list(pil.train_batches(2, steps, 1, 1, 0))
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]
    for (x, y), (xp, _) in zip(got, want):
        assert x.shape == xp.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.isfinite().all() and x.min() >= -5 and x.max() <= 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, gpu.train_batches(2, steps, 1, 1, 0)))  # replayed
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    for (x, y), (xp, yp) in zip(gpu.eval_batches(1, 0), pil.eval_batches(1, 0)):
        assert torch.equal(y, yp) and ((x - xp) * std * 255).abs().max() <= RESIZE_MAX + 0.01
        levels = (x * std + mean) * 255  # normalised uint8 levels, no erasing at evaluation
        assert (levels - levels.round()).abs().max() < 1e-3 and levels.min() > -1e-3 and levels.max() < 255.001


def test_pipeline_names_are_checked(jpeg_folder):
    with pytest.raises(UserError, match="unknown data.pipeline 'cuda'; choose pil or gpu"):
        build_data(DataConfig(root=str(jpeg_folder), pipeline="cuda"))
    with pytest.raises(UserError, match="image folders"):
        build_data(DataConfig(dataset="synthetic", pipeline="gpu"))


def test_trainer_runs_with_the_gpu_pipeline(jpeg_folder, tmp_path):
    from convnext.config import load_config, replace
    from convnext.train import train

    cfg = replace(load_config("in1k:tiny"), **{
        "model.name": "convnext_atto", "data.root": str(jpeg_folder), "data.img_size": 32, "data.batch_size": 4,
        "data.workers": 0, "data.pipeline": "gpu", "train.precision": "fp32", "train.channels_last": False,
        "train.accum_steps": 1, "train.max_steps": 2, "train.epochs": 1, "optim.scale_lr": False, "optim.lr": 1e-3,
    })
    summary = train(cfg, tmp_path / "r")
    assert summary["steps"] == 2 and summary["final_top1"] is not None
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["data"]["pipeline"] == "gpu"


def test_benchmark_smoke(tmp_path):
    """benchmarks/device_pipeline.py --smoke: the --gpu script's plumbing on the CPU at tiny sizes."""
    spec = importlib.util.spec_from_file_location("device_pipeline", ROOT / "benchmarks" / "device_pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "smoke.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    whats = [row["what"] for row in r["rows"]]
    assert any(w.startswith("pipeline alone, gpu") for w in whats) and "trainer eager, synthetic" in whats
    assert {"trainer eager, gpu pipeline", "trainer eager, pil pipeline"} <= set(whats)
    assert all(row["img_s"] > 0 and "device=" in row["setting"] for row in r["rows"] if "img_s" in row)
