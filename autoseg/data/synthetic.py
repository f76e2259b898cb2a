"""Synthetic datasets in nnU-Net v2 layout, for tests and the built-in demo.

``make_synthetic_dataset`` writes ``ROOT/dataset.json``, ``ROOT/imagesTr/<case>_<cccc><ending>``,
``ROOT/labelsTr/<case><ending>`` (and ``ROOT/imagesTs/`` on request). Each case holds one "body"
(a large ellipsoid of background tissue; outside it the image is exactly 0, so crop-to-nonzero has
something to crop) and one ellipsoid per foreground label at a random position, with a distinct
intensity per label and channel plus Gaussian noise. Label k+1 is smaller than label k (radius x 0.7,
about a third of the volume), and the objects do not overlap, so every case contains every label and
label 1 has the most voxels. ``bias_field_strength`` > 0 multiplies each case's intensities by a
smooth random field (MRI-like intensity inhomogeneity) before the noise is added.

Geometry is consistent within a case: ITK spacing is ``spacing_zyx`` reversed, the origin is non-zero
(except for PNG/TIFF/BMP, which cannot store an origin) and the direction is the identity.
Everything is seeded: the same arguments write the same files.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoseg.data.image_io import NATURAL_IMAGE_ENDINGS, write_image, write_segmentation
from autoseg.schemas import Geometry

DEFAULT_CHANNEL_NAMES = ("MRI", "CT", "T2", "ADC", "FLAIR", "PD")
RGB_CHANNEL_NAMES = ("R", "G", "B")
ORIGIN_3D = (12.5, -30.0, 4.0)  # ITK order (x, y, z), mm

# intensities: body, then each label adds LABEL_STEP * label * (1 + 0.5 * channel); noise std NOISE
BODY, LABEL_STEP, NOISE = 60.0, 60.0, 8.0


def case_id(index: int) -> str:
    """The case id of the ``index``-th synthetic case (training and test cases share the numbering)."""
    return f"synth_{index:03d}"


def _ellipsoid(shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2
            + ((xx - center[2]) / radii[2]) ** 2) <= 1.0


def _place(rng: np.random.Generator, shape: np.ndarray, radii: np.ndarray,
           taken: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A centre where an ellipsoid of ``radii`` fits inside ``shape`` and (if possible) touches no other."""
    lo = np.minimum(radii + 0.5, (shape - 1) / 2)
    hi = np.maximum(shape - 1 - radii - 0.5, lo)
    center = rng.uniform(lo, hi)
    for _ in range(50):
        if all(np.sum(((center - c) / (radii + r)) ** 2) > 1.0 for c, r in taken):
            break
        center = rng.uniform(lo, hi)
    return center


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    """A smooth multiplicative field (Z, Y, X) with values in [exp(-strength), exp(strength)].

    exp of a random quadratic polynomial of the normalized coordinates (-1..1 per axis; axes of
    length 1 are constant), centred on 0 and scaled so that its largest magnitude is ``strength``:
    the slowly varying intensity inhomogeneity of MRI coils, without any sharp edge.
    """
    zz, yy, xx = np.meshgrid(*[np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape],
                             indexing="ij", sparse=True)
    terms = [zz, yy, xx, zz * yy, zz * xx, yy * xx, zz ** 2, yy ** 2, xx ** 2]
    coefficients = rng.normal(0.0, 1.0, len(terms))
    log_field = sum(c * t for c, t in zip(coefficients, terms)) + np.zeros(shape)
    log_field -= log_field.mean()
    peak = float(np.abs(log_field).max())
    if peak > 0:
        log_field *= strength / peak
    return np.exp(log_field)


