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
    eager, then compiled (torch.compile default mode). Every step waits for the step before it to finish on the
    GPU (the trainer reads each step's loss one step late; the plain loops wait on the previous step's CUDA event
    likewise), then takes a timestamp (the trainer's through `on_step`, convnext.benchmark.StepTimer), so
    per-step times are comparable: img/s = batch / median step time after the warm-up steps (compilation
    included in the warm-up).
(b) pipeline. JPEGs of 500x375 (about ImageNet's mean size) cut from scikit-image's photos, in the ImageNet
    layout; ImageFolderData with the paper's train transform (RandomResizedCrop, flip, RandAugment
    rand-m9-mstd0.5-inc1, random erasing) and `--workers` DataLoader workers: the loader alone (img/s, worker
    start-up excluded), then the trainer end to end on that folder, eager and compiled, as (a).
Every number is printed with device, precision, batch, memory format and compile mode (Setting.describe);
JSON (with convnext.benchmark.provenance as its meta) goes to --out after each number, so a run cut short still
leaves what it measured.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from convnext import create_model
from convnext.benchmark import ResultLog, Setting, StepTimer, sync
from convnext.config import load_config, replace
from convnext.data import ImageFolderData
from convnext.runtime import autocast
from convnext.train import train


class Run:
    def __init__(self, a):
        self.a, self.t0 = a, time.time()
        self.cuda = torch.cuda.is_available() and not a.smoke
        self.dev = "cuda" if self.cuda else "cpu"
        self.precision = "bf16" if self.cuda else "fp32"
        self.model = "convnext_atto" if a.smoke else "convnext_tiny"
        self.log = ResultLog(a.out, ("loop", "pipeline"), **asdict(self.setting(False)), warmup=a.warmup,
                             steps=a.steps, workers=a.workers, budget_s=a.budget_s, smoke=a.smoke)

    def left(self) -> float:
        return self.a.budget_s - (time.time() - self.t0)

    def setting(self, compiled: bool) -> Setting:
        """What every number here is measured under: a training step, channels_last, autocast in `precision`."""
        return Setting(device=self.dev, precision=self.precision, batch_size=self.a.batch, img_size=self.a.img_size,
                       channels_last=True, compile="default" if compiled else "none", train=True)

    def describe(self, compiled: bool, extra: str = "") -> str:
        return self.setting(compiled).describe() + extra


def _rate(timer: StepTimer, t0: float, warmup: int, batch: int) -> dict:
    """img/s from the median step time after the first `warmup` steps (StepTimer.img_s), and the mean beside it."""
    stamps = timer.stamps
    steps = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return {"img_s": timer.img_s(batch, skip=warmup - 1), "img_s_mean": batch * len(steps) / sum(steps),
            "steps_timed": len(steps), "first_step_s": stamps[0] - t0}


def plain_loop(r: Run, model, compiled: bool) -> dict:
    """The plain loop: one pinned batch copied to the device every step, autocast forward, label-smoothed CE,
    backward, fused AdamW; before each timestamp it waits for the previous step to finish, as the trainer does."""
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
    timer, previous = StepTimer(), None
    t0 = time.perf_counter()
    for _ in range(a.warmup + a.steps):
        xd = x.to(r.dev, non_blocking=True, memory_format=fmt)
        yd = y.to(r.dev, non_blocking=True)
        with autocast(r.dev, r.precision):
            out = net(xd)
        loss = F.cross_entropy(out.float(), yd, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if r.cuda:  # the trainer's pace: this step queued, the one before it finished
            done = torch.cuda.Event()
            done.record()
            if previous is not None:
                previous.synchronize()
            previous = done
        timer(None)
    sync(r.dev)
    return _rate(timer, t0, a.warmup, a.batch)


def trainer_run(r: Run, data_cfg: dict, compiled: bool, steps: int) -> dict:
    """The real trainer, with a timestamp after every optimizer step (its `on_step` callback)."""
    a = r.a
    cfg = load_config("in1k:tiny")
    over = {"data.batch_size": a.batch, "data.img_size": a.img_size, "train.max_steps": a.warmup + steps,
            "train.compile": compiled, "train.precision": r.precision, "train.channels_last": True,
            "train.eval_every": 10**6, "train.log_every": 10**6, "train.accum_steps": 1, "data.limit_eval": 256}
    if a.smoke:
        over["model.name"] = "convnext_atto"
    cfg = replace(cfg, **over, **data_cfg)
    timer = StepTimer()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, device=r.dev, on_step=timer)
    return _rate(timer, t0, a.warmup, a.batch)


def loop_part(r: Run) -> None:
    import timm

    a = r.a
    name = r.model
    for compiled in (False, True):
        if compiled and r.left() < 150:
            r.log.skip("compiled loop group")
            return
        tag = "compiled" if compiled else "eager"
        for what in ("plain-timm", "trainer", "plain-ours"):
            if compiled and what == "plain-ours" and r.left() < 120:
                r.log.skip(f"plain-ours {tag}")
                continue
            if what == "trainer":
                res = trainer_run(r, {"data.dataset": "synthetic"}, compiled, a.steps)
            else:
                make = timm.create_model if what == "plain-timm" else create_model
                res = plain_loop(r, make(name, drop_path_rate=0.1), compiled)
            res.update(what=f"{what} {tag}", setting=r.describe(compiled, f" model={name} data=synthetic"))
            r.log.add(res, "loop")
            torch.cuda.empty_cache() if r.cuda else None


def make_folder(root: Path, classes: int, per_class: int, workers: int) -> None:
    """500x375 JPEGs (quality 95) cut from scikit-image's photos at random places, scales and tints."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(root / split / f"n{c:05d}", c, n) for split, n in (("train", per_class), ("val", 1))
            for c in range(classes)]
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
        r.log.add({"what": f"loader alone, epoch {epoch}", "img_s": rate, "steps": len(stamps),
                              "setting": f"{a.workers} workers on {os.cpu_count()} host cores, batch={a.batch}, "
                                         f"img={a.img_size}, paper's train transform, PIL, first batch excluded "
                                         f"(loader only: no device, precision, memory format or compile)"}, "pipeline")
    folder = {"data.dataset": "imagefolder", "data.root": str(root), "data.workers": a.workers}
    for compiled in (False, True):
        if compiled and r.left() < 120:
            r.log.skip("trainer on the folder, compiled")
            return
        tag = "compiled" if compiled else "eager"
        res = trainer_run(r, folder, compiled, steps - a.warmup)
        res.update(what=f"trainer {tag}, JPEG folder", setting=r.describe(compiled, f" model={r.model} "
                                                                          f"data=ImageFolder {a.workers} workers"))
        r.log.add(res, "pipeline")


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
