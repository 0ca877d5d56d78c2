"""The fused Triton block kernels on one GPU: correctness at ConvNeXt-T's block shapes, the kernels against
the PyTorch ops they replace, and model throughput against timm + torch.compile. One command, about eight
minutes on an H100; a time budget skips what would not fit, and the output says what it skipped.

    python benchmarks/gpu_kernels.py --out gpu_kernels.json                  # everything (a), (b), (c)
    python benchmarks/gpu_kernels.py --only correctness                      # (a) alone, 1-2 min
    python benchmarks/gpu_kernels.py --only throughput --models convnext_small,convnext_base --out sb.json
    python benchmarks/gpu_kernels.py --only kernels --sweep                  # + every MLP tile candidate
    python benchmarks/gpu_kernels.py --smoke                                 # CPU + Triton interpreter, tiny
    python benchmarks/gpu_kernels.py --resources                             # no GPU: ptxas's report for sm_90

(a) correctness. For each ConvNeXt-T block shape (N, H, W, C), fresh random inputs and O(1) random parameters
    (so that every path shows in the output), every kernel output poisoned with NaN before it is written:
    forward and backward of the fused block under bf16 autocast against the PyTorch Block in fp32 (TF32 off),
    relative L2 error <= 1e-2 for the output, the input gradient and every parameter gradient (the PyTorch
    block's own bf16 error is printed beside ours); inference (nothing saved) likewise; fp32 (no autocast)
    <= 1e-4; both training policies for the MLP's hidden activation (save, recompute).
(b) kernels. Each fused op against the PyTorch ops it replaces, bf16, CUDA-event medians, with the achieved
    rate and the floor predicted in benchmarks/KERNELS.md. `--sweep` also times each MLP tile candidate.
(c) throughput. ConvNeXt-T inference (batch 256) and training (batch 128, forward + backward + fused AdamW),
    bf16 autocast, channels_last, 224 px: ours (kernels="triton") eager and torch.compile'd, timm eager and
    compiled, all in this process, alternating run by run, medians; then S and B while the budget lasts
    (convnext.benchmark: Runner, alternate, ratio).
Exit status 1 if any correctness check failed. JSON (everything printed, and more; convnext.benchmark.provenance
as its meta) goes to --out after each part.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace

if "--smoke" in sys.argv:  # the interpreter must be chosen before triton is first imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch
import torch.nn.functional as F

from convnext import create_model, get_variant
from convnext.benchmark import Runner, Setting, alternate, provenance, ratio
from convnext.kernels import dwconv_ln_triton, mlp_triton, ops, outputs, use_kernels
from convnext.model import Block

T_SHAPES = [(256, 56, 56, 96), (256, 28, 28, 192), (256, 14, 14, 384), (256, 7, 7, 768)]  # (N, H, W, C)
SMOKE_SHAPES = [(2, 5, 7, 12), (1, 4, 4, 20)]
BF16_TOL, FP32_TOL = 1e-2, 1e-4
# The floor's inputs: an H100 SXM's dense bf16 matmul rate and memory bandwidth, as measured (not the datasheet's
# peaks) in the project's performance notes
PEAK_FLOPS, PEAK_BYTES = 789e12, 2.984e12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # NaN (an unwritten element) never passes


class Report:
    """Collects every result, prints each line with its context, writes the JSON after each part."""

    def __init__(self, args, device: str):
        self.args, self.device, self.t0 = args, device, time.time()
        meta = provenance(device=device, precision="bf16", seed=args.seed, budget_s=args.budget_s, smoke=args.smoke,
                          models=args.models, infer_batch=args.infer_batch, train_batch=args.train_batch,
                          img_size=args.img_size, warmup=args.warmup, iters=args.iters, runs=args.runs,
                          compile_backend=args.compile_backend)
        self.data = {"meta": meta, "correctness": [], "kernels": [], "sweep": [], "throughput": [], "skipped": [],
                     "passed": True}
        v = meta["versions"]
        print(f"# {meta['device']}; torch {v['torch']}, triton {v['triton']}, timm {v['timm']}; "
              f"git {meta['git_commit']}; seed {args.seed}", flush=True)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        print(f"SKIPPED {what}: {why}", flush=True)

    def save(self) -> None:
        if self.args.out:
            with open(self.args.out, "w") as f:
                json.dump(self.data, f, indent=1)


# ---------------------------------------------------------------------------------------------------------
# (a) correctness
# ---------------------------------------------------------------------------------------------------------


def random_block(c: int, seed: int) -> Block:
    """O(1) random parameters (unit-variance activations, gamma ~ 0.5), not the tiny official init under which
    the branch would vanish in the output (gamma 1e-6)."""
    g = torch.Generator().manual_seed(seed)
    b = Block(c, layer_scale_init_value=0.5)
    with torch.no_grad():
        b.dwconv.weight.normal_(0, 1 / 7, generator=g)
        b.pwconv1.weight.normal_(0, c ** -0.5, generator=g)
        b.pwconv2.weight.normal_(0, (4 * c) ** -0.5, generator=g)
        for p in (b.dwconv.bias, b.norm.bias, b.pwconv1.bias, b.pwconv2.bias):
            p.normal_(0, 0.5, generator=g)
        b.norm.weight.normal_(1, 0.5, generator=g)
        b.gamma.normal_(0.5, 0.25, generator=g)
    return b


def _fwd_bwd(m, x, gy, autocast: bool, device: str):
    xi = x.detach().clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        out = m(xi)
    out.backward(gy.to(out.dtype))
    res = (out.detach().float(), xi.grad.float(), {k: p.grad.float() for k, p in m.named_parameters()})
    m.zero_grad(set_to_none=True)
    return res


def _errs(run, truth) -> dict:
    (o, dx, g), (to, tdx, tg) = run, truth
    return {"out": rel(o, to), "x": rel(dx, tdx), **{k: rel(g[k], tg[k]) for k in tg}}


def correctness(rep: Report, shapes) -> None:
    dev = rep.device
    # the CPU interpreter converts fp32 to bf16 by truncation, not round-to-nearest: looser there (--smoke)
    tol = 3 * BF16_TOL if rep.args.smoke else BF16_TOL
    outputs.POISON = True
    for i, (n, h, w, c) in enumerate(shapes):
        for policy in ("save", "recompute"):
            seed = rep.args.seed + 2 * i + (policy == "recompute")  # fresh inputs and parameters every check
            torch.manual_seed(seed)
            ref = random_block(c, seed).to(dev)
            ours = use_kernels(copy.deepcopy(ref), save_hidden=policy == "save")
            x = torch.randn(n, c, h, w, device=dev).to(memory_format=torch.channels_last)
            gy = torch.randn(n, c, h, w, device=dev).to(memory_format=torch.channels_last)
            tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # the truth: fp32
            truth = _fwd_bwd(ref, x, gy, False, dev)
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
            e_torch = _errs(_fwd_bwd(ref, x, gy, True, dev), truth)
            e_ours = _errs(_fwd_bwd(ours, x, gy, True, dev), truth)
            with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16):
                e_inf = rel(ours(x).float(), truth[0])
            e_fp32 = _errs(_fwd_bwd(ours, x, gy, False, dev), truth) if policy == "save" else None
            # bf16: within 1e-2, or (where bf16 itself cannot get there) within 1.5x the PyTorch block's error
            bad = [k for k, e in e_ours.items() if not (e <= tol or e <= 1.5 * e_torch[k])]
            bad += ["inference"] if not e_inf <= tol else []
            bad += [f"fp32 {k}" for k, e in (e_fp32 or {}).items() if not e <= FP32_TOL]
            worst = max(e_ours, key=lambda k: e_ours[k] if e_ours[k] == e_ours[k] else float("inf"))
            row = {"shape_nhwc": [n, h, w, c], "policy": policy, "seed": seed, "bf16_ours": e_ours,
                   "bf16_torch": e_torch, "inference_bf16": e_inf, "fp32_ours": e_fp32, "failed": bad,
                   "passed": not bad}
            rep.data["correctness"].append(row)
            rep.data["passed"] &= not bad
            fp32_txt = f" fp32 max {max(e_fp32.values()):.1e}" if e_fp32 else ""
            print(f"{'PASS' if not bad else 'FAIL'} block {(n, h, w, c)} NHWC {policy:9s} bf16 out {e_ours['out']:.1e} "
                  f"(torch {e_torch['out']:.1e}) worst {worst} {e_ours[worst]:.1e} (torch {e_torch[worst]:.1e}) "
                  f"inference {e_inf:.1e}{fp32_txt}{' FAILED: ' + ', '.join(bad) if bad else ''} "
                  f"| device={rep.data['meta']['device']} dtype=bf16-autocast memory_format=channels_last "
                  f"compile=none", flush=True)
            del ref, ours, x, gy, truth
            if dev == "cuda":
                torch.cuda.empty_cache()
    outputs.POISON = False
    rep.save()


# ---------------------------------------------------------------------------------------------------------
# (b) kernels, each against the PyTorch ops it replaces
# ---------------------------------------------------------------------------------------------------------


def _bench(fn, device: str, quick: bool) -> float:
    """Median milliseconds of fn (CUDA events through triton.testing.do_bench on a GPU)."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(1 if quick else 3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _block_tensors(n, h, w, c, dev):
    bf = torch.bfloat16
    t = lambda *s, dt=bf: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    p = {"x": t(n, h, w, c), "w": t(c, 1, 7, 7) / 7, "b": t(c), "lnw": t(c, dt=torch.float32),
         "lnb": t(c, dt=torch.float32), "w1": t(4 * c, c) * c ** -0.5, "b1": t(4 * c),
         "w2": t(c, 4 * c) * (4 * c) ** -0.5, "b2": t(c), "gamma": t(c, dt=torch.float32), "y": t(n, h, w, c),
         "dy": t(n, h, w, c)}
    return p


