"""The measuring harness: parameters and multiply-adds, one timed loop, one alternation of contenders, and one
provenance record. `convnext info`, `convnext bench` and every script in benchmarks/ use it.

- Multiply-adds are counted with `torch.utils.flop_counter` (FLOPs / 2), on the meta device so that counting
  even ConvNeXt-XL at 384 costs no memory. The paper's "FLOPs" are these multiply-adds of convs and linears.
- `Runner` prepares one model for a `Setting` (device, precision, batch, size, memory format, compile mode,
  inference or a training step); `Runner.time` is the timed loop (synchronised on a GPU).
- `make_peer` builds what ours is compared with: timm's model of the same name, or torchvision's Swin-T, ResNet-50
  or ViT-B/16 (the paper's reference networks).
- `alternate` times several contenders run by run, rotating who goes first, so that a noisy, shared machine
  slows all alike; `ratio` is the median of the per-run ratios of two of them.
- `StepTimer` is the engine's per-step callback (convnext.engine.train(on_step=...)): img/s of a real run.
- `provenance` is what every result is saved with: device, versions, threads, load, git commit, date, argv.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convnext.checkpoint import git_commit, write_text
from convnext.errors import UserError
from convnext.runtime import autocast

# ------------------------------------------------------------------------------------------------- counting


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> float:
    """Multiply-adds (in G) of one forward pass of one image, counted on the meta device."""
    model = _on_meta(model)
    x = torch.empty(1, in_chans, img_size, img_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def _on_meta(model: nn.Module) -> nn.Module:
    try:
        if next(model.parameters()).device.type == "meta":
            return model
    except StopIteration:
        return model
    return copy.deepcopy(model).to("meta")


def stage_shapes(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> list[tuple[int, ...]]:
    """Output shape of each stage (each block, for the isotropic model: only the last is shown by `info`)."""
    x = torch.empty(1, in_chans, img_size, img_size, device="meta")
    with torch.no_grad():
        outs = _on_meta(model).forward_intermediates(x, intermediates_only=True)
    return [tuple(t.shape) for t in outs]


# ------------------------------------------------------------------------------------------------- timing


@dataclass
class Setting:
    """What a number was measured under; printed with every number and saved with it."""

    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 16
    img_size: int = 224
    channels_last: bool = False
    compile: str = "none"  # none | default | max-autotune
    train: bool = False

    def describe(self) -> str:
        return (
            f"device={device_name(self.device)} precision={self.precision} batch={self.batch_size} "
            f"img={self.img_size} memory_format={'channels_last' if self.channels_last else 'contiguous'} "
            f"compile={self.compile} mode={'train (fwd+bwd+AdamW)' if self.train else 'inference'} "
            f"torch={torch.__version__} threads={torch.get_num_threads()}"
        )


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class Runner:
    """One model prepared for timing under a Setting: `step()` runs one batch, `time(iters)` is the timed loop."""

    def __init__(self, model: nn.Module, s: Setting, in_chans: int = 3, num_classes: int = 1000):
        self.s = s
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        model = model.to(s.device, memory_format=fmt)
        self.x = torch.randn(s.batch_size, in_chans, s.img_size, s.img_size, device=s.device).to(memory_format=fmt)
        if s.train:
            model.train()
            self.y = torch.randint(0, num_classes, (s.batch_size,), device=s.device)
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        else:
            model.eval()
        self.model = model
        mode = None if s.compile == "default" else s.compile
        self.fn = model if s.compile == "none" else torch.compile(model, mode=mode)

    def step(self) -> None:
        if self.s.train:
            with autocast(self.s.device, self.s.precision):
                loss = nn.functional.cross_entropy(self.fn(self.x).float(), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast(self.s.device, self.s.precision):
                self.fn(self.x)

    def time(self, iters: int) -> float:
        """Images per second over `iters` batches."""
        sync(self.s.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        sync(self.s.device)
        return iters * self.s.batch_size / (time.perf_counter() - t0)

    def warm_up(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        sync(self.s.device)

    def peak_memory_mb(self) -> float | None:
        """Peak GPU memory of one step (None on the CPU)."""
        if not self.s.device.startswith("cuda"):
            return None
        torch.cuda.reset_peak_memory_stats(self.s.device)
        self.step()
        sync(self.s.device)
        return torch.cuda.max_memory_allocated(self.s.device) / 2**20


def alternate(contenders: dict[str, Callable[[], float]], runs: int,
              progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, list[float]]:
    """Call each contender (returning one measurement, e.g. img/s) once per run, rotating the order run by run
    so that each goes first equally often; {name: [one value per run]}."""
    names = list(contenders)
    got: dict[str, list[float]] = {k: [] for k in names}
    for i in range(runs):
        for k in names[i % len(names):] + names[: i % len(names)]:
            got[k].append(contenders[k]())
        if progress is not None:
            progress(i + 1, runs, {k: v[-1] for k, v in got.items()})
    return got


def ratio(a: list[float], b: list[float]) -> float:
    """The median over runs of a / b, each pair measured in the same run."""
    return statistics.median(x / y for x, y in zip(a, b))


def summarise(runs: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict:
    """Medians per contender and the median per-run ratio of each named pair (numerator, denominator)."""
    return {"median": {k: statistics.median(v) for k, v in runs.items()},
            "ratios": {name: ratio(runs[a], runs[b]) for name, (a, b) in pairs.items()}, "runs": runs}


def compare(models: dict[str, nn.Module], s: Setting, *, warmup: int = 2, iters: int = 3, runs: int = 7,
            progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict:
    """Time `models` under `s`, alternating: medians, per-run values, the `<first>/<other>` ratios (the first
    model against each other one), peak GPU memory, and the provenance."""
    runners = {k: Runner(m, s) for k, m in models.items()}
    for r in runners.values():
        r.warm_up(warmup)
    runs_ = alternate({k: (lambda r=r: r.time(iters)) for k, r in runners.items()}, runs, progress)
    first = next(iter(models))
    result = summarise(runs_, {f"{first}/{k}": (first, k) for k in models if k != first})
    result["peak_mb"] = {k: r.peak_memory_mb() for k, r in runners.items()}
    result.update(provenance(**asdict(s), warmup=warmup, iters=iters, runs=runs), describe=s.describe())
    return result


class StepTimer:
    """The engine's on_step callback (and a plain loop's): a timestamp after every optimizer step; `img_s` is the
    median rate over the steps after the first `skip` (compilation and warm-up), `mean_img_s` the mean rate.
    On a GPU the gaps are GPU step times because the engine reads each step's loss one step late, which keeps
    the host at most about a step ahead of the device."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, run) -> None:
        self.stamps.append(time.perf_counter())

    def img_s(self, images_per_step: int, skip: int = 1) -> float:
        return images_per_step / statistics.median(self._gaps(skip))

    def mean_img_s(self, images_per_step: int, skip: int = 1) -> float:
        """The mean rate over the steps after `skip`: every step's cost counts, slow ones included."""
        gaps = self._gaps(skip)
        return images_per_step * len(gaps) / sum(gaps)

    def _gaps(self, skip: int) -> list[float]:
        gaps = [b - a for a, b in zip(self.stamps[skip:], self.stamps[skip + 1:])]
        if not gaps:
            raise ValueError(f"{len(self.stamps)} steps timed: too few after skipping {skip}")
        return gaps


