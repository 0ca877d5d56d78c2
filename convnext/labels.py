"""Class names, and the one rule that gives a model its names: its own (a checkpoint of ours stores them), else
ImageNet-1K's for 1,000 classes, ImageNet-22K's for 21,841, else "class <i>".

- ImageNet-1K: torchvision's short names in the standard (sorted WordNet id) order, shipped as imagenet_classes.txt.
- ImageNet-22K: the official 22K head follows the sorted fall11 synsets (official issue #22), which is timm's
  imagenet22k_synsets.txt; its lemma file gives the names (the first lemma, e.g. "tabby").
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from convnext.errors import UserError

IMAGENET_1K_CLASSES = 1000
IMAGENET_22K_CLASSES = 21841  # the fall11 ImageNet-22K folders (official issue #22)
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")


@functools.cache
def imagenet_1k() -> tuple[str, ...]:
    return tuple(Path(__file__).with_name("imagenet_classes.txt").read_text().splitlines())


@functools.cache
def imagenet_22k() -> tuple[str, ...]:
    # timm only for these names: importing it costs ~0.4 s that `import convnext` should not pay
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-22k")
    return tuple(info.index_to_description(i).split(",")[0] for i in range(IMAGENET_22K_CLASSES))


def class_names(num_classes: int, own: Sequence[str] | None = None) -> list[str]:
    """The names of a model's `num_classes` outputs: `own` when given, else the standard ones (module docstring)."""
    if own:
        if len(own) != num_classes:
            raise UserError(f"{len(own)} class names were given for a {num_classes}-class model")
        return list(own)
    if num_classes == IMAGENET_1K_CLASSES:
        return list(imagenet_1k())
    if num_classes == IMAGENET_22K_CLASSES:
        return list(imagenet_22k())
    return [f"class {i}" for i in range(num_classes)]


def of_model(model, given: Sequence[str] | None = None) -> list[str]:
    """A model's class names: `given`, else those its weights carry (model.pretrained_cfg, set when weights
    are loaded: a checkpoint of ours stores its data's names), else the standard ones for its class count."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = given or cfg.get("class_names") or (cfg.get("meta") or {}).get("class_names")
    return class_names(model.num_classes, own)