def kernels(rep: Report, shapes, sweep: bool) -> None:
    dev, quick, eps = rep.device, rep.args.smoke, 1e-6
    if rep.args.smoke:
        os.environ[ops.FORCE_ENV] = "1"
    for n, h, w, c in shapes:
        p = _block_tensors(n, h, w, c, dev)
        m, elems = n * h * w, n * h * w * c
        xc = p["x"].permute(0, 3, 1, 2)  # the NCHW (channels_last) view cuDNN takes
        bf = torch.bfloat16

        def torch_dwconv_ln():
            z = F.conv2d(xc, p["w"], p["b"], padding=3, groups=c).permute(0, 2, 3, 1)
            return F.layer_norm(z, (c,), p["lnw"].to(bf), p["lnb"].to(bf), eps)

        def torch_mlp():
            return p["x"] + F.linear(F.gelu(F.linear(p["y"], p["w1"], p["b1"])), p["w2"], p["b2"]) * p["gamma"].to(bf)

        conv = (p["w"], p["b"], p["lnw"], p["lnb"], eps)
        mlp = (p["y"], p["w1"], p["b1"], p["w2"], p["b2"], p["gamma"], p["x"], None, bf, False, False)

        def ours_dw():
            return dwconv_ln_triton.forward(p["x"], *conv)

        def ours_dw_bwd():
            return dwconv_ln_triton.backward(p["dy"], p["x"], *conv)

        def ours_mlp():
            return mlp_triton.forward(*mlp)

        # torch backward of conv + LN, through autograd on a kept graph
        xg = xc.detach().requires_grad_()
        wg = p["w"].detach().requires_grad_()
        zg = F.layer_norm(F.conv2d(xg, wg, p["b"], padding=3, groups=c).permute(0, 2, 3, 1), (c,),
                          p["lnw"].to(bf), p["lnb"].to(bf), eps)
        torch_dw_bwd = lambda: torch.autograd.grad(zg, (xg, wg), p["dy"], retain_graph=True)  # noqa: E731

        flops_mlp = 2 * 2 * m * c * 4 * c
        rows = [
            # name, ours, torch, bytes that must move (bf16: read x, write y), flops
            ("dwconv7x7+LN fwd", ours_dw, torch_dwconv_ln, 2 * 2 * elems, 2 * 49 * elems),
            ("dwconv7x7+LN bwd", ours_dw_bwd, torch_dw_bwd, 3 * 2 * elems, 2 * 2 * 49 * elems),
            ("MLP fwd (inference)", ours_mlp, torch_mlp, 3 * 2 * elems, flops_mlp),
        ]
        for name, ours_fn, torch_fn, nbytes, flops in rows:
            t_ours, t_torch = _bench(ours_fn, dev, quick), _bench(torch_fn, dev, quick)
            floor = max(nbytes / PEAK_BYTES, flops / PEAK_FLOPS) * 1e3
            row = {"kernel": name, "shape_nhwc": [n, h, w, c], "ours_ms": t_ours, "torch_ms": t_torch,
                   "speedup": t_torch / t_ours, "floor_ms": floor, "ours_GBps": nbytes / t_ours / 1e6,
                   "ours_TFLOPs": flops / t_ours / 1e9}
            rep.data["kernels"].append(row)
            print(f"kernel {name:20s} {(n, h, w, c)} ours {t_ours:7.3f} ms  torch {t_torch:7.3f} ms  "
                  f"x{row['speedup']:.2f}  floor {floor:.3f} ms  ({row['ours_GBps']:.0f} GB/s, "
                  f"{row['ours_TFLOPs']:.0f} TFLOP/s) | device={rep.data['meta']['device']} dtype=bf16 "
                  f"memory_format=NHWC compile=none", flush=True)
        if sweep:
            _sweep(rep, p, (n, h, w, c), quick)
        del p, zg, xg, wg
    os.environ.pop(ops.FORCE_ENV, None)
    rep.save()


