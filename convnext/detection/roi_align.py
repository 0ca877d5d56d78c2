"""RoIAlign whose CPU backward is matrix products: torchvision.ops.roi_align's numbers, in parallel.

torchvision's CPU RoIAlign backward goes through the RoIs one after another on one thread and scatters every
bilinear sample on its own: in the offline detection demo (configs/scenes.py) it was the largest single op of a
training step on a 2-core CPU (RESULTS.md). RoIAlign is separable, though. Every sample's bilinear weight is a
row weight times a column weight, the validity test (a sample more than one pixel outside the map contributes
nothing) is a row test and a column test, and the average over a bin's sampling grid is an average over its rows
times one over its columns. So for one RoI and one channel,

    out[p, q] = sum_{h, w} Ay[p, h] * F[h, w] * Ax[q, w]

with Ay (pooled height x H) holding, for output row p, the averaged bilinear row weights of that bin's samples,
and Ax likewise for columns, and the gradient is dF = Ay^T dout Ax. Only the window of rows and columns a RoI's
samples touch is non-zero, so Ay and Ax are kept over windows: RoIs sorted by size, in groups that each share
the window size the largest of them needs; the backward is two batched products per group (or chunk of one) and
one scatter-add of the windows into the map. Sample positions,
grid sizes (`sampling_ratio <= 0`: ceil(roi size / output size) per RoI), the `aligned` half-pixel shift and the
border rules are torchvision's (`roi_align_kernel.cpp`); tests compare both directions with it. The forward is
torchvision's own (quick enough: it does no scattering).

On other devices (CUDA's kernel is parallel), and for other dtypes, this is torchvision's roi_align.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

WINDOW_ELEMENTS = 1 << 23  # the backward takes RoIs in chunks whose windows hold at most this many values (32 MiB)
GROUP = 32  # RoIs sorted by size share a window size in groups of this many


def roi_align(input: Tensor, boxes: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align with `boxes` as a (K, 5) tensor of (batch index, x1, y1, x2, y2)."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64) or not torch.is_tensor(boxes):
        return tv_roi_align(input, boxes, (ph, pw), spatial_scale, sampling_ratio, aligned)
    return _SeparableRoIAlign.apply(input, boxes, ph, pw, float(spatial_scale), int(sampling_ratio), bool(aligned))


def _axis_weights(start: Tensor, end: Tensor, size: int, pooled: int, sampling_ratio: int, aligned: bool,
                  scale: float) -> tuple[Tensor, Tensor]:
    """One axis: (weights (R, pooled, K), first (R,)) where row p of weights, over positions first..first+K-1,
    holds the bilinear weights of output p's samples divided by their number along this axis."""
    offset = 0.5 if aligned else 0.0
    lo = start * scale - offset
    length = end * scale - offset - lo
    if not aligned:
        length = length.clamp(min=1.0)
    bin_size = length / pooled
    grid = (torch.full_like(length, float(sampling_ratio)) if sampling_ratio > 0 else torch.ceil(length / pooled))
    grid = grid.clamp(min=0).to(torch.int64)
    g_max = max(int(grid.max()), 1) if grid.numel() else 1
    p = torch.arange(pooled, dtype=lo.dtype, device=lo.device)
    i = torch.arange(g_max, dtype=lo.dtype, device=lo.device)
    gridf = grid.clamp(min=1).to(lo.dtype)[:, None, None]
    # the kernel's own order of operations: start + p * bin + (i + 0.5) * bin / grid
    pos = lo[:, None, None] + p[None, :, None] * bin_size[:, None, None] \
        + (i[None, None, :] + 0.5) * bin_size[:, None, None] / gridf
    valid = (i[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    keep = valid.to(pos.dtype) / gridf
    big = torch.iinfo(torch.int64).max
    first = torch.where(valid, low, torch.full_like(low, big)).amin(dim=(1, 2))
    last = torch.where(valid, high, torch.full_like(high, -1)).amax(dim=(1, 2))
    first = torch.where(last >= 0, first, torch.zeros_like(first))
    k = max(int((last - first).max()) + 1, 1) if len(first) else 1
    k = min(k, size)
    first = first.clamp(max=size - k)
    weights = pos.new_zeros(len(pos), pooled, k)
    rel_low = (low - first[:, None, None]).clamp(0, k - 1)
    rel_high = (high - first[:, None, None]).clamp(0, k - 1)
    weights.scatter_add_(2, rel_low, (1.0 - frac) * keep)
    weights.scatter_add_(2, rel_high, frac * keep)
    return weights, first


class _SeparableRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, boxes: Tensor, ph: int, pw: int, scale: float, sampling_ratio: int,
                aligned: bool) -> Tensor:
        _, c, h, w = input.shape
        out = tv_roi_align(input, boxes, (ph, pw), scale, sampling_ratio, aligned)  # its forward is quick enough
        ctx.shape = input.shape
        if not ctx.needs_input_grad[0]:
            return out
        boxes = boxes.detach().to(input.dtype)
        # RoIs in groups of similar size, each with its own window: one window for all would be the largest RoI's
        size = torch.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2])
        saved = []
        for idx in torch.argsort(size).split(GROUP):
            b = boxes[idx]
            ay, y0 = _axis_weights(b[:, 2], b[:, 4], h, ph, sampling_ratio, aligned, scale)
            ax, x0 = _axis_weights(b[:, 1], b[:, 3], w, pw, sampling_ratio, aligned, scale)
            kh, kw = ay.shape[2], ax.shape[2]
            rows = b[:, 0].to(torch.int64)[:, None] * h + y0[:, None] + torch.arange(kh)[None]
            index = rows[:, :, None] * w + x0[:, None, None] + torch.arange(kw)[None, None]  # (r, kh, kw) in flat
            saved += [idx, ay, ax, index]
        ctx.save_for_backward(*saved)
        ctx.channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        n, c, h, w = ctx.shape
        saved = ctx.saved_tensors
        flat = grad.new_zeros((n * h * w, c))
        for idx, ay, ax, index in zip(saved[0::4], saved[1::4], saved[2::4], saved[3::4]):
            g, kh, kw = grad[idx], ay.shape[2], ax.shape[2]
            chunk = max(1, WINDOW_ELEMENTS // (kh * kw * c))
            for s in range(0, len(idx), chunk):
                r = len(ay[s:s + chunk])
                t = torch.einsum("rcpq,rqw->rpwc", g[s:s + chunk], ax[s:s + chunk]).reshape(r, ay.shape[1], kw * c)
                window = torch.bmm(ay[s:s + chunk].transpose(1, 2), t).view(r * kh * kw, c)
                flat.scatter_add_(0, index[s:s + chunk].reshape(-1, 1).expand(-1, c), window)
        grad_input = flat.view(n, h, w, c).permute(0, 3, 1, 2)
        if not ctx.channels_last:
            grad_input = grad_input.contiguous()
        return grad_input, None, None, None, None, None, None
