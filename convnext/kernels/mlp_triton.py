"""Triton: the block's MLP, fused end to end, and the elementwise GELU pass of its backward.

Forward (`_mlp_fwd_kernel`), rows m = the N*H*W pixels, d = C channels, 4d hidden:

    out[m] = res[m] + scale[n(m)] * gamma * (b2 + sum_j gelu(b1[j] + y[m] . W1[j]) W2[:, j])

One program owns BLOCK_M rows and a block of output columns. It walks the 4d hidden units BLOCK_H at a time:
h = y_tile @ W1_chunk^T (+ b1, in fp32), a = GELU(h) (exact, erf), acc += a @ W2_chunk^T. The 4x-wide
hidden activation lives only in registers; the epilogue adds b2, multiplies by gamma (and the per-sample
drop-path factor), adds the residual and writes once.

ConvNeXt's widths are 3 * 2^k (96, 192, 384, 768), and Triton's tiles are powers of two, so a column block is
two accumulators, BLOCK_N + BLOCK_N2 (96 = 64 + 32, 384 = 256 + 128): no padded GEMM work. Past
`max_cols` accumulator columns the registers run out (checked by compiling for sm_90: see KERNELS.md), so
wider layers split their columns over programs, each recomputing its rows' h.

For training the same kernel can also write o = acc + b2 (d wide, needed for d gamma) and h (4d wide, the
"save" policy); the backward then runs its four GEMMs on cuBLAS through torch, and `_gelu_grad_kernel` turns
(h, da) into (a = GELU(h), dh = da * GELU'(h)) in one pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from convnext.kernels.outputs import new_output


@triton.jit
def _mlp_epilogue(acc, rm64, m_ok, cols, D, HW, b2_ptr, g_ptr, res_ptr, s_ptr, out_ptr, o_ptr,
                  HAS_GAMMA: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_O: tl.constexpr):
    """o = acc + b2; out = res + o * gamma * scale, for the columns `cols` of the rows `rm64`."""
    n_ok = cols < D
    ok = m_ok[:, None] & n_ok[None, :]
    at = rm64[:, None] * D + cols[None, :]
    o = acc + tl.load(b2_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if STORE_O:
        tl.store(o_ptr + at, o.to(o_ptr.dtype.element_ty), mask=ok)
    if HAS_GAMMA:  # layer scale (Touvron et al. 2021)
        o = o * tl.load(g_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:  # drop path: 0 or 1/keep per sample; row m belongs to sample m // (H*W)
        o = o * tl.load(s_ptr + rm64 // HW, mask=m_ok, other=0.0).to(tl.float32)[:, None]
    res = tl.load(res_ptr + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, (res + o).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _mlp_fwd_kernel(y_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, g_ptr, res_ptr, s_ptr, out_ptr, o_ptr, h_ptr,
                    M, D, HID, HW,
                    HAS_GAMMA: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_O: tl.constexpr, STORE_H: tl.constexpr,
                    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_N2: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    rm64 = rm.to(tl.int64)
    n0 = pid_n * (BLOCK_N + BLOCK_N2 if HAS_N2 else BLOCK_N)
    rn = n0 + tl.arange(0, BLOCK_N)  # this program's first column tile ...
    rn2 = n0 + BLOCK_N + tl.arange(0, BLOCK_N2)  # ... and its second (when HAS_N2)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N2], dtype=tl.float32)
    for j0 in range(0, HID, BLOCK_H):
        rh = j0 + tl.arange(0, BLOCK_H)
        h_ok = rh < HID
        h = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < D
            a = tl.load(y_ptr + rm64[:, None] * D + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            # W1 is (4d, d) row-major (nn.Linear): the (BLOCK_K, BLOCK_H) tile of W1^T
            b = tl.load(w1_ptr + rh[None, :] * D + rk[:, None], mask=k_ok[:, None] & h_ok[None, :], other=0.0)
            if UPCAST:  # the CPU interpreter cannot multiply bf16 matrices; never set on a GPU
                a, b = a.to(tl.float32), b.to(tl.float32)
            h = tl.dot(a, b, h, input_precision=PRECISION)
        h += tl.load(b1_ptr + rh, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        if STORE_H:  # training, "save" policy: the first column block writes h for the backward
            tl.store(h_ptr + rm64[:, None] * HID + rh[None, :], h.to(h_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & h_ok[None, :] & (pid_n == 0))
        act = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))  # exact GELU (§2.6)
        if not UPCAST:
            act = act.to(w2_ptr.dtype.element_ty)
        # W2 is (d, 4d) row-major: (BLOCK_H, BLOCK_N) tiles of W2^T
        w2 = tl.load(w2_ptr + rn[None, :] * HID + rh[:, None], mask=h_ok[:, None] & (rn < D)[None, :], other=0.0)
        if UPCAST:
            w2 = w2.to(tl.float32)
        acc = tl.dot(act, w2, acc, input_precision=PRECISION)
        if HAS_N2:
            w2 = tl.load(w2_ptr + rn2[None, :] * HID + rh[:, None], mask=h_ok[:, None] & (rn2 < D)[None, :],
                         other=0.0)
            if UPCAST:
                w2 = w2.to(tl.float32)
            acc2 = tl.dot(act, w2, acc2, input_precision=PRECISION)
    _mlp_epilogue(acc, rm64, m_ok, rn, D, HW, b2_ptr, g_ptr, res_ptr, s_ptr, out_ptr, o_ptr,
                  HAS_GAMMA, HAS_SCALE, STORE_O)
    if HAS_N2:
        _mlp_epilogue(acc2, rm64, m_ok, rn2, D, HW, b2_ptr, g_ptr, res_ptr, s_ptr, out_ptr, o_ptr,
                      HAS_GAMMA, HAS_SCALE, STORE_O)


@triton.jit
def _gelu_grad_kernel(h_ptr, da_ptr, a_ptr, dh_ptr, numel, BLOCK: tl.constexpr):
    """a = GELU(h), dh = da * GELU'(h), GELU'(h) = Phi(h) + h * phi(h); one read of h and da, one write each."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    h = tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    da = tl.load(da_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = 0.3989422804014327 * tl.exp(-0.5 * h * h)
    tl.store(a_ptr + offs, (h * cdf).to(a_ptr.dtype.element_ty), mask=ok)
    tl.store(dh_ptr + offs, (da * (cdf + h * pdf)).to(dh_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------------
# Tile configurations (KERNELS.md has the register and shared-memory figures from compiling them for sm_90)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPConfig:
    block_m: int
    max_cols: int  # accumulator columns a program may hold; wider layers split their columns over programs
    block_h: int
    block_k: int  # at most; smaller when d is not a multiple of it
    num_warps: int
    num_stages: int


def columns(d: int, max_cols: int, min_tile: int = 16) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_N2 or 0, column blocks): the fewest blocks of at most max_cols columns, each covered
    by a power-of-two tile and, for the rest, a second power-of-two tile (96 -> 64 + 32)."""
    blocks = triton.cdiv(d, max_cols)
    width = triton.cdiv(triton.cdiv(d, blocks), min_tile) * min_tile
    bn = max(min_tile, 1 << (width.bit_length() - 1))
    rest = width - bn
    bn2 = max(min_tile, triton.next_power_of_2(rest)) if rest > 0 else 0
    return bn, bn2, blocks


# Candidates per width, preferred first, keyed by the largest d they serve; the first that compiles is used
# and remembered. All of these compile for sm_90 without spilling (KERNELS.md); none is timed yet:
# `benchmarks/gpu_kernels.py --sweep` times them.
CANDIDATES: dict[int, list[MLPConfig]] = {
    128: [MLPConfig(128, 128, 64, 32, 8, 3), MLPConfig(64, 128, 64, 32, 8, 2)],  # d = 96: 64 + 32
    256: [MLPConfig(128, 192, 64, 64, 8, 2), MLPConfig(64, 256, 64, 64, 8, 2)],  # d = 192: 128 + 64
    1 << 30: [MLPConfig(64, 384, 64, 64, 8, 2), MLPConfig(128, 192, 64, 64, 8, 2)],  # d = 384: 256 + 128
}
FP32_CANDIDATES = [MLPConfig(64, 64, 32, 32, 4, 1)]  # fp32 operands (no autocast): for correctness, not speed
_chosen: dict[tuple[int, torch.dtype], MLPConfig] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def candidates_for(d: int, dtype: torch.dtype) -> list[MLPConfig]:
    if _interpreting():  # tl.dot wants dims >= 16; 48 columns a block: the tests reach both tiles and the split
        return [MLPConfig(64, 48, 64, 64, 4, 1)]
    if dtype == torch.float32:
        return FP32_CANDIDATES
    return next(c for limit, c in sorted(CANDIDATES.items()) if d <= limit)


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's matmul setting (TF32 only if allowed), so the two paths round alike."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _block_k(d: int, most: int) -> int:
    k = most
    while k > 16 and d % k:
        k //= 2
    return k


def forward(y, w1, b1, w2, b2, gamma, residual, scale, out_dtype: torch.dtype, save_o: bool, save_h: bool,
            config: MLPConfig | None = None):
    """(out, o, h) for NHWC y and residual; o and h are empty unless asked for (training).

    `config` forces a tile configuration (the sweep); otherwise the first candidate that compiles is used.
    """
    n, hh, ww, d = y.shape
    hid = w1.shape[0]
    m = n * hh * ww
    out = new_output(residual.shape, out_dtype, y.device)
    o = new_output(y.shape if save_o else (0,), y.dtype, y.device)
    h = new_output((n, hh, ww, hid) if save_h else (0,), y.dtype, y.device)
    key = (d, y.dtype)
    tries = [config] if config else ([_chosen[key]] if key in _chosen else candidates_for(d, y.dtype))
    for i, cfg in enumerate(tries):
        bn, bn2, blocks = columns(d, cfg.max_cols)
        try:
            _mlp_fwd_kernel[(triton.cdiv(m, cfg.block_m), blocks)](
                y, w1, b1, w2, b2, gamma if gamma is not None else b2, residual, scale if scale is not None else b2,
                out, o, h, m, d, hid, hh * ww,
                HAS_GAMMA=gamma is not None, HAS_SCALE=scale is not None, STORE_O=save_o, STORE_H=save_h,
                UPCAST=_interpreting() and y.dtype != torch.float32, PRECISION=_precision(y.dtype),
                BLOCK_M=cfg.block_m, BLOCK_N=bn, HAS_N2=bn2 > 0, BLOCK_N2=max(bn2, 16), BLOCK_H=cfg.block_h,
                BLOCK_K=_block_k(d, cfg.block_k), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
        except OutOfResources:  # too much shared memory for this card: the next candidate
            if i == len(tries) - 1:
                raise
            continue
        if config is None:
            _chosen[key] = cfg
        return out, o, h
    raise AssertionError("unreachable")


def gelu_grad(h: torch.Tensor, da: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, da = h.contiguous(), da.contiguous()
    a = new_output(h.shape, h.dtype, h.device)
    dh = new_output(da.shape, da.dtype, da.device)
    block = 1024
    _gelu_grad_kernel[(triton.cdiv(h.numel(), block),)](h, da, a, dh, h.numel(), BLOCK=block, num_warps=4)
    return a, dh
