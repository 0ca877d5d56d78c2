"""The training engine: one loop, written once, that trains every task.

    per optimizer step: lr from a pure function of the step -> per micro-batch: the task's forward and loss under
    autocast -> backward -> clip -> optimizer step -> EMA -> at a period's end: evaluate, best, last.pt, metrics

A task supplies what is its own (`Task`): its data, its model, the loss of a batch, its evaluation, and what its
checkpoints carry. Classification (convnext/train.py) is the first. The engine owns the rest, for all of them:
(seed, step) determinism, exact resume after a kill -9, EMA, DDP under torchrun, one autocast path (GradScaler
only for fp16), gradient accumulation and clipping, atomic checkpoints, the NaN stop, progress, metrics.jsonl,
summary.json and curves.png.

Time is counted in optimizer steps; epochs are the data's unit. A *period* ends at each epoch's end, every
`train.eval_every_steps` steps when set (iteration-based training), and at the last step; each period writes a
row of metrics.jsonl and last.pt, and evaluates when an evaluation is due (`train.eval_every` epochs, or
`eval_every_steps`; else `train.eval_subset` images at an epoch's end). The schedule's length is
`train.total_steps`, or epochs x steps per epoch; `train.max_steps` stops a run early on the same schedule.

Run directory (`out`): config.json (resolved config, derived values, git commit), last.pt, best.pt and
best_ema.pt (by the task's `best_metric`), metrics.jsonl, summary.json, curves.png. Every data order and random
draw is a function of (seed, step) (convnext/seeding.py), so resuming from last.pt replays the same run.
"""
from __future__ import annotations

import abc
import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from convnext import distributed
from convnext.checkpoint import git_commit, load_run_checkpoint, save, write_text
from convnext.config import Config, Derived, derive, dumps
from convnext.optim import EMA, build_optimizer, scheduled_lr, set_lr
from convnext.runlog import PeriodLog, StepLoss, plot_curves
from convnext.runtime import Runtime
from convnext.seeding import seed_everything, step_seed


class Task(abc.ABC):
    """What a task supplies to the engine.

    `batch` is whatever the task's data yields for one micro-batch, on the CPU: (images, labels) for
    classification, (images, targets as a list of dicts) for detection, images alone for masked pre-training.
    `loss` runs under the engine's autocast and returns the loss to minimise and its named terms (a detector's
    loss dict; {} when there is one term); the engine logs their means per period.
    """

    name: str = "task"
    best_metric: str | None = None  # the evaluation metric that selects best.pt (None: no best checkpoint)
    higher_is_better: bool = True

    @abc.abstractmethod
    def build_data(self, cfg: Config, seed: int):
        """The data: `num_train`, `train_batches(epoch, steps, accum, world, rank)` yielding one batch per
        micro-batch, `skipped` (unreadable files skipped so far), and what `evaluate` reads (convnext/data.py)."""

    @abc.abstractmethod
    def build_model(self, cfg: Config, data, rt: Runtime) -> nn.Module:
        """The model to train, on the CPU (the engine moves it to rt's device and memory format)."""

    def build_optimizer(self, model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
        """AdamW with the paper's parameter groups (a task with another layer-decay rule overrides this)."""
        return build_optimizer(model, cfg.optim, lr)

    @abc.abstractmethod
    def loss(self, net: nn.Module, batch, rt: Runtime) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, named terms) of one micro-batch; moves the batch to rt's device itself."""

    def batch_size(self, batch) -> int:
        """Images in a micro-batch (for img/s)."""
        return len(batch[0])

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, data, rt: Runtime, limit: int = 0) -> dict[str, float]:
        """Metrics of `model` (in eval mode) on this process's shard of the evaluation data, summed over
        processes; `limit` > 0: on a fixed subset of that many images."""

    def describe(self, data) -> str:
        """The data in a few words, for the run's first line."""
        return f"{data.num_train} train images"

    def meta(self, cfg: Config, data) -> dict:
        """What every checkpoint should carry to be used without the run (arch, classes, preprocessing)."""
        return {}

    def check_resume(self, meta: dict, data, where: Path) -> None:
        """A UserError if a checkpoint with `meta` cannot continue on `data`."""

    def write_artifacts(self, model: nn.Module, data, rt: Runtime, out: Path) -> None:
        """The task's own files, written into the run directory `out` on the main process after each full
        evaluation (FCMAE: a picture of reconstructions, the encoder's weights); none by default."""


