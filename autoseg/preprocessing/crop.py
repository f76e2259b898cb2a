"""Crop to the nonzero region (nnU-Net's rule).

mask = any channel != 0, holes filled; crop every array to the mask's bounding box. Label voxels
that are 0 and outside the mask become -1 ("outside the body"): masked normalization uses the mask,
and training treats -1 as background.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

OUTSIDE_LABEL = -1


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """``data`` (C, Z, Y, X) -> bool mask (Z, Y, X): any channel nonzero, holes filled."""
    mask = np.any(data != 0, axis=0)
    if mask.ndim == 3 and mask.shape[0] == 1:  # 2D image: fill holes in-plane
        return ndimage.binary_fill_holes(mask[0])[None]
    return ndimage.binary_fill_holes(mask)


def bbox_of_mask(mask: np.ndarray) -> list[list[int]]:
    """Half-open bounding box [[z0, z1], [y0, y1], [x0, x1]]; the whole array if the mask is empty."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append([int(nz[0]), int(nz[-1]) + 1])
    return box


def crop_to_bbox(array: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """Crop the last ``len(bbox)`` axes of ``array`` to ``bbox``."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(lo, hi) for lo, hi in bbox)]


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, list[list[int]], np.ndarray]:
    """Crop ``data`` (C, Z, Y, X) and ``seg`` (Z, Y, X) to the nonzero region of ``data``.

    Returns (cropped data, cropped seg with -1 outside the mask where it was 0, bbox, cropped mask).
    """
    mask = nonzero_mask(data)
    bbox = bbox_of_mask(mask)
    data_c = crop_to_bbox(data, bbox)
    mask_c = crop_to_bbox(mask, bbox)
    seg_c = None
    if seg is not None:
        seg_c = crop_to_bbox(seg, bbox).copy()
        seg_c[(seg_c == 0) & ~mask_c] = OUTSIDE_LABEL
    return data_c, seg_c, bbox, mask_c
