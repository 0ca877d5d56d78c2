"""Reading images as people have them, for `convnext predict` and the `Classifier` (convnext/predict.py): files,
directories and glob patterns -> file paths (`expand_paths`); one file or PIL image -> an upright 8-bit RGB PIL
image (`load_image`, `to_rgb`), or a UserError that says why that input cannot be used.

What is not obvious:
- Conversion to RGB: the EXIF orientation is applied; 16-bit greyscale is scaled by 255/65535 (PIL's own
  `convert("L")` clips everything above 255 to white); transparent pixels are composited on white
  (dropping alpha would expose whatever colour the invisible pixels happen to store, often black);
  palette, greyscale and CMYK go through PIL's `convert("RGB")` (no ICC colour management).
- An image above PIL.Image.MAX_IMAGE_PIXELS is refused: PIL only warns between 1x and 2x that limit,
  and here the warning is an error. Raise the limit to classify larger images you trust.
"""
from __future__ import annotations

import glob
import os
import struct
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from convnext.errors import UserError

# What counts as an image file, here (predict's folders and globs) and in training folders (convnext/data.py)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
WHITE = (255, 255, 255, 255)

# ------------------------------------------------------------------------------------------- files and pixels


def expand_paths(items: Iterable[str | os.PathLike]) -> list[str]:
    """Files, directories (their image files, recursively, sorted) and glob patterns -> file paths, in order.

    An item that yields nothing (no such file, a pattern with no match, a folder without images) is kept
    as it is, so that `load_image` reports it as that item's error.
    """
    out: list[str] = []
    for item in map(str, items):
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            out.extend(found or [item])
        elif not os.path.exists(item) and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            out.extend(expand_paths(matches) if matches else [item])
        else:
            out.append(item)
    return out


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Open, decode and convert one file (or an image the caller opened) to RGB (see `to_rgb`); a UserError says
    why it cannot be used."""
    if isinstance(source, Image.Image):
        try:  # an image opened lazily by the caller decodes here
            return to_rgb(source)
        except _PIL_DATA_ERRORS as e:
            raise _corrupt(e) from None
    path = str(source)
    if os.path.isdir(path):
        raise UserError(f"a directory with no image files ({', '.join(IMAGE_SUFFIXES)})")
    if not os.path.exists(path):
        raise UserError("no file matches this pattern" if glob.has_magic(path) else "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse from 1x the limit, not 2x
            with Image.open(path) as img:
                img.load()  # decode now: truncated or corrupt data fails here, inside this try
                return to_rgb(img)
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image too large, refused as a possible decompression bomb ({e}); raise "
                        f"PIL.Image.MAX_IMAGE_PIXELS if you trust this file") from None
    except UnidentifiedImageError:
        raise UserError("not an image that Pillow can read (unknown format or not an image file)") from None
    except PermissionError:
        raise UserError("permission denied") from None
    except _PIL_DATA_ERRORS as e:
        raise _corrupt(e) from None


_PIL_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # what PIL raises for bad data


def _corrupt(e: Exception) -> UserError:
    return UserError(f"the image data is truncated or corrupt ({e})")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, upright, with transparency composited on white (module docstring)."""
    try:
        img = ImageOps.exif_transpose(img)  # camera orientation (EXIF tag 0x0112); a plain copy when there is none
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        pass  # unreadable EXIF: the pixels are fine, keep them as stored
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float greyscale
        img = _to_8bit(img)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):  # palette/tRNS transparency -> alpha
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, WHITE), img.convert("RGBA"))
    try:
        return img.convert("RGB")
    except ValueError:  # e.g. LAB, HSV: modes PIL cannot convert
        raise UserError(f"cannot convert a {img.mode} image to RGB") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit (I;16*, and "I", which is how PIL holds 16-bit data from some files) scaled by 255/65535;
    float ("F") taken as [0, 1] when it fits there, else as [0, 255]. Out-of-range values are clipped."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
    else:
        a = a * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
