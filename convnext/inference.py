"""Building a model from weights people hold: a registry tag, an official checkpoint, or a run of ours.

`load_model` is what `convnext eval` uses (architecture, class count and preprocessing come from the weights);
`load_init_weights` is the fine-tuning start (the head is replaced when the class count differs).
"""
from __future__ import annotations

from torch import nn

from convnext.errors import UserError


def load_model(name: str | None = None, *, pretrained: str | None = None, checkpoint: str | None = None,
               which: str = "model") -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a registry tag or a checkpoint file; meta holds `arch`,
    `preprocessing` (img_size, mean, std, crop_pct, interpolation, in_chans) and `class_names` (or None)."""
    from convnext import weights
    from convnext.model import create_model

    if pretrained:
        tag = pretrained if "." in pretrained or name is None else f"{name}.{pretrained}"
        cfg = weights.get_pretrained_cfg(tag)
        model = create_model(cfg["tag"], num_classes=cfg["num_classes"])
    elif checkpoint:
        model = weights.model_from_file(checkpoint, name, which)
        cfg = model.pretrained_cfg
    else:
        raise UserError("pass --pretrained TAG or --checkpoint PATH")
    meta = {"arch": model.arch, "preprocessing": dict(cfg["preprocessing"]), "class_names": weights.get_class_names(cfg)}
    return model.eval(), meta


def load_init_weights(model: nn.Module, spec: str, which: str = "model") -> None:
    """Fine-tuning start: load `spec` (a tag or a file in any supported format) into `model`, keeping the
    model's fresh head (already scaled by head_init_scale) where the class counts differ."""
    from convnext import weights

    weights.load_pretrained(model, model.arch, spec, drop_head="auto", which=which)
