"""Pretrained weights: the official checkpoint registry, download and cache, and loading official weights or any
supported file into a model. Reading files is convnext/checkpoint.py; converting the layouts people hold (timm,
torchvision, HF transformers) into ours, which is the official one, is convnext/convert.py. A model *from* weights
(a tag or a file, the architecture read from it) is `convnext.load_model` (convnext/factory.py).

- The registry is data: one row per file of the official READMEs (ConvNeXt and ConvNeXt V2), named
  `<arch>.<tag>` as in timm (`convnext_tiny.fb_in22k_ft_in1k_384`, `convnextv2_tiny.fcmae_ft_in1k`). Each entry
  also says how its inputs were preprocessed, and its `layout`: "official" (a classifier that loads as it is) or
  "fcmae" (a ConvNeXt V2 FCMAE pre-training file, for convnext.fcmae; loading it into a classifier is refused).
- Files are looked up in `$CONVNEXT_HOME` (default `~/.cache/convnext`) under their official file name, then in
  torch.hub's checkpoint folder (where the official code and old timm put them); otherwise downloaded once to a
  temp file and renamed into place. Offline (or `CONVNEXT_OFFLINE=1`) the error names the URL and the path.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from convnext.checkpoint import atomic_write, load_checkpoint_file, save, save_safetensors
from convnext.convert import convert_state_dict, describe, detect_format, infer_arch
from convnext.errors import UserError
from convnext.labels import IMAGENET_22K_CLASSES
from convnext.model import VARIANTS, get_variant
from convnext.preprocessing import imagenet

# ----------------------------------------------------------------------------------------------------------
# The registry (the official README's tables)
# ----------------------------------------------------------------------------------------------------------

URL_ROOT = "https://dl.fbaipublicfiles.com/convnext/"
_V2 = [name for name, v in VARIANTS.items() if v.family == "v2"]  # every V2 size has official weights

# (arch, tag, official file (its path under URL_ROOT), num_classes, resolution, top-1 reported by the README; None
# where it reports none[, layout]). The 1K files at 224 hold the EMA weights under "model" (hence `_ema`); the
# `_noema` files are the final raw weights that the detection/segmentation READMEs start from (paper §A.3), with
# no top-1 published.
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
    ("convnext_tiny", "fb_in22k", "convnext_tiny_22k_224.pth", IMAGENET_22K_CLASSES, 224, None),
    ("convnext_small", "fb_in22k", "convnext_small_22k_224.pth", IMAGENET_22K_CLASSES, 224, None),
    ("convnext_base", "fb_in22k", "convnext_base_22k_224.pth", IMAGENET_22K_CLASSES, 224, None),
    ("convnext_large", "fb_in22k", "convnext_large_22k_224.pth", IMAGENET_22K_CLASSES, 224, None),
    ("convnext_xlarge", "fb_in22k", "convnext_xlarge_22k_224.pth", IMAGENET_22K_CLASSES, 224, None),
    # ImageNet-22K pre-trained, ImageNet-1K fine-tuned (Table 1, 22K rows)
    ("convnext_tiny", "fb_in22k_ft_in1k", "convnext_tiny_22k_1k_224.pth", 1000, 224, 82.9),
    ("convnext_small", "fb_in22k_ft_in1k", "convnext_small_22k_1k_224.pth", 1000, 224, 84.6),
    ("convnext_base", "fb_in22k_ft_in1k", "convnext_base_22k_1k_224.pth", 1000, 224, 85.8),
    ("convnext_large", "fb_in22k_ft_in1k", "convnext_large_22k_1k_224.pth", 1000, 224, 86.6),
    ("convnext_xlarge", "fb_in22k_ft_in1k", "convnext_xlarge_22k_1k_224_ema.pth", 1000, 224, 87.0),
    ("convnext_tiny", "fb_in22k_ft_in1k_384", "convnext_tiny_22k_1k_384.pth", 1000, 384, 84.1),
    ("convnext_small", "fb_in22k_ft_in1k_384", "convnext_small_22k_1k_384.pth", 1000, 384, 85.8),
    # B@384: the README prints 47.0G FLOPs, paper Table 1 45.1G; our count gives 45.12G (tests/test_model.py)
    ("convnext_base", "fb_in22k_ft_in1k_384", "convnext_base_22k_1k_384.pth", 1000, 384, 86.8),
    ("convnext_large", "fb_in22k_ft_in1k_384", "convnext_large_22k_1k_384.pth", 1000, 384, 87.5),
    ("convnext_xlarge", "fb_in22k_ft_in1k_384", "convnext_xlarge_22k_1k_384_ema.pth", 1000, 384, 87.8),
    # Isotropic (Table 2). iso-S: the README says 78.7, paper Table 2 says 79.7 (both transcriptions agree);
    # we record the README's number because it describes this file; which one the file gives is unverified.
    ("convnext_isotropic_small", "fb_in1k", "convnext_iso_small_1k_224_ema.pth", 1000, 224, 78.7),
    ("convnext_isotropic_base", "fb_in1k", "convnext_iso_base_1k_224_ema.pth", 1000, 224, 82.0),
    ("convnext_isotropic_large", "fb_in1k", "convnext_iso_large_1k_224_ema.pth", 1000, 224, 82.6),
    # ConvNeXt V2 README. FCMAE pre-trained on ImageNet-1K (no labels, no head): the whole masked autoencoder,
    # its encoder in MinkowskiEngine layout (convnext.fcmae reads them). Tags as timm's.
    *[(arch, "fcmae", f"convnextv2/pt_only/{arch}_1k_224_fcmae.pt", 0, 224, None, "fcmae") for arch in _V2],
    # FCMAE pre-trained, fine-tuned on ImageNet-1K ("ImageNet-1K fine-tuned models"; EMA weights)
    ("convnextv2_atto", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_atto_1k_224_ema.pt", 1000, 224, 76.7),
    ("convnextv2_femto", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_femto_1k_224_ema.pt", 1000, 224, 78.5),
    ("convnextv2_pico", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_pico_1k_224_ema.pt", 1000, 224, 80.3),
    ("convnextv2_nano", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_nano_1k_224_ema.pt", 1000, 224, 81.9),
    ("convnextv2_tiny", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt", 1000, 224, 83.0),
    ("convnextv2_base", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_base_1k_224_ema.pt", 1000, 224, 84.9),
    ("convnextv2_large", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_large_1k_224_ema.pt", 1000, 224, 85.8),
    ("convnextv2_huge", "fcmae_ft_in1k", "convnextv2/im1k/convnextv2_huge_1k_224_ema.pt", 1000, 224, 86.3),
    # FCMAE pre-trained, fine-tuned on ImageNet-22K, then on ImageNet-1K ("ImageNet-22K fine-tuned models": 1000-way
    # heads, ImageNet-1K top-1). Huge was released at 384 and 512 only.
    ("convnextv2_nano", "fcmae_ft_in22k_in1k", "convnextv2/im22k/convnextv2_nano_22k_224_ema.pt", 1000, 224, 82.1),
    ("convnextv2_nano", "fcmae_ft_in22k_in1k_384", "convnextv2/im22k/convnextv2_nano_22k_384_ema.pt", 1000, 384, 83.4),
    ("convnextv2_tiny", "fcmae_ft_in22k_in1k", "convnextv2/im22k/convnextv2_tiny_22k_224_ema.pt", 1000, 224, 83.9),
    ("convnextv2_tiny", "fcmae_ft_in22k_in1k_384", "convnextv2/im22k/convnextv2_tiny_22k_384_ema.pt", 1000, 384, 85.1),
    ("convnextv2_base", "fcmae_ft_in22k_in1k", "convnextv2/im22k/convnextv2_base_22k_224_ema.pt", 1000, 224, 86.8),
    ("convnextv2_base", "fcmae_ft_in22k_in1k_384", "convnextv2/im22k/convnextv2_base_22k_384_ema.pt", 1000, 384, 87.7),
    ("convnextv2_large", "fcmae_ft_in22k_in1k", "convnextv2/im22k/convnextv2_large_22k_224_ema.pt", 1000, 224, 87.3),
    ("convnextv2_large", "fcmae_ft_in22k_in1k_384", "convnextv2/im22k/convnextv2_large_22k_384_ema.pt", 1000, 384,
     88.2),
    ("convnextv2_huge", "fcmae_ft_in22k_in1k_384", "convnextv2/im22k/convnextv2_huge_22k_384_ema.pt", 1000, 384, 88.7),
    ("convnextv2_huge", "fcmae_ft_in22k_in1k_512", "convnextv2/im22k/convnextv2_huge_22k_512_ema.pt", 1000, 512, 88.9),
]


def _entry(arch: str, tag: str, file: str, num_classes: int, res: int, top1: float | None,
           layout: str = "official") -> dict:
    return {
        "tag": f"{arch}.{tag}",
        "arch": arch,
        "file": Path(file).name,  # the name it is cached under
        "url": URL_ROOT + file,
        "num_classes": num_classes,
        "dataset": "imagenet-22k" if num_classes == IMAGENET_22K_CLASSES else "imagenet-1k",
        "top1": top1,
        # the official eval protocol of both repositories (V1 datasets.py, V2 datasets.py): resize to size/0.875 and
        # centre-crop below 384, resize to size x size (no crop) at 384 and 512 (convnext/preprocessing.py)
        "preprocessing": asdict(imagenet(res)),
        "layout": layout,  # "official": a classifier, loads as it is; "fcmae": for convnext.fcmae only
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
    # V2: the IN-1K fine-tuned classifier (the FCMAE files have no head; they are for convnext.fcmae)
    **{arch: "fcmae_ft_in1k" for arch in _V2},
}


def list_pretrained(arch: str | None = None) -> list[str]:
    """All `<arch>.<tag>` names, or those of one architecture (empty for V1's small variants: no official weights)."""
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


def find_tag(source: str | os.PathLike | None, arch: str | None = None) -> str | None:
    """The registry tag that `source` names (a full tag; a short one with `arch`; a bare model name or None: its
    default weights), or None when `source` is a file path. Neither a known tag nor a path: a UserError that
    lists the known tags."""
    s = arch if source is None else str(source)
    if s is None:
        raise UserError("name the weights: a registry tag such as convnext_tiny.fb_in1k, or a file")
    if s in VARIANTS:
        tag = get_pretrained_cfg(s)["tag"]
    elif s in PRETRAINED or (arch and f"{arch}.{s}" in PRETRAINED):
        tag = s if s in PRETRAINED else f"{arch}.{s}"
    elif os.path.exists(s) or os.sep in s or s.endswith((".pth", ".pt", ".safetensors", ".bin")):
        return None  # a path (a missing one is reported when it is read)
    else:  # an unknown tag: the error lists the known ones
        tag = get_pretrained_cfg(s if s.partition(".")[0] in VARIANTS or arch is None else f"{arch}.{s}")["tag"]
    if arch is not None and PRETRAINED[tag]["arch"] != arch:
        raise UserError(f"weights {tag} are for {PRETRAINED[tag]['arch']}, not {arch}; create "
                        f"{PRETRAINED[tag]['arch']} instead")
    return tag


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
            atomic_write(dst, lambda tmp: torch.hub.download_url_to_file(cfg["url"], str(tmp), progress=True))
            return dst
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, socket errors, a full disk: all the same fix
            reason = f"{type(e).__name__}: {e}"
    raise UserError(f"weights {cfg['tag']} are not in the cache and could not be downloaded ({reason}); "
                    f"download {cfg['url']} yourself and save it as {dst}")


# ----------------------------------------------------------------------------------------------------------
# Reading weights, loading them into a model
# ----------------------------------------------------------------------------------------------------------


def read_weights(path: str | os.PathLike, ema: bool = False) -> tuple[dict, dict]:
    """(state dict in our layout, the file's meta) from a weights file of any supported origin and layout."""
    sd, meta = load_checkpoint_file(path, ema)
    return convert_state_dict(sd), meta


def load_pretrained(model: nn.Module, source: str | os.PathLike | None = None, *, drop_head: bool | str = False,
                    ema: bool = False) -> nn.Module:
    """Load official weights (`None` = the model's default tag, or a tag) or any supported file into `model`.

    The checkpoint must fit the model exactly, except that `drop_head=True` (or a headless model,
    num_classes=0) keeps the model's own head, and `drop_head="auto"` (fine-tuning) keeps the model's head
    only where the checkpoint's has another class count. `ema=True` takes a checkpoint's EMA weights.
    Sets `model.pretrained_cfg` (tag, url, num_classes, preprocessing, ...) for prediction and evaluation.
    """
    arch = model.arch
    tag = find_tag(source, arch)
    cfg = get_pretrained_cfg(tag) if tag else None
    keep_head = drop_head is True or model.num_classes == 0
    if cfg is not None:
        if cfg["layout"] == "fcmae":  # before downloading: a pre-training file is no classifier's weights
            raise UserError(f"{cfg['tag']} is an FCMAE pre-training checkpoint (ConvNeXt V2's masked autoencoder, "
                            f"its encoder in MinkowskiEngine layout), not a classifier's weights; load it with "
                            f"convnext.fcmae, or take {cfg['arch']}.{DEFAULT_TAGS[cfg['arch']]} for a classifier")
        if drop_head == "auto":  # fine-tuning: keep the checkpoint's head only if it fits
            keep_head = cfg["num_classes"] != model.num_classes
        # checked before downloading: a 21841-class file will not fit a 1000-class model
        if not keep_head and cfg["num_classes"] != model.num_classes:
            raise _head_mismatch(cfg["tag"], cfg["num_classes"], model.num_classes, arch)
        path = str(download_pretrained(cfg["tag"]))
    else:
        path = str(source)
    sd, meta = read_weights(path, ema)
    if drop_head == "auto" and cfg is None:
        own = model.state_dict().get("head.weight")
        keep_head = own is None or "head.weight" not in sd or sd["head.weight"].shape != own.shape
    return load_state(model, sd, meta, path, cfg, keep_head)


def load_state(model: nn.Module, sd: dict, meta: dict, path: str, cfg: dict | None = None,
               keep_head: bool = False) -> nn.Module:
    """Load a state dict in our layout read from `path` into `model`, exactly (but for the head when
    `keep_head`), and set `model.pretrained_cfg`: the registry's entry `cfg`, else what the file says."""
    arch = model.arch
    _check_fit(model, sd, cfg["tag"] if cfg is not None else path, arch, keep_head)
    if keep_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    model.load_state_dict(sd, strict=not keep_head)
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
    info = describe(sd)
    pre = asdict(imagenet(224))
    pre["in_chans"] = info.in_chans
    if isinstance(meta.get("preprocessing"), Mapping):  # our checkpoints store what their data used
        pre.update(meta["preprocessing"])
    return {
        "tag": None,
        "arch": arch,
        "num_classes": info.num_classes,  # the head's, whatever the meta says
        "dataset": meta.get("dataset"),
        "top1": None,
        "preprocessing": pre,
        "class_names": meta.get("class_names"),
        "meta": meta,
    }


def _head_mismatch(source: str, ckpt_classes: int, model_classes: int, arch: str) -> UserError:
    return UserError(
        f"{source} has a {ckpt_classes}-class head but the model has {model_classes} classes; create it with "
        f"num_classes={ckpt_classes} (then model.reset_classifier(n) for your own n classes), or call "
        f"load_pretrained(model, {source!r}, drop_head=True) to keep the model's new head"
    )


def _check_fit(model: nn.Module, sd: dict, source: str, arch: str, keep_head: bool) -> None:
    """A UserError that says why `sd` does not fit `model` (another variant, shape, head), if it does not."""
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


def convert_file(src_path: str | Path, dst_path: str | Path, ema: bool = False) -> Path:
    """Any supported checkpoint file -> our layout, written as .safetensors or .pth (`{"model": sd, "meta": ...}`)."""
    dst = Path(dst_path)
    if dst.suffix not in (".safetensors", ".pth", ".pt"):
        raise UserError(f"cannot write {dst}: the output must end in .safetensors, .pth or .pt")
    sd, meta = load_checkpoint_file(src_path, ema)
    fmt = detect_format(sd)
    sd = convert_state_dict(sd, fmt)
    info = describe(sd)
    meta = {**meta, "converted_from": fmt, "source": Path(src_path).name}
    if "arch" not in meta and info.arch:
        meta["arch"] = info.arch
    if info.num_classes:
        meta.setdefault("num_classes", info.num_classes)
    if dst.suffix == ".safetensors":
        return save_safetensors(sd, dst, meta)
    return save({"model": sd, "meta": meta}, dst)
