"""Output buffers for the Triton kernels, and the check that every element of them gets written.

Below both kernel files and `ops.py`, so that the kernels and the ops that call them import it without a circle.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Checks only (tests, benchmarks/gpu_kernels.py): the Triton paths fill every tensor they allocate for a kernel
# to write with NaN first, so an element the kernel fails to write shows up in the comparison.
POISON = False


def new_output(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for a kernel to write (NaN-filled while POISON is set)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t
