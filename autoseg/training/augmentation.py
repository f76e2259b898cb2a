"""Training augmentation with batchgenerators (nnU-Net's list and probabilities).

The iterator that runs these transforms in worker processes is in :mod:`autoseg.training.batch_iterator`.

Batches are dicts ``{"data": (B, C, *patch), "seg": (B, 1, *patch), "keys": [...]}`` in array axis
order (see :mod:`autoseg.schemas`); 3D patches are ``(Z, Y, X)``, 2D patches ``(Y, X)``. After the
transforms, ``data`` is a float32 tensor and ``seg`` a float32 tensor of label values 0..K-1 (the -1
"outside" label is mapped to background), or a list of such tensors (highest resolution first) when
deep supervision targets are requested.

batchgenerators' spatial transforms name the rotations by matrix: ``angle_x`` rotates in the plane of
patch axes (1, 2) (in 2D: the only plane), ``angle_y`` in (0, 2), ``angle_z`` in (0, 1). Angles are in
radians.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.augmentations.utils import resize_segmentation
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RemoveLabelTransform

from ..errors import AutosegError
from .cascade import CascadeInputTransform

logger = logging.getLogger(__name__)

DEFAULT_SCALE_RANGE = (0.7, 1.4)
ANISOTROPIC_2D_ASPECT = 1.5  # 2D patches longer than this ratio get only +-15 degrees of rotation


# --------------------------------------------------------------------------- sizes and ranges

def _symmetric(degrees: float) -> tuple[float, float]:
    return (-math.radians(degrees), math.radians(degrees))


def rotation_ranges(patch_size: Sequence[int], dims: int, dummy_2d: bool) -> dict[str, tuple[float, float]]:
    """Rotation ranges (radians) ``{"angle_x": (lo, hi), "angle_y": ..., "angle_z": ...}`` (nnU-Net v2).

    3D: +-30 degrees about every axis. 2D: +-180 degrees, or +-15 when the patch's longest/shortest
    edge > 1.5. Dummy 2D (3D patch augmented slice-wise): +-180 degrees in the (Y, X) plane only.
    Only ``angle_x`` is used by batchgenerators for 2D spatial transforms.
    """
    if dims == 2:
        limit = 15.0 if max(patch_size) / min(patch_size) > ANISOTROPIC_2D_ASPECT else 180.0
        return {"angle_x": _symmetric(limit), "angle_y": (0.0, 0.0), "angle_z": (0.0, 0.0)}
    if dummy_2d:
        return {"angle_x": _symmetric(180.0), "angle_y": (0.0, 0.0), "angle_z": (0.0, 0.0)}
    r = _symmetric(30.0)
    return {"angle_x": r, "angle_y": r, "angle_z": r}


def _rotated_extent(a: float, b: float, max_angle: float) -> tuple[float, float]:
    """Bounding extents of an ``a x b`` rectangle rotated by any angle in [-max_angle, max_angle]."""
    max_angle = min(abs(max_angle), math.pi / 2)  # beyond 90 degrees the box repeats (by symmetry)
    # a|cos t| + b|sin t| peaks at t = atan(b / a); it is monotone on either side of the peak
    candidates = [0.0, max_angle] + [t for t in (math.atan2(b, a), math.atan2(a, b)) if t <= max_angle]
    ea = max(a * abs(math.cos(t)) + b * abs(math.sin(t)) for t in candidates)
    eb = max(a * abs(math.sin(t)) + b * abs(math.cos(t)) for t in candidates)
    return ea, eb


def initial_patch_size(patch_size: Sequence[int], rotation: dict[str, tuple[float, float]],
                       scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                       dummy_2d: bool | None = None) -> list[int]:
    """Size to crop before spatial augmentation, so the rotated and scaled final patch stays inside it.

    Per rotation axis, the exact bounding box of the patch rotated over the whole angle range (nnU-Net's
    ``get_patch_size`` evaluates only the rotated corner at the extreme angle, which underestimates),
    maximised over the axes (as nnU-Net; a rotation about several axes at once may still reach a little
    past it, and that border is padded), then enlarged by the largest sampling scale
    ``max(1 / min(scale), max(scale))`` and rounded up. ``dummy_2d`` (default: a 3D patch whose rotation
    has only ``angle_x``) keeps axis 0 unchanged. No rotation and ``scale_range == (1, 1)`` -> the patch.
    """
    size = [float(v) for v in patch_size]
    angles = {k: max(abs(v[0]), abs(v[1])) for k, v in rotation.items()}
    if dummy_2d is None:
        dummy_2d = len(size) == 3 and angles.get("angle_y", 0) == 0 and angles.get("angle_z", 0) == 0 \
            and angles.get("angle_x", 0) > 0
    out = list(size)
    if len(size) == 2 or dummy_2d:
        i, j = (0, 1) if len(size) == 2 else (1, 2)
        out[i], out[j] = _rotated_extent(size[i], size[j], angles.get("angle_x", 0.0))
    elif len(size) == 3:
        for key, (i, j) in (("angle_x", (1, 2)), ("angle_y", (0, 2)), ("angle_z", (0, 1))):
            ei, ej = _rotated_extent(size[i], size[j], angles.get(key, 0.0))
            out[i], out[j] = max(out[i], ei), max(out[j], ej)
    else:
        raise AutosegError(f"patch size must have 2 or 3 numbers, found {list(patch_size)}; "
                           f"check plans.json.")
    zoom = max(1.0 / min(scale_range), max(scale_range), 1.0)
    result = [int(math.ceil(v * zoom - 1e-6)) for v in out]
    if dummy_2d and len(size) == 3:
        result[0] = int(patch_size[0])
    return [max(r, int(p)) for r, p in zip(result, patch_size)]


def deep_supervision_scales(strides: list[list[int]], n_outputs: int) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the patch, highest resolution first.

    Output ``i`` is ``1 / prod(strides[: i + 1])`` per axis; ``strides[0]`` is the stem's (usually all
    1). ``n_outputs`` is the number of decoder outputs (stages - 1), e.g. strides
    ``[[1,1,1],[2,2,2],[2,2,2],[1,2,2]]``, 3 -> ``[[1,1,1],[.5,.5,.5],[.25,.25,.25]]``.
    """
    if n_outputs < 1 or n_outputs > len(strides):
        raise AutosegError(f"deep supervision needs 1..{len(strides)} outputs for {len(strides)} stages, "
                           f"found {n_outputs}; check the network in plans.json.")
    cumulative = np.cumprod(np.asarray(strides, dtype=float), axis=0)
    return [[float(v) for v in 1.0 / row] for row in cumulative[:n_outputs]]


