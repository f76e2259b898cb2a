"""The cascade's input arrays: a previous stage's segmentation as one-hot foreground channels, and a
segmentation at a case's original geometry put on the next stage's preprocessed grid.

Used alike by training (the lowres folds' held-out predictions, :mod:`autoseg.training.cascade`) and by
prediction of new images (:mod:`autoseg.inference.cascade_predict`), so both feed the cascade the same input.

Array order: label maps ``(*spatial)`` in the preprocessed (transposed) order; one-hot maps
``(L, *spatial)`` with one channel per foreground label in the order given.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..preprocessing.preprocess import segmentation_to_preprocessed_grid
from ..schemas import CaseProperties, ConfigurationPlan


def cascade_foreground_labels(config: ConfigurationPlan) -> list[int]:
    """The labels fed as one-hot input channels: every foreground label of the plan (for regions, every label
    value a painted label map can hold; never the ignore label)."""
    return config.labels.foreground_labels


def one_hot_foreground(seg: np.ndarray, labels: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """``seg`` (*spatial) integer labels -> ``(len(labels), *spatial)`` indicator maps in {0, 1}.

    Values not in ``labels`` (background 0, -1 outside) give zeros in every channel.
    """
    seg = np.asarray(seg)
    out = np.empty((len(labels), *seg.shape), dtype=dtype)
    for i, label in enumerate(labels):
        out[i] = seg == int(label)
    return out


def append_previous_stage(data: np.ndarray, previous: np.ndarray, config: ConfigurationPlan) -> np.ndarray:
    """The cascade's network input: ``data`` (C, *S) with the previous stage's one-hot foreground maps
    appended, float32 (C + L, *S); ``previous`` is its label map (*S) on the same preprocessed grid.

    Used alike by validation (the lowres folds' held-out files) and by prediction of new images.
    """
    onehot = one_hot_foreground(previous, cascade_foreground_labels(config), dtype=np.float32)
    return np.concatenate([data.astype(np.float32, copy=False), onehot])


def next_stage_segmentation(seg: np.ndarray, properties: CaseProperties, next_config: ConfigurationPlan) -> np.ndarray:
    """``seg`` (Z, Y, X) at a case's original geometry -> int8 (int16 for labels > 127) ``(1, *S)`` on
    ``next_config``'s preprocessed grid described by ``properties`` (crop box, resampled shape,
    spacings): what ``predicted_next_stage/<case>_seg.npy`` holds, and what prediction feeds the
    cascade for a new image (:mod:`autoseg.inference.cascade_predict`)."""
    out = segmentation_to_preprocessed_grid(seg, properties, next_config)
    return out.astype(np.int8 if int(out.max(initial=0)) <= 127 else np.int16)
