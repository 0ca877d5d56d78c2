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

The stem/downsampling LayerNorms sit before a strided conv and could be folded the same way; they run
once per stage, not once per block, so they are left alone to keep the module names of the official
model (`downsample_layers.i.j`). The folded model is for inference: it is returned in eval mode, and
training it would train a differently parametrised network (no layer scale, no LN affine).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from convnext.model import Block, DropPath


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

        with torch.no_grad():  # fold in float64, then store in the block's own dtype
            w1, b1 = self.pwconv1.weight.double(), self.pwconv1.bias.double()  # .double() copies: safe to
            w2, b2 = self.pwconv2.weight.double(), self.pwconv2.bias.double()  # overwrite the originals below
            if block.norm.weight is not None:  # elementwise_affine=True (always, for our Block)
                w_ln = block.norm.weight.double()
                b_ln = block.norm.bias.double() if block.norm.bias is not None else torch.zeros_like(w_ln)
                b1 = w1 @ b_ln + b1  # W1 b_ln + b1 (uses the un-scaled W1)
                w1 = w1 * w_ln  # W1 diag(w_ln): scales column j (input channel j) by w_ln[j]
            if block.gamma is not None:
                gamma = block.gamma.double()
                w2 = gamma[:, None] * w2  # diag(gamma) W2: scales row i (output channel i)
                b2 = gamma * b2
            self.pwconv1.weight.copy_(w1)
            self.pwconv1.bias.copy_(b1)
            self.pwconv2.weight.copy_(w2)
            self.pwconv2.bias.copy_(b2)

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


def fold_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, in eval mode, with every Block replaced by its FoldedBlock.

    Works for ConvNeXt and ConvNeXtIsotropic, with or without layer scale; outputs equal the
    original's in eval mode up to float rounding (the tests hold it to 1e-5 in fp32). The input
    model is not changed.
    """
    folded = copy.deepcopy(model).eval()
    # collect first, then replace: no mutation while iterating named_modules()
    targets = [(name, m) for name, m in folded.named_modules() if isinstance(m, Block)]
    for name, block in targets:
        parent_name, _, child = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        setattr(parent, child, FoldedBlock(block).eval())  # Sequential children are named "0", "1", ...
    return folded
