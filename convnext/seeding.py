"""Seeds as functions of (seed, epoch, position) and (seed, step, rank): what makes every run replayable.

The data order of an epoch, each sample's augmentation, and each optimizer step's random draws (drop path,
mixup) are seeded from these, never from a generator's history, so a run resumed at step t sees exactly what an
uninterrupted run would have seen, and N processes see what one process would (convnext/data.py, engine.py).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the sample at `position` in epoch `epoch`'s order (and, at position 0, of the order itself)."""
    return (seed * 1_000_003 + epoch * 100_003 + position) % (2**31 - 1)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of micro-batch `step` (optimizer step x accumulation + micro-batch) on process `rank`."""
    return (seed * 7_919 + step * 104_729 + rank * 15_485_863 + 17) % (2**31 - 1)


def seed_everything(s: int) -> None:
    """Python's, NumPy's (timm's mixup draws from it) and torch's global generators (CPU, and CUDA once in use).

    Not `torch.manual_seed`: before CUDA is initialised it queues a lazy CUDA (and XPU, MTIA) seeding that
    records a stack trace each time: 0.65 ms per call, ~1% of a CPU training step of the demo, on every step.
    """
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)
