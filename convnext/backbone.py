"""ConvNeXt as a backbone for dense prediction (paper §4.2): the four stage outputs, each through its own LayerNorm.

    body = ConvNeXtBackbone("convnext_tiny", drop_path_rate=0.4)
    report = load_backbone_weights(body, "convnext_tiny.fb_in1k")   # or any classification checkpoint file
    feats = body(images)            # {"0": (N, 96, H/4, W/4), "1": H/8, "2": H/16, "3": (N, 768, H/32, W/32)}

This is the official detection/segmentation backbone (`object_detection/mmdet/models/backbones/convnext.py`):
the classification network without its final `norm` and `head`, plus `norm{i}`, a channels-first LayerNorm
(eps 1e-6) on each returned stage. The module keys are the official ones (`downsample_layers`, `stages`,
`norm0`..`norm3`), so the official COCO/ADE20K backbones' keys need no renaming.

Differences from the official class, none of which changes a number:
- the output norms exist only for the stages in `out_indices` (the official code builds all four and uses the
  chosen ones; an unused parameter would break DDP's gradient bucketing);
- the output is a dict keyed "0".."3" (torchvision's FeaturePyramidNetwork reads an ordered dict);
- classification weights load through `load_backbone_weights`, which reads every source `convnext` reads
  (official, ours, timm, torchvision, HF; `convnext/convert.py`) and reports by name what it did not use (the
  final norm, the head) and what stays at its initialisation (the output norms), where the official code's
  `strict=False` load says nothing.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from convnext.errors import UserError
from convnext.model import LN_EPS, ConvNeXt, LayerNorm2d, get_variant
from convnext.model_v2 import ConvNeXtV2
from convnext.checkpoint import load_checkpoint_file
from convnext.convert import convert_state_dict
from convnext.weights import download_pretrained, find_tag


class ConvNeXtBackbone(nn.Module):
    """The hierarchical ConvNeXt's stages at strides 4, 8, 16, 32, each output layer-normalised."""

    def __init__(
        self,
        arch: str = "convnext_tiny",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = None,
        in_chans: int = 3,
    ):
        super().__init__()
        variant = get_variant(arch)
        if variant.isotropic:
            raise UserError(f"{arch} is isotropic (one stride-16 stage); dense prediction needs a hierarchical "
                            f"ConvNeXt (tiny, small, base, large, xlarge, atto, femto, pico, nano)")
        if not out_indices or any(i not in range(4) for i in out_indices):
            raise UserError(f"out_indices={tuple(out_indices)} must be stage numbers among 0, 1, 2, 3")
        if variant.family == "v2":  # V2 blocks (GRN, no layer scale); the V2 paper's detection/segmentation use
            if layer_scale_init_value:
                raise UserError(f"{arch} has no layer scale (ConvNeXt V2 replaced it by GRN); leave it unset")
            net = ConvNeXtV2(in_chans=in_chans, num_classes=0, depths=variant.depths, dims=variant.dims,
                             drop_path_rate=drop_path_rate)
        else:
            ls = variant.layer_scale if layer_scale_init_value is None else layer_scale_init_value
            net = ConvNeXt(in_chans=in_chans, num_classes=0, depths=variant.depths, dims=variant.dims,
                           drop_path_rate=drop_path_rate, layer_scale_init_value=ls)
        self.arch, self.in_chans = arch, in_chans
        self.depths, self.dims = variant.depths, variant.dims
        self.out_indices = tuple(sorted(out_indices))
        self.downsample_layers = net.downsample_layers  # the classification network's own modules (and init)
        self.stages = net.stages
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(self.dims[i], eps=LN_EPS))
        self.out_channels = [self.dims[i] for i in self.out_indices]
        self.strides = [4 * 2**i for i in self.out_indices]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (non-reentrant): less memory for large inputs."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs = OrderedDict()
        for i in range(self.out_indices[-1] + 1):  # nothing after the last stage asked for
            x = self.downsample_layers[i](x)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self.stages[i], x, use_reentrant=False)
            else:
                x = self.stages[i](x)
            if i in self.out_indices:
                outs[str(i)] = getattr(self, f"norm{i}")(x)
        return outs


