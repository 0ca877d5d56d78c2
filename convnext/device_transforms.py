"""The paper's training augmentation and the eval transform as torch ops on any device, from JPEG bytes to the batch:
what data.pipeline=gpu runs (convnext/device_data.py) in place of timm's PIL transform (convnext/transforms.py).

    train = TrainTransform(train_transform(cfg))   # configured from the reference transform object itself
    images, bad = decode_batch(list_of_byte_tensors, device, paths)
    x = train(images, seeds)                       # (N, 3, S, S) float, normalised; one seed per image

What is not obvious:
- Every random parameter (crop box, flip, RandAugment's ops, magnitudes and signs, erased boxes) is drawn on the host
  from `random.Random(seed)`, seed = sample_seed(seed, epoch, position), with timm's rules and the primitives timm
  draws from Python's global generator (uniform, gauss, randint): the distributions are timm's, the parameters are
  the same on every device, and an image's augmentation is a function of its seed. The random streams are not
  timm's, so an image is not augmented as the PIL pipeline would augment it. Only random erasing's per-pixel noise
  is drawn on the device, from a generator seeded with the image's seed (so it differs between CPU and CUDA).
- RandAugment's ops reproduce PIL's arithmetic, not torchvision's tensor ops (its equalize, for one, differs):
  PIL's look-up tables, its blend in float32 with truncation, its SMOOTH kernel with the border kept, and its bicubic
  affine transform (cubic with a = -1, edges clamped, truncation, the mean colour outside), which timm uses for
  Rotate, Shear and Translate because the paper's transform interpolates bicubically. On the CPU every op equals
  timm's PIL op to the bit; divisions are tensor by tensor, since torch computes `scalar / tensor` as a product.
- The crop is resized by `interpolate(bicubic, antialias=True)` in float32 and rounded once; PIL resizes in fixed
  point with a rounding between its two passes (whose order Pillow 13 picks per image), so a few pixels differ by a
  level or more (tests/test_device_transforms.py states the bounds).
- Decoding: JPEGs of one or three components go to torchvision's batched decoder on the device (nvJPEG on a GPU);
  the rest (CMYK JPEGs, PNG, ...), one by one, to torchvision's CPU decoders, and to PIL (the reference loader,
  convnext.data.open_rgb) for what they refuse or would read differently (16-bit, animated images).
- Nothing here waits for the training stream: index and parameter lists go over with non_blocking copies and no
  result is read back (no bincount, nonzero or item), so a batch is prepared while the device still runs the
  previous step; nvJPEG waits only for its own stream.
"""
from __future__ import annotations

import io
import math
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from convnext.errors import UserError
from convnext.preprocessing import Preprocessing

LEVEL_DENOM = 10.0  # timm's magnitude scale: a magnitude M is the fraction M / 10 of each op's range


@dataclass
class Sample:
    """One image's random parameters, drawn on the host."""

    box: tuple[int, int, int, int]  # RandomResizedCrop: top, left, height, width in the decoded image
    flip: bool = False
    ops: list = field(default_factory=list)  # per RandAugment layer: (op name, argument), or None (layer skipped)
    erase: list = field(default_factory=list)  # random erasing: (top, left, height, width) boxes


# ------------------------------------------------------------------------------------- parameters (timm's rules)


