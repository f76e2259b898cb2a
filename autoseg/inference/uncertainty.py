"""Ensemble disagreement: every member's probabilities on disk, reduced to one map per case.

The members are the (configuration, fold) networks of a :class:`~autoseg.inference.predictor.Predictor`.
Each member's probabilities ``p_m`` are compared with the ensemble's final probabilities ``p`` (the
ones the segmentation is the argmax of) by the total-variation distance
``TV(p_m, p) = 0.5 * sum_k |p_m[k] - p[k]|`` in [0, 1]; the uncertainty of a voxel is the mean of
``TV`` over the members.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

_SLAB_VOXELS = 1 << 22  # uncertainty is reduced in slabs of ~4M voxels along axis 0


class MemberStore:
    """Every ensemble member's probabilities (M, K, Z, Y, X) in a float16 file on disk (RAM stays
    bounded), reduced slab by slab to the mean total-variation distance to the ensemble."""

    def __init__(self, num_members: int, shape: tuple[int, ...], weight: float = 0.5):
        """``weight`` x the summed absolute difference over the channels: 0.5 gives the total-variation distance
        of class distributions; region probabilities (which need not sum to 1) use 1 / regions, their mean."""
        self._weight = float(weight)
        self._dir = tempfile.TemporaryDirectory(prefix="autoseg_members_")
        self._store = np.lib.format.open_memmap(Path(self._dir.name) / "members.npy", mode="w+",
                                                dtype=np.float16, shape=(num_members, *shape))
        self._count = 0

    def add(self, probs: np.ndarray) -> None:
        self._store[self._count] = probs
        self._count += 1

    def uncertainty(self, mean: np.ndarray) -> np.ndarray:
        """Mean over members of 0.5 * sum_k |p_m[k] - mean[k]|, float32 (Z, Y, X) in [0, 1]."""
        if self._count != self._store.shape[0]:
            raise RuntimeError(f"{self._count} of {self._store.shape[0]} ensemble members were stored")
        out = np.zeros(mean.shape[1:], dtype=np.float32)
        per_slice = max(1, int(np.prod(mean.shape[2:], dtype=np.int64)) * mean.shape[0])
        step = max(1, _SLAB_VOXELS // per_slice)
        for z in range(0, mean.shape[1], step):
            ref = mean[:, z:z + step]
            for m in range(self._count):
                out[z:z + step] += np.abs(self._store[m, :, z:z + step].astype(np.float32) - ref).sum(axis=0)
        out *= self._weight / self._count
        return np.clip(out, 0.0, 1.0, out=out)

    def close(self) -> None:
        del self._store
        self._dir.cleanup()
