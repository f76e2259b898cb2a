"""Resampling of images, label maps and class probabilities to a new voxel spacing.

nnU-Net v2 semantics:

* images: ``skimage.transform.resize`` with spline order 3, ``mode="edge"``, no anti-aliasing;
* label maps: one indicator (one-hot) map per label value, each resized with order 1, and per
  voxel the label whose interpolated indicator is largest wins;
* "separate z": when the source (or else the target) spacing is anisotropic (max / min spacing
  above a threshold, 3 by default) and its lowest-resolution axis is unique, every slice
  perpendicular to that axis is resized in-plane first, then the low-resolution axis is
  interpolated on its own with order 0 (nearest), which avoids smearing thick slices.

Every array here is in autoseg's array order: images ``(C, Z, Y, X)``, labels ``(Z, Y, X)``,
spacings in millimetres in the same order. An axis whose spacing is the 2D dummy
(:data:`autoseg.schemas.DUMMY_2D_SPACING_MM`) is never resampled.

Memory: only one channel (or one label indicator) is resampled at a time.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from ..schemas import DUMMY_2D_SPACING_MM

logger = logging.getLogger(__name__)

_DUMMY_TOLERANCE_MM = 1e-3


def is_dummy_spacing(spacing_mm: float) -> bool:
    """True when ``spacing_mm`` is the 2D dummy spacing (999 mm) of a single-slice axis."""
    return abs(float(spacing_mm) - DUMMY_2D_SPACING_MM) < _DUMMY_TOLERANCE_MM


def compute_new_shape(shape_zyx: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> list[int]:
    """Shape after resampling from ``old_spacing`` to ``new_spacing`` (all zyx, mm).

    Per axis ``round(shape * old / new)``, at least 1. An axis whose old or new spacing is the 2D
    dummy keeps its size.
    """
    if not (len(shape_zyx) == len(old_spacing) == len(new_spacing)):
        raise ValueError(f"shape {list(shape_zyx)}, old spacing {list(old_spacing)} and new spacing "
                         f"{list(new_spacing)} must have the same length")
    out = []
    for size, old, new in zip(shape_zyx, old_spacing, new_spacing):
        if is_dummy_spacing(old) or is_dummy_spacing(new):
            out.append(int(size))
        else:
            out.append(max(1, int(round(float(old) / float(new) * int(size)))))
    return out


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    """The unique axis with the largest spacing, or None when several axes share it."""
    s = np.asarray(spacing, dtype=float)
    axes = np.flatnonzero(np.isclose(s, s.max(), rtol=1e-6, atol=0.0))
    return int(axes[0]) if len(axes) == 1 else None


def _is_anisotropic(spacing: Sequence[float], threshold: float) -> bool:
    s = np.asarray(spacing, dtype=float)
    return bool(s.max() / s.min() > threshold)


def separate_z_axis(old_spacing: Sequence[float], new_spacing: Sequence[float],
                    threshold: float = 3.0) -> int | None:
    """The axis to resample separately (nnU-Net's rule), or None for plain 3D resampling.

    If the source spacing is anisotropic (max / min > ``threshold``) its lowest-resolution axis is
    chosen; else, if the target spacing is anisotropic, the target's lowest-resolution axis. None
    when neither is anisotropic or the chosen lowest-resolution axis is not unique (e.g. spacing
    (0.24, 1.25, 1.25)).
    """
    if _is_anisotropic(old_spacing, threshold):
        return _lowres_axis(old_spacing)
    if _is_anisotropic(new_spacing, threshold):
        return _lowres_axis(new_spacing)
    return None


def _resize_plain(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    return resize(volume, tuple(int(s) for s in new_shape), order=order, mode="edge",
                  anti_aliasing=False, preserve_range=True).astype(np.float32, copy=False)


def _resample_along_axis(volume: np.ndarray, axis: int, new_size: int, order: int) -> np.ndarray:
    """Interpolate ``volume`` along one axis only, with nnU-Net's pixel-centre alignment.

    Equivalent to ``scipy.ndimage.map_coordinates(..., order, mode="nearest")`` with
    ``coord = scale * (i + 0.5) - 0.5`` along ``axis`` and the identity elsewhere, but without
    building a coordinate grid (affine_transform computes coordinates on the fly).
    """
    old_size = volume.shape[axis]
    scale = old_size / new_size
    matrix = np.ones(volume.ndim)
    matrix[axis] = scale
    offset = np.zeros(volume.ndim)
    offset[axis] = 0.5 * scale - 0.5
    out_shape = list(volume.shape)
    out_shape[axis] = int(new_size)
    return ndimage.affine_transform(volume, matrix, offset=offset, output_shape=tuple(out_shape),
                                    order=order, mode="nearest", output=np.float32)


def _resample_volume(volume: np.ndarray, new_shape: Sequence[int], axis: int | None, order: int,
                     low_res_axis_order: int) -> np.ndarray:
    """Resample one float (Z, Y, X) volume; ``axis`` is the separate low-resolution axis or None."""
    new_shape = [int(s) for s in new_shape]
    if list(volume.shape) == new_shape:
        return volume.astype(np.float32, copy=False)
    if axis is None:
        return _resize_plain(volume, new_shape, order)
    in_plane_new = [s for a, s in enumerate(new_shape) if a != axis]
    in_plane_old = [s for a, s in enumerate(volume.shape) if a != axis]
    if in_plane_new != in_plane_old:
        tmp_shape = list(new_shape)
        tmp_shape[axis] = volume.shape[axis]
        tmp = np.empty(tmp_shape, dtype=np.float32)
        for i in range(volume.shape[axis]):
            index = [slice(None)] * volume.ndim
            index[axis] = i
            tmp[tuple(index)] = _resize_plain(volume[tuple(index)], in_plane_new, order)
    else:
        tmp = volume.astype(np.float32, copy=False)
    if tmp.shape[axis] != new_shape[axis]:
        tmp = _resample_along_axis(tmp, axis, new_shape[axis], low_res_axis_order)
    return tmp


def _check_shapes(spatial_shape: Sequence[int], new_shape: Sequence[int],
                  old_spacing: Sequence[float], new_spacing: Sequence[float]) -> None:
    if not (len(spatial_shape) == len(new_shape) == len(old_spacing) == len(new_spacing)):
        raise ValueError(f"spatial shape {list(spatial_shape)}, new shape {list(new_shape)}, old "
                         f"spacing {list(old_spacing)} and new spacing {list(new_spacing)} must have "
                         f"the same number of axes")


def resample_data(data: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                  new_spacing: Sequence[float], order: int = 3, separate_z_threshold: float = 3.0,
                  low_res_axis_order: int = 0) -> np.ndarray:
    """Resample an image ``data`` (C, Z, Y, X) to ``new_shape`` (Z, Y, X); returns float32.

    Channel by channel: spline ``order`` in 3D, or with separate z (see :func:`separate_z_axis`)
    ``order`` in-plane slice by slice and ``low_res_axis_order`` along the low-resolution axis.
    When the shape is unchanged the input is returned as float32 (possibly the same array).
    """
    _check_shapes(data.shape[1:], new_shape, old_spacing, new_spacing)
    new_shape = [int(s) for s in new_shape]
    if list(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    axis = separate_z_axis(old_spacing, new_spacing, separate_z_threshold)
    logger.debug("resample_data %s -> %s, order %d, separate axis %s", data.shape[1:], new_shape,
                 order, axis)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = _resample_volume(data[c].astype(np.float32, copy=False), new_shape, axis, order,
                                  low_res_axis_order)
    return out


def resample_segmentation(seg: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                          new_spacing: Sequence[float], order: int = 1,
                          separate_z_threshold: float = 3.0,
                          low_res_axis_order: int = 0) -> np.ndarray:
    """Resample an integer label map ``seg`` (Z, Y, X) to ``new_shape``; same dtype as ``seg``.

    Every label value present (including -1, "outside") gets a float indicator map resized with
    ``order`` (separate z as for images, ``low_res_axis_order`` across the low-resolution axis);
    each output voxel takes the label whose resized indicator is largest, ties going to the lower
    label value. No new label values can appear. Peak memory: one indicator, the running maximum
    and the output. Returns the input unchanged when the shape is unchanged.
    """
    _check_shapes(seg.shape, new_shape, old_spacing, new_spacing)
    new_shape = [int(s) for s in new_shape]
    if list(seg.shape) == new_shape:
        return seg
    values = np.unique(seg)
    out = np.full(new_shape, values[0], dtype=seg.dtype)
    if len(values) == 1:
        return out
    axis = separate_z_axis(old_spacing, new_spacing, separate_z_threshold)
    best: np.ndarray | None = None
    for v in values:  # sorted ascending: a strictly larger value is needed to replace a lower label
        indicator = _resample_volume((seg == v).astype(np.float32), new_shape, axis, order,
                                     low_res_axis_order)
        if best is None:
            best = indicator
            continue
        wins = indicator > best
        out[wins] = v
        np.maximum(best, indicator, out=best)
    return out


def resample_probabilities(probs: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                           new_spacing: Sequence[float], order: int = 1,
                           separate_z_threshold: float = 3.0,
                           low_res_axis_order: int = 0) -> np.ndarray:
    """Resample class probabilities (or logits) ``probs`` (K, Z, Y, X) to ``new_shape``; float32.

    Class by class, with the same rules as :func:`resample_data` (default order 1), so peak memory
    is the output plus one class. Used by inference to go back to the original geometry.
    """
    return resample_data(probs, new_shape, old_spacing, new_spacing, order=order,
                         separate_z_threshold=separate_z_threshold,
                         low_res_axis_order=low_res_axis_order)
