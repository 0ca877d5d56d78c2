"""Image classification on the engine: the paper's ImageNet recipe, fine-tuning, the roadmap's steps, the demo.

    from convnext.config import load_config
    from convnext.train import train
    summary = train(load_config("demo"), "runs/demo")          # = convnext train --config demo --out runs/demo

The task supplies the data (convnext/data.py: ImageNet-layout folders, Fashion-MNIST, synthetic), the model (a
ConvNeXt variant, optionally initialised from weights for fine-tuning, or a roadmap step named
`roadmap/<regime>/<step>`), the loss (timm's Mixup/CutMix with label smoothing in the soft targets, else
label-smoothed cross-entropy) and top-1/top-5 (convnext/evaluate.py). Everything else is the engine's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convnext import engine
from convnext.config import Config
from convnext.data import build_data
from convnext.errors import UserError
from convnext.evaluate import evaluate
from convnext.factory import create_model
from convnext.roadmap import get_step
from convnext.runtime import Runtime
from convnext.transforms import mixup_fn
from convnext.weights import load_pretrained


class Classification(engine.Task):
    name = "classification"
    best_metric = "top1"

    def __init__(self):
        self.mix = None
        self.smoothing = 0.0

    def build_data(self, cfg: Config, seed: int):
        data = build_data(cfg.data, seed=seed, in_chans=cfg.model.in_chans)
        self.mix = mixup_fn(cfg.data, data.num_classes)
        self.smoothing = cfg.data.smoothing
        return data

    def build_model(self, cfg: Config, data, rt: Runtime) -> nn.Module:
        """A ConvNeXt variant, or a roadmap step as `roadmap/<regime>/<step name>`; fine-tuning starts from
        `model.init` with the head replaced where the class count differs (scaled by `model.head_init_scale`)."""
        m = cfg.model
        if m.name.startswith("roadmap/"):
            _, regime, step = m.name.split("/", 2)
            model = get_step(regime, step).build(data.num_classes, drop_path_rate=m.drop_path, in_chans=m.in_chans)
            model.arch = m.name  # type: ignore[attr-defined]
            return model
        model = create_model(m.name, num_classes=data.num_classes, in_chans=m.in_chans, drop_path_rate=m.drop_path,
                             layer_scale_init_value=m.layer_scale, head_init_scale=m.head_init_scale)
        if m.init:
            load_pretrained(model, m.init, drop_head="auto", ema=m.init_ema)
        if m.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def loss(self, net: nn.Module, batch, rt: Runtime):
        x, y = rt.images(batch[0]), rt.to_device(batch[1])
        if self.mix is not None:
            if len(x) % 2:  # timm's batch mixup pairs each image with the flipped batch
                x, y = x[:-1], y[:-1]
            x, y = self.mix(x, y)
        return loss_fn(net(x).float(), y, self.smoothing), {}

    def evaluate(self, model: nn.Module, data, rt: Runtime, limit: int = 0) -> dict[str, float]:
        r = evaluate(model, data.eval_batches(rt.dist.world, rt.dist.rank, limit), rt)
        return {"top1": r["top1"], "top5": r["top5"], "eval_loss": r["loss"]}

    def describe(self, data) -> str:
        return f"{data.num_train} train / {data.num_eval} eval images, {data.num_classes} classes"

    def meta(self, cfg: Config, data) -> dict:
        return {"arch": cfg.model.name, "num_classes": data.num_classes, "class_names": data.class_names,
                "preprocessing": vars(data.preprocessing)}

    def check_resume(self, meta: dict, data, where: Path) -> None:
        if meta.get("num_classes") != data.num_classes:
            raise UserError(f"the checkpoint in {where} has {meta.get('num_classes')} classes but the data has "
                            f"{data.num_classes}")


def loss_fn(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft-target cross-entropy after mixup (smoothing is inside the soft targets); else label smoothing."""
    if target.ndim == 2:
        return torch.sum(-target * logits.log_softmax(-1), dim=-1).mean()
    return nn.functional.cross_entropy(logits, target, label_smoothing=smoothing)


def train(cfg: Config, out: str | Path, resume: bool = False, device: str | None = None, on_step=None) -> dict:
    """Train a classifier under `cfg` into the run directory `out` (engine.train); returns the summary."""
    return engine.train(Classification(), cfg, out, resume=resume, device=device, on_step=on_step)