@dataclass
class Run:
    """Everything a run holds; `step` is the number of optimizer steps done."""

    task: Task
    cfg: Config
    der: Derived
    out: Path
    rt: Runtime
    data: object
    model: nn.Module  # the module whose state dict is saved
    net: nn.Module  # what is called: the model, wrapped by DDP and/or torch.compile
    ddp: nn.Module  # the model or its DDP wrapper (for no_sync)
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    meta: dict
    stop: int  # the step the run ends at: the schedule's end, or train.max_steps
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)  # best_metric and ema_<best_metric>, best so far
    history: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl

    @property
    def main(self) -> bool:
        return self.rt.dist.main


def train(task: Task, cfg: Config, out: str | Path, *, resume: bool = False, device: str | None = None,
          on_step: Callable[[Run], None] | None = None) -> dict:
    """Train `task` under `cfg` into the run directory `out`; returns the summary. `resume` continues from
    out/last.pt. `on_step(run)` is called after every optimizer step (benchmarks time steps with it)."""
    d = distributed.setup(device)
    try:
        run = start(task, cfg, Path(out), resume, d)
        log = new_period(run)
        for micro_batches in batches(run):
            log.add(train_step(run, micro_batches))
            if on_step is not None:
                on_step(run)
            if period_ends(run):
                end_period(run, log)
                log = new_period(run)
            elif run.cfg.train.ckpt_every_steps and run.step % run.cfg.train.ckpt_every_steps == 0:
                log.settle()  # a checkpoint is written only after its steps' losses were checked
                if run.main:
                    save_checkpoint(run, "last.pt")
        return finish(run)
    finally:
        distributed.teardown(d)


# ------------------------------------------------------------------------------------------ set-up and resume


def start(task: Task, cfg: Config, out: Path, resume: bool, d: distributed.Dist) -> Run:
    """Data, model, EMA, optimizer and scaler for `cfg`; config.json written; restored from out/last.pt on resume."""
    ckpt = None
    if resume:
        ckpt = load_run_checkpoint(out / "last.pt") if (out / "last.pt").exists() else None
        if ckpt is None and d.main:
            print(f"no checkpoint in {out}: starting a new run there", flush=True)
    t = cfg.train
    rt = Runtime(d, t.precision, t.channels_last)
    seed_everything(t.seed)
    data = task.build_data(cfg, t.seed)
    der = derive(cfg, data.num_train, d.world)
    commit = git_commit()
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"config: {task.name}, {cfg.model.name} on {cfg.data.dataset} ({task.describe(data)}), "
              f"{t.precision}, {'channels_last' if t.channels_last else 'contiguous'}, compile={t.compile}, "
              f"device {d.device}", flush=True)
        print(der.describe(), flush=True)
        write_text(dumps(cfg, der).rstrip("}") + f',\n  "git_commit": "{commit}"\n}}\n', out / "config.json")
    if ckpt is not None:
        task.check_resume(ckpt["meta"], data, out)
    model = task.build_model(cfg, data, rt).to(d.device, memory_format=rt.memory_format)
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    optimizer = task.build_optimizer(model, cfg, der.lr)
    scaler = torch.amp.GradScaler(d.device.type, enabled=t.precision == "fp16")
    meta = {"task": task.name, **task.meta(cfg, data), "config": cfg.to_dict(), "derived": vars(der),
            "git_commit": commit, "torch": str(torch.__version__)}
    ddp = model
    if d.enabled:
        # A depthwise conv's weight gradient can come back with another stride on its size-1 dimension: the same
        # memory layout, which DDP's stride check still warns about, once per such parameter.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # gradients as views into DDP's buckets: no copy into the buckets before each all-reduce, no second copy of
        # the gradients in memory (on the 2-core CPU the step rate is the same within the noise: benchmarks/ddp_step.py)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                                                  gradient_as_bucket_view=True)
    net = torch.compile(ddp) if t.compile else ddp
    stop = min(der.total_steps, t.max_steps) if t.max_steps else der.total_steps
    run = Run(task, cfg, der, out, rt, data, model, net, ddp, ema, optimizer, scaler, meta, stop)
    if ckpt is not None:
        restore(run, ckpt)
    model.train()
    return run


