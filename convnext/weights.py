"""Pretrained weights: the official checkpoint registry, download and cache, and loading official weights or any
supported file into a model. Reading files is convnext/checkpoint.py; converting the layouts people hold (timm,
torchvision, HF transformers) into ours, which is the official one, is convnext/convert.py.

- The registry is data: one row per file of the official README (paper.md §1.5), named `<arch>.<tag>` as in
  timm (`convnext_tiny.fb_in22k_ft_in1k_384`). Each entry also says how its inputs were preprocessed.
- Files are looked up in `$CONVNEXT_HOME` (default `~/.cache/convnext`) under their official file name, then in
  torch.hub's checkpoint folder (where the official code and old timm put them); otherwise downloaded once to a
  temp file and renamed into place. Offline (or `CONVNEXT_OFFLINE=1`) the error names the URL and the path.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from convnext.checkpoint import _atomic_write, load_checkpoint_file
from convnext.convert import convert_state_dict, infer_arch
from convnext.errors import UserError
from convnext.model import VARIANTS, create_model, get_variant
from convnext.transforms import IMAGENET_MEAN, IMAGENET_STD

# ----------------------------------------------------------------------------------------------------------
# The registry (official README tables, paper.md §1.5)
# ----------------------------------------------------------------------------------------------------------

URL_ROOT = "https://dl.fbaipublicfiles.com/convnext/"
IN22K_CLASSES = 21841  # the fall11 ImageNet-22K folders (official issue #22)

# (arch, tag, official file name, num_classes, resolution, top-1 reported by the README; None where it reports
# none). The 1K files at 224 hold the EMA weights under "model" (hence `_ema`); the `_noema` files are the final
# raw weights that the detection/segmentation READMEs start from (paper §A.3), with no top-1 published.
_CHECKPOINTS = [
    # ImageNet-1K trained
    ("convnext_tiny", "fb_in1k", "convnext_tiny_1k_224_ema.pth", 1000, 224, 82.1),
    ("convnext_small", "fb_in1k", "convnext_small_1k_224_ema.pth", 1000, 224, 83.1),
    ("convnext_base", "fb_in1k", "convnext_base_1k_224_ema.pth", 1000, 224, 83.8),
    ("convnext_large", "fb_in1k", "convnext_large_1k_224_ema.pth", 1000, 224, 84.3),
    ("convnext_base", "fb_in1k_384", "convnext_base_1k_384.pth", 1000, 384, 85.1),  # README 45.0G FLOPs
    ("convnext_large", "fb_in1k_384", "convnext_large_1k_384.pth", 1000, 384, 85.5),
    ("convnext_tiny", "fb_in1k_noema", "convnext_tiny_1k_224.pth", 1000, 224, None),
    ("convnext_small", "fb_in1k_noema", "convnext_small_1k_224.pth", 1000, 224, None),
    ("convnext_base", "fb_in1k_noema", "convnext_base_1k_224.pth", 1000, 224, None),
    # ImageNet-22K pre-trained at 224 only (issue #3), 21841-way head, no ImageNet-1K accuracy
    ("convnext_tiny", "fb_in22k", "convnext_tiny_22k_224.pth", IN22K_CLASSES, 224, None),
    ("convnext_small", "fb_in22k", "convnext_small_22k_224.pth", IN22K_CLASSES, 224, None),
    ("convnext_base", "fb_in22k", "convnext_base_22k_224.pth", IN22K_CLASSES, 224, None),
    ("convnext_large", "fb_in22k", "convnext_large_22k_224.pth", IN22K_CLASSES, 224, None),
    ("convnext_xlarge", "fb_in22k", "convnext_xlarge_22k_224.pth", IN22K_CLASSES, 224, None),
    # ImageNet-22K pre-trained, ImageNet-1K fine-tuned (Table 1, 22K rows)
    ("convnext_tiny", "fb_in22k_ft_in1k", "convnext_tiny_22k_1k_224.pth", 1000, 224, 82.9),
    ("convnext_small", "fb_in22k_ft_in1k", "convnext_small_22k_1k_224.pth", 1000, 224, 84.6),
    ("convnext_base", "fb_in22k_ft_in1k", "convnext_base_22k_1k_224.pth", 1000, 224, 85.8),
    ("convnext_large", "fb_in22k_ft_in1k", "convnext_large_22k_1k_224.pth", 1000, 224, 86.6),
    ("convnext_xlarge", "fb_in22k_ft_in1k", "convnext_xlarge_22k_1k_224_ema.pth", 1000, 224, 87.0),
    ("convnext_tiny", "fb_in22k_ft_in1k_384", "convnext_tiny_22k_1k_384.pth", 1000, 384, 84.1),
    ("convnext_small", "fb_in22k_ft_in1k_384", "convnext_small_22k_1k_384.pth", 1000, 384, 85.8),
    # B@384: the README prints 47.0G FLOPs, paper Table 1 45.1G; an analytic count gives 45.12G (paper.md §1.6)
    ("convnext_base", "fb_in22k_ft_in1k_384", "convnext_base_22k_1k_384.pth", 1000, 384, 86.8),
    ("convnext_large", "fb_in22k_ft_in1k_384", "convnext_large_22k_1k_384.pth", 1000, 384, 87.5),
    ("convnext_xlarge", "fb_in22k_ft_in1k_384", "convnext_xlarge_22k_1k_384_ema.pth", 1000, 384, 87.8),
    # Isotropic (Table 2). iso-S: the README says 78.7, paper Table 2 says 79.7 (both transcriptions agree);
    # we record the README's number because it describes this file; which one the file gives is unverified.
    ("convnext_isotropic_small", "fb_in1k", "convnext_iso_small_1k_224_ema.pth", 1000, 224, 78.7),
    ("convnext_isotropic_base", "fb_in1k", "convnext_iso_base_1k_224_ema.pth", 1000, 224, 82.0),
    ("convnext_isotropic_large", "fb_in1k", "convnext_iso_large_1k_224_ema.pth", 1000, 224, 82.6),
]


def _entry(arch: str, tag: str, file: str, num_classes: int, res: int, top1: float | None) -> dict:
    # The official eval transform (datasets.py): below 384, resize the short side to res/0.875 and centre-crop;
    # at 384, resize straight to res x res with no crop (crop_pct 1.0). Bicubic, ImageNet mean/std.
    return {
        "tag": f"{arch}.{tag}",
        "arch": arch,
        "file": file,
        "url": URL_ROOT + file,
        "num_classes": num_classes,
        "dataset": "imagenet-22k" if num_classes == IN22K_CLASSES else "imagenet-1k",
        "top1": top1,
        # the fields of convnext.data.Preprocessing, so `Preprocessing(**cfg["preprocessing"])` works
        "preprocessing": {
            "img_size": res,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "crop_pct": 1.0 if res >= 384 else 0.875,
            "in_chans": 3,
            "interpolation": "bicubic",
        },
    }


PRETRAINED: dict[str, dict] = {f"{row[0]}.{row[1]}": _entry(*row) for row in _CHECKPOINTS}

# What `pretrained=True` means: 1K at 224 where it exists; XL was only released with 22K pre-training.
DEFAULT_TAGS: dict[str, str] = {
    "convnext_tiny": "fb_in1k",
    "convnext_small": "fb_in1k",
    "convnext_base": "fb_in1k",
    "convnext_large": "fb_in1k",
    "convnext_xlarge": "fb_in22k_ft_in1k",
    "convnext_isotropic_small": "fb_in1k",
    "convnext_isotropic_base": "fb_in1k",
    "convnext_isotropic_large": "fb_in1k",
}


def list_pretrained(arch: str | None = None) -> list[str]:
    """All `<arch>.<tag>` names, or those of one architecture (empty for the small variants: no official weights)."""
    if arch is not None:
        get_variant(arch)  # unknown name -> UserError
    return [name for name, cfg in PRETRAINED.items() if arch is None or cfg["arch"] == arch]


def get_pretrained_cfg(tag: str) -> dict:
    """The registry entry (a copy) for `<arch>.<tag>`; a bare arch name gives its default weights."""
    arch, _, short = tag.partition(".")
    if not short:
        get_variant(arch)
        if arch not in DEFAULT_TAGS:
            raise UserError(f"there are no official weights for {arch}; models with weights: {', '.join(DEFAULT_TAGS)}")
        short = DEFAULT_TAGS[arch]
    name = f"{arch}.{short}"
    if name not in PRETRAINED:
        known = list_pretrained(arch) if arch in VARIANTS else list(PRETRAINED)
        raise UserError(f"unknown weights {tag!r}; known weights{' for ' + arch if arch in VARIANTS else ''}: "
                        f"{', '.join(known) or 'none (no official weights exist for this model)'}")
    return _copy_cfg(PRETRAINED[name])


def _copy_cfg(cfg: dict) -> dict:
    return {**cfg, "preprocessing": dict(cfg["preprocessing"])}


def get_class_names(cfg: Mapping) -> list[str] | None:
    """Class names for a pretrained cfg: its own (our checkpoints store them), ImageNet-1K's, or None (22K)."""
    if cfg.get("class_names"):
        return list(cfg["class_names"])
    if cfg.get("dataset") == "imagenet-1k" and cfg.get("num_classes") == 1000:
        # torchvision's short names for the 1000 classes, in the standard (sorted wnid) order
        return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()
    return None


