"""The engine's interface, through tasks that are not classification: one without labels or accuracy whose best
checkpoint is the lowest loss (FCMAE-shaped), trained by iterations with a poly schedule (UperNet-shaped), and
one whose batches are lists of dicts and whose loss is a dict of terms (detection-shaped). Plus the run-log
pieces every task shares: the curves, the schedules and the atomic writer."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from torch import nn

from convnext import engine
from convnext.checkpoint import atomic_write, save
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, derive, replace
from convnext.data import epoch_permutation, micro_batch_slices
from convnext.distributed import all_sum
from convnext.optim import lr_at
from convnext.runlog import plot_curves


class Images:
    """An unlabelled in-memory set: what a masked-pre-training task reads."""

    skipped = 0

    def __init__(self, n: int, batch: int, seed: int):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.num_train, self.batch, self.seed = n, batch, seed

    def train_batches(self, epoch, steps, accum, world, rank):
        perm = epoch_permutation(self.num_train, self.seed, epoch)
        for _, _, sl in micro_batch_slices(steps, accum, world, rank, self.batch):
            yield self.x[perm[sl]]


class Reconstruct(engine.Task):
    """Denoise images with a tiny conv net: no labels, no accuracy; the best checkpoint has the lowest loss."""

    name = "reconstruct"
    best_metric = "eval_mse"
    higher_is_better = False

    def build_data(self, cfg, seed):
        return Images(40, cfg.data.batch_size, seed)

    def build_model(self, cfg, data, rt):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Dropout(0.1), nn.Conv2d(8, 3, 3, padding=1))

    def loss(self, net, batch, rt):
        x = rt.images(batch)
        y = net(x + 0.3 * torch.randn_like(x))  # the noise comes from the engine's (seed, step) seeding
        mse, l1 = (y - x).pow(2).mean(), (y - x).abs().mean()
        return mse, {"mse": mse, "l1": l1}

    def batch_size(self, batch):
        return len(batch)

    def evaluate(self, model, data, rt, limit=0):
        x = data.x[: limit or None]
        err = sum((model(rt.images(x[i:i + 8])) - x[i:i + 8]).pow(2).sum().item() for i in range(0, len(x), 8))
        total, n = all_sum([err, x.numel()], rt.dist)
        return {"eval_mse": total / n}


def recon_cfg(**over) -> Config:
    cfg = Config(model=ModelConfig(name="tiny-denoiser"), data=DataConfig(dataset="images", batch_size=8),
                 optim=OptimConfig(lr=1e-2, scale_lr=False, schedule="poly", warmup_steps=2, warmup_ratio=1e-3,
                                   min_lr=0.0),
                 train=TrainConfig(total_steps=12, eval_every_steps=4, precision="fp32", channels_last=False,
                                   ema_decay=0.5, log_every=1))
    return replace(cfg, **over)


def test_iteration_based_task_without_labels(tmp_path):
    lrs, steps = [], []

    def on_step(run):
        steps.append(run.step)
        lrs.append(run.optimizer.param_groups[0]["lr"])

    summary = engine.train(Reconstruct(), recon_cfg(), tmp_path / "r", on_step=on_step)
    assert steps == list(range(1, 13))  # the callback sees every optimizer step
    # the lr of step t is the mmcv-style poly schedule with a linear warm-up from 0.001 x lr
    assert lrs == pytest.approx([lr_at(t, 1e-2, 12, 2, 0.0, schedule="poly", warmup_ratio=1e-3) for t in range(12)])
    assert lrs[0] == pytest.approx(1e-2 * 1e-3) and lrs[-1] == pytest.approx(1e-2 * (1 - 11 / 12))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # 40 images / batch 8 = 5 steps an epoch: periods end at epoch ends (5, 10) and every 4 steps (4, 8, 12)
    assert [r["step"] for r in rows] == [4, 5, 8, 10, 12]
    evaluated = [r["step"] for r in rows if "eval_mse" in r]
    assert evaluated == [4, 8, 12] and all("ema_eval_mse" in r for r in rows if "eval_mse" in r)
    assert all({"train_mse", "train_l1", "loss"} <= set(r) for r in rows)  # the terms' means, per period
    assert all(r["loss"] == pytest.approx(r["train_mse"]) for r in rows)
    # lower is better: best.pt holds the step with the lowest evaluation loss
    best = min((r for r in rows if "eval_mse" in r), key=lambda r: r["eval_mse"])
    ck = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert ck["step"] == best["step"] and summary["best_eval_mse"] == pytest.approx(best["eval_mse"])
    assert ck["meta"]["task"] == "reconstruct" and "top1" not in json.dumps(summary)
    assert summary["final_eval_mse"] == rows[-1]["eval_mse"] and summary["steps"] == 12
    assert (tmp_path / "r" / "best_ema.pt").exists() and (tmp_path / "r" / "curves.png").exists()


def test_resume_continues_any_task_exactly(tmp_path):
    full = engine.train(Reconstruct(), recon_cfg(), tmp_path / "full")
    engine.train(Reconstruct(), recon_cfg(**{"train.max_steps": 6}), tmp_path / "cut")  # stops mid-epoch, mid-period
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 6
    resumed = engine.train(Reconstruct(), recon_cfg(), tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)
        torch.testing.assert_close(b["model_ema"][k], a["model_ema"][k], rtol=0, atol=0)
    assert resumed["final_eval_mse"] == full["final_eval_mse"]


class Boxes(engine.Task):
    """Detection-shaped: a batch is (list of images, list of target dicts); the loss is a dict of terms."""

    name = "boxes"  # no best_metric: no best checkpoint

    def build_data(self, cfg, seed):
        data = Images(16, cfg.data.batch_size, seed)
        base = data.train_batches

        def with_targets(*args):
            for x in base(*args):
                yield list(x), [{"boxes": torch.tensor([[1.0, 1.0, 5.0, 6.0]]), "labels": torch.tensor([i % 3])}
                                for i in range(len(x))]

        data.train_batches = with_targets
        return data

    def build_model(self, cfg, data, rt):
        return nn.Conv2d(3, 4, 3)

    def loss(self, net, batch, rt):
        images, targets = batch
        assert isinstance(images, list) and isinstance(targets[0], dict)
        out = net(torch.stack([rt.images(i[None])[0] for i in images]))
        terms = {"loss_box_reg": (out[:, :4].mean((2, 3)) - torch.stack([t["boxes"][0] for t in targets]) / 8)
                 .abs().mean(), "loss_classifier": out.pow(2).mean()}
        return sum(terms.values()), terms

    def batch_size(self, batch):
        return len(batch[0])

    def evaluate(self, model, data, rt, limit=0):
        return {"mean_output": model(data.x[:4]).mean().item()}


def test_list_of_dicts_batches_and_a_loss_dict(tmp_path):
    cfg = recon_cfg(**{"train.total_steps": 0, "train.epochs": 2, "train.eval_every_steps": 0, "train.ema_decay": 0.0,
                       "train.accum_steps": 2, "data.batch_size": 2, "optim.schedule": "step",
                       "optim.milestones": (1.0,), "optim.warmup_steps": 0,
                       "optim.warmup_epochs": 0.0})
    summary = engine.train(Boxes(), cfg, tmp_path / "b")
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]  # 16 images / (2 x accumulation 2) = 4 steps an epoch
    assert rows[0]["lr"] == pytest.approx(1e-2) and rows[1]["lr"] == pytest.approx(1e-3)  # x0.1 after epoch 1
    for r in rows:
        assert r["loss"] == pytest.approx(r["train_loss_box_reg"] + r["train_loss_classifier"])
    assert not (tmp_path / "b" / "best.pt").exists() and "final_mean_output" in summary


def test_eval_subset_gives_a_curve_between_full_evaluations(image_folder, tmp_path):
    from convnext.config import load_config
    from convnext.train import train

    cfg = replace(load_config("in1k:tiny"), **{
        "model.name": "convnext_atto", "data.root": str(image_folder), "data.img_size": 32, "data.batch_size": 8,
        "data.workers": 0, "optim.scale_lr": False, "optim.lr": 1e-3, "train.epochs": 3, "train.precision": "fp32",
        "train.channels_last": False, "train.accum_steps": 1, "train.eval_every": 3, "train.eval_subset": 6,
        "data.mixup": 0.0, "data.cutmix": 0.0})
    summary = train(cfg, tmp_path / "r")
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert ["subset_top1" in r for r in rows] == [True, True, False]
    assert ["top1" in r for r in rows] == [False, False, True]
    assert all("subset_ema_top1" in r for r in rows[:2])
    assert summary["best_top1"] == rows[-1]["top1"]  # best is chosen on full evaluations only
    assert (tmp_path / "r" / "curves.png").exists()


def test_curves_show_no_metric_panel_for_a_single_point(tmp_path):
    rows = [{"epoch": 0, "step": 10, "loss": 2.0}, {"epoch": 1, "step": 20, "loss": 1.5, "top1": 80.0}]
    assert plot_curves(rows, tmp_path / "one.png", "top1", 10)
    rows.insert(1, {"epoch": 0, "step": 15, "loss": 1.8, "subset_top1": 70.0})
    assert plot_curves(rows, tmp_path / "two.png", "top1", 10)
    one, two = (Image.open(tmp_path / f).size[0] for f in ("one.png", "two.png"))
    assert one < two  # one panel (loss) for one accuracy point; loss and accuracy for two
    assert not plot_curves([], tmp_path / "none.png", "top1", 10)


LO = 1e-6


@pytest.mark.parametrize("kind,expect", [
    # the official cosine: over the steps after the warm-up, from the peak down to min_lr
    ("cosine", [0.0, 0.5, 1.0, LO + 0.5 * (1 - LO), LO]),
    # mmcv's poly over all steps (power 1), the warm-up factor (step / 10) multiplying it
    ("poly", [0.0, 0.5 * ((1 - LO) * 0.95 + LO), (1 - LO) * 0.9 + LO, (1 - LO) * 0.45 + LO, LO]),
    # mmcv's step: x0.1 at each milestone
    ("step", [0.0, 0.5, 1.0, 0.1, 0.01]),
])
def test_schedules(kind, expect):
    # steps 0, 5, 10, 55, 100 of 100; 10 warm-up steps from 0; milestones at steps 50 and 80
    got = [lr_at(s, 1.0, 100, 10, LO, schedule=kind, milestones=(50, 80)) for s in (0, 5, 10, 55, 100)]
    assert got == pytest.approx(expect, rel=1e-9)


def test_derived_schedule_from_the_config():
    cfg = replace(Config(), **{"optim.schedule": "step", "optim.milestones": (27, 33), "optim.warmup_steps": 500,
                               "train.epochs": 36, "data.batch_size": 2})
    d = derive(cfg, num_train=117_266, world_size=8)  # COCO train2017 with annotations, 2 x 8 GPUs
    assert d.steps_per_epoch == 7329 and d.total_steps == 36 * 7329 and d.warmup_steps == 500
    assert d.milestone_steps == (27 * 7329, 33 * 7329)
    it = derive(replace(Config(), **{"train.total_steps": 160_000, "optim.warmup_steps": 1500}), 20_210, 8)
    assert it.total_steps == 160_000 and it.warmup_steps == 1500


def test_atomic_write_gives_the_umask_mode_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o027)
    try:
        save({"a": torch.zeros(2)}, tmp_path / "x.pt")
        assert (os.stat(tmp_path / "x.pt").st_mode & 0o777) == 0o640  # 0666 minus the umask, not 0600
    finally:
        os.umask(old)

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "y.pt", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # no temp file, no half-written y.pt
