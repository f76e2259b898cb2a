"""Segmentation metrics per case and class (Dice, IoU, optional HD95 and surface Dice) and summaries.

Arrays are label maps ``(Z, Y, X)`` (2D images: ``(1, Y, X)``); spacings are ``*_zyx`` in mm.

Empty-case conventions (nnU-Net silently drops both-empty cases through NaN; here they are counted):
  * reference and prediction both empty for a class: Dice, IoU, HD95 and surface Dice are ``None``
    and the class entry has ``both_empty = True``; summaries count these cases.
  * exactly one of them empty (``one_empty = True``): Dice = IoU = 0 and surface Dice = 0 (no
    surface point can be within tolerance of a missing surface); HD95 is undefined (infinite) and
    stored as ``None``; summaries report how many cases had no HD95 for that reason, so a mean HD95
    is always read together with that count.

Surface metrics use the voxels of each mask that touch its outside (the mask minus its erosion by
the face-connected structuring element) and exact Euclidean distances in millimetres
(``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``). HD95 follows MedPy (used by
nnU-Net v1): the 95th percentile of the pooled distances in both directions. Surface Dice (NSD)
counts surface voxels: (pred surface within tolerance of ref + ref surface within tolerance of
pred) / (all surface voxels). Axes of length 1 (2D images) are dropped before computing surfaces.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .data import labels as _labels
from .data.raw_checks import ending_of
from .errors import AutosegError

log = logging.getLogger(__name__)

_WORST_CASES_LISTED = 3


# --------------------------------------------------------------------------- overlap metrics

Item = int | Sequence[int]  # what is scored: a label value, or a region (the label values it covers)
item_key = _labels.item_key  # "2" for label 2, "1,2,3" for the region of labels 1, 2 and 3


def _item_values(item: Item) -> list[int]:
    return [int(item)] if isinstance(item, (int, np.integer)) else [int(v) for v in item]


def _is_background(item: Item) -> bool:
    return _item_values(item) == [0]


def confusion_counts(pred: np.ndarray, ref: np.ndarray, label: Item,
                     valid: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts of ``label`` (a value, or a region's values) in ``pred`` against ``ref``
    (same shape), over the voxels where ``valid`` is True (all when None: see the ignore label)."""
    from .data.labels import item_mask

    p = item_mask(pred, _item_values(label))
    r = item_mask(ref, _item_values(label))
    if valid is not None:
        p &= valid
        r &= valid
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    tn = int(p.size if valid is None else np.count_nonzero(valid)) - tp - fp - fn
    return tp, fp, fn, tn


def dice(tp: int, fp: int, fn: int) -> float | None:
    """2 tp / (2 tp + fp + fn); ``None`` when reference and prediction are both empty."""
    denom = 2 * tp + fp + fn
    return None if denom == 0 else 2.0 * tp / denom


def iou(tp: int, fp: int, fn: int) -> float | None:
    """tp / (tp + fp + fn); ``None`` when reference and prediction are both empty."""
    denom = tp + fp + fn
    return None if denom == 0 else tp / denom


# --------------------------------------------------------------------------- surface metrics

