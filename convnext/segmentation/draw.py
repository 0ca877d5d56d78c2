"""Pictures of a segmenter's output, for `convnext segment`: a colour overlay and the label map as a PNG.

The label PNG holds the dataset's own encoding, so it can be compared with the annotations as they are: class k is
written as k + 1 where label 0 means "other" (ADE20K, `reduce_zero_label`), else as k. The overlay blends each
class's colour (convnext.detection.draw.class_colour of that stored value: the scenes' Fashion-MNIST classes keep
the colours `convnext detect` gives them) over the image; a class named "background" is left unpainted, so the
photograph shows through.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from convnext.checkpoint import atomic_write
from convnext.detection.draw import class_colour

ALPHA = 0.5  # how much of a class's colour covers the image under it


def encode_labels(pred: torch.Tensor, reduce_zero_label: bool) -> np.ndarray:
    """Predicted classes (H, W) -> the stored label values (uint8, or uint16 past 255)."""
    values = pred.detach().cpu().long().numpy() + (1 if reduce_zero_label else 0)
    return values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)


def overlay(image: torch.Tensor, pred: torch.Tensor, class_names: list[str], reduce_zero_label: bool,
            alpha: float = ALPHA) -> torch.Tensor:
    """A copy of `image` (uint8 (3, H, W)) with each predicted class's colour blended over its pixels."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"overlay wants a uint8 (3,H,W) image, got {image.dtype} {tuple(image.shape)}")
    if tuple(pred.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"a prediction of size {tuple(pred.shape)} for an image of size {tuple(image.shape[-2:])}")
    pred = pred.detach().cpu().long()
    offset = 1 if reduce_zero_label else 0
    palette = torch.tensor([class_colour(k + offset) for k in range(len(class_names))], dtype=torch.float32)
    painted = torch.tensor([name.lower() != "background" for name in class_names])[pred]  # (H, W) bool
    colour = palette[pred].permute(2, 0, 1)  # (3, H, W)
    out = image.float()
    out = torch.where(painted, (1 - alpha) * out + alpha * colour, out)
    return out.round().clamp(0, 255).to(torch.uint8)


def save_labels(labels: np.ndarray, path) -> None:
    """The label map as a single-channel PNG (8-bit, or 16-bit past 255 classes), atomically."""
    img = Image.fromarray(labels)  # uint8 -> mode L, uint16 -> mode I;16
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def class_fractions(pred: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """{class name: fraction of the pixels} of the classes predicted, largest first."""
    counts = torch.bincount(pred.detach().cpu().flatten().long(), minlength=len(class_names)).tolist()
    total = max(1, sum(counts))
    found = [(class_names[k], c / total) for k, c in enumerate(counts) if c]
    return {name: round(f, 4) for name, f in sorted(found, key=lambda x: -x[1])}
