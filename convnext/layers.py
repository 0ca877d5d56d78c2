"""What ConvNeXt (model.py) and ConvNeXt V2 (model_v2.py) share, below both so that neither imports the other:
the channels-first LayerNorm, stochastic depth, the official init, the stem and downsampling layers, and the
classifier interface users know from timm (forward_head, forward_intermediates, reset_classifier, per-stage
gradient checkpointing).

V2 changes only the block (GRN in, layer scale out; Woo et al. 2023, §3.3); the macro design, the init and the
head are V1's, so everything here is written once.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from convnext.errors import UserError

LN_EPS = 1e-6  # every LayerNorm of the official code (V1 and V2) uses eps 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, at every spatial position.

    Not GroupNorm(1), which would normalise over (C, H, W) together (official issue #112). Computes the same
    per-position normalisation as the official hand-written mean/variance, and is free on channels_last input.
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


def drop_path_rates(num_blocks: int, drop_path_rate: float) -> list[float]:
    """Stochastic depth grows linearly from 0 (first block) to `drop_path_rate` (last block), over all stages."""
    return torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist()  # cpu: works under torch.device("meta")


def downsample_layers(in_chans: int, dims: Sequence[int]) -> nn.ModuleList:
    """The stem and the three downsampling layers of the hierarchical models, keyed `downsample_layers.i.j`.

    [0] is the stem: conv 4x4 stride 4 ("patchify", §2.2), then LN. The others: LN, then conv 2x2 stride 2
    (§2.6: separate downsampling layers diverge without an LN wherever the resolution changes).
    """
    stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
    layers = nn.ModuleList([stem])
    for i in range(len(dims) - 1):
        layers.append(
            nn.Sequential(LayerNorm2d(dims[i], eps=LN_EPS), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
        )
    return layers


def check_map_size(x: torch.Tensor, need: int, min_input: int) -> None:
    """One sentence, instead of conv's "Kernel size can't be greater than actual input size", when a map smaller
    than the next downsampling kernel (`need`) reaches it: the input was smaller than `min_input`, the network's
    total stride. Skipped while tracing (fx proxies, symbolic sizes), where the tracer owns the shapes."""
    if isinstance(x, torch.fx.Proxy):
        return
    h, w = x.shape[-2:]
    if isinstance(h, int) and isinstance(w, int) and min(h, w) < need:
        raise UserError(f"the input is too small for this network: a {h} x {w} map reaches a downsampling layer "
                        f"that needs at least {need} x {need}; give images of at least {min_input} x {min_input} px")


def init_weights(module: nn.Module) -> None:
    # Official init (V1 and V2): trunc-normal std 0.02 on every conv/linear weight, zero bias (V1's Table 5
    # prints "0.2"; the released code uses 0.02). LayerNorms keep weight 1, bias 0; GRN keeps its zeros.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ClassifierBase(nn.Module):
    """What every ConvNeXt classifier shares (hierarchical V1 and V2, isotropic): head API, checkpointing, init.

    A subclass builds `norm` (LN on the pooled vector) and `head`, defines `forward_features` and
    `forward_unit(i, x)` (the i-th output of forward_intermediates: a stage, or an isotropic block), and ends its
    __init__ with `reset_parameters(head_init_scale)`.
    """

    num_classes: int
    num_features: int
    head: nn.Linear
    norm: nn.LayerNorm
    grad_checkpointing: bool = False  # set_grad_checkpointing turns it on per model

    def reset_parameters(self, head_init_scale: float = 1.0) -> None:
        """The official init on every conv and linear; the head scaled by `head_init_scale`."""
        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():  # a small head for fine-tuning (V1 Table 6 and V2 main_finetune.py: 0.001)
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
        ref = self.norm.weight  # the head may be an Identity already; the final norm always has a weight
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            init_weights(head)
            with torch.no_grad():
                head.weight.mul_(head_init_scale)
        else:
            head = nn.Identity()
        self.head = head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (non-reentrant), trading compute for memory."""
        self.grad_checkpointing = enable

    def run_checkpointed(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)`, under activation checkpointing when it is on and gradients are being recorded."""
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
        take = take_indices(n, indices)
        last = take[-1] if (stop_early or intermediates_only) else n - 1
        outs = []
        for i in range(last + 1):
            x = self.forward_unit(i, x)
            if i in take:
                outs.append(x)
        return outs if intermediates_only else (x, outs)


def take_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """`indices`: None = all n, an int k = the last k, a sequence = those (negative counts from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} must be between 1 and {n}")
        return list(range(n - indices, n))
    return sorted(i % n if -n <= i < n else _bad_index(i, n) for i in indices)


def _bad_index(i: int, n: int) -> int:
    raise ValueError(f"index {i} is out of range for {n} outputs")
