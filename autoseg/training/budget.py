"""Time-budget arithmetic for training: what the validations after training will cost.

A budgeted training decays its learning rate to zero at the deadline (Li, Yumer, Ramanan, ICLR 2020);
here the deadline is the budget minus the time reserved for the final full-resolution validation,
estimated from the measured forward time of one tile (see ``training/budget_control.py``).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
                           dims: int, step_size: float = 0.5) -> int:
    """Sliding-window tiles (at ``step_size``) needed to predict ``case_ids``; 2D patches tile every slice."""
    from ..model.sliding_window import tile_starts

    n = 0
    for cid in case_ids:
        shape = np.load(Path(preprocessed_dir) / f"{cid}.npy", mmap_mode="r").shape[1:]
        slices, spatial = (shape[0], shape[1:]) if dims == 2 and len(shape) == 3 else (1, shape)
        n += slices * len(list(itertools.product(*tile_starts(list(spatial), list(patch_size), step_size))))
    return n


def final_validation_seconds(preprocessed_dir: Path, case_ids: Sequence[str], patch_size: Sequence[int],
                             dims: int, n_mirror_axes: int, seconds_per_tile: float, num_classes: int,
                             step_size: float = 0.5) -> float:
    """Tiles x mirrorings x measured forward time of one tile (+20%), plus the export of every case."""
    tiles = count_validation_tiles(preprocessed_dir, case_ids, patch_size, dims, step_size)
    return (tiles * 2 ** n_mirror_axes * seconds_per_tile * 1.2
            + export_seconds(preprocessed_dir, case_ids, num_classes))


#: The final validation of a budgeted training may take this share of its budget; above it, it is made
#: cheaper (see :func:`choose_final_validation`). Its predictions choose the configuration, the ensemble
#: and the postprocessing, so every validation case is kept; what is given up is test-time mirroring (the
#: 2-8 passes of each tile; worth ~0.1-0.5 Dice points) and then tile overlap.
MAX_FINAL_VALIDATION_SHARE = 0.15
#: (mirroring, tile step) from the most to the least thorough: nnU-Net's, no mirroring, half the overlap.
VALIDATION_MODES = ((True, 0.5), (False, 0.5), (False, 0.75))


@dataclass(frozen=True)
class FinalValidation:
    """How a fold's final validation predicts (``mirror``, ``step_size``), its estimated cost, and why."""

    seconds: float
    mirror: bool = True
    step_size: float = 0.5
    reason: str = ""

    def to_dict(self) -> dict:
        return {"mirror": self.mirror, "step_size": self.step_size, "estimated_s": round(self.seconds, 1),
                "reason": self.reason}


def choose_final_validation(budget_s: float, n_cases: int, n_mirror_axes: int,
                            seconds: Callable[[bool, float], float],
                            max_share: float = MAX_FINAL_VALIDATION_SHARE) -> FinalValidation:
    """The most thorough validation mode whose estimated time (``seconds(mirror, step_size)``) fits in
    ``max_share`` of the training's budget; the cheapest one when none fits, saying so."""
    modes = [m for m in VALIDATION_MODES if n_mirror_axes > 0 or not m[0]]
    limit = max_share * budget_s
    full = seconds(*modes[0])

    def describe(mirror: bool, step: float) -> str:
        return (f"{2 ** n_mirror_axes} mirrored passes" if mirror else "no mirroring") + f", tile step {step:g}"

    costs = []
    for mirror, step in modes:
        est = full if (mirror, step) == modes[0] else seconds(mirror, step)
        costs.append(f"{describe(mirror, step)} ~{est:.0f} s")
        if est <= limit:
            if (mirror, step) == modes[0]:
                why = (f"final validation of {n_cases} case(s) with {describe(mirror, step)}: ~{est:.0f} s, "
                       f"{est / budget_s:.0%} of the {budget_s:.0f} s budget (at most {max_share:.0%})")
            else:
                why = (f"final validation of {n_cases} case(s) with {describe(mirror, step)} (~{est:.0f} s, "
                       f"{est / budget_s:.0%} of the {budget_s:.0f} s budget): the full one ({costs[0]}) would "
                       f"take {full / budget_s:.0%} of it (at most {max_share:.0%}), time the training needs "
                       f"more; every case is still validated, and `autoseg predict` still mirrors")
            return FinalValidation(est, mirror, step, why)
    mirror, step = modes[-1]
    why = (f"final validation of {n_cases} case(s) with {describe(mirror, step)}: even so ~{est:.0f} s, "
           f"{est / budget_s:.0%} of the {budget_s:.0f} s budget (at most {max_share:.0%} wanted; "
           f"{'; '.join(costs)}); give a longer --time-budget to train longer")
    return FinalValidation(est, mirror, step, why)


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