def _sweep_candidates(c: int) -> list:
    """Tile configurations around the defaults: row tiles, accumulator widths (<= 24K fp32 values, the most
    that compiled without spilling), hidden chunks, pipeline depth; one per distinct column split."""
    out, seen = [], set()
    for bm, cols, bh, stages in itertools.product((64, 128), (128, 192, 256, 384), (64, 128), (2, 3)):
        split = mlp_triton.columns(c, cols)
        if bm * cols <= 24 * 1024 and (bm, split, bh, stages) not in seen:
            seen.add((bm, split, bh, stages))
            out.append(mlp_triton.MLPConfig(bm, cols, bh, 64, 8, stages))
    return out


def _sweep(rep: Report, p, shape, quick: bool) -> None:
    c = shape[-1]
    results = []
    for cfg in _sweep_candidates(c):
        fn = lambda: mlp_triton.forward(p["y"], p["w1"], p["b1"], p["w2"], p["b2"], p["gamma"], p["x"],  # noqa: E731
                                        None, torch.bfloat16, False, False, config=cfg)
        try:
            ms, err = _bench(fn, rep.device, quick), None
        except Exception as e:  # noqa: BLE001 - a config that does not fit or compile is a result, not the end
            ms, err = None, f"{type(e).__name__}: {str(e)[:200]}"
            print(f"  sweep {shape} {cfg}: failed ({err[:100]})")
        results.append({"shape_nhwc": list(shape), "config": asdict(cfg), "ms": ms, "error": err})
        if ms is not None:
            print(f"  sweep {shape} {cfg}: {ms:.3f} ms", flush=True)
    ok = [r for r in results if r["ms"] is not None]
    if ok:
        best = min(ok, key=lambda r: r["ms"])
        print(f"  sweep {shape} best {best['config']} {best['ms']:.3f} ms | device={rep.data['meta']['device']} "
              f"dtype=bf16 memory_format=NHWC compile=none", flush=True)
    rep.data["sweep"] += results


