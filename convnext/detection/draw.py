"""Pictures and JSON of a detector's output, for `convnext detect`.

`draw_detections` paints translucent masks, then boxes labelled "name score", with torchvision's drawing
functions; every class keeps one colour in every picture. `save_image` writes PNG or JPEG atomically, and
`detections_to_dict` gives the same detections as plain data for `--json`.

The label font is DejaVu Sans from matplotlib's own data folder (a dependency already, so nothing is
downloaded): torchvision can only scale a TrueType font given by file name, and its fallback, PIL's default
font, is too small to read on a large photograph. Without that file the default font is used.
"""
from __future__ import annotations

import colorsys
import functools
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from convnext.checkpoint import atomic_write
from convnext.detection.evaluate import MASK_THRESHOLD  # a pixel belongs to a mask as in evaluation
from convnext.errors import UserError

MASK_ALPHA = 0.5  # how much of a mask's colour covers the image under it
JPEG_QUALITY = 95


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, bright RGB colour for label k: hues a golden-ratio turn apart, so neighbouring labels differ."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


@functools.lru_cache(maxsize=1)
def label_font() -> str | None:
    """The path of matplotlib's DejaVu Sans, or None (torchvision then uses PIL's default font)."""
    try:
        import matplotlib  # only for the location of its bundled fonts; ~0.1 s, so not at module import
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def kept(output: dict, score_thresh: float) -> torch.Tensor:
    """The indices of the detections scoring at least `score_thresh`."""
    return torch.nonzero(output["scores"].detach().cpu() >= score_thresh).flatten()


def class_name(label: int, class_names: list[str]) -> str:
    if not 1 <= label <= len(class_names):
        raise UserError(f"the detector predicted label {label} but only {len(class_names)} class names are known; "
                        f"the class list does not belong to this checkpoint")
    return class_names[label - 1]


def draw_detections(image: torch.Tensor, output: dict, class_names: list[str],
                    score_thresh: float = 0.5) -> torch.Tensor:
    """A copy of `image` (uint8, (3,H,W)) with the detections scoring at least `score_thresh` drawn on it.

    `output` is a detector's eval-mode output in this image's coordinates: "boxes" (N,4) xyxy, "labels" (N,) in
    1..K (label k is `class_names[k - 1]`), "scores" (N,), and optionally "masks" (N,1,H,W) probabilities.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"draw_detections wants a uint8 (3,H,W) image, got {image.dtype} {tuple(image.shape)}")
    image = image.detach().cpu()
    keep = kept(output, score_thresh)
    if len(keep) == 0:
        return image.clone()
    labels = output["labels"].detach().cpu()[keep].long().tolist()
    scores = output["scores"].detach().cpu()[keep].tolist()
    colours = [class_colour(k) for k in labels]
    names = [f"{class_name(k, class_names)} {s:.2f}" for k, s in zip(labels, scores)]
    if "masks" in output:
        masks = output["masks"].detach()
        masks = masks[keep.to(masks.device)]
        if masks.dim() == 4:
            masks = masks[:, 0]  # (N,1,H,W) -> (N,H,W)
        if tuple(masks.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(f"masks of size {tuple(masks.shape[-2:])} for an image of size {tuple(image.shape[-2:])}")
        # threshold where the masks are, so only booleans travel to the CPU
        masks = (masks if masks.dtype == torch.bool else masks >= MASK_THRESHOLD).cpu()
        image = draw_segmentation_masks(image, masks, alpha=MASK_ALPHA, colors=colours)
    # line width and text size grow with the picture so both stay visible on a large photograph
    short = min(image.shape[-2:])
    font = label_font()
    return draw_bounding_boxes(image, output["boxes"].detach().cpu()[keep].float(), labels=names, colors=colours,
                               width=max(1, round(short / 300)), font=font,
                               font_size=max(10, round(short / 40)) if font else None)


def detections_to_dict(output: dict, class_names: list[str], score_thresh: float = 0.5) -> list[dict]:
    """The detections scoring at least `score_thresh`, as JSON-able {label, name, score, box (xyxy pixels)}."""
    keep = kept(output, score_thresh)
    boxes = output["boxes"].detach().cpu()[keep].tolist()
    labels = output["labels"].detach().cpu()[keep].long().tolist()
    scores = output["scores"].detach().cpu()[keep].tolist()
    return [{"label": int(k), "name": class_name(k, class_names), "score": round(float(s), 4),
             "box": [round(float(v), 2) for v in box]}
            for k, s, box in zip(labels, scores, boxes)]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 (3,H,W) image as PNG or JPEG (chosen by the file name), atomically.

    PIL encodes it: torchvision's encoders are deprecated since 0.29 (in favour of torchcodec, not a dependency).
    """
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    fmt = formats.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"cannot save a picture as {path}: give it a .png, .jpg or .jpeg name")
    pil = Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy())
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **options))
