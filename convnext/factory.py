"""A model by name, and a model from weights: the two ways in, above the model, its weights and its kernels.

    create_model("convnext_tiny", pretrained=True)          # a variant, optionally with official weights
    load_model("convnext_tiny.fb_in22k_ft_in1k_384")         # a model from weights: architecture, classes,
    load_model("runs/demo/best_ema.pt")                      # input channels and preprocessing read from them
"""
from __future__ import annotations

import os

from torch import nn

from convnext.convert import describe
from convnext.errors import UserError
from convnext.kernels import use_kernels
from convnext.model import ConvNeXt, ConvNeXtIsotropic, build_model, get_variant
from convnext.model_v2 import ConvNeXtV2
from convnext.weights import find_tag, get_pretrained_cfg, load_pretrained, load_state, read_weights

KERNELS = ("torch", "triton")


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = None,
    head_init_scale: float = 1.0,
    kernels: str = "torch",
) -> ConvNeXt | ConvNeXtIsotropic | ConvNeXtV2:
    """Build a ConvNeXt (V1 or V2) by name, optionally with official weights.

    `name` may carry a weights tag (`"convnext_tiny.fb_in22k_ft_in1k_384"`), which implies pretrained.
    `pretrained=True` takes the variant's default tag; a string is a tag (or a local file path).
    `layer_scale_init_value=None` means the variant's own default (1e-6; 0 for the isotropic S/B and for V2).
    `kernels="triton"` runs every block through the fused Triton kernels (convnext/kernels; same state dict).
    """
    arch, _, tag = name.partition(".")
    variant = get_variant(arch)  # an unknown name fails before anything is built
    if kernels not in KERNELS:
        raise UserError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    if kernels == "triton" and variant.family != "v1":
        raise UserError(f"the fused Triton kernels implement the V1 block (layer scale, no GRN); build {arch} "
                        f"with kernels='torch'")
    if tag:
        pretrained = pretrained if isinstance(pretrained, str) else f"{arch}.{tag}"
    model = build_model(arch, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                        layer_scale_init_value=layer_scale_init_value, head_init_scale=head_init_scale)
    if kernels == "triton":
        use_kernels(model)
    if pretrained:
        load_pretrained(model, pretrained if isinstance(pretrained, str) else None)
    return model


def load_model(source: str | os.PathLike, *, name: str | None = None, ema: bool = False) -> nn.Module:
    """The model that weights describe, with them loaded, in eval mode.

    `source` is a registry tag (`convnext_tiny.fb_in1k`; a short tag like `fb_in1k` with `name`) or a checkpoint
    file of any supported origin (official, ours, timm, torchvision, HF, safetensors). For a file, the
    architecture is `name`, else the file's meta, else read from its shapes; classes and input channels come
    from its shapes; `ema=True` takes a checkpoint's EMA weights. `model.pretrained_cfg` says where the weights
    came from and how inputs are preprocessed.
    """
    tag = find_tag(source, name)
    if tag is not None:
        if ema:
            raise UserError("the official files hold one set of weights; the EMA option is for checkpoints of ours")
        cfg = get_pretrained_cfg(tag)
        return create_model(cfg["arch"], pretrained=tag, num_classes=cfg["num_classes"]).eval()
    sd, meta = read_weights(source, ema)
    info = describe(sd)
    arch = name or meta.get("arch") or info.arch
    if arch is None:
        raise UserError(f"cannot tell which ConvNeXt {source} holds; pass the model name")
    model = build_model(arch, num_classes=info.num_classes, in_chans=info.in_chans,
                        layer_scale_init_value=1e-6 if info.layer_scale else 0.0)
    return load_state(model, sd, meta, str(source)).eval()
