"""Fold a trained ConvNeXt's per-block affine maps into its linear layers, for inference.

In eval mode, each block (paper Fig. 4; official code §4.3) computes

    y = x + gamma * (W2 act(W1 (w_ln * n(dwconv(x)) + b_ln) + b1) + b2)

where n() is the LayerNorm's normalisation without its affine. Two of its element-wise products are
linear maps next to a Linear layer, so they can be merged into it once, ahead of time:

    layer scale into pwconv2:      W2' = diag(gamma) W2,     b2' = gamma * b2
    LN affine into pwconv1:        W1' = W1 diag(w_ln),      b1' = W1 b_ln + b1

The block LayerNorm then keeps only its normalisation (`elementwise_affine=False`), the `x * gamma`
multiply disappears, and the drop-path modules that are identities anyway are removed. What is left
is the same function with two fewer element-wise passes over the largest tensors in the network.

ConvNeXt V2's block (model_v2.py) has no layer scale but a GRN between the GELU and pwconv2,
gamma * (h * Nx) + beta + h, with Nx computed from h itself. Its LN affine folds into pwconv1 as above, and
GRN's beta, a constant added right before pwconv2, folds into that layer's bias:

    GRN beta into pwconv2:         b2' = W2 beta + b2

GRN's gamma multiplies the data-dependent Nx and stays; the GRN left is h * (1 + gamma * Nx), one multiply
over the 4d-wide tensor where the original makes four passes (x Nx, gamma, beta, + h).

The stem/downsampling LayerNorms sit before a strided conv and could be folded the same way; they run
once per stage, not once per block, so they are left alone to keep the module names of the official
model (`downsample_layers.i.j`). The folded model is for inference: it is returned in eval mode, and
training it would train a differently parametrised network (no layer scale, no LN affine).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from convnext.layers import DropPath
from convnext.model import Block
from convnext.model_v2 import GRN, BlockV2, grn_response


class FoldedBlock(nn.Module):
    """A Block whose layer scale and LN affine live in its Linear layers (see the module docstring).

    Keeps the Block's module names (`dwconv`, `norm`, `pwconv1`, `act`, `pwconv2`), so a folded
    model's state_dict still reads like the official one, minus `gamma` and the block `norm.*`.
    """

    def __init__(self, block: Block):
        """Takes over `block`'s modules and overwrites its Linear weights in place: pass a copy."""
        super().__init__()
        dim = block.dwconv.in_channels
        self.dwconv = block.dwconv
        # normalisation only: the affine is now inside pwconv1
        self.norm = nn.LayerNorm(dim, eps=block.norm.eps, elementwise_affine=False)
        self.pwconv1 = block.pwconv1
        self.act = block.act
        self.pwconv2 = block.pwconv2
        # A DropPath with p > 0 is an identity in eval mode but not in train mode; keep it so that
        # the module says what it does. The common case (p = 0: nn.Identity) is removed.
        self.drop_path = block.drop_path if isinstance(block.drop_path, DropPath) else None

        _fold_ln_affine(block.norm, self.pwconv1)
        if block.gamma is not None:
            with torch.no_grad():  # fold in float64, then store in the block's own dtype
                gamma = block.gamma.double()
                self.pwconv2.weight.copy_(gamma[:, None] * self.pwconv2.weight.double())  # diag(gamma) W2: row i
                self.pwconv2.bias.copy_(gamma * self.pwconv2.bias.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)  # no affine
        x = self.pwconv1(x)  # carries the LN affine
        x = self.act(x)
        x = self.pwconv2(x)  # carries gamma
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return shortcut + x


class FoldedGRN(nn.Module):
    """GRN with its beta moved into the next Linear's bias: h * (1 + gamma * Nx), Nx as in model_v2.GRN."""

    def __init__(self, grn: GRN):
        super().__init__()
        self.gamma = grn.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = gamma * (x * Nx) + x: the (N, 1, 1, C) factor first, one big multiply
        return x * (1 + self.gamma * grn_response(x))


class FoldedBlockV2(nn.Module):
    """A BlockV2 whose LN affine lives in pwconv1 and whose GRN beta lives in pwconv2's bias (module docstring).

    Keeps BlockV2's module names; the folded state_dict has no block `norm.*` and no `grn.beta`.
    """

    def __init__(self, block: BlockV2):
        """Takes over `block`'s modules and overwrites its Linear weights in place: pass a copy."""
        super().__init__()
        self.dwconv = block.dwconv
        self.norm = nn.LayerNorm(block.dwconv.in_channels, eps=block.norm.eps, elementwise_affine=False)
        self.pwconv1 = block.pwconv1
        self.act = block.act
        self.grn = FoldedGRN(block.grn)
        self.pwconv2 = block.pwconv2
        self.drop_path = block.drop_path if isinstance(block.drop_path, DropPath) else None  # as FoldedBlock
        _fold_ln_affine(block.norm, self.pwconv1)
        with torch.no_grad():
            beta = block.grn.beta.double().reshape(-1)  # (1, 1, 1, 4d) -> (4d,)
            self.pwconv2.bias.copy_(self.pwconv2.weight.double() @ beta + self.pwconv2.bias.double())  # W2 beta + b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)  # no affine
        x = self.pwconv1(x)  # carries the LN affine
        x = self.act(x)
        x = self.grn(x)  # no beta
        x = self.pwconv2(x)  # carries GRN's beta
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return shortcut + x


def _fold_ln_affine(norm: nn.LayerNorm, linear: nn.Linear) -> None:
    """W1' = W1 diag(w_ln), b1' = W1 b_ln + b1, in float64, stored in the layer's own dtype (in place)."""
    if norm.weight is None:  # elementwise_affine=False: nothing to fold (never the case for our blocks)
        return
    with torch.no_grad():
        w1, b1 = linear.weight.double(), linear.bias.double()  # .double() copies: safe to overwrite the originals
        w_ln = norm.weight.double()
        b_ln = norm.bias.double() if norm.bias is not None else torch.zeros_like(w_ln)
        linear.bias.copy_(w1 @ b_ln + b1)  # W1 b_ln + b1 (uses the un-scaled W1)
        linear.weight.copy_(w1 * w_ln)  # W1 diag(w_ln): scales column j (input channel j) by w_ln[j]


def fold_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, in eval mode, with every Block replaced by its FoldedBlock and every BlockV2 by
    its FoldedBlockV2.

    Works for ConvNeXt and ConvNeXtIsotropic, with or without layer scale, and for ConvNeXtV2; outputs equal
    the original's in eval mode up to float rounding (the tests hold it to 1e-5 in fp32). The input model is
    not changed.
    """
    folded = copy.deepcopy(model).eval()
    # collect first, then replace: no mutation while iterating named_modules()
    targets = [(name, m) for name, m in folded.named_modules() if isinstance(m, (Block, BlockV2))]
    for name, block in targets:
        parent_name, _, child = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        new = FoldedBlock(block) if isinstance(block, Block) else FoldedBlockV2(block)
        setattr(parent, child, new.eval())  # Sequential children are named "0", "1", ...
    return folded
