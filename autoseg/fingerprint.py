"""Dataset fingerprint: what planning needs to know about a raw dataset, from one pass over it.

Per case: spacing and shape (array order, see autoseg/schemas), shape and relative size after cropping
to the nonzero region, voxel count per label. Per channel: foreground (label > 0) intensity
statistics from a bounded, seeded sample (nnU-Net's rule: ``max_intensity_samples / n_cases``
voxels per case, drawn with replacement). Per foreground label: volume, connected components
(full connectivity) and their sizes, and the cases where the label is absent.

Cases are read in worker processes that return only plain data and small sample arrays, so memory
stays bounded by the sample budget however large the dataset is.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import hardware
from .errors import AutosegError, DatasetError
from .preprocessing.crop import crop_to_nonzero
from .schemas import (SCHEMA_VERSION, CaseFiles, CaseFingerprint, DatasetManifest, Fingerprint,
                      IntensityStats, LabelStats)

logger = logging.getLogger(__name__)

# Peak memory of one case in a worker, as a multiple of the float32 image size (the image, its
# crop, boolean masks, the label, component maps) — a deliberately generous estimate.
MEMORY_FACTOR = 6.0


@dataclass
class _CaseResult:
    """What a worker sends back for one case: plain numbers and small sample arrays."""

    case: CaseFingerprint
    samples: np.ndarray  # float32 (C, n): foreground samples, or nonzero samples when fallback
    fallback: bool  # True when the case has no foreground: samples come from nonzero voxels
    components: dict[int, np.ndarray]  # label -> int64 component sizes in voxels
    voxel_volume_mm3: float


def _voxel_volume_mm3(spacing_zyx: tuple[float, float, float], ndim: int) -> float:
    """Volume of one voxel; for 2D data the pixel area in mm2 (the dummy first spacing is skipped)."""
    s = spacing_zyx[1:] if ndim == 2 else spacing_zyx
    return float(np.prod(np.asarray(s, dtype=np.float64)))


def _sample(values_mask: np.ndarray, data: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    """``n`` voxels drawn with replacement where ``values_mask`` is set, every channel -> (C, n)."""
    idx = np.flatnonzero(values_mask)
    if idx.size == 0 or n <= 0:
        return np.zeros((data.shape[0], 0), dtype=np.float32)
    pick = idx[rng.randint(0, idx.size, size=n)]
    flat = data.reshape(data.shape[0], -1)
    return np.ascontiguousarray(flat[:, pick], dtype=np.float32)


def fingerprint_case(files: CaseFiles, foreground_labels: list[int], ndim: int,
                     samples_per_case: int, seed: int, ignore_label: int | None = None) -> _CaseResult:
    """Fingerprint one case; runs in a worker. Reads every channel and the label, keeps nothing.
    Voxels with ``ignore_label`` are no foreground (their count is kept under that label's key)."""
    from .data.image_io import read_image, read_label

    channels = []
    geometry = None
    for path in files.images:
        arr, geom = read_image(path)
        channels.append(arr)
        if geometry is None:  # the first channel's file defines the case's geometry
            geometry = geom
    data = channels[0] if len(channels) == 1 else np.concatenate(channels, axis=0)
    del channels
    if files.label is not None:
        seg, _ = read_label(files.label)
        if tuple(seg.shape) != tuple(data.shape[1:]):
            raise AutosegError(f"case {files.case_id}: label {files.label} has shape {tuple(seg.shape)} "
                               f"(z, y, x) but its image has {tuple(data.shape[1:])}; re-export the label "
                               f"on the image grid")
    else:
        seg = np.zeros(data.shape[1:], dtype=np.uint8)
    spacing = tuple(float(v) for v in geometry.spacing_zyx)
    shape = tuple(int(v) for v in data.shape[1:])

    cropped, _, _, _ = crop_to_nonzero(data)
    shape_after = tuple(int(v) for v in cropped.shape[1:])
    relative = float(np.prod(shape_after, dtype=np.float64) / max(1.0, np.prod(shape, dtype=np.float64)))
    del cropped

    rng = np.random.RandomState(seed)
    foreground = seg > 0
    if ignore_label is not None:
        foreground &= seg != ignore_label
    fallback = not foreground.any()
    if fallback:  # no labelled voxel in this case: nonzero voxels stand in (used only if all cases are so)
        samples = _sample(np.any(data != 0, axis=0), data, samples_per_case, rng)
    else:
        samples = _sample(foreground, data, samples_per_case, rng)
    del foreground

    structure = ndimage.generate_binary_structure(3, 3)  # full connectivity; a (1, Y, X) slice is 2D-full
    label_voxels: dict[str, int] = {}
    components: dict[int, np.ndarray] = {}
    seg_int = seg if np.issubdtype(seg.dtype, np.integer) else np.rint(seg).astype(np.int32)
    # Bounding box of every label value in one pass, so each label is analysed only inside its box
    # (datasets with a hundred small organs would otherwise need a hundred full-volume passes).
    boxes = ndimage.find_objects(np.clip(seg_int, 0, None), max_label=max(foreground_labels, default=0))
    for lab in foreground_labels:
        box = boxes[lab - 1] if 0 < lab <= len(boxes) else None
        mask = seg_int[box] == lab if box is not None else np.zeros((0, 0, 0), dtype=bool)
        count = int(mask.sum())
        label_voxels[str(lab)] = count
        if count:
            cc, n = ndimage.label(mask, structure=structure)
            components[lab] = np.bincount(cc.ravel(), minlength=n + 1)[1:].astype(np.int64)
        else:
            components[lab] = np.zeros(0, dtype=np.int64)
    if ignore_label is not None:
        label_voxels[str(ignore_label)] = int(np.count_nonzero(seg_int == ignore_label))
    case = CaseFingerprint(case_id=files.case_id, spacing_zyx_mm=spacing, shape_zyx=shape,
                           shape_after_crop_zyx=shape_after, relative_size_after_crop=relative,
                           label_voxels=label_voxels)
    return _CaseResult(case=case, samples=samples, fallback=fallback, components=components,
                       voxel_volume_mm3=_voxel_volume_mm3(spacing, ndim))


def _fingerprint_case_in_worker(files: CaseFiles, foreground_labels: list[int], ndim: int,
                                samples_per_case: int, seed: int, ignore_label: int | None = None) -> _CaseResult:
    """:func:`fingerprint_case` for a pool: user errors come back as plain AutosegError, because
    subclasses with extra constructor arguments (DatasetError) cannot be unpickled by the parent."""
    try:
        return fingerprint_case(files, foreground_labels, ndim, samples_per_case, seed, ignore_label)
    except AutosegError as e:
        raise AutosegError(str(e)) from None


def _largest_case_gb(manifest: DatasetManifest) -> float:
    """Estimated peak memory (GB) of fingerprinting the largest case, from image headers.

    The three biggest files on disk are taken as the biggest images; their headers give the voxel
    count (times pixel components), times the files per case, 4 bytes and :data:`MEMORY_FACTOR`.
    """
    from .data.image_io import read_image_info

    sizes = []
    for c in manifest.cases:
        for p in c.images:
            try:
                sizes.append((os.path.getsize(p), p))
            except OSError:
                continue
    files_per_case = max(len(c.images) for c in manifest.cases)
    best_voxels = 0
    for nbytes, path in sorted(sizes, reverse=True)[:3]:
        try:
            geom = read_image_info(path)
            voxels = int(np.prod(geom.size, dtype=np.int64)) * geom.components
        except AutosegError:  # unreadable header: the worker will report it; assume ~10x compression
            voxels = nbytes * 10 // 4
        best_voxels = max(best_voxels, voxels)
    return best_voxels * files_per_case * 4 * MEMORY_FACTOR / hardware.GB


def _run_cases(manifest: DatasetManifest, num_workers: int | None, progress: bool, seed: int,
               samples_per_case: int) -> list[_CaseResult]:
    from tqdm.auto import tqdm

    labels = manifest.foreground_labels
    cases = list(manifest.cases)
    if num_workers is None:
        per_case_gb = max(0.05, _largest_case_gb(manifest))
        num_workers = hardware.worker_count(per_case_gb, max_workers=len(cases))
        logger.info("fingerprint: %d worker(s) (about %.2f GB per case)", num_workers, per_case_gb)
    results: list[_CaseResult | None] = [None] * len(cases)
    bar = tqdm(total=len(cases), desc="fingerprint", unit="case", disable=None if progress else True)
    try:
        if num_workers <= 1:
            for i, c in enumerate(cases):
                results[i] = fingerprint_case(c, labels, manifest.ndim, samples_per_case, seed + i,
                                              manifest.ignore_label)
                bar.update()
        else:
            # The platform's default start method (fork on Linux): unlike spawn, it needs no
            # `if __name__ == "__main__"` guard in the user's script or notebook.
            with cf.ProcessPoolExecutor(max_workers=num_workers) as pool:
                futures = {pool.submit(_fingerprint_case_in_worker, c, labels, manifest.ndim, samples_per_case,
                                       seed + i, manifest.ignore_label): i for i, c in enumerate(cases)}
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
    finally:
        bar.close()
    return [r for r in results if r is not None]


def _intensity_stats(channel: int, name: str, values: np.ndarray) -> IntensityStats:
    v = values.astype(np.float64, copy=False)
    if v.size == 0:
        nan = float("nan")
        return IntensityStats(channel=channel, name=name, mean=nan, std=nan, median=nan, min=nan, max=nan,
                              percentile_00_5=nan, percentile_99_5=nan, num_samples=0)
    p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
    return IntensityStats(channel=channel, name=name, mean=float(v.mean()), std=float(v.std()),
                          median=float(p50), min=float(v.min()), max=float(v.max()),
                          percentile_00_5=float(p005), percentile_99_5=float(p995), num_samples=int(v.size))


def _label_stats(label: int, name: str, results: list[_CaseResult]) -> LabelStats:
    voxels = {r.case.case_id: r.case.label_voxels[str(label)] for r in results}
    comps = {r.case.case_id: int(r.components[label].size) for r in results}
    absent = [cid for cid, n in voxels.items() if n == 0]
    present = [r for r in results if voxels[r.case.case_id] > 0]
    volumes = [voxels[r.case.case_id] * r.voxel_volume_mm3 for r in present]
    sizes = [r.components[label] for r in present]
    sizes_mm3 = [r.components[label] * r.voxel_volume_mm3 for r in present]
    all_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    all_mm3 = np.concatenate(sizes_mm3) if sizes_mm3 else np.zeros(0)
    return LabelStats(
        label=label, name=name, voxels_per_case=voxels,
        volume_mm3_median=float(np.median(volumes)) if volumes else 0.0,
        components_per_case=comps,
        component_size_voxels_min=int(all_sizes.min()) if all_sizes.size else 0,
        component_size_voxels_median=float(np.median(all_sizes)) if all_sizes.size else 0.0,
        component_size_voxels_max=int(all_sizes.max()) if all_sizes.size else 0,
        component_size_mm3_median=float(np.median(all_mm3)) if all_mm3.size else 0.0,
        absent_in_cases=absent,
    )


def extract_fingerprint(manifest: DatasetManifest, *, num_workers: int | None = None, progress: bool = True,
                        seed: int = 1234, max_intensity_samples: int = 10_000_000) -> Fingerprint:
    """Fingerprint the training cases of ``manifest``.

    Intensities: per channel, ``max_intensity_samples // n_cases`` foreground (label > 0) voxels per
    case, drawn with replacement by ``RandomState(seed + case index)``; statistics in float64 over
    the pooled samples. If no case has any foreground, all nonzero voxels are used (with a warning).
    Labels: voxel counts and connected components (full connectivity) per case in the original
    (uncropped) label. ``volume_mm3_median`` is the median over the cases where the label is
    present; for 2D data "mm3" values are areas in mm2 (the dummy spacing is not counted).
    num_workers: None picks it from free RAM and cores (hardware.worker_count); 1 runs inline.
    Same manifest and seed give the same fingerprint whatever the number of workers.
    """
    n_cases = len(manifest.cases)
    if n_cases == 0:
        raise DatasetError(manifest.root, ["no training cases found in imagesTr; add cases "
                                           "(imagesTr/<case>_0000<ext> with labelsTr/<case><ext>)"])
    samples_per_case = max(1, int(max_intensity_samples) // n_cases)
    results = _run_cases(manifest, num_workers, progress, seed, samples_per_case)

    n_ch = manifest.num_channels or results[0].samples.shape[0]
    if any(r.samples.shape[0] != n_ch for r in results):
        bad = [f"{r.case.case_id}: {r.samples.shape[0]} channel(s), dataset.json declares {n_ch}"
               for r in results if r.samples.shape[0] != n_ch]
        raise DatasetError(manifest.root, bad + ["fix channel_names in dataset.json or the case's image files"])
    fg = [r.samples for r in results if not r.fallback]
    if not fg or all(s.shape[1] == 0 for s in fg):
        logger.warning("no foreground (label > 0) voxel in any case of %s: intensity statistics use all "
                       "nonzero voxels instead", manifest.name)
        fg = [r.samples for r in results]
    pooled = np.concatenate(fg, axis=1) if fg else np.zeros((n_ch, 0), dtype=np.float32)
    names = manifest.channel_names
    intensity = [_intensity_stats(c, names.get(str(c), f"channel_{c}"), pooled[c]) for c in range(n_ch)]
    del pooled, fg

    label_names = {v: k for k, v in manifest.labels.items()}
    label_stats = [_label_stats(lab, label_names.get(lab, str(lab)), results)
                   for lab in manifest.foreground_labels]
    for ls in label_stats:
        if ls.absent_in_cases:
            logger.info("label %d (%s) is absent in %d of %d cases", ls.label, ls.name,
                        len(ls.absent_in_cases), n_cases)
    cases = [r.case for r in results]
    ignored = None
    if manifest.ignore_label is not None:
        key = str(manifest.ignore_label)
        n_ignored = sum(c.label_voxels.get(key, 0) for c in cases)
        n_all = sum(int(np.prod(c.shape_zyx, dtype=np.int64)) for c in cases)
        ignored = n_ignored / max(1, n_all)
        logger.info("ignore label %d: %d voxels (%.1f%% of all) are unannotated and count for no loss and no "
                    "metric", manifest.ignore_label, n_ignored, 100 * ignored)
    return Fingerprint(
        schema_version=SCHEMA_VERSION, dataset_name=manifest.name, dataset_hash=manifest.dataset_hash,
        ndim=manifest.ndim, channel_names=dict(manifest.channel_names), labels=dict(manifest.labels),
        cases=cases, intensity=intensity, label_stats=label_stats,
        median_relative_size_after_crop=float(np.median([c.relative_size_after_crop for c in cases])),
        intensity_sample_seed=seed, label_spec=manifest.label_spec, ignored_voxel_fraction=ignored,
    )
