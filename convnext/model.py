"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), read top-down like §3 of the paper.

Block -> ConvNeXt (stem, 4 x [downsample, stage], norm, head) -> ConvNeXtIsotropic (Appendix A, Table 2) ->
the variant table of both generations (V2's model is model_v2.py) -> build_model (random init;
`convnext.create_model` in factory.py adds official weights and kernels on top). The channels-first LayerNorm,
drop path, the init and the classifier interface, which V2 shares, are in layers.py.

Module names and parameter shapes are exactly those of the official release
(`downsample_layers.i.j`, `stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}`, `norm`, `head`; isotropic:
`stem`, `blocks.j`, `norm`, `head`), so an official checkpoint loads with a plain `load_state_dict`.

Differences from the official code, none of which changes a key or a number:
- `forward_features` returns the spatial map before pooling (timm's convention), not the pooled vector;
  the official `forward` is `forward_head(forward_features(x))`.
- The channels-first LayerNorm is permute -> F.layer_norm -> permute, which computes the same per-position
  normalisation over channels as the official hand-written mean/variance, and is free on channels_last input.
- Per-stage gradient checkpointing, `forward_intermediates` and `reset_classifier`, as users know from timm.
- The depthwise conv is `DepthwiseConv2d` (dwconv.py): an nn.Conv2d with the same parameters that crops its
  7x7 kernel on maps smaller than it and has a faster CPU backward there (the same function; ~1.9x faster
  CPU training at 32 px, nothing changes at 224 px).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from convnext.dwconv import DepthwiseConv2d
from convnext.errors import UserError
from convnext.layers import (LN_EPS, ClassifierBase, DropPath, LayerNorm2d, check_map_size, drop_path_rates,
                             downsample_layers)
from convnext.model_v2 import ConvNeXtV2

__all__ = ["LN_EPS", "Block", "ConvNeXt", "ConvNeXtIsotropic", "DropPath", "LayerNorm2d", "VARIANTS", "Variant",
           "build_model", "get_variant", "list_models"]  # LN_EPS, DropPath, LayerNorm2d live in layers.py (re-exported)


class Block(nn.Module):
    """The ConvNeXt block (Figure 4): dw 7x7 -> LN -> 1x1 (d->4d) -> GELU -> 1x1 (4d->d) -> x gamma, + input.

    The 1x1 convs are Linear layers on NHWC, as in the official code (issue #18: slightly faster, and it
    lets LN use the native kernel). `gamma` (layer scale, Touvron et al. 2021) exists only when its init
    value is > 0, so checkpoints trained without it (isotropic S/B) have no `gamma` key.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # §2.5, kernel 7
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # inverted bottleneck, expansion 4 (§2.4)
        self.act = nn.GELU()  # exact (erf) GELU (§2.6)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXt(ClassifierBase):
    """Hierarchical ConvNeXt: 4x4/4 patchify stem (§2.2), four stages, separate downsampling layers (§2.6)."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, dims[-1]
        self.downsample_layers = downsample_layers(in_chans, dims)  # stem (§2.2) + 3 downsampling layers (§2.6)
        rates = drop_path_rates(sum(depths), drop_path_rate)  # linear from 0 to drop_path_rate over all blocks
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(
                nn.Sequential(*[Block(dims[i], rates[start + j], layer_scale_init_value) for j in range(depth)])
            )
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)  # on the pooled vector
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, dims[-1], H/32, W/32), before pooling."""
        for i in range(4):
            x = self.forward_unit(i, x)
        return x

    def forward_unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # one intermediate output of forward_intermediates: stage i (stride 4, 8, 16, 32), after its downsampling
        check_map_size(x, 4 if i == 0 else 2, 32)  # the stem's 4x4 kernel, then 2x2: inputs of >= 32 px
        return self.run_checkpointed(self.stages[i], self.downsample_layers[i](x))


class ConvNeXtIsotropic(ClassifierBase):
    """Isotropic ConvNeXt (Appendix A, Table 2): a 16x16/16 patch stem, one resolution, no downsampling."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depth: int = 18,
        dim: int = 384,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.depth, self.dim = depth, dim
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, dim
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=16, stride=16)  # no LN after it (official)
        rates = drop_path_rates(depth, drop_path_rate)
        self.blocks = nn.Sequential(*[Block(dim, rates[j], layer_scale_init_value) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, dim, H/16, W/16), before pooling."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for i in range(self.depth):  # per block: the isotropic model has no stages
                x = self.forward_unit(i, x)
            return x
        check_map_size(x, 16, 16)  # the 16x16 patchify stem
        return self.blocks(self.stem(x))

    def forward_unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # one intermediate output of forward_intermediates: block i (all at stride 16); the stem goes first
        if i == 0:
            check_map_size(x, 16, 16)
        return self.run_checkpointed(self.blocks[i], self.stem(x) if i == 0 else x)


# ----------------------------------------------------------------------------------------------------------
# The variant table (paper Table 1, Table 2, the small variants of timm / ConvNeXt-V2, and ConvNeXt V2).
# `params` is the exact count at 1,000 classes; `gmacs` are multiply-adds of convs and linears at 224 and
# 384 as the paper prints them (its "FLOPs"); None where the paper prints none. `drop_path` is the training
# value (Table 5 / TRAINING.md), used by the training configs; create_model defaults to 0 (inference).
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    params: int  # exact, 1,000 classes
    params_m: float  # as printed (M)
    gmacs_224: float  # as printed
    gmacs_384: float | None
    drop_path: float | None  # the IN-1K training value (V2: fine-tuning); None where no source prints one
    layer_scale: float = 1e-6  # default layer-scale init (0 = no gamma)
    isotropic: bool = False
    family: str = "v1"  # "v1": ConvNeXt (this file); "v2": ConvNeXt V2 (model_v2.py: GRN, no layer scale)

    @property
    def stride(self) -> int:
        return 16 if self.isotropic else 32

    def check_img_size(self, size: int) -> None:
        """An input side the network's total stride divides (a UserError otherwise)."""
        if size % self.stride:
            raise UserError(f"image size {size} is not divisible by {self.stride}, the network's total stride")


VARIANTS: dict[str, Variant] = {
    # Table 1 (exact parameter counts of the architecture, which Table 1 rounds; GFLOPs as printed in Table 1)
    "convnext_tiny": Variant((3, 3, 9, 3), (96, 192, 384, 768), 28_589_128, 29, 4.5, 13.1, 0.1),
    "convnext_small": Variant((3, 3, 27, 3), (96, 192, 384, 768), 50_223_688, 50, 8.7, 25.5, 0.4),
    "convnext_base": Variant((3, 3, 27, 3), (128, 256, 512, 1024), 88_591_464, 89, 15.4, 45.1, 0.5),
    "convnext_large": Variant((3, 3, 27, 3), (192, 384, 768, 1536), 197_767_336, 198, 34.4, 101.0, 0.5),
    "convnext_xlarge": Variant((3, 3, 27, 3), (256, 512, 1024, 2048), 350_196_968, 350, 60.9, 179.0, 0.5),
    # The small variants (timm originals, adopted by ConvNeXt-V2). No paper prints their V1 sizes: the exact
    # counts are the architecture's, and the GMACs are those timm and the ConvNeXt-V2 README print.
    "convnext_atto": Variant((2, 2, 6, 2), (40, 80, 160, 320), 3_695_520, 3.7, 0.55, None, 0.0),
    "convnext_femto": Variant((2, 2, 6, 2), (48, 96, 192, 384), 5_217_784, 5.2, 0.78, None, 0.0),
    "convnext_pico": Variant((2, 2, 6, 2), (64, 128, 256, 512), 9_045_672, 9.0, 1.37, None, 0.0),
    "convnext_nano": Variant((2, 2, 8, 2), (80, 160, 320, 640), 15_593_560, 15.6, 2.45, None, 0.1),
    # Table 2 (isotropic). Layer scale is off for S/B, on for L (Appendix A.1, TRAINING.md), so the official
    # S/B checkpoints have no `gamma` and their exact counts are 18 x dim below 22,315,624 and 87,097,576,
    # the counts with a gamma per block (the tests check both).
    "convnext_isotropic_small": Variant((18,), (384,), 22_308_712, 22, 4.3, None, 0.1, 0.0, True),
    "convnext_isotropic_base": Variant((18,), (768,), 87_083_752, 87, 16.9, None, 0.2, 0.0, True),
    "convnext_isotropic_large": Variant((36,), (1024,), 305_942_504, 306, 59.7, None, 0.5, 1e-6, True),
    # ConvNeXt V2 (V2 README: params and GFLOPs at 224 from its IN-1K table, at 384 from its IN-22K table).
    # Widths and depths are V1's; each block trades V1's gamma (d) for GRN's gamma and beta (2 x 4d). Our
    # multiply-adds of convs and linears equal V1's (GRN has no matmul); the README's T at 224 and its 384
    # numbers are 0.1-0.4% above them (it counts more than convs and linears; tests/test_v2.py). drop_path: the
    # IN-1K fine-tuning value where TRAINING.md gives one (A 0.1, T 0.2, B 0.1); no source we read gives the rest.
    "convnextv2_atto": Variant((2, 2, 6, 2), (40, 80, 160, 320), 3_708_400, 3.7, 0.55, None, 0.1, 0.0, family="v2"),
    "convnextv2_femto": Variant((2, 2, 6, 2), (48, 96, 192, 384), 5_233_240, 5.2, 0.78, None, None, 0.0, family="v2"),
    "convnextv2_pico": Variant((2, 2, 6, 2), (64, 128, 256, 512), 9_066_280, 9.1, 1.37, None, None, 0.0, family="v2"),
    "convnextv2_nano": Variant((2, 2, 8, 2), (80, 160, 320, 640), 15_623_800, 15.6, 2.45, 7.21, None, 0.0, family="v2"),
    "convnextv2_tiny": Variant((3, 3, 9, 3), (96, 192, 384, 768), 28_635_496, 28.6, 4.47, 13.1, 0.2, 0.0, family="v2"),
    "convnextv2_base": Variant((3, 3, 27, 3), (128, 256, 512, 1024), 88_717_800, 89, 15.4, 45.2, 0.1, 0.0, family="v2"),
    "convnextv2_large": Variant((3, 3, 27, 3), (192, 384, 768, 1536), 197_956_840, 198, 34.4, 101.1, None, 0.0,
                                family="v2"),
    "convnextv2_huge": Variant((3, 3, 27, 3), (352, 704, 1408, 2816), 660_289_640, 660, 115.0, 337.9, None, 0.0,
                               family="v2"),
}


def list_models() -> list[str]:
    return list(VARIANTS)


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float | None = None,
    head_init_scale: float = 1.0,
) -> ConvNeXt | ConvNeXtIsotropic | ConvNeXtV2:
    """A randomly initialised variant of the table by name. `convnext.create_model` adds weights and kernels.

    `layer_scale_init_value=None` means the variant's own default: 1e-6, except 0 (no gamma) for the
    isotropic S/B, as the official checkpoints were trained, and for V2, which has no layer scale.
    """
    variant = get_variant(name)
    ls = variant.layer_scale if layer_scale_init_value is None else layer_scale_init_value
    common = dict(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate,
                  head_init_scale=head_init_scale)
    if variant.family == "v2":
        if ls:
            raise UserError(f"{name} has no layer scale (ConvNeXt V2 removed it when it added GRN); "
                            f"leave layer_scale_init_value unset or 0")
        model = ConvNeXtV2(depths=variant.depths, dims=variant.dims, **common)
    elif variant.isotropic:
        model = ConvNeXtIsotropic(depth=variant.depths[0], dim=variant.dims[0], layer_scale_init_value=ls, **common)
    else:
        model = ConvNeXt(depths=variant.depths, dims=variant.dims, layer_scale_init_value=ls, **common)
    model.arch = name  # type: ignore[attr-defined]
    return model
