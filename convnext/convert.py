"""Converters: state dicts in the layouts people hold (timm, torchvision, HF transformers, and the official one)
into ours, which is the official key layout (`downsample_layers.i.j`, `stages.i.j.*`, `norm`, `head`), for
ConvNeXt and ConvNeXt V2 alike (a V2 block has `grn.gamma`/`grn.beta` where V1 has `gamma`).

Pure functions of a state dict, no files (reading and writing them is convnext/checkpoint.py; `convert_file`
is in convnext/weights.py):
- `detect_format` tells the layout from the keys; `convert_state_dict` renames the keys (and reshapes the
  tensors a layout stores differently); `infer_arch` names the variant whose depths and widths a state dict
  has; `describe` says what model a state dict in our layout fits (arch, classes, input channels, layer scale).
- Converters are key-renaming tables, picked by the keys a state dict has (`detect_format`); a key no rule
  covers is an error, never silently dropped.
- GRN's gamma and beta are (1, 1, 1, C) in the official and HF files and (C,) in timm's (`mlp.grn.weight/bias`);
  they are reshaped to the official shape. An FCMAE pre-training checkpoint (the masked autoencoder's encoder,
  in MinkowskiEngine layout in the official files, with its decoder) is recognised and refused with a pointer
  to convnext.fcmae: it is not a classifier.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from convnext.checkpoint import is_state_dict
from convnext.errors import UserError
from convnext.model import VARIANTS

# ----------------------------------------------------------------------------------------------------------
# Converters: other layouts -> ours (the official keys)
# ----------------------------------------------------------------------------------------------------------

# Each rule is (regex on the source key, replacement); the first match wins and a key no rule matches is an
# error; the rest of the key (`weight`, `bias`) is kept. `_BLOCK` is the official block prefix `stages.<i>.<j>.`.
_BLOCK = r"stages.\1.\2."
_HF = r"^(?:convnext\.|convnextv2\.)?"  # HF's prefix of everything but the classifier
_RULES: dict[str, list[tuple[str, object]]] = {
    "official": [(r"^(.*)$", r"\1")],
    "timm": [
        (r"^stem\.([01])\.", r"downsample_layers.0.\1."),
        (r"^stages\.(\d+)\.downsample\.([01])\.", r"downsample_layers.\1.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", _BLOCK + "dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", _BLOCK + "norm."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.", _BLOCK + r"pwconv\3."),  # (out,in,1,1) if conv_mlp
        (r"^stages\.(\d+)\.blocks\.(\d+)\.gamma$", _BLOCK + "gamma"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$", _BLOCK + "grn.gamma"),  # V2, (C,)
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$", _BLOCK + "grn.beta"),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    ],
    "torchvision": [
        (r"^features\.0\.([01])\.", r"downsample_layers.0.\1."),
        # features = [stem, stage0, down1, stage1, down2, stage2, down3, stage3]: odd = stage, even = downsample
        (r"^features\.([1357])\.(\d+)\.block\.0\.", lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.dwconv."),
        (r"^features\.([1357])\.(\d+)\.block\.2\.", lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.norm."),
        (r"^features\.([1357])\.(\d+)\.block\.3\.", lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.pwconv1."),
        (r"^features\.([1357])\.(\d+)\.block\.5\.", lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.pwconv2."),
        (r"^features\.([1357])\.(\d+)\.layer_scale$", lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.gamma"),  # (C,1,1)
        (r"^features\.([246])\.([01])\.", lambda m: f"downsample_layers.{int(m[1]) // 2}.{m[2]}."),
        (r"^classifier\.0\.", "norm."),
        (r"^classifier\.2\.", "head."),
    ],
    "hf": [  # ConvNext* (prefix `convnext.`) and ConvNextV2* (prefix `convnextv2.`); the bare models have none
        (_HF + r"embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
        (_HF + r"embeddings\.layernorm\.", "downsample_layers.0.1."),
        (_HF + r"encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.", r"downsample_layers.\1.\2."),
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", _BLOCK + "dwconv."),
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", _BLOCK + "norm."),
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv([12])\.", _BLOCK + r"pwconv\3."),
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", _BLOCK + "gamma"),
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.weight$", _BLOCK + "grn.gamma"),  # V2
        (_HF + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.bias$", _BLOCK + "grn.beta"),
        (_HF + r"layernorm\.", "norm."),  # HF's final LN eps defaults to 1e-12 (official 1e-6)
        (r"^classifier\.", "head."),
    ],
}
FORMATS = tuple(_RULES)

# The key that identifies each layout (checked in this order).
_SIGNATURES = {
    "official": (r"^downsample_layers\.0\.0\.weight$", r"^stem\.weight$"),  # hierarchical / isotropic
    "timm": (r"^stem\.0\.weight$",),
    "torchvision": (r"^features\.0\.0\.weight$",),
    "hf": (_HF + r"embeddings\.patch_embeddings\.weight$",),
    # not a classifier (see the module docstring): our FCMAE's and the official one's mask token, the official
    # MinkowskiEngine encoder's stem
    "fcmae": (r"^mask_token$", r"^encoder\.downsample_layers\.0\.0\.weight$"),
}


def _unwrap(sd: Mapping) -> dict:
    """`{"model": sd}` / `{"state_dict": sd}` -> sd, and drop a `module.` (DDP) or `_orig_mod.` (compile) prefix."""
    for name in ("model", "state_dict"):
        if name in sd and isinstance(sd[name], Mapping):
            sd = sd[name]
    sd = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if not is_state_dict(sd):
        raise UserError("this is not a state dict: expected a mapping of parameter names to tensors")
    return sd


def detect_format(sd: Mapping) -> str:
    """'official' (= ours), 'timm', 'torchvision', 'hf', or 'fcmae' (which no converter takes), from the keys."""
    sd = _unwrap(sd)
    for fmt, patterns in _SIGNATURES.items():
        if any(re.match(p, k) for p in patterns for k in sd):
            return fmt
    raise UserError(f"unrecognised checkpoint layout (first keys: {', '.join(list(sd)[:4])}); supported layouts: "
                    "official ConvNeXt and ConvNeXt V2 (and ours), timm, torchvision, HF transformers")


def convert_state_dict(sd: Mapping, src: str | None = None) -> dict:
    """A state dict in any supported layout -> ours (the official keys and shapes). `src=None` detects it."""
    sd = _unwrap(sd)
    src = detect_format(sd) if src is None else src
    if src == "fcmae":
        raise UserError("this is an FCMAE pre-training checkpoint (ConvNeXt V2's masked autoencoder: its encoder, "
                        "in MinkowskiEngine layout in the official files, and its decoder), not a classifier; "
                        "load it with convnext.fcmae")
    if src not in _RULES:
        raise UserError(f"unknown checkpoint format {src!r}; known formats: {', '.join(FORMATS)}")
    rules = [(re.compile(pattern), repl) for pattern, repl in _RULES[src]]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            m = pattern.match(key)
            if m:
                new = (repl(m) if callable(repl) else m.expand(repl)) + key[m.end():]
                break
        else:
            raise UserError(f"the {src} checkpoint has a key with no ConvNeXt counterpart: {key}")
        # Linear weights stored as 1x1 convs (timm's conv_mlp variants), torchvision's (C,1,1) layer scale, and
        # timm's flat GRN parameters (official and HF: (1, 1, 1, C), which broadcasts over NHWC)
        if new.endswith(("pwconv1.weight", "pwconv2.weight")) and value.ndim == 4:
            value = value.flatten(1)
        elif new.endswith(("grn.gamma", "grn.beta")):
            value = value.reshape(1, 1, 1, -1)
        elif new.endswith("gamma") and value.ndim > 1:
            value = value.reshape(-1)
        out[new] = value
    return out


def infer_arch(sd: Mapping) -> str | None:
    """The variant whose depths and widths a state dict in our layout has, or None. V1 and V2 share their sizes
    (e.g. tiny); GRN parameters say which generation it is."""
    sd = _unwrap(sd)
    family = "v2" if any(k.endswith(".grn.gamma") for k in sd) else "v1"
    if "stem.weight" in sd:  # isotropic
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        shape = ((depth,), (sd["stem.weight"].shape[0],))
    elif "downsample_layers.0.0.weight" in sd:
        convs = [f"downsample_layers.{i}.{0 if i == 0 else 1}.weight" for i in range(4)]  # stem, 3 downsamplings
        dims = [sd[k].shape[0] for k in convs if k in sd]
        depths = [len({k.split(".")[2] for k in sd if k.startswith(f"stages.{i}.")}) for i in range(4)]
        shape = (tuple(depths), tuple(dims))
    else:
        return None
    for name, v in VARIANTS.items():
        if (v.depths, v.dims) == shape and v.family == family:
            return name
    return None


@dataclass(frozen=True)
class WeightsInfo:
    """What model a state dict in our layout fits: read from its keys and shapes."""

    arch: str | None  # the variant with these depths and widths, None if none has them
    num_classes: int  # rows of the head; 0 without one
    in_chans: int  # input channels of the stem
    layer_scale: bool  # whether the blocks have a (V1) layer-scale gamma


def describe(sd: Mapping) -> WeightsInfo:
    sd = _unwrap(sd)
    stem = sd.get("stem.weight", sd.get("downsample_layers.0.0.weight"))
    return WeightsInfo(
        arch=infer_arch(sd),
        num_classes=int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
        in_chans=int(stem.shape[1]) if stem is not None else 3,
        layer_scale=any(k.endswith(".gamma") and not k.endswith(".grn.gamma") for k in sd),  # V1's, not GRN's
    )
