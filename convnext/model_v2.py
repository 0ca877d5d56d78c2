"""ConvNeXt V2 (Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders", CVPR 2023),
read top-down like §3 of the paper: GRN -> BlockV2 -> ConvNeXtV2. The variants are rows of the one table in
model.py (`convnextv2_atto` ... `convnextv2_huge`); FCMAE pre-training is convnext/fcmae.py.

What V2 changes in V1 is the block alone: Global Response Normalization after the GELU, and no layer scale
(the paper drops it once GRN is in, §3). Stem, downsampling, final norm, head and init are V1's (layers.py).
Module names and parameter shapes are those of the official `models/convnextv2.py` (`downsample_layers.i.j`,
`stages.i.j.{dwconv,norm,pwconv1,grn.gamma,grn.beta,pwconv2}`, `norm`, `head`; GRN's gamma/beta are
(1, 1, 1, C)), so an official fine-tuned checkpoint loads with a plain `load_state_dict(strict=True)`.

Differences from the official code, none of which changes a key or a number: as in model.py, `forward_features`
returns the map before pooling, the channels-first LayerNorm is permute -> F.layer_norm -> permute, the depthwise
conv is the kernel-cropping `DepthwiseConv2d`, and the timm-style interface (forward_head, forward_intermediates,
reset_classifier, set_grad_checkpointing) is added.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from convnext.dwconv import DepthwiseConv2d
from convnext.layers import LN_EPS, ClassifierBase, DropPath, check_map_size, drop_path_rates, downsample_layers

GRN_EPS = 1e-6  # official models/utils.py GRN: Gx / (mean(Gx) + 1e-6)


def grn_response(x: torch.Tensor) -> torch.Tensor:
    """GRN's Nx of an NHWC tensor, (N, 1, 1, C): each channel's L2 norm over (H, W) relative to their mean."""
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # (N, 1, 1, C), as torch.norm(p=2)
    return gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)


class GRN(nn.Module):
    """Global Response Normalization (§3) on an NHWC tensor, as the official code computes it.

    1. aggregate: Gx = ||x||_2 over (H, W), per sample and channel;
    2. normalise: Nx = Gx / (mean over channels of Gx + eps) (the paper writes a sum over channels; the code
       divides by the mean, which only rescales gamma: official issue #76);
    3. calibrate: gamma * (x * Nx) + beta + x. gamma and beta start at 0, so a new GRN is the identity.
    Computed as x * (1 + gamma * Nx) + beta: the factor is (N, 1, 1, C), so the 4C-wide map is read and written
    once (one addcmul) instead of four times; the same number up to float rounding.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))  # (1, 1, 1, C): the official shape, broadcast on NHWC
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, x, 1 + self.gamma * grn_response(x))  # = gamma * (x * Nx) + beta + x


class BlockV2(nn.Module):
    """The ConvNeXt V2 block: dw 7x7 -> LN -> 1x1 (d->4d) -> GELU -> GRN -> 1x1 (4d->d), + input.

    V1's block with GRN on the 4d-wide hidden features and without the layer scale gamma. The 1x1 convs are
    Linear layers on NHWC, as in the official code.
    """

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)  # where the features of the expanded MLP compete (§3)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.grn(x)  # (N, H, W, 4C): GRN pools over H, W, so it needs the whole map of each sample
        x = self.pwconv2(x)
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXtV2(ClassifierBase):
    """Hierarchical ConvNeXt V2: V1's stem, four stages of BlockV2, V1's downsampling layers, norm and head."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, dims[-1]
        self.downsample_layers = downsample_layers(in_chans, dims)  # stem + 3 downsampling layers, as V1
        rates = drop_path_rates(sum(depths), drop_path_rate)  # linear from 0 to drop_path_rate over all blocks
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[BlockV2(dims[i], rates[start + j]) for j in range(depth)]))
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
        check_map_size(x, 4 if i == 0 else 2, 32)  # as V1: inputs of >= 32 px
        return self.run_checkpointed(self.stages[i], self.downsample_layers[i](x))