def crop_box(rng: random.Random, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """timm's RandomResizedCropAndInterpolation.get_params: 10 tries of a random area and log-uniform aspect ratio,
    else the largest centre crop within the ratio range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    if width / height < min(ratio):
        h, w = int(round(width / min(ratio))), width
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def erase_boxes(rng: random.Random, height: int, width: int, er: RandomErasing) -> list:
    """timm's RandomErasing._erase: with probability `er.probability`, count boxes of a random area fraction and
    log-uniform aspect ratio (10 tries each)."""
    if rng.random() > er.probability:
        return []
    count = er.min_count if er.min_count == er.max_count else rng.randint(er.min_count, er.max_count)
    boxes = []
    for _ in range(count):
        for _ in range(10):
            target = rng.uniform(er.min_area, er.max_area) * height * width / count
            aspect = math.exp(rng.uniform(*er.log_aspect_ratio))
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                boxes.append((rng.randint(0, height - h), rng.randint(0, width - w), h, w))
                break
    return boxes


def _negate(v: float, rng: random.Random) -> float:
    return -v if rng.random() > 0.5 else v  # timm's _randomly_negate


def _enhance_increasing(m, rng, hp):
    return max(0.1, 1.0 + _negate((m / LEVEL_DENOM) * 0.9, rng))


# op name -> (magnitude, generator, hparams) -> the op's argument, as timm's level functions (auto_augment.py
# LEVEL_TO_ARG), with the signs drawn from the image's generator. Posterize keeps >= 1 bit, as
# convnext/transforms.py's clamp_posterize makes the reference do.
LEVELS = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * 30.0, rng),
    "Posterize": lambda m, rng, hp: max(1, int((m / LEVEL_DENOM) * 4)),
    "PosterizeIncreasing": lambda m, rng, hp: max(1, 4 - int((m / LEVEL_DENOM) * 4)),
    "PosterizeOriginal": lambda m, rng, hp: int((m / LEVEL_DENOM) * 4) + 4,
    "Solarize": lambda m, rng, hp: min(256, int((m / LEVEL_DENOM) * 256)),
    "SolarizeIncreasing": lambda m, rng, hp: 256 - min(256, int((m / LEVEL_DENOM) * 256)),
    "SolarizeAdd": lambda m, rng, hp: min(128, int((m / LEVEL_DENOM) * 110)),
    **{name: (lambda m, rng, hp: (m / LEVEL_DENOM) * 1.8 + 0.1) for name in ("Color", "Contrast", "Brightness",
                                                                             "Sharpness")},
    **{f"{name}Increasing": _enhance_increasing for name in ("Color", "Contrast", "Brightness", "Sharpness")},
    "ShearX": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * 0.3, rng),
    "ShearY": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * 0.3, rng),
    "TranslateX": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * float(hp["translate_const"]), rng),
    "TranslateY": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * float(hp["translate_const"]), rng),
    "TranslateXRel": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * hp.get("translate_pct", 0.45), rng),
    "TranslateYRel": lambda m, rng, hp: _negate((m / LEVEL_DENOM) * hp.get("translate_pct", 0.45), rng),
}


class RandAugmentOps:
    """timm's RandAugment as configured (its ops, layers, per-op probability, magnitude and magnitude noise), drawn
    from an image's generator: `num_layers` ops uniformly with replacement, each applied with its probability."""

    def __init__(self, ra: RandAugment):
        if ra.choice_weights is not None:
            raise UserError("data.pipeline=gpu draws RandAugment's ops uniformly; weighted op choice (a 't' section in "
                            "data.randaug) needs data.pipeline=pil")
        for op in ra.ops:
            if op.name not in LEVELS:
                raise UserError(f"data.pipeline=gpu has no device version of RandAugment's {op.name}; use "
                                f"data.pipeline=pil for data.randaug={op.name}")
            if op.name in AFFINE and op.kwargs["resample"] != Image.Resampling.BICUBIC:
                raise UserError("data.pipeline=gpu resamples RandAugment's geometric ops bicubically, as the paper's "
                                "transform does; use data.pipeline=pil for another interpolation")
        self.ops, self.layers = list(ra.ops), ra.num_layers
        self.fill = tuple(ra.ops[0].kwargs["fillcolor"])  # timm: the mean colour, round(255 * mean)

    def sample(self, rng: random.Random) -> list:
        chosen = [self.ops[rng.randrange(len(self.ops))] for _ in range(self.layers)]
        out = []
        for op in chosen:  # timm's AugmentOp.__call__
            if op.prob < 1.0 and rng.random() > op.prob:
                out.append(None)
                continue
            m = op.magnitude
            if op.magnitude_std == math.inf:
                m = rng.uniform(0, m)
            elif op.magnitude_std > 0:
                m = rng.gauss(m, op.magnitude_std)
            m = max(0.0, min(m, op.magnitude_max or LEVEL_DENOM))
            level = LEVELS[op.name]
            out.append((op.name, None if level is None else level(m, rng, op.hparams)))
        return out


# ----------------------------------------------------------------------------------- RandAugment's ops (PIL's)
# Three kinds, each run once per RandAugment layer on all the images that drew an op of that kind:
# - point ops, PIL's look-up tables (LUTS: images, arguments -> a (k, 1 or 3, 256) table), one gather for all of them;
# - Color and Sharpness, PIL's blend with a greyscale or smoothed image (BLENDS);
# - geometric ops, PIL's bicubic affine transform (AFFINE: argument, width, height -> matrix), one call for all.


def _on(device, values, dtype) -> torch.Tensor:
    """A small host list on the device without waiting for the device (a non_blocking copy never syncs)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _blend(base: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(base, image, alpha) (ImageEnhance's enhance): base + alpha * (image - base) in float32,
    clipped and truncated to uint8 levels."""
    base = base.float()
    return (base + alpha * (image.float() - base)).clamp_(0, 255).trunc_().to(torch.uint8)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as (k, 1, H, W) int32."""
    x = x.int()
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768) >> 16


def _per_image(x, args, dtype) -> torch.Tensor:
    return _on(x.device, args, dtype).view(-1, 1, 1)  # blend's alpha: PIL takes it as a C float, i.e. float32


def _levels(x) -> torch.Tensor:
    return torch.arange(256, device=x.device, dtype=torch.int16)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """(k, 3, 256) pixel counts per image and channel (scatter_add: torch.bincount would read its size back)."""
    k, c, h, w = x.shape
    index = (x.reshape(k * c, h * w).long() + torch.arange(k * c, device=x.device)[:, None] * 256).reshape(-1)
    ones = torch.ones(1, dtype=torch.long, device=x.device).expand_as(index)
    return torch.zeros(k * c * 256, dtype=torch.long, device=x.device).scatter_add_(0, index, ones).view(k, c, 256)


def autocontrast_lut(x, args):
    """ImageOps.autocontrast: each channel's [lo, hi] stretched to [0, 255] (int(i * scale + offset), float64)."""
    lo, hi = x.amin((2, 3)).double()[..., None], x.amax((2, 3)).double()[..., None]
    i = torch.arange(256, device=x.device, dtype=torch.float64)
    scale = torch.full_like(hi, 255.0) / (hi - lo)  # a true division: torch computes `255.0 / t` as 255 * (1 / t)
    return torch.where(hi > lo, (i * scale + -lo * scale).trunc_().clamp_(0, 255), i)


def equalize_lut(x, args):
    """ImageOps.equalize: lut[i] = (step // 2 + pixels below i) // step, step = (pixels - last bin's) // 255."""
    hist = _histogram(x)
    last = 255 - (hist > 0).flip(-1).float().argmax(-1, keepdim=True)  # the last non-empty bin
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, last)) // 255
    lut = ((step // 2 + hist.cumsum(-1) - hist) // step.clamp(min=1)).clamp_(max=255)
    identity = ((hist > 0).sum(-1, keepdim=True) <= 1) | (step == 0)
    return torch.where(identity, torch.arange(256, device=x.device), lut)


def posterize_lut(x, bits):
    """ImageOps.posterize: keep the top `bits` bits (timm: 8 or more bits is the image unchanged)."""
    return _levels(x) & _per_image(x, [0xFF if b >= 8 else (0xFF << (8 - b)) & 0xFF for b in bits], torch.int16)


def solarize_lut(x, thresholds):
    """ImageOps.solarize: i -> 255 - i from the threshold up."""
    i = _levels(x)
    return torch.where(i < _per_image(x, thresholds, torch.int16), i, 255 - i)


def solarize_add_lut(x, adds):
    """timm's solarize_add: i -> min(255, i + add) below 128."""
    i = _levels(x)
    return torch.where(i < 128, (i + _per_image(x, adds, torch.int16)).clamp_(max=255), i)


def contrast_lut(x, factors):
    """ImageEnhance.Contrast: blend with the greyscale image's mean level, int(mean + 0.5)."""
    h, w = x.shape[-2:]
    total = _grey(x).sum((1, 2, 3)).double()[:, None, None]
    mean = (total / torch.full_like(total, h * w) + 0.5).floor()  # tensor / tensor: a correctly rounded division
    return _blend(mean, _levels(x), _per_image(x, factors, torch.float32))


LUTS = {
    "AutoContrast": autocontrast_lut, "Equalize": equalize_lut,
    "Invert": lambda x, args: 255 - _levels(x).expand(len(args), 1, 256),
    "Posterize": posterize_lut, "PosterizeIncreasing": posterize_lut, "PosterizeOriginal": posterize_lut,
    "Solarize": solarize_lut, "SolarizeIncreasing": solarize_lut, "SolarizeAdd": solarize_add_lut,
    "Contrast": contrast_lut, "ContrastIncreasing": contrast_lut,
    **{name: (lambda x, factors: _blend(torch.zeros((), device=x.device), _levels(x),  # ImageEnhance.Brightness
                                        _per_image(x, factors, torch.float32))) for name in ("Brightness",
                                                                                              "BrightnessIncreasing")},
}


def apply_luts(x: torch.Tensor, luts: list) -> torch.Tensor:
    """x[n, c] -> lut[n, c, x[n, c]], the (k_i, 1 or 3, 256) tables stacked in the order of x's images."""
    k, c, h, w = x.shape
    lut = torch.cat([t.expand(t.shape[0], c, 256).to(torch.uint8) for t in luts])
    return lut.gather(2, x.reshape(k, c, h * w).long()).view(k, c, h, w)


def color(x, factors):
    """ImageEnhance.Color: blend with the greyscale image."""
    return _blend(_grey(x), x, _per_image(x, factors, torch.float32)[..., None])


def sharpness(x, factors):
    """ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13 in
    float32; PIL sums 0.5, then the row below, this row and the row above, then truncates; borders are kept)."""
    k1, k5 = float(np.float32(1) / np.float32(13)), float(np.float32(5) / np.float32(13))
    f = x.float()

    def row(r, centre):
        return r[..., :-2] * k1 + r[..., 1:-1] * centre + r[..., 2:] * k1

    smooth = x.clone()
    ss = 0.5 + row(f[:, :, 2:], k1)
    ss = ss + row(f[:, :, 1:-1], k5)
    ss = ss + row(f[:, :, :-2], k1)
    smooth[:, :, 1:-1, 1:-1] = ss.clamp_(0, 255).trunc_().to(torch.uint8)
    return _blend(smooth, x, _per_image(x, factors, torch.float32)[..., None])


BLENDS = {"Color": color, "ColorIncreasing": color, "Sharpness": sharpness, "SharpnessIncreasing": sharpness}


def _rotation(degrees: float, w: int, h: int) -> tuple:
    """Image.rotate's matrix (about the centre, cos and sin rounded to 15 decimals as PIL rounds them)."""
    t = -math.radians(degrees % 360.0)
    a, b, d, e = round(math.cos(t), 15), round(math.sin(t), 15), round(-math.sin(t), 15), round(math.cos(t), 15)
    cx, cy = w / 2, h / 2
    return a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy


# the matrix (a, b, c, d, e, f) of PIL's Image.transform(AFFINE): output pixel (x, y) reads
# (a x + b y + c, d x + e y + f)
AFFINE = {
    "Rotate": _rotation,
    "ShearX": lambda s, w, h: (1, s, 0, 0, 1, 0),
    "ShearY": lambda s, w, h: (1, 0, 0, s, 1, 0),
    "TranslateX": lambda p, w, h: (1, 0, p, 0, 1, 0),
    "TranslateY": lambda p, w, h: (1, 0, 0, 0, 1, p),
    "TranslateXRel": lambda p, w, h: (1, 0, p * w, 0, 1, 0),
    "TranslateYRel": lambda p, w, h: (1, 0, 0, 0, 1, p * h),
}


def _cubic(v1, v2, v3, v4, d):
    """PIL's BICUBIC macro (Geometry.c): the cubic convolution with a = -1, in float64."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(x: torch.Tensor, matrices: torch.Tensor, fill) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, resample=BICUBIC, fillcolor=fill) of each image by its (6,) float64 matrix:
    a point outside the image gets the fill; inside, 4 x 4 neighbours (clamped at the edges), truncated."""
    k, c, h, w = x.shape
    dev = x.device
    u = torch.arange(w, device=dev, dtype=torch.float64) + 0.5
    v = (torch.arange(h, device=dev, dtype=torch.float64) + 0.5)[:, None]
    a = [matrices[:, i, None, None] for i in range(6)]
    xin, yin = a[0] * u + a[1] * v + a[2], a[3] * u + a[4] * v + a[5]  # (k, h, w), as PIL sums them
    inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h))[:, None]
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = xs.floor(), ys.floor()
    taps = torch.arange(-1, 3, device=dev)
    cols = (x0.long()[..., None] + taps).clamp_(0, w - 1)  # (k, h, w, 4)
    rows = (y0.long()[..., None] + taps).clamp_(0, h - 1)
    index = (rows[..., :, None] * w + cols[..., None, :]).view(k, 1, -1).expand(k, c, -1)
    p = x.reshape(k, c, h * w).gather(2, index).view(k, c, h, w, 4, 4).double()  # [..., row, column]
    along_x = _cubic(p[..., 0], p[..., 1], p[..., 2], p[..., 3], (xs - x0)[:, None, :, :, None])  # (k, c, h, w, 4)
    out = _cubic(along_x[..., 0], along_x[..., 1], along_x[..., 2], along_x[..., 3], (ys - y0)[:, None])
    return torch.where(inside, out.clamp_(0, 255).trunc_(), _on(dev, fill, torch.float64).view(1, c, 1, 1)).to(
        torch.uint8)


