"""Connected-component postprocessing: apply accepted steps, and learn them on cross-validation.

Segmentations are label maps ``(Z, Y, X)`` (2D images: ``(1, Y, X)``, components are then found
in-plane). Components use full connectivity (26 neighbours in 3D, 8 in 2D).

Step kinds (see :class:`autoseg.schemas.PostprocessingStep`):
  * ``largest_component_foreground``: all foreground labels together; keep the largest connected
    component, set every other foreground voxel to background.
  * ``largest_component``: per label in ``labels``; keep that label's largest component.
  * ``remove_small_components``: per label in ``min_size_voxels``; set components smaller than the
    size (in voxels) to background.
  * ``largest_component_region`` (region-based datasets): the voxels of the region's labels (``labels``)
    together; keep the largest component, set the rest to background. Learned by
    :mod:`autoseg.inference.postprocess_regions`.

Learning the steps on cross-validation: :mod:`autoseg.inference.postprocess_learning`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import AutosegError
from ..schemas import PostprocessingStep

log = logging.getLogger(__name__)

KINDS = ("largest_component_foreground", "largest_component", "remove_small_components", "largest_component_region")
_EPS = 1e-9  # Dice differences below this are float noise, neither better nor worse


# --------------------------------------------------------------------------- applying

def _structure(shape: tuple[int, ...]) -> np.ndarray:
    """Full connectivity; in-plane only for a single-slice (2D) array."""
    s = ndimage.generate_binary_structure(3, 3)
    if shape[0] == 1:
        s = np.zeros((3, 3, 3), dtype=bool)
        s[1] = True
    return s


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a non-empty mask (None when empty): labelling inside it is much cheaper."""
    box = []
    for axis in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if nz.size == 0:
            return None
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...] | None]:
    """Label the components of ``mask`` inside its bounding box.

    Returns ``(labelled box, sizes, box)``: ``sizes[i]`` is the voxel count of component ``i + 1``
    (raster order inside the box); ``box`` is None (and the arrays empty) when the mask is empty.
    """
    box = _bbox(mask)
    if box is None:
        return np.zeros((0,), dtype=np.int32), np.zeros((0,), dtype=np.int64), None
    labelled, n = ndimage.label(mask[box], structure=_structure(mask.shape))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:].astype(np.int64)
    return labelled, sizes, box


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask -> a new mask holding only its largest component (ties: first in raster order)."""
    mask = np.asarray(mask, dtype=bool)
    labelled, sizes, box = _components(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is not None:
        out[box] = labelled == int(np.argmax(sizes)) + 1
    return out


def remove_small_components(mask: np.ndarray, min_size_voxels: int) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask -> a new mask without the components smaller than ``min_size_voxels``."""
    mask = np.asarray(mask, dtype=bool)
    labelled, sizes, box = _components(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is not None:
        keep = np.concatenate([[False], sizes >= int(min_size_voxels)])
        out[box] = keep[labelled]
    return out


def _check_step(step: PostprocessingStep) -> None:
    if step.kind not in KINDS:
        raise AutosegError(f"postprocessing step kind {step.kind!r} is unknown; expected one of "
                           f"{', '.join(KINDS)} (selection.json 'postprocessing'); rerun "
                           f"`autoseg find-best --overwrite` to rewrite it")


def apply_postprocessing(seg: np.ndarray, steps: Sequence[PostprocessingStep]) -> np.ndarray:
    """Apply ``steps`` in order to a label map ``(Z, Y, X)``; returns a new array of the same dtype.

    Removed voxels become background (0). ``seg`` is left untouched.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise AutosegError(f"postprocessing expects a (Z, Y, X) label map, found shape {seg.shape}")
    out = seg.copy()
    for step in steps:
        _check_step(step)
        if step.kind == "largest_component_foreground":
            fg = out != 0
            out[fg & ~keep_largest_component(fg)] = 0
        elif step.kind == "largest_component":
            for label in step.labels:
                m = out == int(label)
                out[m & ~keep_largest_component(m)] = 0
        elif step.kind == "largest_component_region":  # the region's labels together (postprocess_regions.py)
            m = np.isin(out, [int(v) for v in step.labels])
            out[m & ~keep_largest_component(m)] = 0
        else:
            for label, size in step.min_size_voxels.items():
                m = out == int(label)
                out[m & ~remove_small_components(m, int(size))] = 0
    return out