# ---------------------------------------------------------------------------------------------------------
# (c) model throughput: ours against timm, same process, alternating
# ---------------------------------------------------------------------------------------------------------


def _estimate_s(name: str, train: bool) -> float:
    """Rough wall time of one group on an H100, compiles included (timm's compile dominates)."""
    deep = name != "convnext_tiny"
    return (200 if train else 110) * (1.4 if deep else 1.0)


def throughput(rep: Report, models: list[str]) -> None:
    a = rep.args
    try:
        import timm
    except ImportError:
        timm = None
        rep.skip("timm peers", "timm is not installed (pip install timm)")
    for train in (False, True):
        for name in models:
            what = f"{name} {'training' if train else 'inference'}"
            if rep.left() < _estimate_s(name, train) * (0.05 if a.smoke else 1.0):
                rep.skip(what, f"{rep.left():.0f} s of the {a.budget_s} s budget left; rerun with --models {name}"
                               f" --only throughput")
                continue
            _group(rep, name, train, timm)
            rep.save()


def _group(rep: Report, name: str, train: bool, timm) -> None:
    a, dev = rep.args, rep.device
    batch = a.train_batch if train else a.infer_batch
    dp = get_variant(name).drop_path if train else 0.0  # the paper's stochastic depth when training (Table 5)
    base = Setting(device=dev, precision="bf16", batch_size=batch, img_size=a.img_size, channels_last=True,
                   compile="none", train=train)
    comp = replace(base, compile="default")
    entries = [("ours eager", lambda: create_model(name, kernels="triton", drop_path_rate=dp), base),
               ("ours compiled", lambda: create_model(name, kernels="triton", drop_path_rate=dp), comp)]
    if train and name == "convnext_tiny":  # the MLP's training policy, to choose the default by measurement
        entries.append(("ours eager, recompute h", lambda: use_kernels(
            create_model(name, kernels="triton", drop_path_rate=dp), save_hidden=False), base))
    if timm is not None:
        entries += [("timm eager", lambda: timm.create_model(name, drop_path_rate=dp), base),
                    ("timm compiled", lambda: timm.create_model(name, drop_path_rate=dp), comp)]
    runners: dict[str, Runner] = {}
    setup_s: dict[str, float] = {}
    for label, make, s in entries:
        t = time.time()
        r = Runner(make(), s)
        if s.compile != "none" and a.compile_backend != "inductor":  # --smoke: no C++ toolchain needed
            r.fn = torch.compile(r.model, backend=a.compile_backend)
        r.warm_up(a.warmup)
        runners[label], setup_s[label] = r, time.time() - t
        print(f"  ready: {label} ({setup_s[label]:.0f} s compile + warm-up)", flush=True)
    # alternate the order run by run, so a noisy stretch slows every entry alike
    runs = alternate({label: (lambda r=r: r.time(a.iters)) for label, r in runners.items()}, a.runs)
    peer = runs.get("timm compiled")
    for label, r in runners.items():
        med = statistics.median(runs[label])
        vs = ratio(runs[label], peer) if peer else None
        mem = r.peak_memory_mb()
        row = {"model": name, "what": label, "img_s": med, "runs": runs[label], "vs_timm_compiled": vs,
               "setup_s": setup_s[label], "peak_mb": mem, "setting": asdict(r.s)}
        rep.data["throughput"].append(row)
        ratio_txt = f"  x{vs:.2f} vs timm compiled" if vs else ""
        mem_txt = f"  peak {mem:.0f} MB" if mem else ""
        print(f"{name} {label:24s} {med:9.0f} img/s{ratio_txt}{mem_txt} | {r.s.describe()}", flush=True)
    runners.clear()
    del r  # the last Runner too, so that its memory is freed before empty_cache
    if dev == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------------