def apply_ops(x: torch.Tensor, ops: list, fill) -> torch.Tensor:
    """One RandAugment layer: `ops[n]` = (name, argument) for image n of the (N, 3, H, W) uint8 batch, or None."""
    kinds: dict[str, list] = {}  # "lut" | "affine" | a blend's name -> [(name, image, argument)]
    for n, op in enumerate(ops):
        if op is not None:
            name, arg = op
            kinds.setdefault("lut" if name in LUTS else "affine" if name in AFFINE else name, []).append((name, n, arg))
    h, w = x.shape[-2:]
    for kind, members in kinds.items():
        members.sort(key=lambda m: m[0])  # each op's images side by side: its slice of the selection
        idx = _on(x.device, [n for _, n, _ in members], torch.long)
        sel = x.index_select(0, idx)
        if kind == "affine":
            out = affine(sel, _on(x.device, [AFFINE[name](a, w, h) for name, _, a in members], torch.float64), fill)
        elif kind == "lut":
            luts, start = [], 0
            for name in dict.fromkeys(m[0] for m in members):
                args = [a for m, _, a in members if m == name]
                luts.append(LUTS[name](sel[start: start + len(args)], args))
                start += len(args)
            out = apply_luts(sel, luts)
        else:
            out = BLENDS[kind](sel, [a for _, _, a in members])
        x.index_copy_(0, idx, out)
    return x


