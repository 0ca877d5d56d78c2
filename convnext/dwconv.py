"""The block's depthwise 7x7 conv, fast on maps smaller than its kernel (ConvNeXt's last stages at 32 px).

An nn.Conv2d (same parameters, same state-dict keys) whose forward crops the kernel to the taps that can reach
the map, and whose CPU backward, where the kernel covers the whole map, is two forward convs. Same function as
the padded 7x7 conv (tested in float64); at 224 px every map is >= 7x7 and nothing changes. Under tracers with
symbolic sizes (torch.fx, torch.export with a dynamic H/W) it is the plain padded conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DepthwiseConv2d(nn.Conv2d):
    """The block's depthwise k x k conv ("same" padding, stride 1): an nn.Conv2d (same parameters, same keys)
    that crops its kernel to the taps that can reach the input when the map is smaller than the kernel.

    On an H x W map only the central (2H-1) x (2W-1) taps of a 7x7 kernel ever touch a non-padding pixel, so
    the cropped conv is the same function. It matters on small inputs: ConvNeXt's last stages at 32 px are
    2x2 and 1x1 maps, where a padded 7x7 conv on the CPU costs 10-30x the cropped one (its backward even more),
    and the 1x1 case is a per-channel scale and shift. At 224 px (maps >= 7x7) nothing changes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        h, w = x.shape[-2:]
        if not (isinstance(h, int) and isinstance(w, int)) or torch.jit.is_tracing():
            # Traced with symbolic sizes (torch.fx proxies; torch.export / ONNX with a dynamic H, W) or by
            # torch.jit.trace (which would freeze the branch taken): the crop is only a speed-up of the same
            # function, so the padded conv keeps the graph valid at every size.
            return super().forward(x)
        ch, cw = min(kh, 2 * h - 1), min(kw, 2 * w - 1)
        covers = (ch, cw) == (2 * h - 1, 2 * w - 1)  # every output sees the whole map
        if (ch, cw) == (kh, kw) and not (covers and _use_small_map_backward(x)):
            return super().forward(x)
        oh, ow = (kh - ch) // 2, (kw - cw) // 2
        weight = self.weight[:, :, oh: oh + ch, ow: ow + cw]
        if ch == cw == 1:
            y = x * weight.reshape(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        padding = (ch // 2, cw // 2)
        if covers and _use_small_map_backward(x):
            return _SmallMapDepthwiseConv.apply(x, weight, self.bias, padding)
        return F.conv2d(x, weight, self.bias, padding=padding, groups=self.groups)


def _use_small_map_backward(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


class _SmallMapDepthwiseConv(torch.autograd.Function):
    """A depthwise "same" conv whose kernel covers the whole map (the case DepthwiseConv2d crops to), with a
    faster backward on the CPU than PyTorch's (measured 2-5x for the 4x4 and 2x2 maps of a 32 px input):

        dx = the same conv of dy with the kernel flipped (a forward depthwise conv),
        dw[c] = sum over n of correlate(pad(x[n, c]), dy[n, c]): one grouped conv with the batch as channels.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        (ph, pw), (n, c, h, w) = ctx.padding, x.shape
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv2d(gy, weight.flip(-2, -1), padding=ctx.padding, groups=c)
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1).reshape(1, c * n, h + 2 * ph, w + 2 * pw)
            gw = F.conv2d(xp, gy.transpose(0, 1).reshape(c, n, h, w), groups=c).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None
