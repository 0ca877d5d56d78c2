"""Checkpoint files: the one atomic writer, run checkpoints, and weights-only reading of any weights file.

Writing: `atomic_write` puts the bytes in a temp file in the destination's folder, fsyncs it, renames it over the
destination and fsyncs the folder, so a crash, a kill -9 or a full disk never leaves a half-written file under
the real name. The file gets the mode a plain `open()` would give (0666 minus the umask), not a temp file's 0600.
`save` (torch.save), `write_text` and `save_safetensors` go through it, and so do downloads (weights.py).

A run checkpoint (convnext/engine.py) is a dict of tensors and plain data only, so `torch.load(weights_only=True)`
reads it: model, model_ema (optional), optimizer, scaler (fp16 only), step, epoch, best, meta = {task, config,
derived, git_commit, torch, and the task's own entries: arch, num_classes, class_names, preprocessing for
classification}. Its `model` entry is the official layout, so a checkpoint of ours is also a fine-tuning source.

Reading (`load_checkpoint_file`): an official `{"model": sd}`, a bare state dict, one of our checkpoints, timm's
(`state_dict`, `state_dict_ema`) or safetensors; every `.pth` with `torch.load(weights_only=True)`, so a file that
needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from convnext.errors import UserError

# ------------------------------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` fills a temp file beside `path`; it is then fsynced and renamed to `path` (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0666 minus the umask, as open() gives
    mode = os.stat(tmp).st_mode
    try:
        write(tmp)
        os.chmod(tmp, mode)  # a writer that replaced the file (a download) must not leave its own mode behind
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot sync a folder; the file itself is already synced
        pass
    return path


def save(obj, path: str | Path) -> Path:
    """torch.save(obj) to `path`, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def git_commit() -> str:
    """The commit of this checkout ("unknown" outside git): stored in every run and benchmark result."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_JSON_KEYS = "__json_keys__"  # safetensors metadata holds strings; names the entries we stored as JSON


def save_safetensors(model_or_sd: nn.Module | Mapping, path: str | Path, metadata: Mapping | None = None) -> Path:
    """Write weights (ours: the official layout) to .safetensors atomically.

    Metadata values that are not strings (num_classes, class_names, a config dict) are stored as JSON and
    come back decoded through `load_checkpoint_file`. A model also records its arch and num_classes.
    """
    meta = dict(metadata or {})
    if isinstance(model_or_sd, nn.Module):
        sd = model_or_sd.state_dict()
        for key in ("arch", "num_classes"):
            if hasattr(model_or_sd, key):
                meta.setdefault(key, getattr(model_or_sd, key))
    else:
        sd = model_or_sd
    encoded, as_json = {}, []
    for key, value in meta.items():
        if isinstance(value, str):
            encoded[str(key)] = value
        else:
            encoded[str(key)] = json.dumps(value, default=str)  # a Path in a config becomes its string
            as_json.append(str(key))
    if as_json:
        encoded[_JSON_KEYS] = json.dumps(as_json)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=encoded))


# ------------------------------------------------------------------------------------------------- reading


def load_run_checkpoint(path: str | Path) -> dict:
    """One of our run checkpoints (last.pt, best.pt), weights-only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); it is corrupt or not a "
                        f"weights-only checkpoint") from None


def read_checkpoint(path: str | Path) -> dict:
    """The whole object in a .pth/.pt (weights-only) or .safetensors file, as a dict.

    A safetensors file comes back as {"model": tensors, "meta": metadata}, the shape of our own checkpoints.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such checkpoint file: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file; pass the checkpoint file itself")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with an 8-byte header length and then the JSON header's "{"; torch files with
    # "PK" (zip) or the pickle protocol byte 0x80 (the legacy format)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK"):
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        text = str(e)
        # weights_only refuses a GLOBAL (a class or function to import and call); other unpickling errors
        # ("Unsupported operand", EOF, a zip error) mean the bytes are not a checkpoint at all
        if re.search(r"Unsupported global|Unsupported class|unrecognized function", text):
            what = re.search(r"GLOBAL ([\w.]+)", text)
            raise UserError(
                f"{path} contains pickled Python objects that are not plain tensors"
                f"{' (' + what.group(1) + ')' if what else ''}; refusing to unpickle it (only weights_only files and "
                f"safetensors are loaded); if you trust its source, load it with weights_only=False yourself and "
                f"save just its state dict"
            ) from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                        f"{type(e).__name__}); copy or download it again") from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint (a dict of weights)")
    return dict(obj)


def _read_safetensors(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt: {e})") from None
    for key in json.loads(metadata.pop(_JSON_KEYS, "[]")):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    return {"model": sd, "meta": metadata}


def is_state_dict(obj) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def load_checkpoint_file(path: str | Path, ema: bool = False) -> tuple[dict, dict]:
    """(state dict, meta) from any checkpoint file (module docstring); `ema=True` picks the EMA weights.

    The state dict is returned in the file's own layout; `convnext.convert.convert_state_dict` turns it into ours.
    """
    obj = read_checkpoint(path)
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
    for name in (("model_ema", "state_dict_ema") if ema else ("model", "state_dict")):
        if is_state_dict(obj.get(name)):
            return dict(obj[name]), meta
    if ema:
        raise UserError(f"{path} has no EMA weights (no 'model_ema' entry); leave out the EMA option")
    if is_state_dict(obj):
        return obj, {}
    raise UserError(f"{path} is not a model checkpoint: it has no state dict of tensors "
                    f"(its entries: {', '.join(map(str, list(obj)[:8]))})")
