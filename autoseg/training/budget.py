"""Time-budget arithmetic for training: what the validations after training will cost.

A budgeted training decays its learning rate to zero at the deadline (Li, Yumer, Ramanan, ICLR 2020);
here the deadline is the budget minus the time reserved for the final full-resolution validation,
estimated from the measured forward time of one tile (see ``training/budget_control.py``).
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
