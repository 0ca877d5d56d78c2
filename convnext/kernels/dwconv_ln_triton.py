"""Triton: the block's depthwise 7x7 convolution fused with its LayerNorm, on channels_last (NHWC) tensors.

Forward, one program per (image, tile of BLOCK_P consecutive pixels of that image), holding *all* channels of
its pixels (BLOCK_C = next power of two of C, masked) so that the LayerNorm over C happens in registers:

    z[p, c] = b[c] + sum_{kh, kw} w[c, kh, kw] * x[p + (kh - 3, kw - 3), c]     (zero padding 3)
    y[p, c] = (z[p, c] - mean_c z[p]) * rstd[p] * ln_w[c] + ln_b[c]

The conv output z never reaches memory. Each of the 49 taps is one coalesced load of a shifted
(BLOCK_P, BLOCK_C) tile (16-byte vector loads along C); neighbouring taps overlap, so all but the first touch
of a pixel are cache hits. The 7 rows of taps are a run-time loop, the 7 taps of a row unrolled: unrolling all
49 made the LayerNorm backward spill registers.

Backward, three launches (no atomics, so the gradients are deterministic):
  1. `_ln_bwd_kernel` recomputes z (the forward saved nothing but its inputs), forms dz with the LayerNorm
     backward, writes dz, and sums ln_w/ln_b/conv-bias gradients over a run of tiles into per-program partials.
  2. `_dwconv_kernel` gives dx: the transposed depthwise conv is a depthwise conv of dz with the flipped kernel.
  3. `_dw_grad_kernel` gives the conv-weight gradient dw[c, k] = sum_p dz[p, c] * x[p + off_k, c] as one
     partial per run of ~512 pixels, taps outer and tiles inner so that the run stays in L1 across the 49 taps.
The fp32 partials are summed with torch (for dw about a fifth of the bytes of a bf16 activation).
Design and predicted costs: benchmarks/KERNELS.md.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from convnext.kernels.outputs import new_output

TAPS = 49  # the 7x7 kernel (§2.5), padding 3; the kernels spell out 7 and 3 as literals


@triton.jit
def _dwconv_tile(x_ptr, w_ptr, b_ptr, n, offs_p, p_ok, offs_c, H, W, C,
                 HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """z for the pixels `offs_p` (flattened h * W + w) of image n and the channels `offs_c`, in fp32.

    `w_ptr` is the weight as (49, C): tap-major, so each tap's weights are one contiguous vector. Only pixels
    with `p_ok` are read (the caller's mask: in the image, and in a tile that exists); the others, and
    channels past C, come out as 0 (or the bias).
    """
    hh = offs_p // W
    ww = offs_p % W
    c_ok = offs_c < C
    # a tap is a fixed offset ((kh - 3) * W + (kw - 3)) * C from the centre pixel: one scalar add per load
    centre = x_ptr + n.to(tl.int64) * H * W * C + offs_p[:, None] * C + offs_c[None, :]
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for kh in range(7):  # a run-time loop: unrolling all 49 taps would keep too many loads in flight (spills)
        ih = hh + (kh - 3)
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(7):
            iw = ww + (kw - 3)
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(centre + ((kh - 3) * W + (kw - 3)) * C, mask=ok[:, None] & c_ok[None, :], other=0.0)
            wk = tl.load(w_ptr + (kh * 7 + kw) * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
            acc += v.to(tl.float32) * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _dwconv_ln_fwd_kernel(x_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, y_ptr, H, W, C, tiles_per_img, eps,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // tiles_per_img
    offs_p = (pid % tiles_per_img) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    p_ok = offs_p < H * W
    z = _dwconv_tile(x_ptr, w_ptr, b_ptr, n, offs_p, p_ok, offs_c, H, W, C, True, BLOCK_P, BLOCK_C)
    mean = tl.sum(z, axis=1) / C  # masked channels hold 0 (weights and bias loaded as 0)
    zc = tl.where(c_ok[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / C + eps)
    lnw = tl.load(lnw_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    lnb = tl.load(lnb_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    y = zc * rstd[:, None] * lnw[None, :] + lnb[None, :]
    dst = y_ptr + n.to(tl.int64) * H * W * C + offs_p[:, None] * C + offs_c[None, :]
    tl.store(dst, y.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, y_ptr, H, W, C, tiles_per_img,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Plain depthwise 7x7 conv, no bias (the backward's dx, run with the flipped kernel); grid (tiles, C blocks)."""
    pid = tl.program_id(0)
    n = pid // tiles_per_img
    offs_p = (pid % tiles_per_img) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = offs_p < H * W
    z = _dwconv_tile(x_ptr, w_ptr, w_ptr, n, offs_p, p_ok, offs_c, H, W, C, False, BLOCK_P, BLOCK_C)
    dst = y_ptr + n.to(tl.int64) * H * W * C + offs_p[:, None] * C + offs_c[None, :]
    tl.store(dst, z.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & (offs_c < C)[None, :])


@triton.jit
def _ln_bwd_kernel(x_ptr, w_ptr, b_ptr, lnw_ptr, dy_ptr, dz_ptr, part_ptr, H, W, C, tiles_per_img, num_tiles,
                   tiles_per_prog, eps, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dz = LayerNorm backward at the recomputed z; partials of d ln_w, d ln_b and d conv bias per program."""
    pid = tl.program_id(0)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    lnw = tl.load(lnw_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    d_lnw = tl.zeros([BLOCK_C], dtype=tl.float32)
    d_lnb = tl.zeros([BLOCK_C], dtype=tl.float32)
    d_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(tiles_per_prog):
        tile = pid * tiles_per_prog + i
        n = tile // tiles_per_img
        offs_p = (tile % tiles_per_img) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = (offs_p < H * W) & (tile < num_tiles)  # the last program's run may pass the last tile
        ok = p_ok[:, None] & c_ok[None, :]
        z = _dwconv_tile(x_ptr, w_ptr, b_ptr, n, offs_p, p_ok, offs_c, H, W, C, True, BLOCK_P, BLOCK_C)
        mean = tl.sum(z, axis=1) / C
        zc = tl.where(c_ok[None, :], z - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / C + eps)
        xhat = zc * rstd[:, None]
        at = n.to(tl.int64) * H * W * C + offs_p[:, None] * C + offs_c[None, :]
        dy = tl.load(dy_ptr + at, mask=ok, other=0.0).to(tl.float32)
        g = dy * lnw[None, :]
        # d/dz of (z - mean) * rstd: project out the mean and the xhat direction (standard LN backward)
        c1 = tl.sum(g * xhat, axis=1) / C
        c2 = tl.sum(g, axis=1) / C
        dz = tl.where(ok, (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
        tl.store(dz_ptr + at, dz.to(dz_ptr.dtype.element_ty), mask=ok)
        d_lnw += tl.sum(dy * xhat, axis=0)
        d_lnb += tl.sum(dy, axis=0)
        d_b += tl.sum(dz, axis=0)
    row = part_ptr + pid * 3 * C
    tl.store(row + offs_c, d_lnw, mask=c_ok)
    tl.store(row + C + offs_c, d_lnb, mask=c_ok)
    tl.store(row + 2 * C + offs_c, d_b, mask=c_ok)


@triton.jit
def _dw_grad_kernel(x_ptr, dz_ptr, part_ptr, H, W, C, tiles_per_img, num_tiles, tiles_per_prog,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[prog, k, c] = sum over the program's run of tiles of dz[p, c] * x[p + off_k, c]; grid (runs, C blocks)."""
    pid = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    for k in tl.static_range(49):
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for i in range(tiles_per_prog):
            tile = pid * tiles_per_prog + i
            offs_p = (tile % tiles_per_img) * BLOCK_P + tl.arange(0, BLOCK_P)
            p_ok = (offs_p < H * W) & (tile < num_tiles)
            ih = offs_p // W + (k // 7 - 3)
            iw = offs_p % W + (k % 7 - 3)
            ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            at = (tile // tiles_per_img).to(tl.int64) * H * W * C + offs_p[:, None] * C + offs_c[None, :]
            d = tl.load(dz_ptr + at, mask=ok[:, None] & c_ok[None, :], other=0.0)  # dz where x[p + off] exists
            v = tl.load(x_ptr + at + ((k // 7 - 3) * W + (k % 7 - 3)) * C, mask=ok[:, None] & c_ok[None, :],
                        other=0.0)
            acc += tl.sum(d.to(tl.float32) * v.to(tl.float32), axis=0)
        tl.store(part_ptr + (pid * 49 + k) * C + offs_c, acc, mask=c_ok)


# ---------------------------------------------------------------------------------------------------------
# Launch wrappers. x is (N, H, W, C) contiguous; weight (C, 1, 7, 7) as nn.Conv2d holds it.
# ---------------------------------------------------------------------------------------------------------


def _pixel_block(hw: int, block_c: int, budget: int) -> int:
    """Pixels per tile: about `budget` elements per tile, at most one image.

    The CPU interpreter pays per operation, not per element: there a tile is a whole image.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        budget = 1 << 20
    return max(1, min(budget // block_c, triton.next_power_of_2(hw)))


# Tile sizes (elements) and warps. Compiled for sm_90 (KERNELS.md): the forward takes 72 registers a thread
# at C = 96 (three 8-warp programs an SM), the LN backward ~100 at half the tile, dx 112, dw 114; no spills.
FWD_TILE, BWD_TILE, WARPS = 4096, 2048, 8


def _taps_major(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, 7, 7) -> (49, C) contiguous, so a tap's weights for all channels are one coalesced load."""
    return weight.reshape(weight.shape[0], TAPS).t().contiguous()


def forward(x, weight, bias, ln_weight, ln_bias, eps: float) -> torch.Tensor:
    """y = LayerNorm_C(dwconv7x7(x)) for NHWC x; y has the conv weight's dtype (autocast's compute dtype)."""
    n, h, w, c = x.shape
    y = new_output((n, h, w, c), weight.dtype, x.device)
    block_c = triton.next_power_of_2(c)
    block_p = _pixel_block(h * w, block_c, FWD_TILE)
    tiles = triton.cdiv(h * w, block_p)
    _dwconv_ln_fwd_kernel[(n * tiles,)](
        x, _taps_major(weight), bias, ln_weight, ln_bias, y, h, w, c, tiles, eps,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=WARPS,
    )
    return y


def _programs_for(num_tiles: int, device: torch.device, per_sm: int = 4) -> tuple[int, int]:
    """(programs, tiles per program) for the reductions: a few programs per SM, so partials stay small."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    progs = max(1, min(num_tiles, per_sm * sms))
    per = triton.cdiv(num_tiles, progs)
    return triton.cdiv(num_tiles, per), per


def backward(dy, x, weight, bias, ln_weight, ln_bias, eps: float):
    """Gradients (dx, d weight, d bias, d ln_weight, d ln_bias), each in its input's dtype."""
    n, h, w, c = x.shape
    dy = dy.contiguous()
    w_t = _taps_major(weight)
    block_c = triton.next_power_of_2(c)
    block_p = _pixel_block(h * w, block_c, BWD_TILE)
    tiles_per_img = triton.cdiv(h * w, block_p)
    num_tiles = n * tiles_per_img
    progs, per = _programs_for(num_tiles, x.device)
    dz = new_output((n, h, w, c), weight.dtype, x.device)  # in the conv's compute dtype
    part = new_output((progs, 3, c), torch.float32, x.device)
    _ln_bwd_kernel[(progs,)](
        x, w_t, bias, ln_weight, dy, dz, part, h, w, c, tiles_per_img, num_tiles, per, eps,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=WARPS,
    )
    d_lnw, d_lnb, d_b = part.sum(0).unbind(0)  # views of one tensor: copied apart below (custom ops may not alias)

    # dx: the transposed conv is the conv with the kernel flipped in both spatial axes (tap k -> 48 - k).
    # Channels are independent here, so C is tiled too (64 channels = 128 contiguous bytes in bf16).
    bc = min(block_c, 64)
    bp = _pixel_block(h * w, bc, FWD_TILE)
    tiles = triton.cdiv(h * w, bp)
    dx = new_output((n, h, w, c), x.dtype, x.device)
    _dwconv_kernel[(n * tiles, triton.cdiv(c, bc))](
        dz, w_t.flip(0).contiguous(), dx, h, w, c, tiles, BLOCK_P=bp, BLOCK_C=bc, num_warps=WARPS,
    )

    # dw: taps outer, a run of tiles inner; one partial per run, summed here. A run is ~512 pixels, so its
    # dz and x (~100 KB at 32 channels) stay in L1 while the 49 taps re-read them.
    bc = min(block_c, 32)
    bp = _pixel_block(h * w, bc, BWD_TILE)
    tiles_per_img = triton.cdiv(h * w, bp)
    num_tiles = n * tiles_per_img
    per = max(1, min(512 // bp, num_tiles))
    progs = triton.cdiv(num_tiles, per)
    wpart = new_output((progs, TAPS, c), torch.float32, x.device)
    _dw_grad_kernel[(progs, triton.cdiv(c, bc))](
        x, dz, wpart, h, w, c, tiles_per_img, num_tiles, per, BLOCK_P=bp, BLOCK_C=bc, num_warps=4,
    )
    d_w = wpart.sum(0).t().contiguous().view(weight.shape)  # (49, C) -> (C, 1, 7, 7)
    return (dx, d_w.to(weight.dtype), d_b.to(bias.dtype, copy=True), d_lnw.to(ln_weight.dtype, copy=True),
            d_lnb.to(ln_bias.dtype, copy=True))
