"""Run checkpoints: written atomically (temp file in the same folder, then rename), read back weights-only.

A checkpoint is a dict of tensors and plain data only (so `torch.load(weights_only=True)` reads it):
  model, model_ema (optional), optimizer, scaler (fp16 only), step, epoch, best_top1,
  meta = {arch, num_classes, class_names, preprocessing, config, derived, git_commit, torch}.
Its `model` entry is the official layout, so a checkpoint of ours is also a valid fine-tuning source.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import torch

from convnext.errors import UserError


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_run_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); it is corrupt or not a "
                        f"weights-only checkpoint") from None