# --------------------------------------------------------------------------- custom transforms

class Convert3DTo2DTransform(AbstractTransform):
    """(B, C, Z, Y, X) -> (B, C*Z, Y, X) for slice-wise ("dummy 2D") spatial augmentation."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in ("data", "seg"):
            if key in batch and batch[key] is not None:
                shp = batch[key].shape
                batch[f"_orig_shape_{key}"] = shp
                batch[key] = batch[key].reshape((shp[0], shp[1] * shp[2], shp[3], shp[4]))
        return batch


class Convert2DTo3DTransform(AbstractTransform):
    """Undo :class:`Convert3DTo2DTransform`: (B, C*Z, Y', X') -> (B, C, Z, Y', X')."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in ("data", "seg"):
            shp = batch.pop(f"_orig_shape_{key}", None)
            if shp is not None:
                cur = batch[key].shape
                batch[key] = batch[key].reshape((shp[0], shp[1], shp[2], cur[-2], cur[-1]))
        return batch


class DownsampleSegForDSTransform2(AbstractTransform):
    """Replace ``seg`` (B, C, *patch) by a list of segs, one per deep-supervision scale (order 0)."""

    def __init__(self, ds_scales: Sequence[Sequence[float]], order: int = 0, key: str = "seg"):
        self.ds_scales = [list(s) for s in ds_scales]
        self.order = order
        self.key = key

    def __call__(self, **batch: Any) -> dict[str, Any]:
        seg = batch[self.key]
        out = []
        for scale in self.ds_scales:
            if all(s == 1 for s in scale):
                out.append(seg)
                continue
            new_shape = [int(round(n * s)) for n, s in zip(seg.shape[2:], scale)]
            small = np.zeros((*seg.shape[:2], *new_shape), dtype=seg.dtype)
            for b in range(seg.shape[0]):
                for c in range(seg.shape[1]):
                    small[b, c] = resize_segmentation(seg[b, c], new_shape, self.order)
            out.append(small)
        batch[self.key] = out
        return batch


# --------------------------------------------------------------------------- pipelines

def _finishing_transforms(ds_scales: Sequence[Sequence[float]] | None,
                          cascade: CascadeInputTransform | None = None) -> list[AbstractTransform]:
    tr: list[AbstractTransform] = [RemoveLabelTransform(-1, 0)]
    if cascade is not None:  # before the targets are downsampled: its seg channel is not a target
        tr.append(cascade)
    if ds_scales is not None and len(ds_scales) > 1:
        tr.append(DownsampleSegForDSTransform2(ds_scales, order=0))
    tr.append(NumpyToTensor(["data", "seg"], "float"))
    return tr


