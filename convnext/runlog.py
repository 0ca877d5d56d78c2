"""What a run shows and leaves behind while it trains: the progress bar, each step's loss read without stalling
the GPU, the rows of metrics.jsonl, and curves.png. Used by the engine (convnext/engine.py) for every task."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from convnext.errors import UserError


class NonFiniteLoss(UserError):
    pass


class Progress:
    """A tqdm bar per period on a terminal; plain lines every `every` steps otherwise (logs, CI)."""

    def __init__(self, total: int, label: str, enabled: bool, every: int):
        self.enabled, self.every, self.n, self.total, self.label = enabled, every, 0, total, label
        self.seen = 0  # images so far in this period
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=label, dynamic_ncols=True, leave=True) if enabled and sys.stderr.isatty() \
            else None

    def update(self, loss: float, lr: float, images: int) -> None:
        """One more step of `images` images (all processes)."""
        self.n += 1
        self.seen += images
        if not self.enabled:
            return
        rate = self.seen / max(1e-9, time.perf_counter() - self.t0)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif self.n % self.every == 0 or self.n == self.total:
            eta = (self.total - self.n) * (time.perf_counter() - self.t0) / self.n
            print(f"{self.label} step {self.n}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                  f"{rate:.0f} img/s eta {eta:.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepLoss:
    """One optimizer step's loss (and its named terms), read later. On a GPU it is copied to the host without
    blocking and read one step late, when the next step's work is already queued: a per-step `.item()` would leave
    the GPU idle while the CPU issues the optimizer, the EMA and the next batch (measured: 8% of eager and 14% of
    compiled ConvNeXt-T training on an H100). A NaN/Inf is still caught before any checkpoint is written."""

    def __init__(self, values: torch.Tensor, names: tuple[str, ...], step: int, epoch: int, lr: float, images: int):
        self.names, self.step, self.epoch, self.lr, self.images = names, step, epoch, lr, images
        self.event = None
        if values.is_cuda:
            self.values = values.to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.values = values

    def read(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()


class PeriodLog:
    """The steps of one period (an epoch, or `eval_every_steps` steps): the mean loss and terms, images per
    second, the progress bar; each step's loss is checked one step late (StepLoss)."""

    def __init__(self, steps: int, label: str, enabled: bool, every: int, last_good: Path):
        self.bar = Progress(steps, label, enabled, every)
        self.last_good = last_good
        self.pending: StepLoss | None = None
        self.sums: list[float] = []
        self.names: tuple[str, ...] = ()
        self.n = self.images = 0
        self.lr = 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: StepLoss) -> None:
        if self.pending is not None:  # read one step late: this step's work is already queued on the GPU
            self._settle(self.pending)
        self.pending = loss

    def settle(self) -> None:
        """Check every step so far (before a checkpoint is written, and at the period's end)."""
        if self.pending is not None:
            self._settle(self.pending)
            self.pending = None

    def _settle(self, p: StepLoss) -> None:
        values = p.read()
        if not math.isfinite(values[0]):
            raise NonFiniteLoss(f"the loss became {values[0]} at step {p.step} (epoch {p.epoch}); stopped. The last "
                                f"good checkpoint is {self.last_good}; lower optim.lr or set optim.clip_grad")
        self.sums = values if not self.sums else [a + b for a, b in zip(self.sums, values)]
        self.names, self.n, self.lr = p.names, self.n + 1, p.lr
        self.images += p.images
        self.bar.update(values[0], p.lr, p.images)

    def close(self) -> dict:
        """The period's row: mean loss (and terms, as train_<term>), last lr, img/s and seconds of training."""
        self.settle()
        self.bar.close()
        seconds = time.perf_counter() - self.t0
        means = [s / max(1, self.n) for s in self.sums] or [float("nan")]
        row = {"loss": means[0], **{f"train_{k}": v for k, v in zip(self.names, means[1:])}}
        return {**row, "lr": self.lr, "img_s": self.images / seconds, "time_s": seconds}


def plot_curves(history: list[dict], path: Path, metric: str | None, steps_per_epoch: int) -> bool:
    """curves.png: the loss per period (and the evaluation loss), and `metric` (raw, EMA, and on the subset
    evaluated at epochs without a full evaluation) where it has at least two points. False when there is
    nothing to draw."""
    import matplotlib  # heavy (~0.3 s), and only curves.png needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return False
    ep = [h["step"] / steps_per_epoch for h in history]
    series = [(k, label) for k, label in ((metric, metric), (f"ema_{metric}", f"EMA {metric}"),
                                          (f"subset_{metric}", f"{metric}, subset"),
                                          (f"subset_ema_{metric}", f"EMA {metric}, subset")) if metric]
    points = {k: [(e, h[k]) for e, h in zip(ep, history) if k in h] for k, _ in series}
    show_metric = sum(len(v) for v in points.values()) >= 2
    fig, axes = plt.subplots(1, 2 if show_metric else 1, figsize=(10 if show_metric else 5.5, 4), squeeze=False)
    a = axes[0][0]
    a.plot(ep, [h["loss"] for h in history], "o-", label="train loss")
    if any("eval_loss" in h for h in history):
        a.plot([e for e, h in zip(ep, history) if "eval_loss" in h],
               [h["eval_loss"] for h in history if "eval_loss" in h], "o-", label="eval loss")
    a.set_xlabel("epoch"), a.legend(), a.set_title("loss")
    if show_metric:
        b = axes[0][1]
        for k, label in series:
            if points[k]:
                style = "s--" if k.startswith("subset_") else "o-"
                b.plot(*zip(*points[k]), style, label=label, markersize=5)
        b.set_xlabel("epoch"), b.legend(), b.set_title(f"evaluation: {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
