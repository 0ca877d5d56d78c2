"""Training on one GPU: our trainer's img/s for ConvNeXt-T (bf16 autocast, channels_last, batch 128), eager and
torch.compile'd, beside a plain loop around timm's model; and whether the input pipeline keeps up with it.

    python benchmarks/gpu_train.py --out gpu_train.json [--budget-s 420] [--workers 15]
    python benchmarks/gpu_train.py --smoke          # CPU, atto at 32 px, a few steps: the plumbing only

(a) loop. Synthetic data (data.dataset=synthetic: one pinned batch, copied to the GPU every step as a
    DataLoader's would be), so the model and the loop are all that is timed:
      plain-timm   timm's convnext_tiny (drop path 0.1), fused AdamW, label-smoothed CE: nothing else
      trainer      `convnext.train.train` with the in1k:tiny recipe (mixup/cutmix, drop path 0.1, EMA, per-step
                   lr, seeding, loss check, progress): the whole loop as a user runs it
      plain-ours   the plain loop around our convnext_tiny (separates the model from the loop)
    eager, then compiled (torch.compile default mode). Every step ends in a sync (the trainer's loss.item(); a
    cuda.synchronize in the plain loops), so per-step times are comparable: img/s = batch / median step time
    after the warm-up steps (compilation included in the warm-up).
(b) pipeline. JPEGs of 500x375 (about ImageNet's mean size) cut from scikit-image's photos, in the ImageNet
    layout; ImageFolderData with the paper's train transform (RandomResizedCrop, flip, RandAugment
    rand-m9-mstd0.5-inc1, random erasing) and `--workers` DataLoader workers: the loader alone (img/s, worker
    start-up excluded), then the trainer end to end on that folder, eager and compiled, as (a).
Every number is printed with device, dtype, batch, memory format and compile mode; JSON goes to --out after
each part, so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import convnext.train as trainer  # noqa: E402
from convnext.config import load_config, replace  # noqa: E402
from convnext.data import ImageFolderData  # noqa: E402
from convnext.model import create_model  # noqa: E402


class Run:
    def __init__(self, a):
        self.a, self.t0 = a, time.time()
        self.cuda = torch.cuda.is_available() and not a.smoke
        self.dev = "cuda" if self.cuda else "cpu"
        name = torch.cuda.get_device_name() if self.cuda else "cpu"
        self.dtype = "bf16" if self.cuda else "fp32"
        self.data = {"meta": {"device": name, "torch": torch.__version__, "timm": _version("timm"),
                              "host_cores": os.cpu_count(), "date": datetime.datetime.now().isoformat("T", "seconds"),
                              "argv": sys.argv}, "loop": [], "pipeline": [], "skipped": []}
        print(f"# {name}; torch {torch.__version__}; timm {self.data['meta']['timm']}; {os.cpu_count()} host cores",
              flush=True)

    def left(self) -> float:
        return self.a.budget_s - (time.time() - self.t0)

    def setting(self, compiled: bool, extra: str = "") -> str:
        a = self.a
        return (f"device={self.data['meta']['device']} dtype={self.dtype} (autocast) batch={a.batch} img={a.img_size} "
                f"memory_format=channels_last compile={'default' if compiled else 'none'}{extra}")

    def record(self, part: str, row: dict) -> None:
        self.data[part].append(row)
        print(f"{row['what']:<34} {row['img_s']:>8.0f} img/s   [{row['setting']}]", flush=True)
        self.save()

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)
        print(f"skipped (budget): {what}", flush=True)
        self.save()

    def save(self) -> None:
        if self.a.out:
            Path(self.a.out).write_text(json.dumps(self.data, indent=2) + "\n")


def _version(mod: str):
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


def _rate(stamps: list[float], warmup: int, batch: int) -> dict:
    steps = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return {"img_s": batch / statistics.median(steps), "img_s_mean": batch * len(steps) / sum(steps),
            "steps_timed": len(steps)}


def plain_loop(r: Run, model, compiled: bool) -> dict:
    a = r.a
    fmt = torch.channels_last
    model = model.to(r.dev, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    net = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, generator=g)
    y = torch.randint(0, 1000, (a.batch,), generator=g)
    if r.cuda:
        x, y = x.pin_memory(), y.pin_memory()
    dtype = torch.bfloat16 if r.cuda else torch.float32
    stamps, t0 = [], time.perf_counter()
    for _ in range(a.warmup + a.steps):
        xd = x.to(r.dev, non_blocking=True, memory_format=fmt)
        yd = y.to(r.dev, non_blocking=True)
        with torch.autocast(r.dev, dtype=dtype, enabled=r.cuda):
            out = net(xd)
        loss = F.cross_entropy(out.float(), yd, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if r.cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    res = _rate(stamps, a.warmup, a.batch)
    res["first_step_s"] = stamps[0] - t0
    return res


def trainer_run(r: Run, data_cfg: dict, compiled: bool, steps: int) -> dict:
    """The real trainer, with per-step timestamps taken where its progress bar is updated (after loss.item())."""
    a = r.a
    stamps: list[float] = []

    class Timed(trainer.Progress):
        def update(self, loss, lr, images):
            stamps.append(time.perf_counter())
            super().update(loss, lr, images)

    cfg = load_config("in1k:tiny")
    over = {"data.batch_size": a.batch, "data.img_size": a.img_size, "train.max_steps": a.warmup + steps,
            "train.compile": compiled, "train.precision": r.dtype, "train.channels_last": True,
            "train.eval_every": 10**6, "train.log_every": 10**6, "train.accum_steps": 1, "data.limit_eval": 256}
    if a.smoke:
        over["model.name"] = "convnext_atto"
    cfg = replace(cfg, **over, **data_cfg)
    original, trainer.Progress = trainer.Progress, Timed
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer.train(cfg, out, device=r.dev)
    finally:
        trainer.Progress = original
    res = _rate(stamps, a.warmup, a.batch)
    res["first_step_s"] = stamps[0] - t0
    return res


def loop_part(r: Run) -> None:
    import timm

    a = r.a
    name = "convnext_atto" if a.smoke else "convnext_tiny"
    for compiled in (False, True):
        if compiled and r.left() < 150:
            r.skip("compiled loop group")
            return
        tag = "compiled" if compiled else "eager"
        for what in ("plain-timm", "trainer", "plain-ours"):
            if compiled and what == "plain-ours" and r.left() < 120:
                r.skip(f"plain-ours {tag}")
                continue
            if what == "trainer":
                res = trainer_run(r, {"data.dataset": "synthetic"}, compiled, a.steps)
            else:
                make = timm.create_model if what == "plain-timm" else create_model
                res = plain_loop(r, make(name, drop_path_rate=0.1), compiled)
            res.update(what=f"{what} {tag}", setting=r.setting(compiled, f" model={name} data=synthetic"))
            r.record("loop", res)
            torch.cuda.empty_cache() if r.cuda else None


def make_folder(root: Path, classes: int, per_class: int, workers: int) -> None:
    """500x375 JPEGs (quality 95) cut from scikit-image's photos at random places, scales and tints."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(root / split / f"n{c:05d}", c, n) for split, n in (("train", per_class), ("val", 1)) for c in range(classes)]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_class, jobs, chunksize=16))


