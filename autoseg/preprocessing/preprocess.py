"""Preprocess cases for one configuration: crop, normalize, resample, transpose, store.

Per case (nnU-Net v2 order): crop to the nonzero region (label -1 outside the body), normalize
each channel (before resampling), resample image and labels to the plan's target spacing, then
transpose the axes by ``plan.transpose_forward``. The results are written to
``RUN/preprocessed/<data_identifier>/``: ``<case>.npy`` float32 (C, ...), ``<case>_seg.npy``
int8/int16 (1, ...) and, last, ``<case>.json`` (:class:`~autoseg.schemas.CaseProperties`), whose
presence marks the case complete. A case whose json records the current plan hash and source
hash is skipped, so adding cases only processes the new ones.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_save_npy
from ..errors import AutosegError
from ..schemas import (
    SCHEMA_VERSION,
    CaseFiles,
    CaseProperties,
    ConfigurationPlan,
    Geometry,
    save_json,
    stable_hash,
)
from ..workdir import Workdir
from .crop import crop_to_bbox, crop_to_nonzero
from .identity import preprocessing_hash
from .normalize import normalize
from .resample import (
    compute_new_shape,
    is_dummy_spacing,
    resample_data,
    resample_segmentation,
)

logger = logging.getLogger(__name__)

_PROCESS_OVERHEAD_GB = 0.3  # interpreter + numpy/scipy/skimage/SimpleITK in a worker process


# --------------------------------------------------------------------------- arrays

def target_spacing_zyx(spacing_zyx: Sequence[float], plan: ConfigurationPlan) -> list[float]:
    """The spacing (zyx, mm, original axis order) a case with ``spacing_zyx`` is resampled to.

    ``plan.spacing_zyx_mm`` with 3 values is used as is; with 2 values (a 2D configuration of 3D
    data) they are the spacings of the two axes other than ``plan.transpose_forward[0]`` (in
    original order) and that axis keeps the case's own spacing, like nnU-Net. An axis whose case
    spacing or target is the 2D dummy keeps the case's own spacing (it is never resampled).
    """
    target = [float(v) for v in plan.spacing_zyx_mm]
    if len(target) == 2:
        kept = int(plan.transpose_forward[0])
        others = [a for a in range(3) if a != kept]
        full = [float(v) for v in spacing_zyx]
        for a, v in zip(others, target):
            full[a] = v
        target = full
    if len(target) != 3:
        raise AutosegError(f"plan '{plan.name}': spacing_zyx_mm {plan.spacing_zyx_mm} has "
                           f"{len(target)} values; expected 3 (or 2 for a 2D configuration). "
                           f"Rerun `autoseg plan --overwrite`.")
    return [float(s) if is_dummy_spacing(s) or is_dummy_spacing(t) else t
            for s, t in zip(spacing_zyx, target)]


def _check_transpose(plan: ConfigurationPlan) -> list[int]:
    tf = [int(a) for a in plan.transpose_forward]
    if sorted(tf) != [0, 1, 2]:
        raise AutosegError(f"plan '{plan.name}': transpose_forward {plan.transpose_forward} is not a "
                           f"permutation of [0, 1, 2]; rerun `autoseg plan --overwrite`.")
    return tf


@dataclass(frozen=True)
class PreprocessedCase:
    """One case ready for the networks, and the way back to its image: what preprocessing hands to the
    sliding window and the sliding window's output to export.

    ``data`` float32 (C, *S); ``seg`` int16 (1, *S) (-1 outside the body) or None (prediction), where S
    is the resampled shape permuted by the plan's ``transpose_forward``; ``properties`` the case's
    :class:`CaseProperties` (geometry, crop box, shapes and spacings in the original axis order).
    """

    data: np.ndarray
    seg: np.ndarray | None
    properties: CaseProperties


def image_geometry(image: np.ndarray, geometry: Geometry | Sequence[float]) -> Geometry:
    """The Geometry of ``image`` (C, Z, Y, X): ``geometry`` itself, checked against the image's shape,
    or one made from a ``(z, y, x)`` spacing in mm (origin 0, identity direction)."""
    if isinstance(geometry, Geometry):
        if tuple(geometry.shape_zyx) != tuple(image.shape[1:]):
            raise AutosegError(f"image of shape (C, Z, Y, X) {tuple(image.shape)} does not match its "
                               f"geometry (size {geometry.size}, i.e. (Z, Y, X) {geometry.shape_zyx}); "
                               f"pass the geometry of this image")
        return geometry
    spacing = [float(s) for s in geometry]
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise AutosegError(f"spacing {tuple(geometry)} is not a (Z, Y, X) spacing in mm; expected three "
                           f"positive numbers (2D images: (999, y, x))")
    return Geometry(ndim=3, size=tuple(int(s) for s in reversed(image.shape[1:])),
                    spacing=tuple(reversed(spacing)), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def preprocess_arrays(data: np.ndarray, seg: np.ndarray | None, geometry: Geometry | Sequence[float],
                      plan: ConfigurationPlan, *, case_id: str = "case", file_ending: str = "") -> PreprocessedCase:
    """Crop, normalize, resample and transpose one case held in memory.

    ``data`` (C, Z, Y, X) float, ``seg`` (Z, Y, X) integer labels or None (prediction), ``geometry`` the
    image's :class:`Geometry` or its (z, y, x) spacing in mm. The returned properties hold, in the
    original axis order, the shape before and after the crop, the crop box ([[z0, z1], [y0, y1],
    [x0, x1]], half-open), the shape after resampling and the spacings (mm); ``class_locations`` and
    ``source_hash`` are left empty (the dataset's preprocessing fills them).
    """
    if data.ndim != 4:
        raise ValueError(f"preprocess_arrays expects data (C, Z, Y, X), got shape {data.shape}")
    if seg is not None:
        if seg.shape != data.shape[1:]:
            raise AutosegError(f"label shape {seg.shape} does not match the image shape "
                               f"{data.shape[1:]}; re-export the label on the image grid")
        seg = seg.astype(np.int16, copy=False)
    tf = _check_transpose(plan)
    geometry = image_geometry(data, geometry)
    spacing = [float(s) for s in geometry.spacing_zyx]
    target = target_spacing_zyx(spacing, plan)
    shape_before = [int(s) for s in data.shape[1:]]

    data_c, seg_c, bbox, mask_c = crop_to_nonzero(data, seg)
    norm_mask = seg_c >= 0 if seg_c is not None else mask_c
    data_n = normalize(data_c, plan.normalization, norm_mask)  # new float32 array; input untouched
    del data_c, norm_mask
    shape_after_crop = [int(s) for s in data_n.shape[1:]]

    rs = plan.resampling
    new_shape = compute_new_shape(shape_after_crop, spacing, target)
    data_r = resample_data(data_n, new_shape, spacing, target, order=rs.image_order,
                           separate_z_threshold=rs.separate_z_anisotropy_threshold,
                           low_res_axis_order=rs.low_res_axis_order)
    del data_n
    data_out = np.ascontiguousarray(data_r.transpose(0, *[a + 1 for a in tf]), dtype=np.float32)
    del data_r
    seg_out = None
    if seg_c is not None:
        seg_out = _resample_and_transpose_segmentation(seg_c, new_shape, spacing, target, plan)
    properties = CaseProperties(
        schema_version=SCHEMA_VERSION, case_id=case_id, geometry=geometry, file_ending=file_ending,
        shape_before_crop_zyx=shape_before, crop_bbox_zyx=[[int(lo), int(hi)] for lo, hi in bbox],
        shape_after_crop_zyx=shape_after_crop, spacing_before_zyx_mm=spacing,
        spacing_after_zyx_mm=[float(s) for s in target], shape_after_resampling_zyx=[int(s) for s in new_shape],
        class_locations={}, preprocessing_hash=preprocessing_hash(plan), source_hash="")
    return PreprocessedCase(data_out, seg_out, properties)


def _resample_and_transpose_segmentation(seg_c: np.ndarray, new_shape: Sequence[int],
                                         spacing: Sequence[float], target: Sequence[float],
                                         plan: ConfigurationPlan) -> np.ndarray:
    """Cropped labels (Z, Y, X) -> int16 (1, *S): one-hot order-``label_order`` resampling to
    ``new_shape``, then ``plan.transpose_forward``. The one place labels enter the preprocessed grid."""
    rs = plan.resampling
    seg_r = resample_segmentation(seg_c, new_shape, spacing, target, order=rs.label_order,
                                  separate_z_threshold=rs.separate_z_anisotropy_threshold,
                                  low_res_axis_order=rs.low_res_axis_order)
    return np.ascontiguousarray(seg_r.transpose(*_check_transpose(plan))[None], dtype=np.int16)


def segmentation_to_preprocessed_grid(seg: np.ndarray, properties: CaseProperties,
                                      plan: ConfigurationPlan) -> np.ndarray:
    """A label map at a case's original geometry -> the case's preprocessed grid for ``plan``.

    ``seg`` (Z, Y, X) integer labels of shape ``properties.shape_before_crop_zyx`` (e.g. a 3d_lowres
    prediction exported to the original image); ``properties`` is the case's sidecar in ``plan``'s
    preprocessed folder. Crops to its ``crop_bbox_zyx``, resamples (one-hot, ``label_order``) from
    ``spacing_before_zyx_mm`` to ``shape_after_resampling_zyx`` and transposes by
    ``plan.transpose_forward``: returns int16 (1, *S), S the stored data's spatial shape. Unlike
    preprocessing, voxels outside the nonzero mask keep their label (no -1).
    """
    expected = [int(v) for v in properties.shape_before_crop_zyx]
    if list(seg.shape) != expected:
        raise AutosegError(f"case {properties.case_id}: segmentation of shape {list(seg.shape)} does not "
                           f"match the original image shape {expected} recorded for {plan.name}; rerun "
                           f"`autoseg plan DATASET --workdir RUN` so the preprocessed data is current.")
    seg_c = crop_to_bbox(np.asarray(seg).astype(np.int16, copy=False), properties.crop_bbox_zyx)
    return _resample_and_transpose_segmentation(seg_c, properties.shape_after_resampling_zyx,
                                                properties.spacing_before_zyx_mm,
                                                properties.spacing_after_zyx_mm, plan)


def sample_class_locations(seg: np.ndarray, labels: Sequence[int], seed: int = 1234,
                           max_per_class: int = 10000, min_fraction: float = 0.01
                           ) -> dict[str, list[list[int]]]:
    """Sample voxel coordinates of every label in ``labels`` (nnU-Net's rule), seeded.

    ``seg`` is (Z, Y, X) or (1, Z, Y, X); coordinates are spatial ``[i0, i1, i2]`` in ``seg``'s
    own (stored, i.e. transposed) axis order, without the channel axis. Per label with n voxels,
    ``max(min(max_per_class, n), ceil(min_fraction * n))`` distinct voxels are drawn; a label
    absent from ``seg`` gets an empty list. Keys are the label values as strings.
    """
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    for label in labels:
        locs = np.argwhere(seg == label)
        n = len(locs)
        if n == 0:
            out[str(int(label))] = []
            continue
        k = max(min(max_per_class, n), int(math.ceil(n * min_fraction)))
        picked = locs[np.sort(rng.choice(n, size=k, replace=False))]
        out[str(int(label))] = picked.astype(int).tolist()
    return out


# --------------------------------------------------------------------------- one case on disk

def _case_paths(out_dir: str | os.PathLike, case_id: str) -> tuple[Path, Path, Path]:
    """(data npy, seg npy, properties json) of ``case_id`` in ``out_dir``; names from workdir.py."""
    names = Workdir(".")
    out_dir = Path(out_dir)
    return (out_dir / names.case_data_npy("x", case_id).name,
            out_dir / names.case_seg_npy("x", case_id).name,
            out_dir / names.case_properties_json("x", case_id).name)


def case_source_hash(case: CaseFiles, digests: Mapping[str, str] | None = None) -> str:
    """Hash of a case's source files' names and contents (``digests``: path -> content digest, e.g. the
    manifest's ``file_digests``; a file missing there is read). Timestamps play no part: a file touched
    or copied with the same bytes leaves the case current."""
    from ..store import file_hash

    entries = []
    for role, path in [("image", p) for p in case.images] + [("label", case.label)]:
        if path is None:
            continue
        digest = (digests or {}).get(str(path))
        if digest is None:
            try:
                digest = file_hash(path)
            except OSError:
                raise AutosegError(f"case {case.case_id}: {role} file {path} cannot be read; it was "
                                   f"listed when the dataset was checked. Restore it or rerun "
                                   f"`autoseg plan --overwrite`.") from None
        entries.append([role, Path(path).name, digest])
    return stable_hash(entries)


def _label_values(labels: Mapping[str, int] | Sequence[int]) -> list[int]:
    values = labels.values() if isinstance(labels, Mapping) else labels
    return sorted({int(v) for v in values})


def _read_case(case: CaseFiles) -> tuple[np.ndarray, np.ndarray | None, Any]:
    from ..data.image_io import read_image, read_label

    arrays, geometry = [], None
    for path in case.images:
        arr, geom = read_image(path)
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise AutosegError(f"case {case.case_id}: {path} has shape {arr.shape[1:]} but "
                               f"{case.images[0]} has {arrays[0].shape[1:]}; every channel of a case "
                               f"must be on the same grid; re-export it")
        arrays.append(arr)
        geometry = geometry or geom
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    seg = None
    if case.label is not None:
        seg_raw, _ = read_label(case.label)
        if seg_raw.dtype.kind == "f":
            seg_raw = np.rint(seg_raw)
        seg = seg_raw.astype(np.int16)
    return data, seg, geometry


def preprocess_case(case: CaseFiles, plan: ConfigurationPlan, out_dir: str | os.PathLike,
                    file_ending: str, labels: Mapping[str, int] | Sequence[int],
                    digests: Mapping[str, str] | None = None) -> CaseProperties:
    """Read, preprocess and store one case in ``out_dir`` (the plan's preprocessed folder).

    ``labels``: the dataset's label values (dict name -> value, or values). Writes ``<case>.npy``
    (float32, C, ...) and ``<case>_seg.npy`` (int8 when every label fits in [-1, 127], else int16,
    shape (1, ...)) atomically, then ``<case>.json``. Returns the CaseProperties written.
    ``digests``: content digests of the case's files when known (see :func:`case_source_hash`).
    """
    data_path, seg_path, json_path = _case_paths(out_dir, case.case_id)
    json_path.unlink(missing_ok=True)  # the case is incomplete until the new json is written
    source_hash = case_source_hash(case, digests)
    data, seg, geometry = _read_case(case)
    case_out = preprocess_arrays(data, seg, geometry, plan, case_id=case.case_id, file_ending=file_ending)
    del data, seg
    data_out, seg_out = case_out.data, case_out.seg
    values = _label_values(labels)
    class_locations: dict[str, list[list[int]]] = {}
    atomic_save_npy(data_path, data_out)
    del data_out
    if seg_out is not None:
        class_locations = sample_class_locations(seg_out, [v for v in values if v > 0])
        fits_int8 = -128 <= int(seg_out.min()) and int(seg_out.max()) <= 127  # the ignore label too
        atomic_save_npy(seg_path, seg_out.astype(np.int8 if fits_int8 else np.int16))
    props = replace(case_out.properties, class_locations=class_locations, source_hash=source_hash)
    save_json(props, json_path)
    return props
