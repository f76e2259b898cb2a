"""Label maps <-> network targets and outputs, for plain labels, region-based labels and the ignore label.

The spec is :class:`autoseg.schemas.LabelSpec` (nnU-Net v2's ``dataset.json`` semantics). Everything
that turns network outputs into a label map, or a label map into what is scored, goes through here:

* :func:`activation`: softmax over the classes (plain labels), a sigmoid per region (region-based).
* :func:`to_segmentation`: the label map of probabilities: argmax, or region ``i`` painted with
  ``regions_class_order[i]`` wherever its probability exceeds 0.5, in order (later regions win, so
  nested regions such as BraTS' whole tumour > tumour core > enhancing tumour come out right).
* :func:`item_mask`: the voxels of one scored item (a label, or the union of a region's labels).
* :func:`valid_mask`: every voxel that is not the ignore label.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..schemas import LabelSpec

REGION_THRESHOLD = 0.5
ARGMAX_SLAB_VOXELS = 1 << 24  # argmax in slabs of ~16M voxels: bounds the int64 temporary


def activation(logits, spec: LabelSpec, dim: int = 0):
    """Probabilities of torch ``logits``: softmax over ``dim`` for labels, sigmoid per region."""
    import torch

    return torch.sigmoid(logits) if spec.region_based else torch.softmax(logits, dim=dim)


def background_probabilities(spec: LabelSpec, num_outputs: int) -> np.ndarray:
    """The probability vector of a voxel that is surely background (outside the crop box)."""
    out = np.zeros(num_outputs, dtype=np.float32)
    if not spec.region_based:
        out[0] = 1.0
    return out


def _label_dtype(max_value: int) -> np.dtype:
    if max_value <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_value <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def regions_to_segmentation(probs: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """``(R, *spatial)`` region probabilities -> label map: ``regions_class_order[i]`` painted in order where
    region ``i`` > 0.5."""
    if probs.shape[0] != len(spec.regions_class_order):
        raise ValueError(f"{probs.shape[0]} region channels, but regions_class_order has "
                         f"{len(spec.regions_class_order)} entries")
    seg = np.zeros(probs.shape[1:], dtype=_label_dtype(max(spec.regions_class_order, default=0)))
    for i, value in enumerate(spec.regions_class_order):
        seg[probs[i] > REGION_THRESHOLD] = value
    return seg


def to_segmentation(probs, spec: LabelSpec | None = None) -> np.ndarray:
    """The label map of ``(K, *spatial)`` probabilities (numpy or torch): regions painted (region-based), else
    the argmax over classes (logits work too), smallest sufficient dtype, computed in slabs along axis 1 to
    bound the int64 temporary."""
    arr = probs.detach().cpu().numpy() if hasattr(probs, "detach") else np.asarray(probs)
    if arr.ndim < 2:
        raise ValueError(f"expected (K, *spatial) probabilities, got shape {arr.shape}")
    if spec is not None and spec.region_based:
        return regions_to_segmentation(arr, spec)
    out = np.empty(arr.shape[1:], dtype=_label_dtype(arr.shape[0] - 1))
    per_slab = max(1, int(np.prod(arr.shape[2:], dtype=np.int64)))
    step = max(1, ARGMAX_SLAB_VOXELS // per_slab)
    for start in range(0, arr.shape[1], step):
        out[start:start + step] = np.argmax(arr[:, start:start + step], axis=0)
    return out


def item_key(item: int | Sequence[int]) -> str:
    """The key of a scored item in results: "2" for label 2 (or the region [2]), "1,2,3" for a region."""
    if isinstance(item, (int, np.integer)):
        return str(int(item))
    return ",".join(str(int(v)) for v in item)


def scored_items(spec: LabelSpec) -> tuple[list[int | list[int]], dict[str, str]]:
    """What validation, selection and evaluation score: the foreground labels, or every region (as the list
    of label values it covers); and each item's name, keyed by :func:`item_key`."""
    items: list[int | list[int]] = []
    names: dict[str, str] = {}
    for name, values in spec.items():
        item: int | list[int] = list(values) if spec.region_based else int(values[0])
        items.append(item)
        names[item_key(item)] = name
    return items, names


def item_mask(seg: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Voxels of ``seg`` whose value is one of ``values`` (a label, or a region's labels)."""
    values = [int(v) for v in values]
    if len(values) == 1:
        return seg == values[0]
    return np.isin(seg, values)


def valid_mask(seg: np.ndarray, spec_or_ignore: LabelSpec | int | None) -> np.ndarray | None:
    """Voxels that count (not the ignore label); None when nothing is ignored."""
    ignore = spec_or_ignore.ignore_label if isinstance(spec_or_ignore, LabelSpec) else spec_or_ignore
    if ignore is None:
        return None
    return seg != int(ignore)