# ----------------------------------------------------------------------------------------------------------
# Cache and download
# ----------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("CONVNEXT_HOME") or Path.home() / ".cache" / "convnext").expanduser()


def _find_cached(file: str) -> Path | None:
    # torch.hub's folder too: the official code (`load_state_dict_from_url`) and old timm saved the same names there
    for folder in (cache_dir(), Path(torch.hub.get_dir()) / "checkpoints"):
        if (folder / file).is_file():
            return folder / file
    return None


def download_pretrained(tag: str) -> Path:
    """The local path of an official checkpoint, downloading it into the cache the first time."""
    cfg = get_pretrained_cfg(tag)
    found = _find_cached(cfg["file"])
    if found is not None:
        return found
    dst = cache_dir() / cfg["file"]
    if os.environ.get("CONVNEXT_OFFLINE", "") not in ("", "0"):
        reason = "CONVNEXT_OFFLINE is set"
    else:
        try:
            print(f"downloading {cfg['url']} to {dst}", file=sys.stderr)
            _atomic_write(dst, lambda tmp: torch.hub.download_url_to_file(cfg["url"], str(tmp), progress=True))
            return dst
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, socket errors, a full disk: all the same fix
            reason = f"{type(e).__name__}: {e}"
    raise UserError(f"weights {cfg['tag']} are not in the cache and could not be downloaded ({reason}); "
                    f"download {cfg['url']} yourself and save it as {dst}")


