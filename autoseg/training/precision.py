"""Which precision to train in on a CPU: measured on the real network, not assumed.

bf16 convolutions were measured 1.9-2.9x faster than fp32 for 3D U-Nets, but 0.94x for some 2D
ones, on an AVX512-BF16 CPU with torch 2.13 (docs/benchmarks/README.md), so the choice is timed.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch


def time_precisions(network: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[str], None],
                    candidates: Sequence[str] = ("fp32", "bf16"), repeats: int = 3) -> dict[str, float]:
    """Seconds per training step for each precision (after one warm-up step each).

    ``step(precision)`` runs one real training step; the network's weights and the optimizer state
    are restored afterwards, so the probe leaves no trace on training.
    """
    model0 = copy.deepcopy(network.state_dict())
    opt0 = copy.deepcopy(optimizer.state_dict())
    timings: dict[str, float] = {}
    try:
        for precision in candidates:
            step(precision)  # warm-up: oneDNN creates its kernels for the shapes
            t0 = time.perf_counter()
            for _ in range(repeats):
                step(precision)
            timings[precision] = (time.perf_counter() - t0) / repeats
    finally:
        network.load_state_dict(model0)
        optimizer.load_state_dict(opt0)
    return timings
