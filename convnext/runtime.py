"""Where and how a model computes: the process (torchrun's rank and world), the device, the precision and the
memory format. One autocast path for every precision (nanoGPT's): `autocast(enabled=...)` around the forward,
a GradScaler only for fp16 (the engine's).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from convnext.distributed import Dist
from convnext.errors import UserError

# precision name -> the autocast dtype (None: fp32, no autocast). The one spelling of a precision in the config
# (`train.precision`), the command line (`--precision`) and the benchmarks.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast in `precision` on `device`'s type; a no-op context for fp32."""
    dtype = autocast_dtype(precision)
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass(frozen=True)
class Runtime:
    """A process's device and rank (torchrun), the precision and the memory format every model call uses."""

    dist: Dist = field(default_factory=Dist)
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        autocast_dtype(self.precision)  # an unknown name fails here, once

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """An (N, C, H, W) batch on this device in this memory format (asynchronous from pinned memory)."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)