@dataclass
class LoadReport:
    """What `load_backbone_weights` did, by parameter name."""

    source: str
    loaded: int = 0
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the backbone (final norm, head)
    new: list[str] = field(default_factory=list)  # in the backbone, not in the checkpoint (the output norms)
    adapted: list[str] = field(default_factory=list)  # loaded after a change of shape (the stem's input channels)
    outside: int = 0  # a detector's or segmenter's tensors outside its backbone (neck, heads): not used

    def describe(self) -> str:
        parts = [f"backbone weights from {self.source}: {self.loaded} tensors loaded"]
        if self.adapted:
            parts.append(f"adapted: {', '.join(self.adapted)}")
        if self.unused:
            parts.append(f"not used: {_names(self.unused)}")
        if self.outside:
            parts.append(f"not used: the {self.outside} tensors of the checkpoint's neck and heads")
        if self.new:
            parts.append(f"new (initialised here): {_names(self.new)}")
        return "; ".join(parts)


def _names(keys: list[str]) -> str:
    """Parameter names, grouped by module: norm.weight, norm.bias -> norm.{weight,bias}."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        mod, _, leaf = k.rpartition(".")
        groups.setdefault(mod, []).append(leaf)
    return ", ".join(f"{m}.{{{','.join(v)}}}" if len(v) > 1 else f"{m}.{v[0]}" for m, v in groups.items())


# Where a dense-prediction model keeps its backbone: torchvision's BackboneWithFPN (our detectors) under
# `backbone.body.`, our segmenters and the official mmdet / mmseg checkpoints under `backbone.`.
DENSE_PREFIXES = ("backbone.body.", "backbone.")


def backbone_part(sd: dict) -> tuple[dict, int]:
    """(the backbone's tensors without their prefix, how many other tensors) of a detector's or segmenter's state
    dict (a DDP `module.` prefix allowed); (sd, 0) for a classifier's."""
    for prefix in (f"{m}{p}" for m in ("", "module.") for p in DENSE_PREFIXES):
        if any(k.startswith(f"{prefix}downsample_layers.") for k in sd):
            part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            return part, len(sd) - len(part)
    return sd, 0


def load_backbone_weights(backbone: ConvNeXtBackbone, source: str | os.PathLike, *, ema: bool = False,
                          verbose: bool = True) -> LoadReport:
    """Load classification weights (a registry tag, or a checkpoint file of any supported origin) into `backbone`,
    or the backbone of a trained detector or segmenter (ours, or an official mmdet / mmseg file: DENSE_PREFIXES),
    whose output norms then load too.

    Every backbone tensor the checkpoint has is loaded and must fit; the final norm and the head are reported as
    not used and the output norms as new. A checkpoint for fewer input channels than the backbone's (the 1-channel
    Fashion-MNIST demo into an RGB detector) has its stem repeated over the channels and divided by their number,
    so a grey image gives the same stem output as before (timm's `adapt_input_conv` does the same); reported.
    """
    tag = find_tag(source, backbone.arch)
    path = download_pretrained(tag) if tag else source
    sd, _ = load_checkpoint_file(path, ema)
    report = LoadReport(source=tag or str(source))
    sd, report.outside = backbone_part(sd)
    sd = convert_state_dict(sd)
    own = backbone.state_dict()
    take = {}
    for k, v in sd.items():
        if k not in own:
            report.unused.append(k)
            continue
        if v.shape != own[k].shape:
            if k == "downsample_layers.0.0.weight" and v.shape[1] != own[k].shape[1] and v.shape[0] == own[k].shape[0]:
                have, want = v.shape[1], own[k].shape[1]
                v = v.repeat(1, -(-want // have), 1, 1)[:, :want] * have / want
                report.adapted.append(f"{k} ({sd[k].shape[1]} -> {own[k].shape[1]} input channels)")
            else:
                raise UserError(f"{report.source} does not fit the {backbone.arch} backbone: {k} has shape "
                                f"{tuple(v.shape)} there but {tuple(own[k].shape)} here (another model size?)")
        take[k] = v
    report.new = [k for k in own if k not in take]
    missing_body = [k for k in report.new if not k.startswith("norm")]
    if missing_body:
        raise UserError(f"{report.source} does not fit the {backbone.arch} backbone: {len(missing_body)} of its "
                        f"weights are missing (e.g. {missing_body[0]}); is it a {backbone.arch} checkpoint?")
    backbone.load_state_dict(take, strict=False)
    report.loaded = len(take)
    if verbose:
        print(report.describe(), flush=True)
    return report
