"""Pure spacing rules: the fullres target spacing, the axis order, resampled shapes, the lowres step.

Every spacing and shape here is in autoseg's array-axis order (z, y, x), spacings in millimetres
(see :mod:`autoseg.schemas`). 2D data has the dummy spacing
:data:`~autoseg.schemas.DUMMY_2D_SPACING_MM` and size 1 on axis 0.

The rule functions return their value together with a :class:`~autoseg.schemas.Decision` whose
``reason`` is one sentence with the numbers that fired the rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import AutosegError
from ..schemas import DUMMY_2D_SPACING_MM, Decision

#: nnU-Net's ANISO_THRESHOLD: an axis is "anisotropic" when its spacing exceeds 3x the others'.
ANISO_THRESHOLD = 3.0
#: Percentile of the low-resolution axis' spacings used when the anisotropy rule fires.
ANISO_PERCENTILE = 10.0
#: nnU-Net's 3d_lowres search raises the spacing by 3 % per step.
LOWRES_SPACING_STEP = 1.03
#: Tiny margin nnU-Net adds when the 10th percentile would undercut the other axes.
_ANISO_EPS_MM = 1e-5

AXIS_NAMES = ("z", "y", "x")


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    return " x ".join(f"{float(v):.{digits}f}" for v in values)


def _check_cases(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> None:
    if len(spacings) == 0:
        raise AutosegError("the fingerprint lists no training cases, so no target spacing can be computed; "
                           "check imagesTr/ and rerun `autoseg plan --overwrite`")
    if len(spacings) != len(shapes):
        raise AutosegError(f"the fingerprint has {len(spacings)} spacings but {len(shapes)} shapes; "
                           f"rerun `autoseg plan --overwrite` to rebuild fingerprint.json")
    for sp in spacings:
        if len(sp) != 3 or any(not (float(s) > 0) for s in sp):
            raise AutosegError(f"the fingerprint has a spacing {list(sp)}; expected three positive numbers "
                               f"(z, y, x in mm); check the image headers and rerun `autoseg plan --overwrite`")


def fullres_target_spacing(spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[int]],
                           ndim: int = 3,
                           anisotropy_threshold: float = ANISO_THRESHOLD) -> tuple[list[float], Decision]:
    """nnU-Net v2's 3d_fullres target spacing, (z, y, x) in mm.

    ``spacings`` and ``shapes_after_crop`` hold one (z, y, x) entry per training case. The target is
    the per-axis median, except when the coarsest axis is anisotropic in both spacing
    (median > ``anisotropy_threshold`` x the largest other median) and voxel count (median size x
    threshold < the smallest other median size): then it is that axis' 10th-percentile spacing, but
    never below the largest other spacing. 2D data (``ndim == 2``) keeps the dummy axis as it is.
    """
    _check_cases(spacings, shapes_after_crop)
    sp = np.asarray(spacings, dtype=np.float64)
    sizes = np.asarray(shapes_after_crop, dtype=np.float64)
    target = np.percentile(sp, 50, axis=0)
    median_size = np.percentile(sizes, 50, axis=0)
    inputs = {"median_spacing_zyx_mm": [float(v) for v in target],
              "median_shape_after_crop_zyx": [float(v) for v in median_size],
              "num_cases": int(len(sp))}
    if ndim == 2:
        value = [float(DUMMY_2D_SPACING_MM), float(target[1]), float(target[2])]
        reason = (f"2D data: target = median in-plane spacing y {target[1]:.3g} mm, x {target[2]:.3g} mm "
                  f"over {len(sp)} cases; axis 0 keeps the dummy spacing {DUMMY_2D_SPACING_MM:g}.")
        return value, Decision("target_spacing", value, "median_spacing_2d", reason, inputs)

    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    max_other_spacing = max(float(target[a]) for a in others)
    min_other_size = min(float(median_size[a]) for a in others)
    name = AXIS_NAMES[worst]
    aniso_spacing = float(target[worst]) > anisotropy_threshold * max_other_spacing
    aniso_voxels = float(median_size[worst]) * anisotropy_threshold < min_other_size
    inputs.update(anisotropy_threshold=anisotropy_threshold, coarsest_axis=worst)
    if aniso_spacing and aniso_voxels:
        pct = float(np.percentile(sp[:, worst], ANISO_PERCENTILE))
        clamped = pct < max_other_spacing
        axis_target = max(max_other_spacing, pct) + _ANISO_EPS_MM if clamped else pct
        value = [float(v) for v in target]
        value[worst] = float(axis_target)
        inputs.update(percentile_10_mm=pct)
        tail = (f"raised to the largest other spacing {max_other_spacing:.3g} mm" if clamped else
                f"{axis_target:.3g} mm")
        reason = (f"{name} median {target[worst]:.3g} mm > {anisotropy_threshold:g} x {max_other_spacing:.3g} mm "
                  f"and {median_size[worst]:.0f} slices x {anisotropy_threshold:g} < {min_other_size:.0f} "
                  f"-> {name} target = {ANISO_PERCENTILE:g}th percentile {pct:.3g} mm"
                  + (f", {tail}" if clamped else "")
                  + f"; other axes use their median ({_fmt([value[a] for a in others], 3)} mm).")
        return value, Decision("target_spacing", value, "anisotropy_10th_percentile", reason, inputs)

    value = [float(v) for v in target]
    if not aniso_spacing:
        why = (f"the coarsest axis {name} ({target[worst]:.3g} mm) is not > {anisotropy_threshold:g} x "
               f"{max_other_spacing:.3g} mm")
    else:
        why = (f"{name} {target[worst]:.3g} mm > {anisotropy_threshold:g} x {max_other_spacing:.3g} mm but "
               f"{median_size[worst]:.0f} slices x {anisotropy_threshold:g} >= {min_other_size:.0f}")
    reason = f"target = median spacing {_fmt(value, 3)} mm (z x y x x) over {len(sp)} cases because {why}."
    return value, Decision("target_spacing", value, "median_spacing", reason, inputs)


def transpose_order(target_spacing: Sequence[float]) -> tuple[list[int], Decision]:
    """Axis permutation ``transpose_forward`` that puts the coarsest axis first.

    The axis with the largest spacing comes first (the first one on ties, so isotropic data keeps
    [0, 1, 2]); the other axes keep their order. 2D data keeps its dummy axis (999 mm) first. The
    inverse permutation is :func:`inverse_permutation`.
    """
    if len(target_spacing) != 3:
        raise ValueError(f"target spacing must have 3 entries (z, y, x), found {list(target_spacing)}")
    sp = [float(s) for s in target_spacing]
    first = max(range(3), key=lambda a: (sp[a], -a))  # largest spacing, lowest index on ties
    forward = [first] + [a for a in range(3) if a != first]
    inputs = {"target_spacing_zyx_mm": sp}
    if math.isclose(sp[0], DUMMY_2D_SPACING_MM):
        reason = "2D data: the dummy axis (999 mm) stays first, so the 2D network sees the (y, x) plane."
        return forward, Decision("transpose", forward, "dummy_axis_first", reason, inputs)
    if forward == [0, 1, 2]:
        reason = (f"axis order kept: {AXIS_NAMES[0]} already has the largest target spacing "
                  f"({sp[0]:.3g} mm of {_fmt(sp, 3)} mm), so 2D slices are cut along it.")
    else:
        reason = (f"axis {AXIS_NAMES[first]} has the largest target spacing ({sp[first]:.3g} mm of "
                  f"{_fmt(sp, 3)} mm) and goes first (transpose {forward}), so 2D slices are cut along it.")
    return forward, Decision("transpose", forward, "largest_spacing_first", reason, inputs)


def inverse_permutation(forward: Sequence[int]) -> list[int]:
    """``backward`` such that transposing by ``forward`` then ``backward`` is the identity."""
    backward = [0] * len(forward)
    for i, a in enumerate(forward):
        backward[int(a)] = i
    return backward


def permute(values: Sequence, order: Sequence[int]) -> list:
    """``[values[i] for i in order]``: put a (z, y, x) list into the transposed order."""
    return [values[int(i)] for i in order]


def resampled_shape(shape_zyx: Sequence[int], spacing_zyx: Sequence[float],
                    target_spacing_zyx: Sequence[float]) -> list[int]:
    """Shape after resampling: per axis ``round(shape * spacing / target)``, at least 1.

    An axis whose spacing is the 2D dummy keeps its size (matches the preprocessing stage).
    """
    out = []
    for n, old, new in zip(shape_zyx, spacing_zyx, target_spacing_zyx):
        if math.isclose(float(old), DUMMY_2D_SPACING_MM) or math.isclose(float(new), DUMMY_2D_SPACING_MM):
            out.append(int(n))
        else:
            out.append(max(1, int(round(float(old) / float(new) * int(n)))))
    return out


def median_resampled_shape(spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[int]],
                           target_spacing_zyx: Sequence[float]) -> list[float]:
    """Per-axis median of every case's cropped shape resampled to ``target_spacing_zyx`` (floats, zyx)."""
    _check_cases(spacings, shapes_after_crop)
    shapes = [resampled_shape(sh, sp, target_spacing_zyx) for sp, sh in zip(spacings, shapes_after_crop)]
    return [float(v) for v in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]


def lowres_spacing_step(spacing: Sequence[float], factor: float = LOWRES_SPACING_STEP) -> list[float]:
    """One step of nnU-Net's 3d_lowres search: raise the spacing by ``factor``.

    Axes more than 2x finer than the coarsest axis are raised first (so an anisotropic volume
    becomes more isotropic); once all axes are within 2x, every axis is raised.
    """
    sp = [float(s) for s in spacing]
    coarsest = max(sp)
    fine = [coarsest / s > 2 for s in sp]
    if any(fine):
        return [s * factor if f else s for s, f in zip(sp, fine)]
    return [s * factor for s in sp]