def apply_op(name: str, x: torch.Tensor, args: list, fill) -> torch.Tensor:
    """One op on its own: (k, 3, H, W) uint8 images, one argument each (None for the ops without one)."""
    return apply_ops(x.clone(), [(name, a) for a in args], fill)


# -------------------------------------------------------------------------------------------------- transforms


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """torchvision's ToTensor + Normalize on uint8 levels: x / 255, minus the mean, over the std (float32)."""
    mean, std = mean.to(x.device, non_blocking=True), std.to(x.device, non_blocking=True)
    return x.float().div_(255).sub_(mean).div_(std)


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, *size) float32, bicubic with PIL's antialiasing (a = -0.5, support widened by the
    reduction), not yet rounded."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img.float()
    return F.interpolate(img[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)[0]


def _levels_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)  # PIL's resize ends in uint8 levels


class TrainTransform:
    """The paper's training transform on device tensors, configured from the reference transform object
    (convnext.transforms.train_transform: timm's RandomResizedCrop, flip, RandAugment, ToTensor, Normalize,
    RandomErasing), so that the two cannot disagree on a setting; any other step is refused."""

    def __init__(self, reference):
        self.size, self.hflip, self.randaug, self.erasing, self.mean = None, 0.0, None, None, None
        for t in getattr(reference, "transforms", [reference]):
            if isinstance(t, RandomResizedCropAndInterpolation) and t.interpolation == T.InterpolationMode.BICUBIC:
                self.size, self.scale, self.ratio = tuple(t.size), t.scale, t.ratio
            elif isinstance(t, T.RandomHorizontalFlip):
                self.hflip = t.p
            elif isinstance(t, RandAugment):
                self.randaug = RandAugmentOps(t)
            elif isinstance(t, (MaybeToTensor, T.ToTensor)):
                continue
            elif isinstance(t, T.Normalize):
                self.mean = torch.as_tensor(t.mean, dtype=torch.float32).view(-1, 1, 1)
                self.std = torch.as_tensor(t.std, dtype=torch.float32).view(-1, 1, 1)
            elif isinstance(t, RandomErasing) and t.mode in ("pixel", "rand", "const", ""):
                self.erasing = t
            else:
                raise UserError(f"data.pipeline=gpu has no device version of {t!r} in the training transform; use "
                                f"data.pipeline=pil for it")
        if self.size is None or self.mean is None:
            raise UserError("data.pipeline=gpu needs a training transform with a bicubic RandomResizedCrop and a "
                            "Normalize")
        self._generators: dict[torch.device, torch.Generator] = {}

    def sample(self, seed: int, height: int, width: int) -> Sample:
        """The random parameters of an image of height x width, from its seed alone."""
        rng = random.Random(seed)
        p = Sample(crop_box(rng, height, width, self.scale, self.ratio), rng.random() < self.hflip)
        p.ops = self.randaug.sample(rng) if self.randaug else []
        p.erase = erase_boxes(rng, *self.size, self.erasing) if self.erasing else []
        return p

    def __call__(self, images: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        """(3, H, W) uint8 images on one device, a seed each -> the (N, 3, S, S) normalised, erased batch."""
        samples = [self.sample(s, *img.shape[-2:]) for s, img in zip(seeds, images)]
        return self.erase(normalize(self.augment(images, samples), self.mean, self.std), samples, seeds)

    def augment(self, images: list[torch.Tensor], samples: list[Sample]) -> torch.Tensor:
        """Crop + resize, flip and RandAugment: the (N, 3, S, S) uint8 batch before normalisation."""
        dev = images[0].device
        x = _levels_u8(torch.stack([_resize(img[:, top: top + h, left: left + w], self.size)
                                    for img, (top, left, h, w) in zip(images, (p.box for p in samples))]))
        flipped = [k for k, p in enumerate(samples) if p.flip]
        if flipped:
            idx = _on(dev, flipped, torch.long)
            x.index_copy_(0, idx, x.index_select(0, idx).flip(-1))
        for layer in range(self.randaug.layers if self.randaug else 0):
            x = apply_ops(x, [p.ops[layer] if layer < len(p.ops) else None for p in samples], self.randaug.fill)
        return x

    def erase(self, x: torch.Tensor, samples: list[Sample], seeds: list[int]) -> torch.Tensor:
        """timm's RandomErasing on the normalised batch: per-pixel N(0, 1) noise ("pixel"), per-box ("rand") or 0."""
        mode = self.erasing.mode if self.erasing else ""
        for k, (p, seed) in enumerate(zip(samples, seeds)):
            if not p.erase:
                continue
            if x.device not in self._generators:
                self._generators[x.device] = torch.Generator(device=x.device)
            g = self._generators[x.device].manual_seed(seed)
            for top, left, h, w in p.erase:
                region = x[k, :, top: top + h, left: left + w]
                if mode in ("pixel", "rand"):
                    shape = region.shape if mode == "pixel" else (region.shape[0], 1, 1)
                    region.copy_(torch.randn(shape, generator=g, device=x.device).expand_as(region))
                else:
                    region.zero_()
        return x


class EvalTransform:
    """The official eval transform on device tensors (convnext.transforms.eval_transform): below crop_pct 1, the
    short side resized to int(size / crop_pct) and the centre crop; at 1 and above, resized to size x size."""

    def __init__(self, pre: Preprocessing):
        if pre.interpolation != "bicubic":
            raise UserError(f"data.pipeline=gpu evaluates with bicubic resizing, not {pre.interpolation}")
        self.size, self.crop_pct = pre.img_size, pre.crop_pct
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """torchvision's Resize(int) rule: the short side to int(size / crop_pct), the long side int(short * ratio)."""
        if self.crop_pct >= 1.0:
            return self.size, self.size
        short = int(self.size / self.crop_pct)
        return (int(short * h / w), short) if w <= h else (short, int(short * w / h))

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        s, crops = self.size, []
        for img in images:
            nh, nw = self.resized_size(*img.shape[-2:])
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))  # torchvision's CenterCrop
            crops.append(_resize(img, (nh, nw))[:, top: top + s, left: left + s])
        return normalize(_levels_u8(torch.stack(crops)), self.mean, self.std)


