"""Ensembling configurations: average their exported probabilities, then take the argmax.

Probability files are the ``<case>_probabilities.npz`` written by
:func:`autoseg.model.export.save_probabilities`: ``(K, Z, Y, X)`` at the case's original
geometry, so members of any configuration line up voxel for voxel. Equal weights, like nnU-Net's
``nnUNetv2_ensemble``. Everything streams: at most the running sum and one member are in memory
(unless a caller allows a per-case cache, see :func:`segmentations_of_ensembles`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import AutosegError
from ..schemas import LabelSpec
from ..workdir import Workdir
from ..model.export import load_probabilities, probabilities_to_segmentation

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30  # members of one case kept in memory while scoring several ensembles


def _check_member(acc_shape: tuple[int, ...], acc_case: str, first: Path, probs: np.ndarray, case_id: str,
                  path: Path) -> None:
    if probs.shape != acc_shape:
        raise AutosegError(f"cannot ensemble {path} with {first}: probabilities of shape (K, Z, Y, X) "
                           f"{probs.shape} vs {acc_shape}; every member must be exported at the case's "
                           f"original geometry with the same labels (predict the case again)")
    if case_id != acc_case:
        raise AutosegError(f"cannot ensemble {path} (case {case_id}) with {first} (case {acc_case}); the "
                           f"members of an ensemble must be predictions of the same case")


def average_probabilities(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Mean of the members' probabilities: float32 ``(K, Z, Y, X)``, reading one file at a time.

    All files must hold the same case with the same shape; raises AutosegError otherwise.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AutosegError("an ensemble needs at least one member; no probability files were given")
    acc, acc_case = load_probabilities(paths[0])
    for path in paths[1:]:
        probs, case_id = load_probabilities(path)
        _check_member(acc.shape, acc_case, paths[0], probs, case_id, path)
        acc += probs
        del probs
    acc /= np.float32(len(paths))
    return acc


def ensemble_segmentation(paths: Sequence[str | os.PathLike], spec: LabelSpec | None = None) -> np.ndarray:
    """The label map of :func:`average_probabilities`: argmax (uint8 for up to 256 classes), or the averaged
    region probabilities painted in ``regions_class_order`` for a region-based ``spec``."""
    return probabilities_to_segmentation(average_probabilities(paths), spec)


def segmentations_of_ensembles(member_paths: Mapping[str, str | os.PathLike],
                               ensembles: Sequence[Sequence[str]], *, spec: LabelSpec | None = None,
                               max_cache_bytes: int = DEFAULT_CACHE_BYTES) -> dict[tuple[str, ...], np.ndarray]:
    """One case, several ensembles: ``{tuple(members): (Z, Y, X) segmentation}``.

    ``member_paths`` maps a member name (a configuration) to its probability file for this case.
    When every member's probabilities fit in ``max_cache_bytes`` together, each file is read once
    and shared between the ensembles; otherwise each ensemble streams its members (reads repeat,
    memory stays at two arrays).
    """
    needed = sorted({m for e in ensembles for m in e})
    unknown = [m for m in needed if m not in member_paths]
    if unknown:
        raise AutosegError(f"no probability file given for ensemble member(s) {', '.join(unknown)}")
    out: dict[tuple[str, ...], np.ndarray] = {}
    if not ensembles:
        return out
    first, first_case = load_probabilities(member_paths[needed[0]])
    if first.nbytes * len(needed) > max_cache_bytes:
        log.debug("probabilities of %d members need %.1f GB > cache %.1f GB: streaming each ensemble",
                  len(needed), first.nbytes * len(needed) / 1e9, max_cache_bytes / 1e9)
        del first
        for e in ensembles:
            out[tuple(e)] = ensemble_segmentation([member_paths[m] for m in e], spec)
        return out
    cache = {needed[0]: first}
    for m in needed[1:]:
        probs, case_id = load_probabilities(member_paths[m])
        _check_member(first.shape, first_case, Path(member_paths[needed[0]]), probs, case_id,
                      Path(member_paths[m]))
        cache[m] = probs
    for e in ensembles:
        acc = cache[e[0]].copy()
        for m in e[1:]:
            acc += cache[m]
        acc /= np.float32(len(e))  # the mean (regions are thresholded at 0.5; the argmax would not need it)
        out[tuple(e)] = probabilities_to_segmentation(acc, spec)
    return out


def cv_probability_paths(wd: Workdir, configuration: str, fold_of_case: Mapping[str, int]) -> dict[str, Path]:
    """Case id -> the probability file of ``configuration`` from the fold that held the case out."""
    return {cid: wd.validation_probabilities(configuration, fold, cid) for cid, fold in fold_of_case.items()}


def iter_cv_ensemble_segmentations(wd: Workdir, configurations: Sequence[str], fold_of_case: Mapping[str, int],
                                   spec: LabelSpec | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(case_id, (Z, Y, X) segmentation)`` of the ensemble of ``configurations`` for every CV case.

    ``fold_of_case`` maps each case to the fold whose validation set held it (the merged
    cross-validation predictions); one case is in memory at a time.
    """
    paths = {c: cv_probability_paths(wd, c, fold_of_case) for c in configurations}
    for cid in fold_of_case:
        yield cid, ensemble_segmentation([paths[c][cid] for c in configurations], spec)