def _drop_singleton_axes(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
                         ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    keep = [i for i, s in enumerate(a.shape) if s > 1] or [a.ndim - 1]
    shape = tuple(a.shape[i] for i in keep)
    return a.reshape(shape), b.reshape(shape), [float(spacing[i]) for i in keep]


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_zyx: Sequence[float]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) pred-surface -> ref-surface and ref-surface -> pred-surface; None if one is empty."""
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"masks differ in shape: {pred_mask.shape} vs {ref_mask.shape}")
    if len(spacing_zyx) != pred_mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match a {pred_mask.ndim}D mask")
    if not pred_mask.any() or not ref_mask.any():
        return None
    pred_mask, ref_mask, spacing = _drop_singleton_axes(pred_mask, ref_mask, spacing_zyx)
    # work inside the union's bounding box plus one voxel: every surface voxel lies inside it and
    # the margin keeps erosion at the box edge identical to erosion in the full image
    union = pred_mask | ref_mask
    box = []
    for axis in range(union.ndim):
        nz = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(nz[0]) - 1, 0), min(int(nz[-1]) + 2, union.shape[axis])))
    pred_s = _surface(pred_mask[tuple(box)])
    ref_s = _surface(ref_mask[tuple(box)])
    dist_to_ref = ndimage.distance_transform_edt(~ref_s, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~pred_s, sampling=spacing)
    return dist_to_ref[pred_s], dist_to_pred[ref_s]


def _hd95_from(d: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.percentile(np.concatenate(d), 95))


def _nsd_from(d: tuple[np.ndarray, np.ndarray], tolerance_mm: float) -> float:
    within = int(np.count_nonzero(d[0] <= tolerance_mm)) + int(np.count_nonzero(d[1] <= tolerance_mm))
    return within / (d[0].size + d[1].size)


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_zyx: Sequence[float]) -> float | None:
    """95th-percentile symmetric surface distance in mm; ``None`` when either mask is empty."""
    d = _surface_distances(pred_mask, ref_mask, spacing_zyx)
    return None if d is None else _hd95_from(d)


def surface_dice(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_zyx: Sequence[float],
                 tolerance_mm: float) -> float | None:
    """Fraction of surface voxels within ``tolerance_mm`` of the other surface.

    ``None`` when both masks are empty, 0.0 when exactly one is.
    """
    pred_any, ref_any = bool(np.any(pred_mask)), bool(np.any(ref_mask))
    if not pred_any and not ref_any:
        return None
    d = _surface_distances(pred_mask, ref_mask, spacing_zyx)
    return 0.0 if d is None else _nsd_from(d, tolerance_mm)


# --------------------------------------------------------------------------- per case

def evaluate_case(pred: np.ndarray, ref: np.ndarray, labels: Sequence[Item], spacing_zyx: Sequence[float],
                  *, surface_metrics: bool = False, tolerance_mm: float = 1.0,
                  ignore_label: int | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of one case: ``{item_key(label): {dice, iou, tp, fp, fn, tn, n_pred, n_ref, both_empty,
    one_empty[, hd95, surface_dice]}}`` for every label in ``labels`` (a label value, or a region given as
    the label values it covers, e.g. ``[1, 2, 3]``). JSON-ready values.

    ``pred`` and ``ref`` are label maps of equal shape; ``spacing_zyx`` in mm (surface metrics only).
    Voxels where ``ref`` holds ``ignore_label`` count for nothing (neither in the prediction nor in the
    reference).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise AutosegError(f"prediction has shape {pred.shape} but the reference has {ref.shape}; "
                           f"predictions must be exported at the reference image's geometry")
    from .data.labels import item_mask, valid_mask

    valid = valid_mask(ref, ignore_label)
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        tp, fp, fn, tn = confusion_counts(pred, ref, label, valid)
        n_pred, n_ref = tp + fp, tp + fn
        entry: dict[str, Any] = {
            "dice": dice(tp, fp, fn), "iou": iou(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "n_pred": n_pred, "n_ref": n_ref, "both_empty": n_pred == 0 and n_ref == 0,
            "one_empty": (n_pred == 0) != (n_ref == 0),
        }
        if surface_metrics:
            pm, rm = item_mask(pred, _item_values(label)), item_mask(ref, _item_values(label))
            if valid is not None:
                pm, rm = pm & valid, rm & valid
            d = _surface_distances(pm, rm, spacing_zyx)
            entry["hd95"] = None if d is None else _hd95_from(d)
            entry["surface_dice"] = (None if entry["both_empty"] else
                                     0.0 if d is None else _nsd_from(d, tolerance_mm))
        out[item_key(label)] = entry
    return out


# --------------------------------------------------------------------------- summaries

def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: Sequence[Item],
              label_names: Mapping[int | str, str] | None = None) -> dict[str, Any]:
    """Aggregate :func:`evaluate_case` results over cases.

    Returns ``{"num_cases", "labels", "per_class": {str(label): {name, dice, iou[, hd95,
    surface_dice], cases_defined, both_empty_cases, one_empty_cases, tp, fp, fn, worst_cases}},
    "foreground_mean": {dice, iou[, hd95, surface_dice]}, "per_case"}``. A class mean is over the
    cases where the metric is defined (``None`` if none); ``foreground_mean`` is the mean of the
    class means of labels other than 0. ``worst_cases`` lists the lowest-Dice cases. ``labels`` may hold
    regions (lists of label values); ``label_names`` is keyed by :func:`item_key` (or by the label value).
    """
    names = {str(k): v for k, v in (label_names or {}).items()}
    per_class: dict[str, dict[str, Any]] = {}
    metric_keys = ["dice", "iou"]
    if any("hd95" in c.get(item_key(lab), {}) for c in per_case.values() for lab in labels):
        metric_keys += ["hd95", "surface_dice"]
    for label in labels:
        key = item_key(label)
        entries = []
        for case_id, case in per_case.items():
            if key not in case:
                raise AutosegError(f"case {case_id} has no metrics for label {key}; evaluate every case "
                                   f"with the same labels")
            entries.append((case_id, case[key]))
        row: dict[str, Any] = {"name": names.get(key, key)}
        for m in metric_keys:
            row[m] = _mean([e[m] for _, e in entries if e.get(m) is not None])
        row["cases_defined"] = sum(e["dice"] is not None for _, e in entries)
        row["both_empty_cases"] = sum(bool(e["both_empty"]) for _, e in entries)
        row["one_empty_cases"] = sum(bool(e.get("one_empty")) for _, e in entries)
        for c in ("tp", "fp", "fn"):
            row[c] = int(sum(e[c] for _, e in entries))
        scored = sorted((e["dice"], cid) for cid, e in entries if e["dice"] is not None)
        row["worst_cases"] = [{"case": cid, "dice": d} for d, cid in scored[:_WORST_CASES_LISTED]]
        per_class[key] = row
    fg = [per_class[item_key(lab)] for lab in labels if not _is_background(lab)]
    foreground_mean = {m: _mean([r[m] for r in fg if r[m] is not None]) for m in metric_keys}
    listed = [int(lab) if isinstance(lab, (int, np.integer)) else _item_values(lab) for lab in labels]
    return {"num_cases": len(per_case), "labels": listed, "per_class": per_class,
            "foreground_mean": foreground_mean, "per_case": {k: dict(v) for k, v in per_case.items()}}


def _fmt(v: Any, width: int) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.4f}".rjust(width)
    return str(v).rjust(width)


def format_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width text table of :func:`summarize` output: one row per class, then the foreground mean."""
    per_class = summary["per_class"]
    surface = "hd95" in summary["foreground_mean"]
    metric_cols = [("dice", "Dice"), ("iou", "IoU")] + ([("hd95", "HD95 mm"), ("surface_dice", "NSD")]
                                                        if surface else [])
    count_cols = [("cases_defined", "cases"), ("both_empty_cases", "both empty"),
                  ("one_empty_cases", "one empty")]
    name_w = max([len("foreground mean")] + [len(f"{k} {r['name']}") for k, r in per_class.items()])
    widths = [max(len(h), 8) for _, h in metric_cols + count_cols]
    header = "class".ljust(name_w) + "".join("  " + h.rjust(w) for (_, h), w in
                                              zip(metric_cols + count_cols, widths))
    lines = [header, "-" * len(header)]
    for key, row in per_class.items():
        cells = [_fmt(row[m], w) for (m, _), w in zip(metric_cols + count_cols, widths)]
        lines.append(f"{key} {row['name']}".ljust(name_w) + "".join("  " + c for c in cells))
    fg = summary["foreground_mean"]
    cells = [_fmt(fg.get(m), w) for (m, _), w in zip(metric_cols, widths)]
    lines.append("-" * len(header))
    lines.append("foreground mean".ljust(name_w) + "".join("  " + c for c in cells))
    lines.append(f"({summary['num_cases']} cases)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- folders

def _evaluate_pair(case_id: str, pred_path: str, ref_path: str, labels: list[Item], surface_metrics: bool,
                   tolerance_mm: float, ignore_label: int | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Read one prediction/reference pair and evaluate it (top level: runs in worker processes)."""
    from .data.image_io import read_label

    pred, pred_geom = read_label(pred_path)
    ref, ref_geom = read_label(ref_path)
    if pred.shape != ref.shape:
        raise AutosegError(f"case {case_id}: prediction {pred_path} has shape (Z, Y, X) {pred.shape} but "
                           f"the reference {ref_path} has {ref.shape}; export predictions on the "
                           f"reference image's grid")
    if not np.allclose(pred_geom.spacing, ref_geom.spacing, rtol=1e-3, atol=1e-5):
        log.warning("case %s: prediction spacing %s differs from reference spacing %s; using the "
                    "reference's", case_id, pred_geom.spacing, ref_geom.spacing)
    return case_id, evaluate_case(pred, ref, labels, ref_geom.spacing_zyx, surface_metrics=surface_metrics,
                                  tolerance_mm=tolerance_mm, ignore_label=ignore_label)


#: what ``predict --save-uncertainty`` writes beside ``<case><ending>``: not a prediction of its own
UNCERTAINTY_SUFFIX = "_uncertainty"


def _cases_in(folder: Path, file_ending: str) -> dict[str, Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    companions = uncertainty_companions([p.name for p in files])
    return {p.name[: -len(file_ending)]: p for p in files
            if p.name.endswith(file_ending) and p.name not in companions}


def uncertainty_companions(names: Collection[str]) -> set[str]:
    """The ``<case>_uncertainty<ext>`` among ``names`` whose case also has a file there (any ending: a PNG
    prediction's uncertainty is written as .nii.gz)."""
    stems = {n: n[: len(n) - len(ending_of(n))] for n in names}
    others = set(stems.values())
    return {n for n, stem in stems.items()
            if stem.endswith(UNCERTAINTY_SUFFIX) and stem[: -len(UNCERTAINTY_SUFFIX)] in others}


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, labels: Sequence[Item],
                     file_ending: str, *, num_workers: int = 1, surface_metrics: bool = False,
                     tolerance_mm: float = 1.0, progress: bool = False,
                     label_names: Mapping[int | str, str] | None = None,
                     case_ids: Sequence[str] | None = None, ignore_label: int | None = None) -> dict[str, Any]:
    """Evaluate every prediction ``pred_dir/<case><file_ending>`` against ``ref_dir/<case><file_ending>``.

    Cases are the prediction files (or exactly ``case_ids`` when given; then each must have a
    prediction). Every case needs a reference of the same shape. Returns :func:`summarize` output
    plus ``surface_metrics`` and ``tolerance_mm``. ``num_workers > 1`` evaluates in processes.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise AutosegError(f"{what} folder {folder} does not exist; expected a folder of "
                               f"<case>{file_ending} files")
    preds, refs = _cases_in(pred_dir, file_ending), _cases_in(ref_dir, file_ending)
    if case_ids is not None:
        missing = [c for c in case_ids if c not in preds]
        if missing:
            raise AutosegError(f"{len(missing)} prediction(s) missing in {pred_dir}: "
                               f"{', '.join(f'{c}{file_ending}' for c in missing[:10])}"
                               f"{' ...' if len(missing) > 10 else ''}; predict these cases first")
        preds = {c: preds[c] for c in case_ids}
    if not preds:
        raise AutosegError(f"no predictions ending in '{file_ending}' found in {pred_dir}; check the "
                           f"folder and the file ending (dataset.json 'file_ending')")
    if case_ids is None:
        unscored = sorted(c for c in refs if c not in preds)
        if unscored:
            more = " ..." if len(unscored) > 10 else ""
            log.warning("%d reference case(s) in %s have no prediction in %s and are not scored: %s%s",
                        len(unscored), ref_dir, pred_dir, ", ".join(unscored[:10]), more)
    no_ref = [c for c in preds if c not in refs]
    if no_ref:
        raise AutosegError(f"{len(no_ref)} prediction(s) in {pred_dir} have no reference in {ref_dir}: "
                           f"{', '.join(f'{c}{file_ending}' for c in no_ref[:10])}"
                           f"{' ...' if len(no_ref) > 10 else ''}; expected a label file with the same "
                           f"name for every prediction")
    items = [int(v) if isinstance(v, (int, np.integer)) else _item_values(v) for v in labels]
    jobs = [(c, str(preds[c]), str(refs[c]), items, surface_metrics, float(tolerance_mm), ignore_label)
            for c in preds]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluating", unit="case", leave=False)
    try:
        if num_workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # the platform default (fork on Linux): workers use numpy/scipy only, and unlike spawn it
            # does not re-run a user script that lacks an `if __name__ == "__main__":` guard
            ctx = multiprocessing.get_context()
            with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx) as pool:
                for case_id, res in pool.map(_evaluate_pair, *zip(*jobs)):
                    results[case_id] = res
                    if bar is not None:
                        bar.update()
        else:
            for job in jobs:
                case_id, res = _evaluate_pair(*job)
                results[case_id] = res
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(results, labels, label_names)
    summary["surface_metrics"] = bool(surface_metrics)
    summary["tolerance_mm"] = float(tolerance_mm) if surface_metrics else None
    summary["ignore_label"] = ignore_label
    return summary
