"""The cascade's extra input: the previous stage's segmentation as one-hot foreground channels.

nnU-Net v2's 3d_cascade_fullres gets, per case, the 3d_lowres prediction made by the lowres fold that
held the case out, resampled to the full-resolution preprocessed grid (``<case>_seg.npy`` in
``Workdir.lowres_predictions_dir(previous_stage, k)``). The data loader hands it over as ``seg``
channel 1; :class:`CascadeInputTransform` perturbs it in training (random binary morphology per
foreground label, p 0.4 per sample; removal of one random connected component per label, p 0.2 per
sample) and appends its one-hot foreground channels to ``data``, so the network sees
``image channels + number of foreground labels`` inputs.

Array order: label maps ``(*spatial)`` in the preprocessed (transposed) order; one-hot maps
``(L, *spatial)`` with one channel per foreground label in the order given.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from ..errors import AutosegError
from ..schemas import Splits
from ..workdir import Workdir
from ..model.cascade import one_hot_foreground

logger = logging.getLogger(__name__)

MORPHOLOGY_OPERATIONS = ("dilation", "erosion", "opening", "closing")


# --------------------------------------------------------------------------- where the inputs are

def previous_stage_fold(splits: Splits, case_id: str) -> int | None:
    """Index of the fold whose ``val`` holds ``case_id`` (its out-of-fold prediction), or None."""
    for k, fold in enumerate(splits.folds):
        if case_id in fold.val:
            return k
    return None


def previous_stage_seg_paths(wd: Workdir, splits: Splits, previous_stage: str,
                             case_ids: Sequence[str]) -> dict[str, Path]:
    """case id -> ``<case>_seg.npy`` written by the ``previous_stage`` fold that held the case out.

    Raises AutosegError when a case is in no fold's validation set (then no out-of-fold prediction
    can exist). Whether the files exist is not checked here.
    """
    out: dict[str, Path] = {}
    orphans = []
    for cid in case_ids:
        k = previous_stage_fold(splits, cid)
        if k is None:
            orphans.append(cid)
            continue
        out[cid] = wd.lowres_predictions_dir(previous_stage, k) / f"{cid}_seg.npy"
    if orphans:
        raise AutosegError(f"{wd.splits_json}: case(s) {', '.join(orphans[:6])} are in no fold's 'val' list, so "
                           f"{previous_stage} has no held-out prediction of them for the cascade; use splits "
                           f"in which every training case is validated once (rerun `autoseg plan` with the "
                           f"default splits).")
    return out


def binary_morphology(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """``mask`` (bool, any dims) dilated / eroded / opened / closed by a ball of ``radius`` voxels.

    The ball holds every voxel at Euclidean distance <= ``radius`` (``skimage.morphology.ball``);
    computed with distance transforms, so large radii cost no more than small ones. Outside the
    array counts as background (as ``scipy.ndimage.binary_erosion``'s default border).
    """
    if operation not in MORPHOLOGY_OPERATIONS:
        raise ValueError(f"operation must be one of {MORPHOLOGY_OPERATIONS}, not {operation!r}")
    mask = np.asarray(mask, dtype=bool)

    def dilate(m: np.ndarray) -> np.ndarray:
        if not m.any():
            return m.copy()
        return ndimage.distance_transform_edt(~m) <= radius

    def erode(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1, constant_values=False)  # the border erodes too
        inner = ndimage.distance_transform_edt(padded) > radius
        return inner[tuple(slice(1, -1) for _ in range(m.ndim))]

    if operation == "dilation":
        return dilate(mask)
    if operation == "erosion":
        return erode(mask)
    if operation == "opening":
        return dilate(erode(mask))
    return erode(dilate(mask))


def random_binary_morphology(seg: np.ndarray, labels: Sequence[int],
                             radius_range: tuple[float, float] = (1.0, 8.0)) -> np.ndarray:
    """nnU-Net's ``ApplyRandomBinaryOperatorTransform`` on a label map (numpy's global RNG).

    For each label of ``labels`` in random order: a random operation of
    :data:`MORPHOLOGY_OPERATIONS` with a ball of radius uniform in ``radius_range``; voxels the label
    gains are taken from other labels, voxels it loses become background 0. Returns a new array.
    """
    out = np.array(seg, copy=True)
    order = [int(v) for v in labels]
    np.random.shuffle(order)
    for label in order:
        operation = MORPHOLOGY_OPERATIONS[np.random.randint(len(MORPHOLOGY_OPERATIONS))]
        radius = float(np.random.uniform(*radius_range))
        mask = out == label
        if not mask.any():
            continue
        res = binary_morphology(mask, operation, radius)
        out[mask & ~res] = 0
        out[res] = label
    return out


def remove_random_component(seg: np.ndarray, labels: Sequence[int], max_fraction: float = 0.15) -> np.ndarray:
    """nnU-Net's ``RemoveRandomConnectedComponentFromOneHotEncodingTransform`` on a label map.

    For every label: one random connected component (full connectivity) smaller than ``max_fraction``
    of the patch voxels is set to background 0 (numpy's global RNG). Returns a new array.
    """
    out = np.array(seg, copy=True)
    structure = ndimage.generate_binary_structure(out.ndim, out.ndim)
    limit = out.size * max_fraction
    for label in labels:
        comps, n = ndimage.label(out == int(label), structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        candidates = np.flatnonzero(sizes < limit) + 1
        if len(candidates):
            out[comps == candidates[np.random.randint(len(candidates))]] = 0
    return out


# --------------------------------------------------------------------------- the transform

class CascadeInputTransform(AbstractTransform):
    """Move the previous stage's segmentation from ``seg`` into ``data`` as one-hot foreground channels.

    Input batch: ``data`` (B, C, *patch), ``seg`` (B, S, *patch) whose channel ``seg_channel`` is the
    previous stage's label map (as left by the spatial transforms: float or int, -1 outside). Per
    sample, with probability ``p_morphology`` :func:`random_binary_morphology`, then with probability
    ``p_remove_component`` :func:`remove_random_component` (both 0 for validation). Output: ``data``
    (B, C + len(foreground_labels), *patch) with the one-hot maps (values 0/1) appended in label order,
    ``seg`` (B, S - 1, *patch) without that channel. Runs after the spatial and intensity transforms
    (the one-hot channels get no intensity augmentation) and before deep-supervision downsampling.
    """

    def __init__(self, foreground_labels: Sequence[int], p_morphology: float = 0.4,
                 p_remove_component: float = 0.2, seg_channel: int = 1,
                 radius_range: tuple[float, float] = (1.0, 8.0), max_component_fraction: float = 0.15):
        if not foreground_labels:
            raise AutosegError("the cascade needs at least one foreground label; check 'labels' in "
                               "dataset.json and num_classes in plans.json.")
        self.foreground_labels = [int(v) for v in foreground_labels]
        self.p_morphology = float(p_morphology)
        self.p_remove_component = float(p_remove_component)
        self.seg_channel = int(seg_channel)
        self.radius_range = (float(radius_range[0]), float(radius_range[1]))
        self.max_component_fraction = float(max_component_fraction)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch["seg"]
        if seg.ndim < 3 or seg.shape[1] <= self.seg_channel:
            raise AutosegError(f"cascade input: expected the previous stage's segmentation as seg channel "
                               f"{self.seg_channel}, found seg of shape {tuple(seg.shape)}; build the data "
                               f"loader with previous_stage_segs.")
        onehot = np.empty((data.shape[0], len(self.foreground_labels), *data.shape[2:]), dtype=data.dtype)
        for b in range(seg.shape[0]):
            prev = np.rint(seg[b, self.seg_channel]).astype(np.int16)
            if np.random.uniform() < self.p_morphology:
                prev = random_binary_morphology(prev, self.foreground_labels, self.radius_range)
            if np.random.uniform() < self.p_remove_component:
                prev = remove_random_component(prev, self.foreground_labels, self.max_component_fraction)
            onehot[b] = one_hot_foreground(prev, self.foreground_labels, dtype=data.dtype)
        batch["data"] = np.concatenate([data, onehot], axis=1)
        batch["seg"] = np.delete(seg, self.seg_channel, axis=1)
        return batch