def training_transforms(patch_size: Sequence[int], dims: int, dummy_2d: bool, mirror_axes: Sequence[int],
                        ds_scales: Sequence[Sequence[float]] | None, rotation: dict[str, tuple[float, float]],
                        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE, order_data: int = 3,
                        order_seg: int = 1, light: bool = False,
                        cascade_labels: Sequence[int] | None = None) -> Compose:
    """nnU-Net's training augmentation; input batches are initial patches, output the final ``patch_size``.

    In order: [dummy 2D: 3D->2D] SpatialTransform (no elastic; rotation p 0.2 per sample with an angle
    per axis from ``rotation``; scaling p 0.2, one factor in ``scale_range`` for all axes; centre crop to
    ``patch_size``; outside: data 0, seg -1) [dummy 2D: 2D->3D]; Gaussian noise p 0.1 (variance 0-0.1);
    Gaussian blur p 0.2 (sigma 0.5-1, per channel p 0.5); multiplicative brightness p 0.15 (0.75-1.25);
    contrast p 0.15; simulated low resolution p 0.25 (zoom 0.5-1, per channel p 0.5, axis 0 kept for
    dummy 2D); inverted gamma p 0.1 and gamma p 0.3 (0.7-1.5, statistics retained); mirroring of each of
    ``mirror_axes`` (patch axes) with p 0.5; seg -1 -> 0; deep-supervision targets when ``ds_scales``
    has more than one entry; to tensors.

    ``light=True`` is the variant for very short CPU budgets: identical except that the low-resolution
    simulation (the most expensive intensity transform, about 0.4 s per 3D batch on one core) is dropped.

    ``cascade_labels`` (3d_cascade_fullres: the foreground labels): ``seg`` channel 1 holds the previous
    stage's segmentation; after seg -1 -> 0 it gets nnU-Net's cascade augmentation (random binary
    morphology p 0.4, random component removal p 0.2) and moves into ``data`` as one-hot channels
    (:class:`~autoseg.training.cascade.CascadeInputTransform`).
    """
    patch = [int(v) for v in patch_size]
    if len(patch) != dims:
        raise AutosegError(f"patch size {patch} does not match dims={dims}; check plans.json.")
    bad_axes = [a for a in mirror_axes if not 0 <= int(a) < dims]
    if bad_axes:
        raise AutosegError(f"mirror axes {list(mirror_axes)} must be patch axes 0..{dims - 1}; "
                           f"check 'mirror_axes' in plans.json.")
    spatial_patch = patch[1:] if dummy_2d and dims == 3 else patch
    tr: list[AbstractTransform] = []
    if dummy_2d and dims == 3:
        tr.append(Convert3DTo2DTransform())
    tr.append(SpatialTransform(
        spatial_patch, patch_center_dist_from_border=None, do_elastic_deform=False,
        do_rotation=True, angle_x=rotation["angle_x"], angle_y=rotation["angle_y"],
        angle_z=rotation["angle_z"], p_rot_per_axis=1.0, do_scale=True, scale=tuple(scale_range),
        border_mode_data="constant", border_cval_data=0, order_data=order_data,
        border_mode_seg="constant", border_cval_seg=-1, order_seg=order_seg, random_crop=False,
        p_el_per_sample=0.0, p_scale_per_sample=0.2, p_rot_per_sample=0.2,
        independent_scale_for_each_axis=False))
    if dummy_2d and dims == 3:
        tr.append(Convert2DTo3DTransform())
    tr += [
        GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2,
                              p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(contrast_range=(0.75, 1.25), p_per_sample=0.15),
    ]
    if not light:
        tr.append(SimulateLowResolutionTransform(
            zoom_range=(0.5, 1.0), per_channel=True, p_per_channel=0.5, order_downsample=0,
            order_upsample=3, p_per_sample=0.25, ignore_axes=(0,) if dummy_2d and dims == 3 else None))
    tr += [
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if len(mirror_axes) > 0:
        tr.append(MirrorTransform(tuple(int(a) for a in mirror_axes)))
    cascade = CascadeInputTransform(cascade_labels) if cascade_labels else None
    return Compose(tr + _finishing_transforms(ds_scales, cascade))


def validation_transforms(ds_scales: Sequence[Sequence[float]] | None,
                          cascade_labels: Sequence[int] | None = None) -> Compose:
    """Validation batches: seg -1 -> 0, [cascade: seg channel 1 -> one-hot data channels for
    ``cascade_labels``, not perturbed], deep-supervision targets (when > 1 scale), to tensors.

    Use with a loader whose initial patch size equals the final patch size.
    """
    cascade = CascadeInputTransform(cascade_labels, 0.0, 0.0) if cascade_labels else None
    return Compose(_finishing_transforms(ds_scales, cascade))