# ----------------------------------------------------------------------------------------------------------
# Loading into a model
# ----------------------------------------------------------------------------------------------------------


def _resolve(arch: str, tag_or_path: str | None) -> tuple[dict | None, str | None]:
    """(registry cfg, None) for a tag, (None, path) for a file."""
    if tag_or_path is None:
        return get_pretrained_cfg(arch), None
    s = str(tag_or_path)
    for name in (s, f"{arch}.{s}"):
        if name in PRETRAINED:
            cfg = get_pretrained_cfg(name)
            if cfg["arch"] != arch:
                raise UserError(f"weights {name} are for {cfg['arch']}, not {arch}; create {cfg['arch']} instead")
            return cfg, None
    if os.path.exists(s) or os.sep in s or s.endswith((".pth", ".pt", ".safetensors", ".bin")):
        return None, s  # a path (a missing one is reported by read_checkpoint)
    # neither a known tag nor a file: raise the unknown-tag error, which lists the known ones
    return get_pretrained_cfg(s if s.partition(".")[0] in VARIANTS else f"{arch}.{s}"), None


def load_pretrained(
    model: nn.Module,
    arch: str,
    tag_or_path: str | None = None,
    *,
    drop_head: bool | str = False,
    which: str = "model",
) -> nn.Module:
    """Load official weights (`None` = the arch's default tag, or a tag) or any supported file into `model`.

    The checkpoint must fit the model exactly, except that `drop_head=True` (or a headless model,
    num_classes=0) keeps the model's own head, and `drop_head="auto"` (fine-tuning) keeps the model's head
    only where the checkpoint's has another class count. Sets `model.pretrained_cfg` (tag, url, num_classes,
    preprocessing, ...) for prediction and evaluation.
    """
    cfg, path = _resolve(arch, tag_or_path)
    keep_head = drop_head is True or getattr(model, "num_classes", None) == 0
    if drop_head == "auto" and cfg is not None:  # fine-tuning: keep the checkpoint's head only if it fits
        keep_head = cfg["num_classes"] != model.num_classes
    if cfg is not None:
        # checked before downloading: a 21841-class file will not fit a 1000-class model
        if not keep_head and cfg["num_classes"] != model.num_classes:
            raise _head_mismatch(cfg["tag"], cfg["num_classes"], model.num_classes, arch)
        path = str(download_pretrained(cfg["tag"]))
    sd, meta = load_checkpoint_file(path, which)
    sd = convert_state_dict(sd)
    if drop_head == "auto" and cfg is None:
        own = model.state_dict().get("head.weight")
        keep_head = own is None or "head.weight" not in sd or sd["head.weight"].shape != own.shape
    return _load_into(model, arch, sd, meta, path, cfg, keep_head)


