"""Which memory layout a training runs its convolutions in on a CUDA GPU: measured per configuration.

cuDNN is often faster in ``channels_last`` (NHWC / NDHWC) under mixed precision on recent GPUs, but not for
every network shape, so the trainer times both on the real network and batch before the first step
(:func:`time_memory_formats`, on a copy of the network: the real one and its optimizer are untouched) and
keeps channels_last only when it is at least :data:`MIN_GAIN` faster (:func:`choose_memory_format`). On a
CPU nothing is measured or changed. ``torch.compile`` is not used: its compile time (minutes for a 3D U-Net)
is not measured against a training's budget yet. Not run on a GPU (docs/benchmarks/gpu.md).
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

MIN_GAIN = 0.03  # channels_last must save at least 3 % of a step
WARMUP_STEPS, TIMED_STEPS = 2, 5


def choose_memory_format(timings: Mapping[str, float]) -> tuple[bool, str]:
    """(use channels_last, reason) from seconds per step of ``contiguous`` and ``channels_last``."""
    base, last = timings["contiguous"], timings["channels_last"]
    use = last < (1.0 - MIN_GAIN) * base
    verdict = "channels_last" if use else "contiguous (channels_last does not save 3 %)"
    return use, f"memory format measured on the GPU: contiguous {base:.4f} s/step, channels_last {last:.4f} s/step → {verdict}"


def memory_format(network: Any, dims: int):
    """The channels-last layout of a ``dims``-D network's tensors (5-D for 3D, 4-D for 2D)."""
    import torch

    return torch.channels_last_3d if dims == 3 else torch.channels_last


def time_memory_formats(network: Any, dims: int, step: Callable[[Any, Any, Any, bool], None], batch: Any,
                        make_optimizer: Callable[[Any], Any]) -> dict[str, float]:
    """Median seconds per training step in each layout, on a copy of ``network``: ``step(net, optimizer, batch,
    channels_last)`` runs one step; CUDA is synchronised around each."""
    import torch

    out = {}
    for name in ("contiguous", "channels_last"):
        net = copy.deepcopy(network)
        if name == "channels_last":
            net = net.to(memory_format=memory_format(net, dims))
        opt = make_optimizer(net)
        times = []
        for i in range(WARMUP_STEPS + TIMED_STEPS):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(net, opt, batch, name == "channels_last")
            torch.cuda.synchronize()
            if i >= WARMUP_STEPS:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
        del net, opt
        torch.cuda.empty_cache()
    return out


def apply_measured_memory_format(trainer: Any, train_it: Any, make_optimizer: Callable, to_float: Callable) -> None:
    """The trainer's layout: measured once (rank 0's choice in a torchrun job; a resumed run keeps it), then
    the network converted when channels_last won."""
    from .distributed import agree

    dims = trainer.config.dims
    if trainer.state.channels_last is None:
        def step(net, opt, batch, channels_last: bool):
            data, target = trainer._to_device(batch)
            if channels_last:
                data = data.contiguous(memory_format=memory_format(net, dims))
            opt.zero_grad(set_to_none=True)
            with trainer._autocast():
                out = net(data)
            trainer.loss(to_float(out), target).backward()
            opt.step()

        timings = time_memory_formats(trainer.network, dims, step, next(train_it),
                                      lambda net: make_optimizer(net, trainer.settings))
        use, reason = choose_memory_format(timings)
        log.info("%s", reason)
        trainer.state.channels_last = agree(use if trainer.is_main else None, trainer.dist)
    if trainer.state.channels_last:
        trainer.network = trainer.network.to(memory_format=memory_format(trainer.network, dims))
