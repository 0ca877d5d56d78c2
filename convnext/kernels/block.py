"""The fused Block forward and the switch that puts it on a model.

`use_kernels(model)` changes the class of every `Block` in the model to `FusedBlock`, whose forward is two
custom ops instead of eight PyTorch layers:

    x (N, C, H, W) -> NHWC view -> dwconv_ln -> y (N, H, W, C) -> mlp (+ x) -> (N, H, W, C) -> NCHW view

Nothing else changes: the same parameters (read from the same submodules), no new parameters or buffers,
the same state dict keys, and `isinstance(block, Block)` still holds. On channels_last input both views are
free; contiguous (NCHW) input costs one copy, and the output is channels_last either way.

Dtypes: without autocast the output dtype is the reference's. Under autocast the block computes in the
autocast dtype (conv and linears in it, LayerNorm statistics and GEMM accumulation in fp32) and also *writes
its output* in it: the reference block returns fp32 there only because x * gamma promotes to the fp32
parameter, which doubles the bytes of every block's input and output (benchmarks/KERNELS.md).

Drop path (training, p > 0) is fused as a per-sample factor on the branch. The block's own `DropPath`
draws the mask exactly as the reference does (same shape, dtype and device, so the same random numbers).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from convnext.kernels import ops
from convnext.model import Block, DropPath


def _dtypes(block: Block, x: Tensor) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(compute dtype, output dtype, the reference's branch dtype, i.e. that of (W2 a + b2) * gamma)."""
    dev = x.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    branch = dt if block.gamma is None else torch.promote_types(dt, block.gamma.dtype)
    out = dt if torch.is_autocast_enabled(dev) else torch.promote_types(x.dtype, branch)
    return dt, out, branch


def _drop_path_scale(block: Block, n: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """(N,) factors 0 or 1/keep, drawn by the block's DropPath as the reference draws them; None when off."""
    dp = block.drop_path
    if not (isinstance(dp, DropPath) and dp.training and dp.p > 0):
        return None
    return dp(torch.ones((n, 1, 1, 1), dtype=dtype, device=device)).reshape(n)


def fused_block_forward(block: Block, x: Tensor) -> Tensor:
    """The Block's forward through the fused ops; x is (N, C, H, W), best channels_last."""
    dt, out_dtype, branch_dtype = _dtypes(block, x)
    conv, norm, fc1, fc2, gamma = block.dwconv, block.norm, block.pwconv1, block.pwconv2, block.gamma
    xh = x.permute(0, 2, 3, 1).contiguous()  # (N, C, H, W) -> (N, H, W, C); no copy when channels_last
    y = ops.dwconv_ln(xh, conv.weight.to(dt), conv.bias.to(dt), norm.weight, norm.bias, norm.eps)
    # what the backward will need: o for d gamma, and h under the "save" policy
    grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))
    scale = _drop_path_scale(block, x.shape[0], branch_dtype, x.device)
    out, _, _ = ops.mlp(
        y, fc1.weight.to(dt), fc1.bias.to(dt), fc2.weight.to(dt), fc2.bias.to(dt), gamma, xh, scale, out_dtype,
        grad and gamma is not None, grad and getattr(block, "save_hidden", True),
    )
    return out.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


class FusedBlock(Block):
    """A Block that runs `fused_block_forward`. Made only by `use_kernels`, which swaps the class in place."""

    save_hidden: bool = True  # training: keep the MLP's 4d-wide pre-activation for the backward (see KERNELS.md)

    def forward(self, x: Tensor) -> Tensor:
        return fused_block_forward(self, x)


def use_kernels(model: nn.Module, enabled: bool = True, *, save_hidden: bool = True) -> nn.Module:
    """Run every Block of `model` through the fused kernels (or back through PyTorch with enabled=False).

    In place; returns the model. `save_hidden`: in training, save the MLP's hidden pre-activation (4d wide)
    for the backward instead of recomputing it there with one more GEMM.
    """
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"use_kernels found no convnext Block in {type(model).__name__}; nothing to fuse")
    for b in blocks:
        b.__class__ = FusedBlock if enabled else Block
        if enabled:
            b.save_hidden = save_hidden
    return model
