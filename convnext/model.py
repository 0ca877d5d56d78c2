"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), read top-down like §3 of the paper.

LayerNorm2d -> DropPath -> Block -> ConvNeXt (stem, 4 x [downsample, stage], norm, head) ->
ConvNeXtIsotropic (Appendix A, Table 2) -> the variant table -> build_model (random init; `convnext.create_model`
in factory.py adds official weights and kernels on top).

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
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from convnext.dwconv import DepthwiseConv2d
from convnext.errors import UserError

LN_EPS = 1e-6  # §4.2 of the official code: every LayerNorm uses eps 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, at every spatial position.

    Not GroupNorm(1), which would normalise over (C, H, W) together (official issue #112).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C); a view, free for channels_last input
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # back to (N, C, H, W)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): drop the residual branch, rescale the survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


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


def _init_weights(module: nn.Module) -> None:
    # Official init: trunc-normal std 0.02 on every conv/linear weight, zero bias (Table 5 prints "0.2";
    # the released code uses 0.02). LayerNorms keep weight 1, bias 0.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _Classifier(nn.Module):
    """What the hierarchical and the isotropic ConvNeXt share: head API, checkpointing flag, init."""

    num_classes: int
    num_features: int
    head: nn.Linear
    norm: nn.LayerNorm

    def _finish_init(self, head_init_scale: float) -> None:
        self.grad_checkpointing = False
        self.apply(_init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():  # a small head for fine-tuning (Table 6: head init scale 0.001)
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((-2, -1)))  # global average pool, then LN (§2.2: LN after the final pool)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, head_init_scale: float = 1.0) -> None:
        """Replace the head (fine-tuning on another label set); num_classes=0 gives pooled features."""
        self.num_classes = num_classes
        ref = self.head.weight
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            _init_weights(head)
            with torch.no_grad():
                head.weight.mul_(head_init_scale)
        else:
            head = nn.Identity()
        self.head = head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (non-reentrant), trading compute for memory."""
        self.grad_checkpointing = enable

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = False,
        stop_early: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Intermediate outputs for dense prediction: the 4 stage outputs (strides 4, 8, 16, 32;
        un-normalised), or for the isotropic model the block outputs (stride 16).

        `indices`: None = all, k = the last k, a list = those (negative from the end). Returns that list,
        or (final features, that list) unless `intermediates_only`; `stop_early` skips what follows the last
        output asked for.
        """
        n = len(self.stages) if hasattr(self, "stages") else len(self.blocks)
        take = _take_indices(n, indices)
        last = take[-1] if (stop_early or intermediates_only) else n - 1
        outs = []
        for i in range(last + 1):
            x = self._unit(i, x)
            if i in take:
                outs.append(x)
        return outs if intermediates_only else (x, outs)


def _take_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """`indices`: None = all n, an int k = the last k, a sequence = those (negative counts from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} must be between 1 and {n}")
        return list(range(n - indices, n))
    out = sorted(i % n if -n <= i < n else _bad_index(i, n) for i in indices)
    return out


def _bad_index(i: int, n: int) -> int:
    raise ValueError(f"index {i} is out of range for {n} outputs")


class ConvNeXt(_Classifier):
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
        # downsample_layers[0] is the stem: conv 4x4 stride 4, then LN. The others: LN, then conv 2x2 stride 2
        # (§2.6: separate downsampling layers diverge without an LN wherever the resolution changes).
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i], eps=LN_EPS), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        # stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: meta-safe
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(
                nn.Sequential(*[Block(dims[i], rates[start + j], layer_scale_init_value) for j in range(depth)])
            )
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)  # on the pooled vector
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._finish_init(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, dims[-1], H/32, W/32), before pooling."""
        for i in range(4):
            x = self._unit(i, x)
        return x

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # one intermediate output of forward_intermediates: stage i (stride 4, 8, 16, 32), after its downsampling
        return self._run(self.stages[i], self.downsample_layers[i](x))


class ConvNeXtIsotropic(_Classifier):
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
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[Block(dim, rates[j], layer_scale_init_value) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._finish_init(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, dim, H/16, W/16), before pooling."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for i in range(self.depth):  # per block: the isotropic model has no stages
                x = self._unit(i, x)
            return x
        return self.blocks(self.stem(x))

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # one intermediate output of forward_intermediates: block i (all at stride 16); the stem goes first
        return self._run(self.blocks[i], self.stem(x) if i == 0 else x)


# ----------------------------------------------------------------------------------------------------------
# The variant table (paper Table 1, Table 2, and the small variants of timm / ConvNeXt-V2).
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
    drop_path: float  # the IN-1K training value
    layer_scale: float = 1e-6  # default layer-scale init (0 = no gamma)
    isotropic: bool = False

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
) -> ConvNeXt | ConvNeXtIsotropic:
    """A randomly initialised variant of the table by name. `convnext.create_model` adds weights and kernels.

    `layer_scale_init_value=None` means the variant's own default: 1e-6, except 0 (no gamma) for the
    isotropic S/B, as the official checkpoints were trained.
    """
    variant = get_variant(name)
    ls = variant.layer_scale if layer_scale_init_value is None else layer_scale_init_value
    common = dict(in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate,
                  layer_scale_init_value=ls, head_init_scale=head_init_scale)
    if variant.isotropic:
        model = ConvNeXtIsotropic(depth=variant.depths[0], dim=variant.dims[0], **common)
    else:
        model = ConvNeXt(depths=variant.depths, dims=variant.dims, **common)
    model.arch = name  # type: ignore[attr-defined]
    return model
