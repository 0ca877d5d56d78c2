"""data.pipeline=gpu against data.pipeline=pil: is it the paper's augmentation, and does it feed the GPU?

    python benchmarks/device_pipeline.py --equivalence --out device_pipeline_equivalence.json  # CPU, ~1 min
    python benchmarks/device_pipeline.py --gpu --out device_pipeline_h200.json                # one GPU, < 8 min
    python benchmarks/device_pipeline.py --smoke                                              # CPU: --gpu's plumbing
    python benchmarks/device_pipeline.py --train-compare --out train_compare.json             # CPU, both pipelines

(a) --equivalence (CPU): |device - PIL| in grey levels, the same parameters on both sides, on skimage photographs:
    each RandAugment op of rand-m9-mstd0.5-inc1 (at magnitudes 5, 9 and 10, both signs) against timm's op function;
    RandomResizedCrop's resize on 40 of its boxes; the eval transform; torchvision's CPU decoders against PIL. A
    markdown table, and JSON.
(b) --gpu: 10,000 JPEGs of 500x375 (benchmarks/gpu_train.py's make_folder) in the ImageNet layout, then
      pipeline alone   DeviceImageFolderData.train_batches with 1, 4 and 15 workers (img/s, the device synchronised
                       after each batch, the first batch excluded), and the PIL pipeline with 15 beside it
      trainer          `convnext.train.train` (in1k:tiny: ConvNeXt-T, bf16 autocast, channels_last, batch 128, the
                       paper's recipe) on the folder, gpu and pil pipelines alternating run by run, eager then
                       compiled; and on synthetic data (no pipeline), the ceiling. img/s = batch / median step time
                       after the warm-up (gpu_train.py's trainer_run, compilation inside the warm-up)
      checks           nvJPEG against PIL's decoding; the augmentation on the GPU against the same on the CPU (the
                       same decoded images and seeds)
    Every number is printed with device, precision, batch, memory format and compile mode, and JSON (provenance as
    meta) is written after each one, so a run cut short keeps what it measured. --budget-s skips what would not fit.
(c) --smoke: (b) on the CPU at tiny sizes (atto, 32 px, a few steps, no compilation); tests/test_device_transforms.py.
(d) --train-compare (CPU): convnext_atto trained from scratch on 10 classes of real photographs (random crops of one
    skimage photograph per class, 128x96 JPEGs, convnext/detection/scenes.py's `background`), 100 train / 50 val per
    class, at 64 px, 10 epochs (~25 s each per pipeline on one core), with each pipeline, the same seed: top-1 of
    each. --smoke shrinks it to seconds.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from convnext.benchmark import ResultLog, Setting, ratio, sync
from convnext.config import load_config, replace
from convnext.data import build_data
from convnext.device_transforms import (LEVELS, EvalTransform, RandAugmentOps, Sample, TrainTransform, apply_op,
                                        crop_box, decode_batch)
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from convnext.transforms import eval_transform, train_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import make_folder, trainer_run  # noqa: E402  (the same folder and the same timed trainer run)


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data as photos

    return Image.fromarray(getattr(photos, name)()).resize(size, Image.BICUBIC)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def _levels(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64))


# --------------------------------------------------------------------------------------------- (a) equivalence


def equivalence(a) -> None:
    from timm.data.auto_augment import NAME_TO_OP

    rec = ResultLog(a.out, mode="equivalence", device="cpu")
    imgs = [_photo(n, (224, 224)) for n in ("astronaut", "chelsea", "coffee")]
    ra = RandAugmentOps(train_transform(load_config("in1k:tiny").data).transforms[2])
    fill = ra.fill
    for op in ra.ops:
        args = sorted({LEVELS[op.name](m, random.Random(s), op.hparams) if LEVELS[op.name] else None
                       for m in (5.0, 9.0, 10.0) for s in range(8)}, key=lambda v: (v is None, v))
        diffs = []
        for img in imgs:
            for arg in args:
                ref = NAME_TO_OP[op.name](img, *([] if arg is None else [arg]), fillcolor=fill,
                                          resample=Image.Resampling.BICUBIC)
                out = apply_op(op.name, _tensor(img)[None], [arg], fill)[0].permute(1, 2, 0).numpy()
                diffs.append(_levels(out, ref))
        rec.add(_row(f"RandAugment {op.name}", diffs, f"{len(args)} arguments x {len(imgs)} photos 224x224"))
    tf = TrainTransform(train_transform(load_config("in1k:tiny").data))
    samples = [tf.sample(seed, 224, 224) for seed in range(48)]  # the paper's draws; the crop left out (below)
    samples = [Sample((0, 0, 224, 224), p.flip, p.ops) for p in samples]
    out = tf.augment([_tensor(imgs[k % 3]) for k in range(len(samples))], samples)
    diffs = []
    for k, p in enumerate(samples):
        img = imgs[k % 3].transpose(Image.Transpose.FLIP_LEFT_RIGHT) if p.flip else imgs[k % 3]
        for op in filter(None, p.ops):
            img = NAME_TO_OP[op[0]](img, *([] if op[1] is None else [op[1]]), fillcolor=fill,
                                    resample=Image.Resampling.BICUBIC)
        diffs.append(_levels(out[k].permute(1, 2, 0).numpy(), img))
    rec.add(_row("flip + RandAugment (2 layers, batched)", diffs, f"{len(samples)} images, sampled parameters"))
    srcs = [_photo(n, (500, 375)) for n in ("astronaut", "chelsea", "coffee")]
    rng, diffs = random.Random(0), []
    for t in range(40):
        top, left, h, w = crop_box(rng, 375, 500, (0.08, 1.0), (3 / 4, 4 / 3))
        ref = srcs[t % 3].crop((left, top, left + w, top + h)).resize((224, 224), Image.BICUBIC)
        out = tf.augment([_tensor(srcs[t % 3])], [Sample((top, left, h, w))])[0].permute(1, 2, 0).numpy()
        diffs.append(_levels(out, ref))
    rec.add(_row("RandomResizedCrop resize (bicubic)", diffs, "40 boxes of 500x375 photos -> 224"))
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for size, crop in ((224, 0.875), (384, 1.0)):
        ev, ref_tf, diffs = EvalTransform(Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, crop, 3)), \
            eval_transform(size, IMAGENET_MEAN, IMAGENET_STD, crop), []
        for img in srcs + [srcs[0].resize((375, 500)), srcs[1].resize((257, 257))]:
            diffs.append((((ev([_tensor(img)])[0] - ref_tf(img)) * std * 255).abs()).round().numpy())
        rec.add(_row(f"eval transform {size} (crop_pct {crop})", diffs, "5 photos, 3 shapes"))
    img = srcs[0]
    for name, fmt, kw, conv in (("JPEG q90 4:2:0", "JPEG", {"quality": 90}, None),
                                ("JPEG progressive", "JPEG", {"progressive": True}, None),
                                ("JPEG greyscale", "JPEG", {}, "L"), ("JPEG CMYK", "JPEG", {}, "CMYK"),
                                ("PNG RGB", "PNG", {}, None)):
        buf = io.BytesIO()
        (img.convert(conv) if conv else img).save(buf, fmt, **kw)
        out = decode_batch([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], "cpu")[0][0]
        ref = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        rec.add(_row(f"decode {name} (torchvision CPU)", [_levels(out.permute(1, 2, 0).numpy(), ref)], "500x375"))
    print("\n| step | max | mean | pixels off by > 1 | measured on |\n|---|---|---|---|---|")
    for r in rec.data["rows"]:
        print(f"| {r['what']} | {r['max']:g} | {r['mean']:.4f} | {100 * r['frac_over_1']:.3f}% | {r['on']} |")


def _row(what: str, diffs: list, on: str) -> dict:
    return {"what": what, "max": float(max(d.max() for d in diffs)), "mean": float(np.mean([d.mean() for d in diffs])),
            "frac_over_1": float(np.mean([(d > 1).mean() for d in diffs])), "on": on}


# ------------------------------------------------------------------------------------------------ (b) and (c)


def gpu(a) -> None:
    t0 = time.time()
    cuda = torch.cuda.is_available() and not a.smoke
    r = SimpleNamespace(a=a, dev="cuda" if cuda else "cpu", precision="bf16" if cuda else "fp32")
    model = "convnext_atto" if a.smoke else "convnext_tiny"
    rec = ResultLog(a.out, device=r.dev, precision=r.precision, batch_size=a.batch, img_size=a.img_size,
                 channels_last=True, model=model, warmup=a.warmup, steps=a.steps, workers=a.workers, smoke=a.smoke)
    left = lambda: a.budget_s - (time.time() - t0)  # noqa: E731

    def setting(compiled: bool, extra: str) -> str:
        return Setting(r.dev, r.precision, a.batch, a.img_size, True, "default" if compiled else "none",
                       True).describe() + f" model={model} {extra}"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        t = time.perf_counter()
        make_folder(root, a.classes, a.per_class, max(1, os.cpu_count() or 2))
        print(f"made {a.classes * a.per_class} train JPEGs 500x375 in {time.perf_counter() - t:.0f} s", flush=True)
        data_cfg = replace(load_config("in1k:tiny").data, root=str(root), batch_size=a.batch, img_size=a.img_size)
        for pipeline, workers in [("gpu", w) for w in a.worker_counts] + [("pil", a.worker_counts[-1])]:
            if left() < 60:
                rec.skip(f"pipeline alone, {pipeline}, {workers} workers")
                continue
            data = build_data(replace(data_cfg, workers=workers, pipeline=pipeline))
            stamps = []
            for x, _ in data.train_batches(0, range(min(a.steps, data.num_train // a.batch)), 1, 1, 0):
                x = x.to(r.dev)  # the PIL pipeline's batch, as the trainer would move it
                sync(r.dev)
                stamps.append(time.perf_counter())
            rec.add({"what": f"pipeline alone, {pipeline}, {workers} workers", "batches": len(stamps),
                     "img_s": a.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                     "setting": f"device={r.dev} batch={a.batch} img={a.img_size} pipeline={pipeline} {workers} "
                                f"workers on {os.cpu_count()} host cores, paper's train transform, synchronised per "
                                f"batch, first batch excluded (no model, precision, memory format or compile)"})
        if cuda:
            checks(rec, root, a, "cuda")
        folder = {"data.dataset": "imagefolder", "data.root": str(root), "data.workers": a.workers}
        runs: dict = {}
        for compiled in (False,) if a.smoke else (False, True):
            tag = "compiled" if compiled else "eager"
            for rep in range(a.reps):
                order = ("gpu", "pil") if rep % 2 == 0 else ("pil", "gpu")  # who goes first alternates
                for pipeline in order:
                    if left() < (150 if compiled and rep == 0 else 45):
                        rec.skip(f"trainer {tag}, {pipeline} pipeline, run {rep}")
                        continue
                    res = trainer_run(r, {**folder, "data.pipeline": pipeline}, compiled, a.steps)
                    runs.setdefault((tag, pipeline), []).append(res["img_s"])
                    rec.add({**res, "what": f"trainer {tag}, {pipeline} pipeline", "run": rep, "setting": setting(
                        compiled, f"data=ImageFolder 500x375 JPEG, {a.workers} workers, pipeline={pipeline}")})
            if len(runs.get((tag, "gpu"), [])) == len(runs.get((tag, "pil"), [])) > 0:
                rec.add({"what": f"ratio gpu/pil pipeline, trainer {tag}", "ratio": ratio(runs[tag, "gpu"], runs[
                    tag, "pil"]), "runs": a.reps})
                print(f"ratio gpu/pil, trainer {tag}: {rec.data['rows'][-1]['ratio']:.2f} (median of {a.reps} runs)")
        for compiled in (False,) if a.smoke else (False, True):
            if left() < (120 if compiled else 30):
                rec.skip(f"trainer {'compiled' if compiled else 'eager'}, synthetic")
                continue
            res = trainer_run(r, {"data.dataset": "synthetic"}, compiled, a.steps)
            tag = "compiled" if compiled else "eager"
            rec.add({**res, "what": f"trainer {tag}, synthetic", "setting": setting(compiled, "data=synthetic")})
    print(f"done in {time.time() - t0:.0f} s", flush=True)


def checks(rec: ResultLog, root: Path, a, device: str) -> None:
    """nvJPEG against PIL, and the augmentation on the GPU against the CPU on the same decoded images and seeds."""
    files = sorted((root / "train").rglob("*.jpg"))[:64]
    raw = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    gpu_imgs, _ = decode_batch(raw, device)
    ref = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    d = [_levels(x.permute(1, 2, 0).cpu().numpy(), r) for x, r in zip(gpu_imgs, ref)]
    rec.add({**_row("decode nvJPEG vs PIL", d, f"{len(files)} 500x375 JPEGs q95"), "setting": f"device={device}"})
    tf = TrainTransform(train_transform(replace(load_config("in1k:tiny").data, img_size=a.img_size)))
    cpu_imgs = [torch.from_numpy(r.copy()).permute(2, 0, 1).contiguous() for r in ref]
    samples = [tf.sample(s, *x.shape[-2:]) for s, x in enumerate(cpu_imgs)]
    on_gpu = tf.augment([x.to(device) for x in cpu_imgs], samples).cpu().numpy()
    on_cpu = tf.augment(cpu_imgs, samples).numpy()
    rec.add({**_row("augment on GPU vs on CPU", [_levels(on_gpu, on_cpu)], f"{len(files)} images, same seeds, uint8 "
                    f"before normalisation"), "setting": f"device={device} vs cpu"})
    for row in rec.data["rows"][-2:]:
        print(f"{row['what']:<36} max {row['max']:g}, mean {row['mean']:.4f}, >1: {100 * row['frac_over_1']:.3f}%")


# ------------------------------------------------------------------------------------------- (d) train-compare


PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "motorcycle_left", "chelsea",
          "immunohistochemistry", "camera", "coins")  # the last two are greyscale (made RGB)


def make_photo_folder(root: Path, train: int, val: int, size=(96, 128)) -> None:
    """One class per photograph: random crops of it (50-100% of the largest crop of that aspect, maybe mirrored)."""
    from convnext.detection.scenes import background, photograph

    for c, name in enumerate(PHOTOS):
        rng = np.random.default_rng(c)
        src = photograph(name)
        src = [np.repeat(src[..., None], 3, axis=2) if src.ndim == 2 else src]
        for split, n in (("train", train), ("val", val)):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(background(src, size, rng)).save(d / f"{i}.jpg", quality=90)


def train_compare(a) -> None:
    from convnext.train import train

    rec = ResultLog(a.out, mode="train-compare", device="cpu", epochs=a.epochs, seed=a.seed, smoke=a.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        make_photo_folder(root, a.train_per_class, a.val_per_class)
        for pipeline in ("pil", "gpu"):
            cfg = replace(load_config("in1k:tiny"), **{
                "model.name": "convnext_atto", "data.root": str(root), "data.img_size": a.img_size,
                "data.batch_size": a.batch, "data.workers": a.workers, "data.pipeline": pipeline,
                "optim.lr": 2e-3, "optim.scale_lr": False, "optim.warmup_epochs": min(3.0, a.epochs / 5),
                "train.epochs": a.epochs, "train.accum_steps": 1, "train.precision": "fp32",
                "train.channels_last": False, "train.ema_decay": 0.0, "train.seed": a.seed,
                "train.eval_every": max(1, a.epochs // 5), "train.log_every": 10**6})
            t = time.perf_counter()
            s = train(cfg, Path(tmp) / pipeline, device="cpu")
            took = time.perf_counter() - t
            rec.add({"what": f"train {pipeline} pipeline", "final_top1": s["final_top1"], "best_top1": s["best_top1"],
                     "steps": s["steps"], "time_s": took, "setting": (
                         f"convnext_atto {a.img_size} px fp32 batch {a.batch}, {len(PHOTOS)} classes x "
                         f"{a.train_per_class} train / {a.val_per_class} val, {a.epochs} epochs, seed {a.seed}, the "
                         f"paper's augmentation and mixup, device cpu")})
            print(f"{pipeline}: top-1 {s['final_top1']:.1f} (best {s['best_top1']:.1f}) in {took:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=False)
    mode.add_argument("--equivalence", action="store_true")
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--train-compare", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU (with no mode: --gpu's plumbing)")
    p.add_argument("--out")
    p.add_argument("--budget-s", type=float, default=420, help="--gpu: skip what would not finish by then")
    p.add_argument("--batch", type=int, help="default: 128 (--gpu), 32 (--train-compare)")
    p.add_argument("--img-size", type=int, help="default: 224 (--gpu), 64 (--train-compare)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps (batches) per measurement")
    p.add_argument("--reps", type=int, default=2, help="--gpu: runs of each pipeline per compile mode")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="DataLoader workers of the trainer runs (--train-compare: at most 1)")
    p.add_argument("--worker-counts", type=int, nargs="+", default=[1, 4, 15])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10, help="--train-compare")
    p.add_argument("--seed", type=int, default=0, help="--train-compare")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=50)
    a = p.parse_args(argv)
    if a.train_compare:
        a.img_size, a.batch, a.workers = a.img_size or 64, a.batch or 32, min(a.workers, 1)
        if a.smoke:
            a.epochs, a.train_per_class, a.val_per_class, a.img_size, a.batch, a.workers = 2, 4, 2, 32, 8, 0
        train_compare(a)
    elif a.equivalence:
        equivalence(a)
    elif a.gpu or a.smoke:
        a.img_size, a.batch = a.img_size or 224, a.batch or 128
        if a.smoke:
            a.batch, a.img_size, a.warmup, a.steps, a.classes, a.per_class, a.reps = 8, 32, 2, 3, 4, 6, 1
            a.workers, a.worker_counts = 0, [0, 1]
        gpu(a)
    else:
        p.error("choose --equivalence, --gpu, --smoke or --train-compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
