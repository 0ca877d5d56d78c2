"""convnext/kernels: the fused Triton block against the PyTorch Block, the switch, and torch.compile.

The Triton kernels are checked on the CPU through Triton's interpreter (TRITON_INTERPRET=1), which must be
set before triton is first imported, so those checks run in a subprocess: this file, run as a script, with
TRITON_INTERPRET=1 and CONVNEXT_FORCE_TRITON=1 (the ops' test-only switch that sends CPU tensors through
Triton). It runs every case once and prints JSON; the tests read their case from it. Interpreter time is
paid per operation, so the shapes are tiny: odd sizes (5x7), batches 1 to 5, channel counts that are not
powers of two. The rest (state dict, the fallback path, compile, fake shapes) runs in this process on the
PyTorch path. Tolerance: relative L2 error <= 1e-4 in fp32 (seen: 8e-8 to 7e-7).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnext.errors import UserError
from convnext import create_model
from convnext.model import Block, ConvNeXt

FP32_TOL = 1e-4
BF16_TOL = 1e-2
ROOT = Path(__file__).resolve().parents[1]

# name: (batch, channels, height, width, layer scale (0: no gamma), drop path, save_hidden, input format)
BLOCK_CASES = {
    "b1_c5_5x7": (1, 5, 5, 7, 0.5, 0.0, True, "channels_last"),
    "b3_c40_6x6": (3, 40, 6, 6, 0.5, 0.0, True, "channels_last"),  # the MLP's two column tiles, 32 + 16
    "no_gamma_nchw": (2, 6, 5, 7, 0.0, 0.0, True, "contiguous"),
    "recompute_hidden": (2, 12, 4, 5, 1.0, 0.0, False, "channels_last"),
    # 5 images = 5 tiles in the interpreter over 3 programs of 2: the last program's second tile does not exist
    "drop_path_b5": (5, 8, 3, 5, 0.5, 0.5, True, "channels_last"),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b (in float64; NaN anywhere makes it NaN)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def worst(values) -> float:
    """The largest error, or NaN if any is NaN (the builtin max can skip a NaN, which never compares larger)."""
    values = list(values)
    return float("nan") if any(v != v for v in values) else max(values)


def make_block(c: int, layer_scale: float, drop_path: float = 0.0, seed: int = 0) -> Block:
    """A Block with every parameter random and O(1), so that each path (and each gradient) is visible."""
    torch.manual_seed(seed)
    block = Block(c, drop_path=drop_path, layer_scale_init_value=layer_scale)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.5)
    return block


def run_block(m: torch.nn.Module, x: torch.Tensor, seed: int = 0, autocast: bool = False) -> tuple:
    """(output, d input, {parameter name: grad}) of one forward and backward; the output gradient is seeded."""
    xi = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)  # the same drop-path draw for every module
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = m(xi)
    g = torch.Generator().manual_seed(seed + 1)
    out.backward(torch.randn(out.shape, generator=g).to(out.dtype))
    grads = {k.removeprefix("_orig_mod."): p.grad for k, p in m.named_parameters()}
    return out, xi.grad, grads


def errors(run: tuple, ref: tuple) -> dict:
    """Relative errors of one run's output and gradients against another's."""
    (o, dx, g), (o_ref, dx_ref, g_ref) = run, ref
    return {"out": rel(o, o_ref), "dtype": str(o.dtype),
            "grads": {"x": rel(dx, dx_ref), **{k: rel(g[k], g_ref[k]) for k in g_ref}}}


def compare_block(ref: Block, fused: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> dict:
    """fp32: `fused` against the PyTorch Block on the same input, output gradient and drop-path draw."""
    ref_run = run_block(ref, x, seed)
    res = errors(run_block(fused, x, seed), ref_run)
    # samples whose branch was dropped come out exactly equal to the input
    res["dropped"] = int((ref_run[0] == x).flatten(1).all(1).sum())
    return res


def compare_bf16(ref: Block, fused: torch.nn.Module, x: torch.Tensor) -> dict:
    """bf16 autocast: both the fused block and the PyTorch block against the block in float64.

    Two bf16 computations of the same function differ by about their own rounding error (~1e-2 for the
    LayerNorm's parameter gradients at these tiny sizes), so the fused one is held to 1e-2 or to 1.5x the
    PyTorch block's own error, whichever is larger.
    """
    truth = run_block(copy.deepcopy(ref).double(), x.double())
    return {"fused": errors(run_block(fused, x, autocast=True), truth),
            "torch": errors(run_block(ref, x, autocast=True), truth)}


def assert_bf16_ok(r: dict, tol: float = BF16_TOL) -> None:
    fused, torch_ = r["fused"], r["torch"]
    assert fused["dtype"] == "torch.bfloat16"  # under autocast the fused block writes the autocast dtype
    assert fused["out"] <= max(tol, 1.5 * torch_["out"]), r
    for k, e in fused["grads"].items():
        assert e <= max(tol, 1.5 * torch_["grads"][k]), (k, r)


# ---------------------------------------------------------------------------------------------------------
# The interpreter run (this file as a script)
# ---------------------------------------------------------------------------------------------------------


def _interpreter_cases() -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from convnext.kernels import ops, outputs, use_kernels

    assert ops.use_triton(torch.zeros(1)), "the subprocess must take the Triton path"
    outputs.POISON = True  # every kernel output starts as NaN: an unwritten element fails the comparison
    out = {}
    for name, (n, c, h, w, ls, dp, save_hidden, fmt) in BLOCK_CASES.items():
        ref = make_block(c, ls, dp)
        ref.train(dp > 0)
        fused = use_kernels(copy.deepcopy(ref), save_hidden=save_hidden)
        x = torch.randn(n, c, h, w)
        if fmt == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        out[name] = compare_block(ref, fused, x)

    # inference (no grad: nothing saved), bf16 autocast, and a whole model
    ref = make_block(88, 0.5).eval()  # the MLP's columns over two programs, each with two tiles
    fused = use_kernels(copy.deepcopy(ref))
    x = torch.randn(2, 88, 7, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out["inference"] = {"out": rel(fused(x), ref(x))}
    out["bf16_autocast"] = compare_bf16(ref, fused, x)

    # a whole (tiny) network: stem, downsampling layers and a block per stage, forward and backward
    torch.manual_seed(0)
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 40), num_classes=10, layer_scale_init_value=0.5)
    fast = use_kernels(copy.deepcopy(model))
    img = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)  # stage 4 is 1x1: all padding
    out["tiny_model"] = errors(run_block(fast, img), run_block(model, img))

    # out-of-bounds reads: inputs that sit at the start, then at the end, of a NaN-filled buffer twice their
    # size, so that reading past either end brings NaN into the result (5 tiles over 3 programs of 2)
    def guarded(t: torch.Tensor, at_end: bool) -> torch.Tensor:
        buf = torch.full((2 * t.numel(),), float("nan"), dtype=t.dtype)
        view = (buf[t.numel():] if at_end else buf[: t.numel()]).view(t.shape)
        return view.copy_(t)

    n, c, hw = 5, 8, (3, 5)
    x, dy, w1 = torch.randn(n, *hw, c), torch.randn(n, *hw, c), torch.randn(4 * c, c)
    conv = (torch.randn(c, 1, 7, 7), torch.randn(c), torch.randn(c), torch.randn(c))
    mlp_rest = (torch.randn(4 * c), torch.randn(c, 4 * c), torch.randn(c), torch.randn(c))
    scale = torch.rand(n)
    want_fwd = ops.dwconv_ln_reference(x, *conv, 1e-6)
    want_bwd = ops.dwconv_ln_backward_reference(dy, x, *conv, 1e-6)
    want_mlp = ops.mlp_reference(x, w1, *mlp_rest, dy, scale, torch.float32, True, True)
    errs = []
    for at_end in (False, True):
        g = lambda t: guarded(t, at_end)  # noqa: E731
        errs.append(rel(ops.dwconv_ln(g(x), *conv, 1e-6), want_fwd))
        errs += [rel(a, b) for a, b in zip(ops.dwconv_ln_backward(g(dy), g(x), *conv, 1e-6), want_bwd)]
        got = ops.mlp(g(x), g(w1), *mlp_rest, g(dy), g(scale), torch.float32, True, True)
        errs += [rel(a, b) for a, b in zip(got, want_mlp)]
    out["guarded"] = worst(errs)

    # the fakes against what the Triton path really returns (shape, dtype, strides)
    y = torch.randn(2, 5, 7, 6)
    args = {
        "dwconv_ln": (y, torch.randn(6, 1, 7, 7), torch.randn(6), torch.randn(6), torch.randn(6), 1e-6),
        "mlp": (y, torch.randn(24, 6), torch.randn(24), torch.randn(6, 24), torch.randn(6), torch.randn(6),
                torch.randn(2, 5, 7, 6), torch.rand(2), torch.float32, True, True),
        "gelu_grad": (torch.randn(70, 24), torch.randn(70, 24)),
    }
    args["dwconv_ln_backward"] = (torch.randn(2, 5, 7, 6), *args["dwconv_ln"])
    meta = {}
    for op_name, a in args.items():
        op = getattr(ops, op_name)
        real = op(*a)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*[mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in a])
        as_tuple = lambda t: (t,) if isinstance(t, torch.Tensor) else t  # noqa: E731
        meta[op_name] = all((r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
                            for r, f in zip(as_tuple(real), as_tuple(fake)))
    out["fake_matches_triton"] = meta
    return out


@pytest.fixture(scope="module")
def interp() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CONVNEXT_FORCE_TRITON": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_triton_block_matches_reference_fp32(interp, case):
    r = interp[case]
    assert r["out"] <= FP32_TOL, r
    # every parameter of the block (dwconv w/b, norm w/b, both linears' w/b, gamma) and the input
    n_params = 9 if BLOCK_CASES[case][4] > 0 else 8
    assert len(r["grads"]) == n_params + 1
    assert worst(r["grads"].values()) <= FP32_TOL, r["grads"]


def test_triton_drop_path_draws_like_the_reference(interp):
    r = interp["drop_path_b5"]
    assert 0 < r["dropped"] < BLOCK_CASES["drop_path_b5"][0], "the seed must drop some samples and keep others"
    assert r["out"] <= FP32_TOL


def test_triton_inference(interp):
    assert interp["inference"]["out"] <= FP32_TOL


def test_triton_tiny_model(interp):
    r = interp["tiny_model"]
    assert len(r["grads"]) == 1 + 4 * 9 + 4 * 4 + 2 + 2  # x; 4 blocks; stem + 3 downsamplings (LN, conv); norm; head
    assert r["out"] <= FP32_TOL and worst(r["grads"].values()) <= FP32_TOL, r


def test_triton_bf16_autocast(interp):
    # Looser than on the GPU: the interpreter converts fp32 to bf16 by truncation (toward zero), not by
    # rounding to nearest as the GPU does, so every bf16 store is biased; sums of them (dW2) drift to ~1e-2.
    assert_bf16_ok(interp["bf16_autocast"], tol=3 * BF16_TOL)


def test_triton_reads_nothing_out_of_bounds(interp):
    assert interp["guarded"] <= FP32_TOL


def test_fakes_match_triton_outputs(interp):
    assert interp["fake_matches_triton"] == {k: True for k in ("dwconv_ln", "mlp", "gelu_grad", "dwconv_ln_backward")}


# ---------------------------------------------------------------------------------------------------------
# In this process: the PyTorch path (what a CPU runs), the switch, compile, the fakes
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_force(monkeypatch):
    monkeypatch.delenv("CONVNEXT_FORCE_TRITON", raising=False)


def test_use_kernels_keeps_state_dict_and_parameters():
    from convnext.kernels import FusedBlock, use_kernels

    model = create_model("convnext_atto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    use_kernels(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()] == names
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == 12 and all(type(b) is FusedBlock for b in blocks)
    use_kernels(model, enabled=False)
    assert all(type(b) is Block for b in blocks)
    fast = create_model("convnext_atto", kernels="triton")
    assert list(fast.state_dict()) == list(before)
    fast.load_state_dict(before)  # strict: same keys, same shapes


def test_create_model_rejects_unknown_kernels():
    with pytest.raises(UserError, match="kernels"):
        create_model("convnext_atto", kernels="cuda")
    with pytest.raises(ValueError, match="no convnext Block"):
        from convnext.kernels import use_kernels

        use_kernels(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("layer_scale,fmt", [(0.5, "channels_last"), (0.0, "contiguous")])
def test_fallback_path_equals_reference(layer_scale, fmt):
    from convnext.kernels import ops, outputs, use_kernels

    ref = make_block(12, layer_scale, drop_path=0.3).train()
    fused = use_kernels(copy.deepcopy(ref))
    x = torch.randn(4, 12, 5, 7)
    x = x.to(memory_format=torch.channels_last) if fmt == "channels_last" else x
    assert not ops.use_triton(x)
    r = compare_block(ref, fused, x, seed=3)
    assert r["out"] <= 1e-6 and worst(r["grads"].values()) <= 1e-5, r
    assert 0 < r["dropped"] < 4


def test_fallback_path_under_autocast():
    from convnext.kernels import use_kernels

    ref = make_block(16, 0.5).eval()
    fused = use_kernels(copy.deepcopy(ref))
    assert_bf16_ok(compare_bf16(ref, fused, torch.randn(2, 16, 6, 6)))


def _graph_recorder(graphs: list):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def test_compile_fullgraph_over_custom_ops():
    from convnext.kernels import use_kernels

    ref = make_block(8, 0.5, drop_path=0.2).train()
    fused = use_kernels(copy.deepcopy(ref))
    x = torch.randn(2, 8, 5, 7).to(memory_format=torch.channels_last)

    graphs: list = []
    torch._dynamo.reset()
    torch.compile(fused, fullgraph=True, backend=_graph_recorder(graphs))(x)
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert {"convnext.dwconv_ln.default", "convnext.mlp.default"} <= targets, targets

    # aot_eager traces the backward through the registered autograd (and its custom op) as well
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    r = compare_block(ref, compiled, x, seed=5)
    assert r["out"] <= 1e-6 and worst(r["grads"].values()) <= 1e-5, r
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x).dtype == torch.bfloat16
    torch._dynamo.reset()


def test_opcheck_custom_ops():
    from convnext.kernels import ops

    c, hid = 6, 24
    w, b, lw, lb = torch.randn(c, 1, 7, 7), torch.randn(c), torch.randn(c), torch.randn(c)
    y = torch.randn(2, 5, 7, c)
    samples = [
        (ops.dwconv_ln, (y.clone().requires_grad_(), w.clone().requires_grad_(), b, lw, lb.clone().requires_grad_(),
                         1e-6)),
        (ops.dwconv_ln_backward, (torch.randn_like(y), y, w, b, lw, lb, 1e-6)),
        (ops.mlp, (y.clone().requires_grad_(), torch.randn(hid, c, requires_grad=True), torch.randn(hid),
                   torch.randn(c, hid), torch.randn(c), torch.randn(c, requires_grad=True), torch.randn_like(y),
                   torch.rand(2), torch.float32, True, True)),
        (ops.mlp, (y.clone().requires_grad_(), torch.randn(hid, c), torch.randn(hid), torch.randn(c, hid),
                   torch.randn(c), None, torch.randn_like(y), None, torch.float32, False, False)),
        (ops.gelu_grad, (torch.randn(70, hid), torch.randn(70, hid))),
    ]
    for op, args in samples:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


if __name__ == "__main__":  # the interpreter run, spawned by the `interp` fixture
    torch.set_num_threads(1)
    print(json.dumps(_interpreter_cases()))
