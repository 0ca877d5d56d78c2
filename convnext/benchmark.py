"""Parameters, multiply-adds and throughput, with a peer (timm) timed in the same process.

Multiply-adds are counted with `torch.utils.flop_counter` (FLOPs / 2), on the meta device so that counting
even ConvNeXt-XL at 384 costs no memory. The paper's "FLOPs" are these multiply-adds of convs and linears.

Throughput: warm-up, then several timed runs; ours and the peer alternate run by run, so that a noisy,
shared machine slows both alike, and the ratio is the median of the per-pair ratios.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> float:
    """Multiply-adds (in G) of one forward pass of one image, counted on the meta device."""
    model = _on_meta(model)
    x = torch.empty(1, in_chans, img_size, img_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def _on_meta(model: nn.Module) -> nn.Module:
    try:
        if next(model.parameters()).device.type == "meta":
            return model
    except StopIteration:
        return model
    import copy

    return copy.deepcopy(model).to("meta")


def stage_shapes(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> list[tuple[int, ...]]:
    """Output shape of each stage (each block, for the isotropic model: only the last is shown by `info`)."""
    x = torch.empty(1, in_chans, img_size, img_size, device="meta")
    with torch.no_grad():
        outs = _on_meta(model).forward_intermediates(x, intermediates_only=True)
    return [tuple(t.shape) for t in outs]


@dataclass
class Setting:
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 16
    img_size: int = 224
    channels_last: bool = False
    compile: str = "none"  # none | default | max-autotune
    train: bool = False

    def describe(self) -> str:
        return (
            f"device={_device_name(self.device)} dtype={self.dtype} batch={self.batch_size} img={self.img_size} "
            f"memory_format={'channels_last' if self.channels_last else 'contiguous'} compile={self.compile} "
            f"mode={'train (fwd+bwd+AdamW)' if self.train else 'inference'} torch={torch.__version__} "
            f"threads={torch.get_num_threads()}"
        )


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device == "cpu":
        import platform

        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class Runner:
    """One model prepared for timing under a Setting: `step()` runs one batch."""

    def __init__(self, model: nn.Module, s: Setting):
        self.s = s
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        model = model.to(s.device, memory_format=fmt)
        self.x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=s.device).to(memory_format=fmt)
        self.amp = s.dtype != "fp32"
        self.dtype = DTYPES[s.dtype]
        if s.train:
            model.train()
            self.y = torch.randint(0, 1000, (s.batch_size,), device=s.device)
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        else:
            model.eval()
        self.model = model
        self.fn = model if s.compile == "none" else torch.compile(model, mode=None if s.compile == "default" else s.compile)

    def step(self) -> None:
        ctx = torch.autocast(self.s.device.split(":")[0], dtype=self.dtype, enabled=self.amp)
        if self.s.train:
            with ctx:
                loss = nn.functional.cross_entropy(self.fn(self.x), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), ctx:
                self.fn(self.x)

    def time(self, iters: int) -> float:
        """Images per second over `iters` batches."""
        _sync(self.s.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        _sync(self.s.device)
        return iters * self.s.batch_size / (time.perf_counter() - t0)


def _peak_memory_mb(device: str, fn) -> float | None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


@dataclass
class Result:
    setting: dict
    ours_img_s: float
    ours_runs: list
    peer: str | None = None
    peer_img_s: float | None = None
    peer_runs: list | None = None
    ratio: float | None = None  # median over runs of ours/peer, each pair timed back to back
    ours_peak_mb: float | None = None
    peer_peak_mb: float | None = None


def make_peer(peer: str, name: str) -> nn.Module:
    if peer != "timm":
        raise ValueError(f"unknown peer {peer!r}; supported: timm")
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise RuntimeError("--compare timm needs timm installed (pip install timm)") from e
    timm_name = name.replace("convnext_isotropic_", "convnext_iso_")  # not in timm; raises below
    if timm_name not in timm.list_models():
        raise ValueError(f"timm has no model {timm_name!r} to compare against")
    return timm.create_model(timm_name, pretrained=False)


def bench(
    model: nn.Module, s: Setting, *, peer_model: nn.Module | None = None, peer: str | None = None,
    warmup: int = 3, iters: int = 5, runs: int = 7, progress=None,
) -> Result:
    """Time `model` (and `peer_model`, alternating) under `s`; medians over `runs` runs of `iters` batches."""
    ours = Runner(model, s)
    other = Runner(peer_model, s) if peer_model is not None else None
    for r in (ours, other):
        if r is not None:
            for _ in range(warmup):
                r.step()
    a, b, ratios = [], [], []
    for i in range(runs):
        order = (ours, other) if i % 2 == 0 else (other, ours)  # alternate who goes first
        got = {}
        for r in order:
            if r is not None:
                got[id(r)] = r.time(iters)
        a.append(got[id(ours)])
        if other is not None:
            b.append(got[id(other)])
            ratios.append(a[-1] / b[-1])
        if progress:
            progress(i + 1, runs, a[-1], b[-1] if b else None)
    res = Result(setting=asdict(s), ours_img_s=statistics.median(a), ours_runs=a)
    res.ours_peak_mb = _peak_memory_mb(s.device, ours.step)
    if other is not None:
        res.peer, res.peer_img_s, res.peer_runs = peer, statistics.median(b), b
        res.ratio = statistics.median(ratios)
        res.peer_peak_mb = _peak_memory_mb(s.device, other.step)
    return res


@contextlib.contextmanager
def num_threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
