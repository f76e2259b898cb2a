"""Learning connected-component postprocessing on cross-validation predictions.

Learning (:func:`determine_postprocessing`) follows nnU-Net's "never make a class worse" rule and
adds a per-label minimum component size tuned on the CV predictions. Because a per-label step only
turns that label's voxels into background, it changes no other label's Dice; the effect of every
per-label candidate is therefore computed from per-component statistics (size, overlap with the
reference) gathered in one pass, so the cases are read only twice whatever the number of candidates.

Dice convention (as in :mod:`autoseg.evaluation`): a case where prediction and reference are both
empty for a class has no Dice for that class and is left out of its mean; the foreground Dice is the
mean of the class means.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AutosegError
from ..schemas import PostprocessingStep
from .postprocess import (
    _EPS,
    _components,
    keep_largest_component,
)

log = logging.getLogger(__name__)

_SIZE_FACTORS = (0.1, 0.25, 0.5)  # candidate minimum sizes: reference object size quantiles times these
_SIZE_QUANTILES = (0.0, 0.1, 0.5)
_MAX_SIZE_CANDIDATES = 10


# --------------------------------------------------------------------------- scoring helpers

def _dice(tp: int, fp: int, fn: int) -> float | None:
    d = 2 * tp + fp + fn
    return None if d == 0 else 2.0 * tp / d


def _mean(values: Sequence[float | None]) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def foreground_mean(per_class: Mapping[str, float]) -> float:
    """Mean of the defined (non-NaN) class Dice values; NaN when none is defined."""
    v = [x for x in per_class.values() if x == x]
    return float(np.mean(v)) if v else float("nan")


def _better(a: float, b: float) -> bool:
    """``a`` improves on ``b`` (NaN, i.e. no defined case, is never better)."""
    if a != a:
        return False
    return b != b or a > b + _EPS


def _not_worse(a: float, b: float) -> bool:
    if b != b:
        return True
    return a == a and a >= b - _EPS


def _fmt(per_class: Mapping[str, float]) -> str:
    return ", ".join(f"class {k} {v:.4f}" for k, v in per_class.items())


@dataclass
class _LabelCase:
    """One case, one label: confusion counts and its predicted components (after earlier steps)."""

    tp: int
    fp: int
    fn: int
    sizes: np.ndarray  # voxels per predicted component
    overlap: np.ndarray  # voxels of each component inside the reference

    def after_removing(self, removed: np.ndarray) -> float | None:
        """Dice once the components flagged in ``removed`` (bool per component) become background."""
        o = int(self.overlap[removed].sum())
        s = int(self.sizes[removed].sum())
        return _dice(self.tp - o, self.fp - (s - o), self.fn + o)

    def largest_only(self) -> _LabelCase:
        if self.sizes.size <= 1:
            return self
        keep = int(np.argmax(self.sizes))
        removed = np.ones(self.sizes.size, dtype=bool)
        removed[keep] = False
        o, s = int(self.overlap[removed].sum()), int(self.sizes[removed].sum())
        return _LabelCase(self.tp - o, self.fp - (s - o), self.fn + o,
                          self.sizes[keep:keep + 1], self.overlap[keep:keep + 1])


@dataclass
class _LabelStats:
    cases: list[_LabelCase] = field(default_factory=list)
    ref_object_sizes: list[np.ndarray] = field(default_factory=list)

    def dice(self) -> float:
        return _mean([_dice(c.tp, c.fp, c.fn) for c in self.cases])

    def dice_after_min_size(self, min_size: int) -> float:
        return _mean([c.after_removing(c.sizes < min_size) for c in self.cases])


def _label_case(seg: np.ndarray, ref: np.ndarray, label: int) -> tuple[_LabelCase, np.ndarray]:
    p, r = seg == label, ref == label
    tp = int(np.count_nonzero(p & r))
    fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
    labelled, sizes, box = _components(p)
    overlap = (np.bincount(labelled[r[box]].ravel(), minlength=sizes.size + 1)[1:].astype(np.int64)
               if box is not None else np.zeros((0,), dtype=np.int64))
    _, ref_sizes, _ = _components(r)
    return _LabelCase(tp, fp, fn, sizes, overlap), ref_sizes


def _check_case(case_id: str, seg: np.ndarray, ref: np.ndarray) -> None:
    if seg.shape != ref.shape or seg.ndim != 3:
        raise AutosegError(f"case {case_id}: segmentation shape {seg.shape} and reference shape {ref.shape} "
                           f"must be equal (Z, Y, X) label maps; predictions must be exported on the "
                           f"reference image's grid")


def _size_candidates(stats: _LabelStats) -> list[int]:
    """Minimum sizes worth trying: reference object size quantiles x factors, and the size just above
    every false-positive component smaller than the smallest true-positive one."""
    cands: set[int] = set()
    ref = np.concatenate(stats.ref_object_sizes) if stats.ref_object_sizes else np.zeros(0)
    if ref.size:
        for q in _SIZE_QUANTILES:
            for f in _SIZE_FACTORS:
                cands.add(int(np.ceil(np.quantile(ref, q) * f)))
    sizes = np.concatenate([c.sizes for c in stats.cases]) if stats.cases else np.zeros(0)
    overlap = np.concatenate([c.overlap for c in stats.cases]) if stats.cases else np.zeros(0)
    if sizes.size:
        tp_sizes, fp_sizes = sizes[overlap > 0], sizes[overlap == 0]
        smallest_tp = int(tp_sizes.min()) if tp_sizes.size else None
        below = fp_sizes[fp_sizes < smallest_tp] if smallest_tp is not None else fp_sizes
        if below.size:
            cands.add(int(below.max()) + 1)
        smallest = int(sizes.min())
        cands = {c for c in cands if c > max(1, smallest)}  # each must remove at least one component
    else:
        cands = set()
    return sorted(cands)[:_MAX_SIZE_CANDIDATES]


# --------------------------------------------------------------------------- learning

def _largest_foreground_only(seg: np.ndarray) -> np.ndarray:
    fgm = seg != 0
    out = seg.copy()
    out[fgm & ~keep_largest_component(fgm)] = 0
    return out


def _pass1_case(seg: np.ndarray, ref: np.ndarray, fg: Sequence[int]) -> tuple[list[float | None], list[float | None]]:
    """Per label: Dice of ``seg``, and Dice after keeping the largest foreground component."""
    pp = _largest_foreground_only(seg)
    before, after = [], []
    for label in fg:
        r = ref == label
        for arr, out in ((seg, before), (pp, after)):
            p = arr == label
            tp = int(np.count_nonzero(p & r))
            out.append(_dice(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp))
    return before, after


def _pass2_case(seg: np.ndarray, ref: np.ndarray, fg: Sequence[int],
                use_fg: bool) -> list[tuple[_LabelCase, np.ndarray]]:
    """Per label: its confusion counts and components (after step 1 when accepted), reference object sizes."""
    if use_fg:
        seg = _largest_foreground_only(seg)
    return [_label_case(seg, ref, label) for label in fg]


class without_ignored(Mapping):  # noqa: N801 - used like a function
    """``cases`` with the voxels whose reference is ``ignore`` set to background in both label maps."""

    def __init__(self, cases: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]], ignore: int):
        self._cases, self._ignore = cases, int(ignore)

    def __getitem__(self, cid: str) -> tuple[np.ndarray, np.ndarray, Sequence[float]]:
        seg, ref, spacing = self._cases[cid]
        seg, ref = np.array(seg), np.array(ref)
        m = ref == self._ignore
        seg[m], ref[m] = 0, 0
        return seg, ref, spacing

    def __iter__(self):
        return iter(self._cases)

    def __len__(self) -> int:
        return len(self._cases)


def _serial_map(fn: Callable[[str], Any], case_ids: Sequence[str]) -> list[Any]:
    return [fn(cid) for cid in case_ids]


def determine_postprocessing(
        cases: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]],
        labels: Sequence[int] | Sequence[Sequence[int]],
        map_cases: Callable[[Callable[[str], Any], Sequence[str]], list[Any]] | None = None,
        ignore_label: int | None = None,
) -> tuple[list[PostprocessingStep], dict[str, float], dict[str, float]]:
    """Learn which postprocessing steps help on cross-validation predictions.

    Args:
        cases: case id -> ``(seg, ref, spacing_zyx)``: predicted and reference label maps
            ``(Z, Y, X)`` of equal shape, spacing in mm (kept for the contract; Dice needs none).
            Values are fetched case by case and at most twice per case, so a lazy Mapping that
            reads them from disk keeps memory to one case.
        labels: the foreground labels to score (0 is ignored); lists of labels are regions, learned by
            :func:`autoseg.inference.postprocess_regions.determine_region_postprocessing`.
        map_cases: ``map_cases(fn, case_ids) -> [fn(case_id), ...]`` in order; runs the per-case
            work of both passes (e.g. :func:`autoseg.parallel.fork_map` in processes). Default:
            one case after the other.

    Rules, in order (each accepted step carries a ``reason`` with the numbers):
      1. keep the largest foreground component (all labels together): accepted if the foreground
         Dice improves and no class gets worse;
      2. per label, keep its largest component: accepted if that label's Dice improves (no other
         label can change);
      3. per label, remove components smaller than a size learned from the predictions (candidate
         sizes: reference object size quantiles x {0.1, 0.25, 0.5} and the size that removes every
         false positive smaller than the smallest true-positive component): the best size is
         accepted if that label's Dice improves.

    Voxels whose reference is ``ignore_label`` are set to background in both maps before scoring.

    Returns:
        ``(steps, dice_before_per_class, dice_after_per_class)``; the dicts map ``str(label)`` to the
        mean Dice over the cases where it is defined (NaN when none is).
    """
    if any(not isinstance(v, (int, np.integer)) for v in labels):
        from .postprocess_regions import determine_region_postprocessing

        return determine_region_postprocessing(cases, [list(v) for v in labels], map_cases, ignore_label)
    if ignore_label is not None:
        cases = without_ignored(cases, ignore_label)
    fg = [int(v) for v in labels if int(v) != 0]
    keys = [str(v) for v in fg]
    if not cases:
        raise AutosegError("no cross-validation cases to learn postprocessing from; expected at least "
                           "one (prediction, reference) pair")
    if not fg:
        return [], {}, {}
    case_ids = list(cases)

    map_cases = map_cases or _serial_map

    def pass1(cid: str) -> tuple[list[float | None], list[float | None]]:
        seg, ref, _ = cases[cid]
        seg, ref = np.asarray(seg), np.asarray(ref)
        _check_case(cid, seg, ref)
        return _pass1_case(seg, ref, fg)

    # pass 1: every class before, and after keeping the largest foreground component
    before: dict[str, list[float | None]] = {k: [] for k in keys}
    after_fg: dict[str, list[float | None]] = {k: [] for k in keys}
    for case_before, case_after in map_cases(pass1, case_ids):
        for i, key in enumerate(keys):
            before[key].append(case_before[i])
            after_fg[key].append(case_after[i])
    dice_before = {k: _mean(before[k]) for k in keys}
    dice_fg = {k: _mean(after_fg[k]) for k in keys}
    steps: list[PostprocessingStep] = []
    current = dict(dice_before)
    fg_before, fg_after = foreground_mean(dice_before), foreground_mean(dice_fg)
    worse = [k for k in keys if not _not_worse(dice_fg[k], dice_before[k])]
    use_fg = _better(fg_after, fg_before) and not worse
    if use_fg:
        steps.append(PostprocessingStep(
            kind="largest_component_foreground",
            reason=(f"foreground Dice {fg_before:.4f} -> {fg_after:.4f} on {len(case_ids)} cases, no class "
                    f"worse ({_fmt(dice_before)} -> {_fmt(dice_fg)})")))
        current = dict(dice_fg)
    log.info("largest foreground component: foreground Dice %.4f -> %.4f%s: %s", fg_before, fg_after,
             f", worse for class {', '.join(worse)}" if worse else "", "accepted" if use_fg else "rejected")

    def pass2(cid: str) -> list[tuple[_LabelCase, np.ndarray]]:
        seg, ref, _ = cases[cid]
        seg, ref = np.asarray(seg), np.asarray(ref)
        _check_case(cid, seg, ref)
        return _pass2_case(seg, ref, fg, use_fg)

    # pass 2: per-label component statistics after step 1
    stats = {k: _LabelStats() for k in keys}
    for per_label in map_cases(pass2, case_ids):
        for key, (lc, ref_sizes) in zip(keys, per_label):
            stats[key].cases.append(lc)
            stats[key].ref_object_sizes.append(ref_sizes)

    for label, key in zip(fg, keys):
        st = stats[key]
        base = st.dice()
        lcc = _LabelStats([c.largest_only() for c in st.cases], st.ref_object_sizes)
        d = lcc.dice()
        accepted = _better(d, base)
        log.info("largest component of label %s: Dice %.4f -> %.4f: %s", key, base, d,
                 "accepted" if accepted else "rejected")
        if accepted:
            steps.append(PostprocessingStep(
                kind="largest_component", labels=[label],
                reason=f"label {key} Dice {base:.4f} -> {d:.4f} on {len(case_ids)} cases; other labels unchanged"))
            stats[key] = lcc
            current[key] = d

    for label, key in zip(fg, keys):
        st = stats[key]
        base = st.dice()
        best_size, best = None, base
        tried = _size_candidates(st)
        for size in tried:  # ascending: on a tie the smaller (more conservative) size wins
            d = st.dice_after_min_size(size)
            if _better(d, best):
                best_size, best = size, d
        if tried:
            log.info("minimum component size for label %s: tried %s voxels, Dice %.4f -> %.4f: %s", key, tried,
                     base, best, f"accepted {best_size}" if best_size is not None else "rejected")
        else:
            log.info("minimum component size for label %s: no size would remove a component", key)
        if best_size is not None:
            removed = sum(int((c.sizes < best_size).sum()) for c in st.cases)
            steps.append(PostprocessingStep(
                kind="remove_small_components", labels=[label], min_size_voxels={key: int(best_size)},
                reason=(f"label {key} Dice {base:.4f} -> {best:.4f} on {len(case_ids)} cases by removing "
                        f"{removed} component(s) under {best_size} voxels (sizes tried: "
                        f"{', '.join(map(str, tried))}); other labels unchanged")))
            current[key] = best
    return steps, dice_before, current
