"""Data-parallel training of one fold over several processes (``torchrun``), on GPUs (NCCL) or CPUs (gloo).

``torchrun --nproc-per-node N -m autoseg train --workdir RUN -c CFG --fold K`` starts N copies of
``autoseg train``; torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) tells each which rank it is (:func:`from_environment`). Then:

* **The batch**: the plan's batch is the *global* batch, dealt over the ranks as nnU-Net does (rank ``r``
  gets ``B // N``, plus one for the first ``B % N`` ranks); a batch smaller than the world size gives
  every rank one sample (the global batch grows to N, with a warning). :func:`rank_batch_sizes`.
* **The data**: every rank samples its own patches (its data seed is the fold's seed + 100003 x rank);
  the network starts from the same seed on every rank and DDP copies rank 0's weights at the start.
* **One writer**: rank 0 alone writes settings, checkpoints, logs and plots, and runs the final
  validation; the other ranks only train. Every rank reads the same checkpoint on resume (rank 0
  first, so that a damaged one is moved aside once).
* **One clock**: the time budget runs on rank 0's clock. :class:`RankZeroClock` holds rank 0's time as
  of the last :meth:`~RankZeroClock.sync`, which every rank calls at the same points of the loop; so
  every decision made from the clock (learning rate, stop, checkpoint) is the same on every rank and
  all stop together. Per-epoch pseudo-Dice counts are summed over the ranks, so "best" is the same too.
* **Control messages** (the clock, agreed values, Dice counts) go over a gloo group on the CPU, also when
  the gradients go over NCCL.

Multi-node: torchrun's standard rendezvous (``--nnodes``, ``--node-rank``, ``--rdzv-backend c10d``,
``--rdzv-endpoint HOST:PORT``); see docs/cluster.md.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AutosegError

log = logging.getLogger(__name__)

DATA_SEED_STRIDE = 100003  # rank r samples with the fold's seed + r x this


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # of the gradients: "nccl" (CUDA) or "gloo" (CPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK``; a CPU stays the CPU."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    def describe(self) -> str:
        return f"rank {self.rank} of world size {self.world_size} ({self.backend})"


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or anything that sets its rendezvous variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


_CONTEXT: DistContext | None = None
_CONTROL_GROUP: Any = None


def is_main_process() -> bool:
    """True outside a torchrun job, and on its rank 0."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


def from_environment(device: str) -> DistContext | None:
    """Join the torchrun job this process belongs to (once); None when it was not started by torchrun."""
    global _CONTEXT, _CONTROL_GROUP
    if _CONTEXT is not None:
        return _CONTEXT
    if not launched_by_torchrun():
        return None
    import datetime

    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        if not torch.cuda.is_available():
            raise AutosegError("torchrun asked for training on CUDA, but this process sees no GPU; run with "
                               "--device cpu (gloo) or on a machine with GPUs")
        if local_rank >= torch.cuda.device_count():
            raise AutosegError(f"rank {rank} has LOCAL_RANK {local_rank}, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node "
                               f"(--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if on_cuda and dist.is_nccl_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    _CONTROL_GROUP = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)
    return _CONTEXT


def shutdown() -> None:
    """Leave the job (end of `autoseg train` on every rank)."""
    global _CONTEXT, _CONTROL_GROUP
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = _CONTROL_GROUP = None


def rank_batch_sizes(global_batch: int, world_size: int) -> list[int]:
    """The global batch dealt over the ranks: ``B // N`` each, one more for the first ``B % N``; at least 1."""
    base, extra = divmod(int(global_batch), int(world_size))
    return [max(1, base + (1 if r < extra else 0)) for r in range(world_size)]


def agree(value: Any, ctx: DistContext | None) -> Any:
    """Rank 0's ``value`` on every rank (picklable values); ``value`` itself without a job."""
    if ctx is None or ctx.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=_CONTROL_GROUP)
    return box[0]


def sum_over_ranks(values: list[float], ctx: DistContext | None) -> list[float]:
    """Element-wise sum of ``values`` over every rank (float64)."""
    if ctx is None or ctx.world_size == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_CONTROL_GROUP)
    return t.tolist()


def gather(value: Any, ctx: DistContext | None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if ctx is None or ctx.world_size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value, group=_CONTROL_GROUP)
    return out


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None and ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier(group=_CONTROL_GROUP)


class RankZeroClock:
    """Rank 0's clock as of the last :meth:`sync` (which every rank calls at the same points); between two
    syncs it stands still, so every call of it returns the same value on every rank."""

    def __init__(self, clock: Callable[[], float], ctx: DistContext):
        self._clock, self._ctx = clock, ctx
        self._now = 0.0
        self.sync()

    def sync(self) -> float:
        self._now = agree(self._clock(), self._ctx)
        return self._now

    def __call__(self) -> float:
        return self._now

    def __getstate__(self) -> dict:  # pickled into a precision probe's child: a frozen clock, no job
        return {"_clock": time.monotonic, "_ctx": None, "_now": self._now}


def weights_checksum(network: Any) -> tuple[float, float]:
    """(sum, sum of squares) of every parameter in float64: equal on every rank when they agree."""
    import torch

    with torch.no_grad():
        s = sum(float(p.detach().double().sum()) for p in network.parameters())
        q = sum(float(p.detach().double().pow(2).sum()) for p in network.parameters())
    return s, q


def check_weights_agree(network: Any, ctx: DistContext | None) -> str:
    """Compare the ranks' weights; a line saying they agree, else AutosegError (a broken job)."""
    if ctx is None:
        return ""
    sums = gather(weights_checksum(network), ctx)
    first = sums[0]
    bad = [r for r, s in enumerate(sums) if s != first]
    if bad:
        raise AutosegError(f"the ranks' weights differ after training (ranks {bad} against rank 0: {sums}); the "
                           f"gradients were not all-reduced. Report this with the torch version and backend "
                           f"({ctx.backend}).")
    return f"weights identical on all {ctx.world_size} rank(s) (checksum {first[0]:.6g}, {first[1]:.6g})"
