"""Run checkpoints: written atomically (temp file in the same folder, then rename), read back weights-only.

A checkpoint is a dict of tensors and plain data only (so `torch.load(weights_only=True)` reads it):
  model, model_ema (optional), optimizer, scaler (fp16 only), step, epoch, best_top1,
  meta = {arch, num_classes, class_names, preprocessing, config, derived, git_commit, torch}.
Its `model` entry is the official layout, so a checkpoint of ours is also a valid fine-tuning source.

Weight files of any origin (official, ours, timm's, safetensors) are read here too (`load_checkpoint_file`):
every `.pth` is read with `torch.load(weights_only=True)`, so a file that needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

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


# ----------------------------------------------------------------------------------------------------------
# Reading and writing files
# ----------------------------------------------------------------------------------------------------------

_JSON_KEYS = "__json_keys__"  # safetensors metadata holds strings; names the entries we stored as JSON


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
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt: {e})") from None
    for key in json.loads(metadata.pop(_JSON_KEYS, "[]")):
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    return {"model": sd, "meta": metadata}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def load_checkpoint_file(path: str | Path, which: str = "model") -> tuple[dict, dict]:
    """(state dict, meta) from any checkpoint file: an official `{"model": sd}`, a bare state dict, one of our
    training checkpoints (`model`, `model_ema`, `meta`), timm's (`state_dict`, `state_dict_ema`), safetensors.

    `which` picks the raw ("model") or EMA ("model_ema") weights. The state dict is returned in the file's own
    layout; `convert_state_dict` turns it into ours.
    """
    if which not in ("model", "model_ema"):
        raise UserError(f"which={which!r} must be 'model' or 'model_ema'")
    obj = read_checkpoint(path)
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
    names = ("model", "state_dict") if which == "model" else ("model_ema", "state_dict_ema")
    for name in names:
        if _is_state_dict(obj.get(name)):
            return dict(obj[name]), meta
    if which == "model" and _is_state_dict(obj):
        return obj, {}
    if which == "model_ema":
        raise UserError(f"{path} has no EMA weights (no 'model_ema' entry); use which='model'")
    raise UserError(f"{path} is not a model checkpoint: it has no state dict of tensors "
                    f"(its entries: {', '.join(map(str, list(obj)[:8]))})")


def save_safetensors(model_or_sd: nn.Module | Mapping, path: str | Path, metadata: Mapping | None = None) -> Path:
    """Write weights (ours: the official layout) to .safetensors atomically (temp file, then rename).

    Metadata values that are not strings (num_classes, class_names, a config dict) are stored as JSON and
    come back decoded through `load_checkpoint_file`. A model also records its arch and num_classes.
    """
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    if isinstance(model_or_sd, nn.Module):
        sd = model_or_sd.state_dict()
        if hasattr(model_or_sd, "arch"):
            meta.setdefault("arch", model_or_sd.arch)
        if hasattr(model_or_sd, "num_classes"):
            meta.setdefault("num_classes", model_or_sd.num_classes)
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
    _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=encoded))
    return Path(path)


# Not `atomic_save`: `write` gets a path (a download, safetensors' save_file), and there is no fsync here.
def _atomic_write(path: Path, write) -> None:
    """write(tmp) then rename: a crash or a full disk never leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
