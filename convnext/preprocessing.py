"""What a model expects at its input: image size, mean/std, the eval crop, channels, interpolation.

Stored with every weight file we know: the registry's entries (convnext/weights.py), every checkpoint of ours,
every export. The official eval protocol (official datasets.py, paper §A.2): below 384, resize the short side to
size / 0.875 and centre-crop; at 384 and above, resize to size x size with no crop (crop_pct 1.0). Bicubic.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_crop_pct(img_size: int) -> float:
    return 1.0 if img_size >= 384 else 0.875


@dataclass
class Preprocessing:
    img_size: int
    mean: tuple
    std: tuple
    crop_pct: float
    in_chans: int
    interpolation: str = "bicubic"


def imagenet(img_size: int = 224) -> Preprocessing:
    """The official ImageNet eval preprocessing at `img_size`."""
    return Preprocessing(img_size, IMAGENET_MEAN, IMAGENET_STD, default_crop_pct(img_size), 3)


def from_cfg(cfg: Mapping | None, in_chans: int = 3) -> Preprocessing:
    """A Preprocessing from a weights cfg: its `preprocessing` entry (registry, our checkpoints), else flat keys
    (`input_size`/`img_size`, `crop_pct`, ...) in it or in its `meta`, else the official 224 protocol."""
    cfg = dict(cfg or {})
    meta = cfg.get("meta") or {}
    pre: dict = {}
    # first found wins: the file's own metadata, then the cfg
    for src in (meta.get("preprocessing") or {}, meta, cfg.get("preprocessing") or {}, cfg):
        for key in ("img_size", "input_size", "crop_pct", "mean", "std", "interpolation", "in_chans"):
            if src.get(key) is not None:
                pre.setdefault("img_size" if key == "input_size" else key, src[key])
    size = pre.get("img_size", 224)
    size = int(size[-1] if isinstance(size, (list, tuple)) else size)  # timm style (C, H, W)
    return Preprocessing(
        img_size=size,
        mean=tuple(pre.get("mean", IMAGENET_MEAN)),
        std=tuple(pre.get("std", IMAGENET_STD)),
        crop_pct=float(pre.get("crop_pct") or default_crop_pct(size)),
        in_chans=int(pre.get("in_chans", in_chans)),
        interpolation=str(pre.get("interpolation", "bicubic")),
    )