# ------------------------------------------------------------------------------------------------- peers


# The peers a ConvNeXt is timed against: "timm", timm's model of the same name; or one of the paper's reference
# networks from torchvision (Table 1: Swin-T; Table 2: ViT-B/16; Table 10's start: ResNet-50), whatever ours is.
TORCHVISION_PEERS = ("swin_t", "resnet50", "vit_b_16")
PEERS = ("timm", *TORCHVISION_PEERS)


def make_peer(peer: str, name: str, img_size: int = 224, **kwargs) -> nn.Module:
    """The peer model (random weights: speed does not depend on the values): timm's model of the same name as ours,
    or a torchvision network (ViT-B/16 built for `img_size`, its position embedding depending on it)."""
    if peer in TORCHVISION_PEERS:
        from torchvision import models  # heavy (~0.5 s); only a comparison with a torchvision peer needs it

        if peer == "vit_b_16":
            if img_size % 16:
                raise UserError(f"vit_b_16 takes images whose size is a multiple of 16, not {img_size}")
            kwargs["image_size"] = img_size
        return models.get_model(peer, weights=None, **kwargs)
    if peer != "timm":
        raise UserError(f"unknown peer {peer!r}; supported: {', '.join(PEERS)}")
    import timm  # heavy (~0.4 s); only a comparison needs it

    timm_name = name.replace("convnext_isotropic_", "convnext_iso_")  # not in timm; refused below
    if timm_name not in timm.list_models():
        raise UserError(f"timm has no model {timm_name!r} to compare against")
    return timm.create_model(timm_name, pretrained=False, **kwargs)


# ------------------------------------------------------------------------------------------------- results


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(**setting) -> dict:
    """Where, when and with what a result was measured; `setting` adds what the caller varied (a Setting's
    fields, the model, steps per run...)."""
    return {
        "setting": setting,
        "device": device_name(setting.get("device", "cpu")),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cores": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(),
                 "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, **{p: _version(p) for p in ("timm", "torchvision", "triton")}},
        "git_commit": git_commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


class ResultLog:
    """A long benchmark's JSON: its provenance ("meta"), a list of rows per part, and what its time budget skipped.
    Each row is printed as it comes and the file rewritten (atomically) after each, so a run cut short keeps what
    it measured."""

    def __init__(self, out: str | os.PathLike | None, parts: Sequence[str] = ("rows",), **setting):
        self.out = out
        meta = provenance(**setting)
        self.data = {"meta": meta, **{part: [] for part in parts}, "skipped": []}
        v = meta["versions"]
        print(f"# {meta['device']}; torch {v['torch']}; torchvision {v['torchvision']}; timm {v['timm']}; "
              f"{meta['host']['cores']} host cores; git {meta['git_commit']}", flush=True)

    def add(self, row: dict, part: str = "rows") -> None:
        self.data[part].append(row)
        if "img_s" in row:
            print(f"{row['what']:<36} {row['img_s']:>8.0f} img/s   [{row['setting']}]", flush=True)
        self.save()

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)
        print(f"skipped (budget): {what}", flush=True)
        self.save()

    def save(self) -> None:
        if self.out:
            write_text(json.dumps(self.data, indent=2) + "\n", self.out)


@contextlib.contextmanager
def num_threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