@functools.cache
def _photos() -> list:
    from skimage import data as photos

    return [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket(), photos.cat(),
            photos.immunohistochemistry()]


def _write_class(job) -> None:
    import numpy as np
    from PIL import Image

    d, c, n = job
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(c)
    sources = _photos()
    for i in range(n):
        img = Image.fromarray(sources[rng.integers(len(sources))])
        w, h = img.size
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BICUBIC)
        tint = rng.uniform(0.8, 1.2, size=3)
        img = Image.fromarray(np.clip(np.asarray(img) * tint, 0, 255).astype(np.uint8))
        img.save(d / f"{i}.jpg", quality=95)


def pipeline_part(r: Run, tmp: Path) -> None:
    a = r.a
    root = tmp / "folder"
    t0 = time.perf_counter()
    make_folder(root, a.classes, a.per_class, max(1, (os.cpu_count() or 2)))
    sizes = [p.stat().st_size for p in (root / "train").rglob("*.jpg")]
    print(f"made {len(sizes)} train JPEGs 500x375 (mean {statistics.mean(sizes) / 1e3:.0f} KB) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    cfg = replace(load_config("in1k:tiny").data, root=str(root), batch_size=a.batch, img_size=a.img_size,
                  workers=a.workers)
    data = ImageFolderData(cfg, seed=0)
    steps = data.num_train // a.batch
    for epoch in range(2):
        stamps = []
        for _ in data.train_batches(epoch, range(steps), 1, 1, 0):
            stamps.append(time.perf_counter())
        rate = a.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
        r.record("pipeline", {"what": f"loader alone, epoch {epoch}", "img_s": rate, "steps": len(stamps),
                              "setting": f"{a.workers} workers on {os.cpu_count()} host cores, batch={a.batch}, "
                                         f"img={a.img_size}, paper's train transform, PIL, first batch excluded"})
    folder = {"data.dataset": "imagefolder", "data.root": str(root), "data.workers": a.workers}
    for compiled in (False, True):
        if compiled and r.left() < 120:
            r.skip("trainer on the folder, compiled")
            return
        tag = "compiled" if compiled else "eager"
        res = trainer_run(r, folder, compiled, steps - a.warmup)
        res.update(what=f"trainer {tag}, JPEG folder", setting=r.setting(compiled, f" data=ImageFolder "
                                                                         f"{a.workers} workers"))
        r.record("pipeline", res)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    p.add_argument("--budget-s", type=float, default=420)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps per contender in (a)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=10, help="train images per class in (b)")
    p.add_argument("--only", choices=["loop", "pipeline"])
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.batch, a.img_size, a.warmup, a.steps, a.classes, a.per_class = 8, 32, 2, 3, 4, 6
        a.workers = min(a.workers, 2)
    r = Run(a)
    if a.only != "pipeline":
        loop_part(r)
    if a.only != "loop":
        with tempfile.TemporaryDirectory() as tmp:
            pipeline_part(r, Path(tmp))
    print(f"done in {time.time() - r.t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