def restore(run: Run, ckpt: dict) -> None:
    """Model, EMA, optimizer, scaler, step, best values and the metrics rows up to the checkpoint's step."""
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["model_ema"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.best = ckpt["step"], dict(ckpt["best"])
    rows = run.out / "metrics.jsonl"
    if rows.exists():
        run.history = [h for h in map(json.loads, rows.read_text().splitlines()) if h["step"] <= run.step]
    if run.main:
        print(f"resumed from {run.out / 'last.pt'} at step {run.step}", flush=True)


# ------------------------------------------------------------------------------------------ the step


def batches(run: Run) -> Iterator[Iterator]:
    """For each optimizer step from `run.step` to `run.stop`, an iterator over its micro-batches (this process's),
    epoch after epoch: step t of epoch e always reads the same slice of epoch e's order."""
    t, d, spe = run.cfg.train, run.rt.dist, run.der.steps_per_epoch
    while run.step < run.stop:
        epoch, first = divmod(run.step, spe)
        last = min(spe, first + run.stop - run.step)
        stream = iter(run.data.train_batches(epoch, range(first, last), t.accum_steps, d.world, d.rank))
        for _ in range(first, last):
            yield islice(stream, t.accum_steps)


def train_step(run: Run, micro_batches: Iterator) -> StepLoss:
    """One optimizer step: lr, forward/backward of each micro-batch (gradients synchronised on the last), clip,
    step, EMA. Returns the step's loss, to be read later."""
    t, d = run.cfg.train, run.rt.dist
    lr = scheduled_lr(run.step, run.der, run.cfg.optim)
    set_lr(run.optimizer, lr)
    total, names, images = None, (), 0
    for m, batch in enumerate(micro_batches):
        seed_everything(step_seed(t.seed, run.step * t.accum_steps + m, d.rank))  # drop path, mixup
        sync = m == t.accum_steps - 1 or not d.enabled
        with contextlib.nullcontext() if sync else run.ddp.no_sync():
            with run.rt.autocast():
                loss, terms = run.task.loss(run.net, batch, run.rt)
            run.scaler.scale(loss / t.accum_steps).backward()
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())]) / t.accum_steps
        total, names = (values if total is None else total + values), tuple(terms)
        images += run.task.batch_size(batch) * d.world
    if run.cfg.optim.clip_grad > 0:  # in every precision (the official code clips only under AMP)
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return StepLoss(total, names, run.step - 1, (run.step - 1) // run.der.steps_per_epoch, lr, images)


# ------------------------------------------------------------------------------------------ periods


def _next_boundary(run: Run) -> int:
    """The step at which the current period ends."""
    spe, every = run.der.steps_per_epoch, run.cfg.train.eval_every_steps
    ends = [(run.step // spe + 1) * spe, run.stop]
    if every:
        ends.append((run.step // every + 1) * every)
    return min(ends)


def new_period(run: Run) -> PeriodLog:
    epoch = run.step // run.der.steps_per_epoch
    return PeriodLog(_next_boundary(run) - run.step, f"epoch {epoch}", run.main, run.cfg.train.log_every,
                     run.out / "last.pt")


def period_ends(run: Run) -> bool:
    every = run.cfg.train.eval_every_steps
    return (run.step % run.der.steps_per_epoch == 0 or run.step >= run.stop
            or bool(every and run.step % every == 0))


def _evaluation_due(run: Run) -> str | None:
    """"full", "subset" or None at the end of the current period."""
    t, spe = run.cfg.train, run.der.steps_per_epoch
    epoch_end = run.step % spe == 0
    if run.step >= run.stop:
        return "full"
    if t.eval_every_steps:
        if run.step % t.eval_every_steps == 0:
            return "full"
    elif epoch_end and (run.step // spe) % t.eval_every == 0:
        return "full"
    return "subset" if epoch_end and t.eval_subset else None


def end_period(run: Run, log: PeriodLog) -> None:
    """The period's row (its training numbers, and an evaluation when one is due), best.pt / best_ema.pt when
    the metric improved, last.pt and metrics.jsonl."""
    row = {"epoch": (run.step - 1) // run.der.steps_per_epoch, "step": run.step, **log.close()}
    due = _evaluation_due(run)
    if due is not None:
        row.update(evaluate(run, limit=run.cfg.train.eval_subset if due == "subset" else 0,
                            prefix="subset_" if due == "subset" else ""))
    if run.data.skipped:
        row["skipped_images"] = run.data.skipped
    run.history.append(row)
    if run.main:
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        metric = run.task.best_metric
        for key, ema in ((metric, False), (f"ema_{metric}", True)):
            if metric and key in row and _better(run, row[key], run.best.get(key)):
                run.best[key] = row[key]
                save_checkpoint(run, "best_ema.pt" if ema else "best.pt", ema_weights=ema)
        save_checkpoint(run, "last.pt")
        write_text("".join(json.dumps(h) + "\n" for h in run.history), run.out / "metrics.jsonl")
        if due == "full":
            run.task.write_artifacts(run.model, run.data, run.rt, run.out)
    distributed.barrier(run.rt.dist)


def _better(run: Run, value: float, best: float | None) -> bool:
    return best is None or (value > best if run.task.higher_is_better else value < best)


def evaluate(run: Run, limit: int = 0, prefix: str = "") -> dict[str, float]:
    """The task's metrics of the raw weights, and of the EMA weights as ema_<metric>. On a GPU in the training
    precision; on the CPU in fp32."""
    rt = run.rt if run.rt.device.type == "cuda" else replace(run.rt, precision="fp32")
    models = [("", run.model)] + ([("ema_", run.ema.module)] if run.ema is not None else [])
    out = {}
    for tag, model in models:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = run.task.evaluate(model, run.data, rt, limit)
        model.train(was_training)
        out.update({f"{prefix}{tag}{k}": v for k, v in metrics.items()})
    return out


# ------------------------------------------------------------------------------------------ saving and the end


def save_checkpoint(run: Run, name: str, ema_weights: bool = False) -> None:
    """out/<name>, atomically: everything `restore` needs, and the meta that makes the weights usable alone.
    `ema_weights`: the EMA weights go under "model" (best_ema.pt is then an ordinary model file)."""
    state = {
        "model": (run.ema.state_dict() if ema_weights else run.model.state_dict()),
        "optimizer": run.optimizer.state_dict(), "step": run.step, "epoch": run.step // run.der.steps_per_epoch,
        "best": dict(run.best), "meta": run.meta,
    }
    if run.ema is not None:
        state["model_ema"] = run.ema.state_dict()
    if run.scaler.is_enabled():
        state["scaler"] = run.scaler.state_dict()
    save(state, run.out / name)


def finish(run: Run) -> dict:
    """summary.json (the last evaluation's metrics, the best values, steps and time) and curves.png."""
    if not run.main:
        return {}
    metric = run.task.best_metric
    final = next((h for h in reversed(run.history) if _metric_keys(h)), {})
    summary = {f"final_{k}": final[k] for k in _metric_keys(final)}
    if metric:
        summary[f"best_{metric}"] = run.best.get(metric)
        if run.ema is not None:
            summary[f"best_ema_{metric}"] = run.best.get(f"ema_{metric}")
    summary.update(steps=run.step, epochs=run.step / run.der.steps_per_epoch,
                   train_time_s=sum(h["time_s"] for h in run.history), git_commit=run.meta["git_commit"])
    write_text(json.dumps(summary, indent=2) + "\n", run.out / "summary.json")
    plot_curves(run.history, run.out / "curves.png", metric, run.der.steps_per_epoch)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if k.startswith(("final_", "best_")) and v is not None)
    print(f"done: {shown or 'no evaluation'}; run in {run.out}", flush=True)
    return summary


_TRAINING_KEYS = {"epoch", "step", "loss", "lr", "img_s", "time_s", "skipped_images"}


def _metric_keys(row: dict) -> list[str]:
    """A full evaluation's metrics in a row: not its training numbers (the loss terms are train_<term>) and not
    the subset's."""
    return [k for k in row if k not in _TRAINING_KEYS and not k.startswith(("train_", "subset_"))]