def _load_into(model: nn.Module, arch: str, sd: dict, meta: dict, path: str, cfg: dict | None,
               keep_head: bool) -> nn.Module:
    _load_state_dict(model, sd, cfg["tag"] if cfg is not None else path, arch, keep_head)
    if cfg is None:  # a file: an official one by its name, else what its meta and shapes say
        official = next((c for c in PRETRAINED.values() if c["file"] == Path(path).name), None)
        cfg = _copy_cfg(official) if official else _file_cfg(arch, sd, meta)
    cfg["path"] = str(path)
    if keep_head:  # the backbone's origin stays; the labels are the model's own now
        cfg.update(num_classes=model.num_classes, dataset=None, top1=None, class_names=None, head_dropped=True)
    model.pretrained_cfg = cfg  # type: ignore[attr-defined]
    return model


def _file_cfg(arch: str, sd: dict, meta: dict) -> dict:
    """A cfg for a file outside the registry: what its meta says, else the official 224 preprocessing."""
    pre = _entry(arch, "", "", 0, 224, None)["preprocessing"]
    stem = sd.get("stem.weight", sd.get("downsample_layers.0.0.weight"))
    pre["in_chans"] = int(stem.shape[1]) if stem is not None else 3
    if isinstance(meta.get("preprocessing"), Mapping):  # our checkpoints store what their data used
        pre.update(meta["preprocessing"])
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    return {
        "tag": None,
        "arch": arch,
        "num_classes": num_classes,  # the head's, whatever the meta says
        "dataset": meta.get("dataset"),
        "top1": None,
        "preprocessing": dict(pre),
        "class_names": meta.get("class_names"),
        "meta": meta,
    }


def _head_mismatch(source: str, ckpt_classes: int, model_classes: int, arch: str) -> UserError:
    return UserError(
        f"{source} has a {ckpt_classes}-class head but the model has {model_classes} classes; create it with "
        f"num_classes={ckpt_classes} (then model.reset_classifier(n) for your own n classes), or call "
        f"load_pretrained(model, {arch!r}, {source!r}, drop_head=True) to keep the model's new head"
    )


def _load_state_dict(model: nn.Module, sd: dict, source: str, arch: str, keep_head: bool) -> None:
    own = model.state_dict()
    if keep_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        own = {k: v for k, v in own.items() if not k.startswith("head.")}
    elif "head.weight" in sd and "head.weight" in own and sd["head.weight"].shape[0] != own["head.weight"].shape[0]:
        raise _head_mismatch(source, sd["head.weight"].shape[0], own["head.weight"].shape[0], arch)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing == ["head.weight", "head.bias"] and not unexpected:
        raise UserError(f"{source} has no classifier head; pass drop_head=True to keep the model's new head")
    reshaped = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        guess = infer_arch(sd)
        if guess and guess != arch:
            raise UserError(f"{source} does not fit {arch}: it holds {guess} weights, so create {guess} instead")
        if reshaped:
            k = reshaped[0]
            raise UserError(f"{source} does not fit {arch}: {k} has shape {tuple(sd[k].shape)} in the checkpoint "
                            f"but {tuple(own[k].shape)} in the model (a different in_chans or layer scale?)")
        example = f"missing e.g. {missing[0]}" if missing else f"unexpected e.g. {unexpected[0]}"
        raise UserError(f"{source} does not fit {arch}: {len(missing)} weights missing and {len(unexpected)} "
                        f"unexpected ({example})")
    model.load_state_dict(sd, strict=not keep_head)


def model_from_file(path: str | Path, arch: str | None = None, which: str = "model") -> nn.Module:
    """Build the model a checkpoint file describes (its meta, else its shapes) and load it into it."""
    sd, meta = load_checkpoint_file(path, which)
    sd = convert_state_dict(sd)
    arch = arch or meta.get("arch") or infer_arch(sd)
    if arch is None:
        raise UserError(f"cannot tell which ConvNeXt {path} holds; pass the model name")
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    stem = sd.get("stem.weight", sd.get("downsample_layers.0.0.weight"))
    in_chans = int(stem.shape[1]) if stem is not None else 3
    layer_scale = 1e-6 if any(k.endswith(".gamma") for k in sd) else 0.0
    model = create_model(arch, num_classes=num_classes, in_chans=in_chans, layer_scale_init_value=layer_scale)
    return _load_into(model, arch, sd, meta, str(path), None, keep_head=False)
