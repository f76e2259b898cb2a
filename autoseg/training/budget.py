"""Time-budget arithmetic for training: measured inference cost and the schedule-shortening rule.

Budgeted schedules (Li, Yumer, Ramanan, ICLR 2020) fix the step count from a measured step time and
decay the learning rate to zero at the deadline; on a machine whose speed changes, the finish time is
re-projected as training goes and the schedule is shortened (never extended) when it would overrun.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

# Export of one validation case (resampling the probabilities back, argmax, writing the label file
# and the compressed probabilities): a fixed part plus a part per original voxel and class. Measured
# ~0.1 s per Hippocampus case (63k voxels, 3 classes) on a 2-core EPYC; the per-voxel term is a
# conservative guess for large images.
EXPORT_SECONDS_PER_CASE = 0.05
EXPORT_SECONDS_PER_VOXEL_CLASS = 2e-8


def export_seconds(preprocessed_dir: Path, case_ids: Sequence[str], num_classes: int) -> float:
    """Estimated seconds to export ``case_ids`` back to their original geometry (from their sidecars)."""
    import json

    total = 0.0
    for cid in case_ids:
        try:
            shape = json.loads((Path(preprocessed_dir) / f"{cid}.json").read_text())["shape_before_crop_zyx"]
            voxels = float(np.prod(shape))
        except (OSError, ValueError, KeyError):
            voxels = 0.0
        total += EXPORT_SECONDS_PER_CASE + EXPORT_SECONDS_PER_VOXEL_CLASS * voxels * num_classes
    return total


def count_validation_tiles(preprocessed_dir: Path, case_ids: Sequence[str], patch_size: Sequence[int],
                           dims: int) -> int:
    """Sliding-window tiles (step 0.5) needed to predict ``case_ids``; 2D patches tile every slice."""
    from ..model.sliding_window import tile_starts

    n = 0
    for cid in case_ids:
        shape = np.load(Path(preprocessed_dir) / f"{cid}.npy", mmap_mode="r").shape[1:]
        slices, spatial = (shape[0], shape[1:]) if dims == 2 and len(shape) == 3 else (1, shape)
        n += slices * len(list(itertools.product(*tile_starts(list(spatial), list(patch_size), 0.5))))
    return n


def final_validation_seconds(preprocessed_dir: Path, case_ids: Sequence[str], patch_size: Sequence[int],
                             dims: int, n_mirror_axes: int, seconds_per_tile: float, num_classes: int) -> float:
    """Tiles x mirrorings x measured forward time of one tile (+20%), plus the export of every case."""
    tiles = count_validation_tiles(preprocessed_dir, case_ids, patch_size, dims)
    return (tiles * 2 ** n_mirror_axes * seconds_per_tile * 1.2
            + export_seconds(preprocessed_dir, case_ids, num_classes))


@torch.inference_mode()
def seconds_per_tile(network: torch.nn.Module, in_channels: int, patch_size: Sequence[int],
                     device: torch.device, autocast: Callable, tiles: int = 4) -> float:
    """Measured forward time of one patch in eval mode under ``autocast()`` (best of 3 batches)."""
    was_training = network.training
    network.eval()
    x = torch.randn(tiles, in_channels, *patch_size, device=device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with autocast():
            network(x)
        best = min(best, time.perf_counter() - t0)
    network.train(was_training)
    return best / tiles


def shortened_total_iterations(done: int, total: int, seconds_left: float,
                               seconds_per_iteration: float) -> int | None:
    """The new schedule length when ``total`` iterations no longer fit, else None (never longer).

    ``seconds_left`` is what remains of the budget after the planned validations.
    """
    allowed = done + max(0, int(seconds_left / seconds_per_iteration))
    if allowed >= total:
        return None
    return max(done, allowed, 1)


def total_iterations_for_budget(seconds_available: float, seconds_per_iteration: float,
                                iterations_per_epoch: int, validation_seconds_per_epoch: float,
                                done: int = 0) -> int:
    """Iterations that fit ``seconds_available`` (already net of the final validation), counting one
    per-epoch validation for every started epoch; the last epoch may be partial. At least ``done``
    and at least 1. Sizing in iterations rather than whole epochs uses the budget to within one
    iteration instead of wasting up to an epoch.
    """
    per_epoch = iterations_per_epoch * seconds_per_iteration + validation_seconds_per_epoch
    full = int(max(0.0, seconds_available) // per_epoch)
    rest = seconds_available - full * per_epoch - validation_seconds_per_epoch
    partial = min(iterations_per_epoch - 1, int(rest / seconds_per_iteration)) if rest > 0 else 0
    return max(done, full * iterations_per_epoch + max(0, partial), 1)