def _make_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing_zyx: np.ndarray,
               n_channels: int, n_labels: int, flat: bool, offset: float,
               bias_strength: float = 0.0, nested: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (C, Z, Y, X) float32 and label (Z, Y, X) uint8. ``flat``: 2D (Z == 1). ``nested``:
    label k+1 lies inside label k (a tumour's edema, core and enhancing part)."""
    shp = np.array(shape, dtype=float)
    extent_mm = shp * spacing_zyx
    if flat:
        extent_mm[0] = np.inf
    base_mm = 0.2 * float(np.min(extent_mm))
    label = np.zeros(shape, dtype=np.uint8)
    body_r = np.maximum(shp * rng.uniform(0.42, 0.48, 3), 1.0)
    body_c = (shp - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * shp
    if flat:
        body_c[0] = 0.0
    body = _ellipsoid(shape, body_c, body_r)
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(1, n_labels + 1):
        radius_mm = base_mm * (0.7 ** (k - 1)) * rng.uniform(0.9, 1.1, 3)
        radii = np.maximum(radius_mm / spacing_zyx, 1.0)
        if flat:
            radii[0] = 1.0
        if nested and taken:  # inside the previous label, ~0.6 of its size, a little off-centre
            prev_c, prev_r = taken[-1]
            radii = np.maximum(prev_r * rng.uniform(0.55, 0.65, 3), 1.0)
            if flat:
                radii[0] = 1.0
            center = prev_c + (prev_r - radii) * rng.uniform(-0.4, 0.4, 3)
            if flat:
                center[0] = 0.0
            taken.append((center, radii))
            label[_ellipsoid(shape, center, radii)] = k
            continue
        center = _place(rng, shp, radii, taken)
        if flat:
            center[0] = 0.0
        taken.append((center, radii))
        label[_ellipsoid(shape, center, radii) & (label == 0)] = k
    image = np.zeros((n_channels, *shape), dtype=np.float32)
    for c in range(n_channels):
        values = BODY + LABEL_STEP * label * (1.0 + 0.5 * c)
        if bias_strength > 0:  # drawn only when asked for, so datasets without it stay unchanged
            values = values * bias_field(rng, shape, bias_strength)
        noisy = values + rng.normal(0.0, NOISE, shape)
        image[c] = np.where(body | (label > 0), noisy + offset, 0.0)
    return image, label


def make_synthetic_dataset(root: str | Path, *, ndim: int = 3, n_cases: int = 6,
                           shape: Sequence[int] = (24, 32, 32),
                           spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                           n_channels: int = 1, n_labels: int = 2, file_ending: str = ".nii.gz",
                           channel_names: Sequence[str] | None = None, seed: int = 0, rgb: bool = False,
                           with_test_cases: int = 0, intensity_offset: float = 0.0,
                           bias_field_strength: float = 0.0, test_labels: bool = False,
                           regions: bool = False, ignore_fraction: float = 0.0) -> Path:
    """Write a valid nnU-Net-layout dataset of ``n_cases`` training cases at ``root``; return ``root``.

    ``shape`` and ``spacing_zyx`` (mm) are in array order (Z, Y, X); for ``ndim=2`` pass (Y, X) (a
    leading third value is ignored). ``n_labels`` foreground labels (plus background 0);
    ``n_channels`` scalar files per case, or with ``rgb=True`` (PNG/TIFF/BMP, 2D only) one RGB file
    per case declared as channels R, G, B. ``channel_names`` defaults to "MRI", "CT", ...
    ``with_test_cases`` extra cases go to imagesTs/ (images only; with ``test_labels`` also their
    reference labels in labelsTs/, for evaluating held-out predictions). ``intensity_offset`` is added
    to every voxel inside the body. ``bias_field_strength`` s > 0: each channel of each case is
    multiplied by a smooth random field in [exp(-s), exp(s)] (see :func:`bias_field`) before the
    noise. PNG/BMP intensities are clipped to 0..255.

    ``regions``: nested labels (label k+1 inside label k) declared as nnU-Net v2 regions, BraTS-like:
    region k covers labels k..n_labels, ``regions_class_order`` [1..n_labels]. ``ignore_fraction`` f > 0:
    the label files mark that share of the slices (rows in 2D) of every training case as unannotated with
    the ignore label n_labels + 1 (``"ignore"`` in dataset.json); the images are unchanged.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if file_ending in NATURAL_IMAGE_ENDINGS and ndim != 2:
        raise ValueError(f"{file_ending} holds 2D images only: pass ndim=2")
    if rgb and file_ending not in NATURAL_IMAGE_ENDINGS:
        raise ValueError(f"rgb=True needs a 2D natural-image format {NATURAL_IMAGE_ENDINGS}, "
                         f"got {file_ending}")
    if not 0.0 <= bias_field_strength <= 2.0:
        raise ValueError(f"bias_field_strength must be 0..2 (log of the largest factor), got {bias_field_strength}")
    if not 1 <= n_labels <= 250:
        raise ValueError(f"n_labels must be 1..250, got {n_labels}")
    root = Path(root)
    shape3 = (1, *tuple(shape)[-2:]) if ndim == 2 else tuple(shape)
    spacing3 = (1.0, *tuple(spacing_zyx)[-2:]) if ndim == 2 else tuple(spacing_zyx)
    if len(shape3) != 3 or len(spacing3) != 3:
        raise ValueError(f"shape/spacing_zyx need {ndim} values, got {shape} / {spacing_zyx}")
    n_img_channels = 3 if rgb else n_channels
    if channel_names is None:
        channel_names = RGB_CHANNEL_NAMES if rgb else [DEFAULT_CHANNEL_NAMES[c % len(DEFAULT_CHANNEL_NAMES)]
                                                       for c in range(n_channels)]
    if len(channel_names) != n_img_channels:
        raise ValueError(f"{len(channel_names)} channel_names for {n_img_channels} channels")

    itk_spacing = tuple(float(v) for v in reversed(spacing3))[: ndim]
    natural = file_ending in NATURAL_IMAGE_ENDINGS
    origin = (0.0,) * ndim if natural else ORIGIN_3D[:ndim]
    geometry = Geometry(ndim=ndim, size=tuple(int(v) for v in reversed(shape3))[: ndim], spacing=itk_spacing,
                        origin=origin, direction=tuple(np.eye(ndim).ravel().tolist()),
                        components=n_img_channels if rgb else 1)
    rng = np.random.default_rng(seed)
    spacing_arr = np.array(spacing3, dtype=float)
    for i in range(n_cases + with_test_cases):
        cid = case_id(i)
        image, label = _make_case(rng, shape3, spacing_arr, n_img_channels, n_labels, ndim == 2,
                                  intensity_offset, bias_field_strength, nested=regions)
        if ignore_fraction > 0 and i < n_cases:
            axis = 1 if ndim == 2 else 0
            n = label.shape[axis]
            hidden = rng.choice(n, size=max(1, int(round(ignore_fraction * n))), replace=False)
            index = [slice(None)] * 3
            index[axis] = np.sort(hidden)
            label[tuple(index)] = n_labels + 1
        if natural:
            image = np.clip(image, 0, 255)
        folder = root / ("imagesTr" if i < n_cases else "imagesTs")
        if rgb:
            write_image(image, geometry, folder / f"{cid}_0000{file_ending}")
        else:
            scalar_geometry = Geometry(geometry.ndim, geometry.size, geometry.spacing, geometry.origin,
                                       geometry.direction, 1)
            for c in range(n_channels):
                write_image(image[c:c + 1], scalar_geometry, folder / f"{cid}_{c:04d}{file_ending}")
        if i < n_cases or test_labels:
            write_segmentation(label, geometry, root / ("labelsTr" if i < n_cases else "labelsTs")
                               / f"{cid}{file_ending}")

    labels: dict = {"background": 0, **{f"label_{k}": k for k in range(1, n_labels + 1)}}
    if regions:
        labels = {"background": 0, **{f"region_{k}": list(range(k, n_labels + 1)) for k in range(1, n_labels + 1)}}
    if ignore_fraction > 0:
        labels["ignore"] = n_labels + 1
    dataset_json = {"channel_names": {str(c): name for c, name in enumerate(channel_names)},
                    "labels": labels, "numTraining": n_cases, "file_ending": file_ending,
                    "name": f"synthetic {ndim}D dataset (seed {seed})"}
    if regions:
        dataset_json["regions_class_order"] = list(range(1, n_labels + 1))
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")
    return root
