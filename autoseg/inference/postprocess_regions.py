"""Postprocessing learned on cross-validation for region-based datasets (nnU-Net v2's regions).

Regions overlap (BraTS: whole tumour > tumour core > enhancing tumour), so a step that removes voxels of one
region changes the others too: every candidate is scored on every region, and accepted only when the mean
region Dice improves and no region gets worse. Candidates, in order, each on top of the accepted ones:

1. keep the largest foreground component (every region together);
2. per region, keep the largest component of the region's labels; removed voxels become background
   (``largest_component_region``, as nnU-Net's ``remove_all_but_largest_component`` on a region).

Each candidate reads every case once (the number of regions is small).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..data.labels import item_key, item_mask
from ..errors import AutosegError
from ..schemas import PostprocessingStep
from .postprocess import apply_postprocessing
from .postprocess_learning import _better, _check_case, _dice, _fmt, _mean, _not_worse, _serial_map, \
    foreground_mean, without_ignored

log = logging.getLogger(__name__)


def _region_dice(seg: np.ndarray, ref: np.ndarray, regions: Sequence[Sequence[int]]) -> list[float | None]:
    out = []
    for values in regions:
        p, r = item_mask(seg, values), item_mask(ref, values)
        tp = int(np.count_nonzero(p & r))
        out.append(_dice(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp))
    return out


def determine_region_postprocessing(
        cases: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]],
        regions: Sequence[Sequence[int]],
        map_cases: Callable[[Callable[[str], Any], Sequence[str]], list[Any]] | None = None,
        ignore_label: int | None = None,
) -> tuple[list[PostprocessingStep], dict[str, float], dict[str, float]]:
    """``(steps, dice_before, dice_after)`` per region (keys: the region's labels, e.g. "1,2,3"); the same
    contract as :func:`autoseg.inference.postprocess.determine_postprocessing`."""
    if not cases:
        raise AutosegError("no cross-validation cases to learn postprocessing from; expected at least "
                           "one (prediction, reference) pair")
    if ignore_label is not None:
        cases = without_ignored(cases, ignore_label)
    map_cases = map_cases or _serial_map
    keys = [item_key(r) for r in regions]
    case_ids = list(cases)

    def score(steps: list[PostprocessingStep]) -> dict[str, float]:
        def one(cid: str) -> list[float | None]:
            seg, ref, _ = cases[cid]
            seg, ref = np.asarray(seg), np.asarray(ref)
            _check_case(cid, seg, ref)
            return _region_dice(apply_postprocessing(seg, steps) if steps else seg, ref, regions)

        per_case = map_cases(one, case_ids)
        return {k: _mean([c[i] for c in per_case]) for i, k in enumerate(keys)}

    before = score([])
    current, steps = dict(before), []
    candidates = [PostprocessingStep(kind="largest_component_foreground")]
    candidates += [PostprocessingStep(kind="largest_component_region", labels=[int(v) for v in r]) for r in regions]
    for cand in candidates:
        after = score([*steps, cand])
        worse = [k for k in keys if not _not_worse(after[k], current[k])]
        accepted = _better(foreground_mean(after), foreground_mean(current)) and not worse
        what = "largest foreground component" if not cand.labels else f"largest component of region {item_key(cand.labels)}"
        log.info("%s: mean region Dice %.4f -> %.4f%s: %s", what, foreground_mean(current), foreground_mean(after),
                 f", worse for region {', '.join(worse)}" if worse else "", "accepted" if accepted else "rejected")
        if accepted:
            steps.append(PostprocessingStep(
                kind=cand.kind, labels=cand.labels,
                reason=(f"{what}: mean region Dice {foreground_mean(current):.4f} -> {foreground_mean(after):.4f} on "
                        f"{len(case_ids)} cases, no region worse ({_fmt(current)} -> {_fmt(after)})")))
            current = after
    return steps, before, current