# ---------------------------------------------------------------------------------------------------- decoding

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # JPEG frame headers


def jpeg_components(raw: torch.Tensor) -> int:
    """The colour components of a JPEG file's bytes (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK), from its frame header;
    0 when it is not a JPEG, or not one whose header can be walked."""
    b = memoryview(raw.numpy())
    if b[:3].tobytes() != b"\xff\xd8\xff":
        return 0
    pos = 2
    while pos + 9 < len(b):
        if b[pos] != 0xFF:
            return 0
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _SOF:
            return b[pos + 9]
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(b[pos + 2: pos + 4], "big")
    return 0


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # torchvision 0.29's decoders warn on every call that TorchCodec replaces them
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _decode_one(raw: torch.Tensor, device) -> torch.Tensor:
    """One image: torchvision's JPEG decoder on the device (1 or 3 components), its CPU decoders, then PIL, whose
    error is the one reported."""
    components = jpeg_components(raw)
    if components in (1, 3):
        try:
            return _quiet(decode_jpeg, raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    try:  # on the CPU: CMYK JPEGs, PNG and the other formats torchvision reads
        img = _quiet(decode_image, raw, mode=ImageReadMode.RGB)
        if img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:  # not 16-bit, not animated
            return img.to(device, non_blocking=True)
    except RuntimeError:
        pass
    with Image.open(io.BytesIO(raw.numpy().tobytes())) as im:  # the reference loader: convert("RGB")
        rgb = np.asarray(im.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous().to(device, non_blocking=True)


def decode_batch(data: list[torch.Tensor], device, paths: list[str] | None = None) -> tuple[list, list]:
    """Files' bytes (1-D uint8 CPU tensors) -> ([(3, H, W) uint8 on `device`, or None], [(path, reason)] of the
    files nothing could decode, for convnext.data.check_bad_files). The JPEGs go to the device in one call."""
    images: list = [None] * len(data)
    jpegs = [k for k, raw in enumerate(data) if raw.numel() and jpeg_components(raw) in (1, 3)]
    if jpegs:
        try:
            decoded = _quiet(decode_jpeg, [data[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
            for k, img in zip(jpegs, decoded):
                images[k] = img
        except RuntimeError:
            pass  # one bad file fails the whole call: each is decoded on its own below
    bad = []
    for k, raw in enumerate(data):
        if images[k] is None:
            try:
                images[k] = _decode_one(raw, device)
            except Exception as e:  # any decoder error: reported with the file's name  # noqa: BLE001
                bad.append((paths[k] if paths else f"image {k}", f"{type(e).__name__}: {e}"))
    return images, bad