# --resources: compile every kernel for sm_90 on this machine (no GPU) and read ptxas's resource report
# ---------------------------------------------------------------------------------------------------------

_FP32_ARGS = {"lnw_ptr", "lnb_ptr", "g_ptr", "s_ptr", "part_ptr"}
_DIV16_ARGS = {"C", "D", "M", "HID", "numel"}  # multiples of 16 at ConvNeXt's shapes (Triton specialises on it)


def _compile_sm90(kernel, constexprs: dict, num_warps: int, num_stages: int = 1) -> dict:
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: "constexpr" if n in constexprs else ("fp32" if n == "eps" else "*fp32" if n in _FP32_ARGS
                                                      else "*bf16" if n.endswith("_ptr") else "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in constexprs and (n.endswith("_ptr") or n in _DIV16_ARGS)}
    k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    ptx = k.asm["ptx"]
    return {"registers": int(regs), "spill_stack_bytes": int(stack), "shared_bytes": k.metadata.shared,
            "wgmma": "wgmma" in ptx, "vector_loads": ptx.count("ld.global.v4"), "warps": num_warps}


def resources(rep: Report) -> None:
    """What ptxas makes of each kernel at ConvNeXt-T's shapes, with the wrappers' tile choices."""
    import triton

    rows = []
    for n, h, w, c in T_SHAPES:
        bc = triton.next_power_of_2(c)
        fwd_p = dwconv_ln_triton._pixel_block(h * w, bc, dwconv_ln_triton.FWD_TILE)
        bwd_p = dwconv_ln_triton._pixel_block(h * w, bc, dwconv_ln_triton.BWD_TILE)
        dx_c, dw_c = min(bc, 64), min(bc, 32)
        todo = [("dwconv_ln fwd", dwconv_ln_triton._dwconv_ln_fwd_kernel, dict(BLOCK_P=fwd_p, BLOCK_C=bc), 8, 1),
                ("ln bwd", dwconv_ln_triton._ln_bwd_kernel, dict(BLOCK_P=bwd_p, BLOCK_C=bc), 8, 1),
                ("dx (dwconv)", dwconv_ln_triton._dwconv_kernel, dict(
                    BLOCK_P=dwconv_ln_triton._pixel_block(h * w, dx_c, dwconv_ln_triton.FWD_TILE), BLOCK_C=dx_c), 8, 1),
                ("dw grad", dwconv_ln_triton._dw_grad_kernel, dict(
                    BLOCK_P=dwconv_ln_triton._pixel_block(h * w, dw_c, dwconv_ln_triton.BWD_TILE), BLOCK_C=dw_c), 4, 1)]
        for cfg in mlp_triton.candidates_for(c, torch.bfloat16):
            bn, bn2, blocks = mlp_triton.columns(c, cfg.max_cols)
            for train in (False, True):
                todo.append((f"mlp {'train' if train else 'infer'} BM={cfg.block_m} cols={bn}+{bn2}x{blocks}",
                             mlp_triton._mlp_fwd_kernel, dict(
                                 HAS_GAMMA=True, HAS_SCALE=train, STORE_O=train, STORE_H=train, UPCAST=False,
                                 PRECISION="tf32", BLOCK_M=cfg.block_m, BLOCK_N=bn, HAS_N2=bn2 > 0,
                                 BLOCK_N2=max(bn2, 16), BLOCK_H=cfg.block_h,
                                 BLOCK_K=mlp_triton._block_k(c, cfg.block_k)),
                             cfg.num_warps, cfg.num_stages))
        for name, kernel, consts, warps, stages in todo:
            r = {"kernel": name, "shape_nhwc": [n, h, w, c], **_compile_sm90(kernel, consts, warps, stages)}
            rows.append(r)
            print(f"sm_90 {name:42s} C={c:4d}: {r['registers']:3d} registers, spill {r['spill_stack_bytes']:4d} B, "
                  f"shared {r['shared_bytes']:6d} B, {r['warps']} warps, wgmma {r['wgmma']}, "
                  f"{r['vector_loads']} 16-byte loads", flush=True)
    rep.data["resources"] = rows
    rep.save()


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--only", choices=["correctness", "kernels", "throughput"], action="append",
                    help="run only these parts (repeatable); default: all three")
    ap.add_argument("--resources", action="store_true",
                    help="no GPU needed: compile every kernel for sm_90 here and print registers, spills, smem")
    ap.add_argument("--models", default="convnext_tiny,convnext_small,convnext_base")
    ap.add_argument("--sweep", action="store_true", help="(b): also time every MLP tile candidate per shape")
    ap.add_argument("--budget-s", type=float, default=450, help="skip throughput groups that would end later")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="default: fresh every run")
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="batches per timed run")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per entry (median)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes: the plumbing only")
    a = ap.parse_args()
    if a.smoke:
        a.models, a.infer_batch, a.train_batch, a.img_size = "convnext_atto", 2, 2, 32
        a.warmup, a.iters, a.runs, a.compile_backend = 1, 1, 2, "aot_eager"
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if a.resources:
        resources(Report(a, device))
        return 0
    if device == "cpu" and not a.smoke:
        print("no CUDA device: this script measures a GPU (use --smoke to exercise it on the CPU)", file=sys.stderr)
        return 2
    rep = Report(a, device)
    parts = a.only or ["correctness", "kernels", "throughput"]
    shapes = SMOKE_SHAPES if a.smoke else T_SHAPES
    if "correctness" in parts:
        if a.smoke:
            os.environ[ops.FORCE_ENV] = "1"
        correctness(rep, shapes)
        os.environ.pop(ops.FORCE_ENV, None)
    if "kernels" in parts:
        kernels(rep, shapes, a.sweep)
    if "throughput" in parts:
        throughput(rep, a.models.split(","))
    rep.data["meta"]["wall_s"] = rep.elapsed()
    rep.save()
    print(f"# {'all correctness checks passed' if rep.data['passed'] else 'CORRECTNESS FAILED'}; "
          f"{rep.elapsed():.0f} s; skipped: {[s['what'] for s in rep.data['skipped']] or 'nothing'}", flush=True)
    return 0 if rep.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
