"""The paper's image transforms and mixup, through timm and torchvision (what the official code used).

- `train_transform`: timm's `create_transform` with the paper's settings (RandomResizedCrop, flip, RandAugment
  `rand-m9-mstd0.5-inc1`, bicubic, ImageNet mean/std, random erasing), Posterize clamped to >= 1 bit.
- `eval_transform`: the official protocol (resize to size/0.875 and centre-crop below 384; resize without
  crop at 384 and above).
- `mixup_fn`: timm's Mixup/CutMix in batch mode with label smoothing folded into the soft targets.
"""
from __future__ import annotations

from timm.data import Mixup, create_transform
from torchvision import transforms as T

from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, default_crop_pct


def eval_transform(img_size: int, mean, std, crop_pct: float | None = None, interpolation: str = "bicubic"):
    """The official eval protocol: below 384, resize to size/crop_pct (0.875) and centre-crop; at 384 and above,
    resize to (size, size) without crop (paper §A.2, official datasets.py)."""
    mode = T.InterpolationMode(interpolation)
    crop_pct = default_crop_pct(img_size) if crop_pct is None else crop_pct
    if crop_pct >= 1.0:
        resize = [T.Resize((img_size, img_size), interpolation=mode)]
    else:
        resize = [T.Resize(int(img_size / crop_pct), interpolation=mode), T.CenterCrop(img_size)]
    return T.Compose(resize + [T.ToTensor(), T.Normalize(mean, std)])


def train_transform(cfg, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The paper's training transform through timm (what the official code used): RandomResizedCrop (bicubic),
    flip, RandAugment `rand-m9-mstd0.5-inc1`, normalise, random erasing 0.25 (pixel mode)."""
    t = create_transform(
        input_size=cfg.img_size, is_training=True, scale=cfg.scale, hflip=cfg.hflip,
        color_jitter=cfg.color_jitter or None, auto_augment=cfg.randaug or None, interpolation="bicubic",
        mean=mean, std=std, re_prob=cfg.reprob, re_mode="pixel", re_count=1,
    )
    clamp_posterize(t)
    return t


def clamp_posterize(transform) -> int:
    """Keep RandAugment's Posterize ops at >= 1 bit; returns how many ops were wrapped.

    timm's `rand-m9-mstd0.5-inc1` can ask PosterizeIncreasing for 0 bits (magnitude 10 after the noise).
    Pillow < 13 returned a black image there; Pillow 13 raises ValueError, intermittently, inside a DataLoader
    worker. We clamp to 1 bit (a two-level image): the one deviation from the paper's augmentation, and only
    at the rare extreme magnitude. Done per transform object, not by patching timm globally.
    """
    wrapped = 0
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in getattr(op, "name", "") and op.level_fn is not None:
                op.level_fn = _AtLeastOneBit(op.level_fn)
                wrapped += 1
    return wrapped


class _AtLeastOneBit:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        (bits,) = self.fn(*args, **kwargs)
        return (max(1, int(bits)),)


def mixup_fn(cfg, num_classes: int):
    """timm's Mixup/CutMix (batch mode) with label smoothing folded into the soft targets; None when off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=1.0, switch_prob=cfg.mixup_switch_prob,
                 mode="batch", label_smoothing=cfg.smoothing, num_classes=num_classes)
