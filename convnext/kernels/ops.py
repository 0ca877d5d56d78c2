"""The fused kernels as PyTorch custom ops (`torch.ops.convnext.*`), with fake (meta) implementations and
autograd, so that `torch.compile(fullgraph=True)` traces a model through them without a graph break.

    dwconv_ln(x, w, b, ln_w, ln_b, eps) -> y                    NHWC; dw 7x7 conv + LayerNorm over C
    dwconv_ln_backward(dy, x, w, b, ln_w, ln_b, eps) -> (dx, dw, db, d ln_w, d ln_b)
    mlp(y, w1, b1, w2, b2, gamma?, residual, scale?, out_dtype, save_o, save_h) -> (out, o, h)
    gelu_grad(h, da) -> (GELU(h), da * GELU'(h))                the elementwise pass of the MLP's backward

Each op has one implementation for every device and picks its path when it runs: the Triton kernels for CUDA
tensors when Triton imports, else the reference PyTorch math below, which computes the same function (so a
CPU, or a machine without Triton, sees no change). CONVNEXT_FORCE_TRITON=1 sends CPU tensors through Triton
as well; it exists for the tests, which set it together with TRITON_INTERPRET=1 (Triton's CPU interpreter).

Dtypes follow autocast's rules for the layers they replace: the conv and the linears compute in the dtype of
their (already cast) weights, the LayerNorm in fp32; `mlp` writes its output in `out_dtype`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

FORCE_ENV = "CONVNEXT_FORCE_TRITON"


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(t: Tensor) -> bool:
    """Whether an op on `t` runs the Triton kernels (CUDA tensors; CPU tensors only when forced, for tests)."""
    return triton_available() and (t.is_cuda or os.environ.get(FORCE_ENV) == "1")


def _fp32_or_wider(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _empty(t: Tensor) -> Tensor:
    return t.new_empty((0,))


# ---------------------------------------------------------------------------------------------------------
# dwconv 7x7 + LayerNorm
# ---------------------------------------------------------------------------------------------------------


def dwconv_ln_reference(x: Tensor, weight: Tensor, bias: Tensor, ln_weight: Tensor, ln_bias: Tensor,
                        eps: float) -> Tensor:
    """The math of Block's first half on NHWC x: conv in the weight's dtype, LayerNorm in fp32 (as autocast)."""
    c = x.shape[-1]
    z = F.conv2d(x.permute(0, 3, 1, 2).to(weight.dtype), weight, bias, padding=3, groups=c)  # NHWC -> NCHW view
    z = z.permute(0, 2, 3, 1)  # back to (N, H, W, C)
    y = F.layer_norm(_fp32_or_wider(z), (c,), _fp32_or_wider(ln_weight), _fp32_or_wider(ln_bias), eps)
    return y.to(weight.dtype).contiguous()


def dwconv_ln_backward_reference(dy, x, weight, bias, ln_weight, ln_bias, eps):
    """The same gradients by hand (autograd is unavailable inside a custom op): LN backward, then aten's conv
    backward. Recomputes z, as the Triton kernel does."""
    c = x.shape[-1]
    xc = x.permute(0, 3, 1, 2).to(weight.dtype)  # (N, C, H, W) view of the NHWC input
    z = _fp32_or_wider(F.conv2d(xc, weight, bias, padding=3, groups=c).permute(0, 2, 3, 1))
    mean = z.mean(-1, keepdim=True)
    rstd = torch.rsqrt(z.var(-1, unbiased=False, keepdim=True) + eps)
    xhat = (z - mean) * rstd
    dy32 = _fp32_or_wider(dy)
    g = dy32 * _fp32_or_wider(ln_weight)
    dz = (g - xhat * (g * xhat).mean(-1, keepdim=True) - g.mean(-1, keepdim=True)) * rstd
    d_lnw = (dy32 * xhat).sum((0, 1, 2)).to(ln_weight.dtype)
    d_lnb = dy32.sum((0, 1, 2)).to(ln_bias.dtype)
    dx, d_w, d_b = torch.ops.aten.convolution_backward(
        dz.to(weight.dtype).permute(0, 3, 1, 2), xc, weight, [c], [1, 1], [3, 3], [1, 1], False, [0, 0], c,
        [True, True, True])
    return (dx.permute(0, 2, 3, 1).to(x.dtype).contiguous(), d_w.contiguous(), d_b.contiguous(),
            d_lnw.contiguous(), d_lnb.contiguous())


@torch.library.custom_op("convnext::dwconv_ln", mutates_args=())
def dwconv_ln(x: Tensor, weight: Tensor, bias: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float) -> Tensor:
    if use_triton(x):
        from convnext.kernels import dwconv_ln_triton as kernels

        return kernels.forward(x.contiguous(), weight, bias.contiguous(), ln_weight.contiguous(),
                               ln_bias.contiguous(), eps)
    return dwconv_ln_reference(x, weight, bias, ln_weight, ln_bias, eps)


@dwconv_ln.register_fake
def _(x, weight, bias, ln_weight, ln_bias, eps):
    return x.new_empty(x.shape, dtype=weight.dtype)


@torch.library.custom_op("convnext::dwconv_ln_backward", mutates_args=())
def dwconv_ln_backward(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, ln_weight: Tensor, ln_bias: Tensor,
                       eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if use_triton(x):
        from convnext.kernels import dwconv_ln_triton as kernels

        return kernels.backward(dy.contiguous(), x.contiguous(), weight, bias.contiguous(),
                                ln_weight.contiguous(), ln_bias.contiguous(), eps)
    return dwconv_ln_backward_reference(dy, x, weight, bias, ln_weight, ln_bias, eps)


@dwconv_ln_backward.register_fake
def _(dy, x, weight, bias, ln_weight, ln_bias, eps):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (x, weight, bias, ln_weight, ln_bias))


def _dwconv_ln_setup(ctx, inputs, output):
    x, weight, bias, ln_weight, ln_bias, eps = inputs
    ctx.save_for_backward(x, weight, bias, ln_weight, ln_bias)  # z is recomputed, not saved
    ctx.eps = eps


def _dwconv_ln_grad(ctx, dy):
    return (*dwconv_ln_backward(dy, *ctx.saved_tensors, ctx.eps), None)


dwconv_ln.register_autograd(_dwconv_ln_grad, setup_context=_dwconv_ln_setup)


# ---------------------------------------------------------------------------------------------------------
# MLP: linear d->4d, GELU, linear 4d->d, x gamma, x drop-path scale, + residual
# ---------------------------------------------------------------------------------------------------------


def mlp_reference(y, w1, b1, w2, b2, gamma, residual, scale, out_dtype, save_o, save_h):
    h = F.linear(y, w1, b1)
    o = F.linear(F.gelu(h), w2, b2)
    branch = o if gamma is None else o * gamma
    if scale is not None:
        branch = branch * scale.view(-1, 1, 1, 1)
    out = (residual + branch).to(out_dtype).contiguous()
    return out, (o.contiguous() if save_o else _empty(y)), (h.contiguous() if save_h else _empty(y))


@torch.library.custom_op("convnext::mlp", mutates_args=())
def mlp(y: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, gamma: Optional[Tensor], residual: Tensor,
        scale: Optional[Tensor], out_dtype: torch.dtype, save_o: bool, save_h: bool
        ) -> tuple[Tensor, Tensor, Tensor]:
    """out = residual + scale * gamma * (W2 GELU(W1 y + b1) + b2), over the last dim of NHWC y.

    `scale` (N,) is the per-sample drop-path factor (0 or 1/keep) or None. Also returns o = W2 GELU(..) + b2
    when `save_o` (the backward needs it for d gamma) and the pre-activation h when `save_h` (else empties).
    """
    if use_triton(y):
        from convnext.kernels import mlp_triton as kernels

        c = [t.contiguous() if t is not None else None for t in (y, w1, b1, w2, b2, gamma, residual, scale)]
        return kernels.forward(*c, out_dtype, save_o, save_h)
    return mlp_reference(y, w1, b1, w2, b2, gamma, residual, scale, out_dtype, save_o, save_h)


@mlp.register_fake
def _(y, w1, b1, w2, b2, gamma, residual, scale, out_dtype, save_o, save_h):
    out = residual.new_empty(residual.shape, dtype=out_dtype)
    o = y.new_empty(y.shape) if save_o else _empty(y)
    h = y.new_empty((*y.shape[:-1], w1.shape[0])) if save_h else _empty(y)
    return out, o, h


@torch.library.custom_op("convnext::gelu_grad", mutates_args=())
def gelu_grad(h: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    if use_triton(h):
        from convnext.kernels import mlp_triton as kernels

        return kernels.gelu_grad(h, da)
    return F.gelu(h).contiguous(), torch.ops.aten.gelu_backward(da, h).contiguous()


@gelu_grad.register_fake
def _(h, da):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(da, memory_format=torch.contiguous_format))


def _mlp_setup(ctx, inputs, output):
    y, w1, b1, w2, b2, gamma, residual, scale, out_dtype, save_o, save_h = inputs
    _, o, h = output
    ctx.save_for_backward(y, w1, b1, w2, gamma, scale, o, h)
    ctx.residual_dtype = residual.dtype
    ctx.mark_non_differentiable(o, h)


def _mlp_grad(ctx, dout, _do, _dh):
    """The backward's GEMMs are cuBLAS through torch; only the GELU pass is ours (`gelu_grad`).

    h comes from the forward ("save" policy) or is recomputed here with one more GEMM ("recompute").
    """
    y, w1, b1, w2, gamma, scale, o, h = ctx.saved_tensors
    need = ctx.needs_input_grad
    d, hid = y.shape[-1], w1.shape[0]
    g = dout if scale is None else dout * scale.view(-1, 1, 1, 1)
    d_gamma = None
    if gamma is not None:
        if need[5]:
            if o.numel() == 0:
                raise RuntimeError("convnext::mlp was called with save_o=False, but gamma needs a gradient; "
                                   "call it with save_o=True when training")
            d_gamma = (_fp32_or_wider(g) * _fp32_or_wider(o)).sum((0, 1, 2)).to(gamma.dtype)
        g = g * gamma
    do = g.to(y.dtype).reshape(-1, d)
    y2 = y.reshape(-1, d)
    h2 = h.reshape(-1, hid) if h.numel() else torch.addmm(b1, y2, w1.t())
    a, dh = gelu_grad(h2, do @ w2)
    dy = (dh @ w1).view(y.shape) if need[0] else None
    d_w1 = dh.t() @ y2 if need[1] else None
    d_b1 = dh.sum(0) if need[2] else None
    d_w2 = do.t() @ a if need[3] else None
    d_b2 = do.sum(0) if need[4] else None
    d_res = dout.to(ctx.residual_dtype) if need[6] else None
    return dy, d_w1, d_b1, d_w2, d_b2, d_gamma, d_res, None, None, None, None


mlp.register_autograd(_mlp_grad, setup_context=_mlp_setup)
