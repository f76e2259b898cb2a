"""Cross-validation splits: generated (seeded k-fold) or read from the user's file.

Generated splits reproduce nnU-Net v2's exactly: the case ids are sorted, shuffled with
``numpy.random.RandomState(seed)`` (seed 12345 by default) as scikit-learn's
``KFold(n_splits, shuffle=True, random_state=seed)`` does, and cut into folds whose sizes differ
by at most one (the first ``n % k`` folds get one more case). Train and val lists are sorted.

A user's file may be nnU-Net's ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``)
or autoseg's own ``splits.json``.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import read_json
from ..errors import AutosegError, SchemaError, suggest_closest
from ..schemas import SCHEMA_VERSION, Fold, Splits, from_dict, stable_hash

logger = logging.getLogger(__name__)

USER_SPLITS_SEED = -1  # recorded as Splits.seed for a user's file (no seed was used)
DEFAULT_N_FOLDS = 5  # nnU-Net's; fewer when the dataset has fewer training cases


def case_ids_hash(case_ids: Sequence[str]) -> str:
    """Order-independent hash of a set of case ids."""
    return stable_hash(sorted(case_ids))


def make_splits(case_ids: Sequence[str], n_folds: int = DEFAULT_N_FOLDS, seed: int = 12345) -> Splits:
    """Shuffled k-fold splits of ``case_ids``; each case is in exactly one fold's val list.

    Deterministic in ``seed`` and independent of the order of ``case_ids``. Raises AutosegError
    when there are fewer cases than folds, duplicate ids, or ``n_folds`` < 2.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise AutosegError(f"case ids must be unique for cross-validation, found duplicates: "
                           f"{', '.join(dups[:10])}")
    if n_folds < 2:
        raise AutosegError(f"cross-validation needs at least 2 folds, got {n_folds}; train on every "
                           f"case with --fold all instead")
    if len(ids) < n_folds:
        raise AutosegError(f"{n_folds}-fold cross-validation needs at least {n_folds} training cases, "
                           f"found {len(ids)}; add cases, or give a splits file with fewer folds (--splits FILE)")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(ids) // n_folds, dtype=int)
    sizes[: len(ids) % n_folds] += 1
    folds, start = [], 0
    for size in sizes:
        val_idx = set(order[start:start + size].tolist())
        start += size
        folds.append(Fold(train=[ids[i] for i in range(len(ids)) if i not in val_idx],
                          val=[ids[i] for i in sorted(val_idx)]))
    return Splits(schema_version=SCHEMA_VERSION, seed=int(seed), source="generated", folds=folds,
                  case_ids_hash=case_ids_hash(ids))


def _parse_nnunet(data: list, where: str) -> list[Fold]:
    folds = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or set(entry) != {"train", "val"}:
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise AutosegError(f"{where}: fold {k} must be an object with exactly the keys 'train' and "
                               f"'val' (nnU-Net's splits_final.json format), found {found}")
        for key in ("train", "val"):
            if not isinstance(entry[key], list) or not all(isinstance(v, str) for v in entry[key]):
                raise AutosegError(f"{where}: fold {k} '{key}' must be a list of case ids (strings)")
        folds.append(Fold(train=list(entry["train"]), val=list(entry["val"])))
    return folds


def _check_fold(fold: Fold, k: int, known: set[str], where: str) -> None:
    for key, ids in (("train", fold.train), ("val", fold.val)):
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dups:
            raise AutosegError(f"{where}: fold {k} lists case {dups[0]!r} more than once in '{key}'; "
                               f"each case may appear once per list")
        for case in ids:
            if case not in known:
                close = suggest_closest(case, known)
                hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
                raise AutosegError(f"{where}: fold {k} '{key}' names case {case!r}, which is not a "
                                   f"training case of this dataset{hint}; fix the file or remove "
                                   f"the case from it")
    if not fold.val:
        raise AutosegError(f"{where}: fold {k} has an empty 'val' list; every fold needs at least one "
                           f"validation case")
    both = sorted(set(fold.train) & set(fold.val))
    if both:
        raise AutosegError(f"{where}: fold {k} has case {both[0]!r} in both 'train' and 'val'"
                           f"{f' (and {len(both) - 1} more)' if len(both) > 1 else ''}; a case must "
                           f"not be validated on a network trained on it")


def load_user_splits(path: str | os.PathLike, case_ids: Sequence[str]) -> Splits:
    """Read the user's splits file and check it against the dataset's ``case_ids``.

    Accepts nnU-Net's ``splits_final.json`` (list of {"train", "val"}) or an autoseg Splits JSON.
    Every id must be a known case, no case may be in both train and val of a fold, and no val list
    may be empty; errors name the file, the fold and the case. Cases in no fold are only logged.
    """
    path = Path(path)
    where = str(path)
    data = read_json(path)
    if isinstance(data, list):
        if not data:
            raise AutosegError(f"{where}: the splits list is empty; expected at least one "
                               f"{{\"train\": [...], \"val\": [...]}} entry")
        folds = _parse_nnunet(data, where)
        seed = USER_SPLITS_SEED
    elif isinstance(data, dict):
        try:
            parsed = from_dict(Splits, data, where=where)
        except SchemaError as e:
            raise AutosegError(f"{e}. Expected nnU-Net's splits_final.json (a list of "
                               f"{{\"train\": [...], \"val\": [...]}}) or an autoseg splits.json") from None
        folds, seed = list(parsed.folds), parsed.seed
        if not folds:
            raise AutosegError(f"{where}: 'folds' is empty; expected at least one fold")
    else:
        raise AutosegError(f"{where}: expected a list of folds (nnU-Net's splits_final.json) or an "
                           f"autoseg splits object, found {type(data).__name__}")
    known = set(case_ids)
    for k, fold in enumerate(folds):
        _check_fold(fold, k, known, where)
    used = set().union(*(set(f.train) | set(f.val) for f in folds))
    unused = sorted(known - used)
    if unused:
        logger.warning("%s: %d training case(s) appear in no fold and are never used: %s", where,
                       len(unused), ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""))
    folds = [Fold(train=sorted(f.train), val=sorted(f.val)) for f in folds]
    return Splits(schema_version=SCHEMA_VERSION, seed=seed, source=where, folds=folds,
                  case_ids_hash=case_ids_hash(list(case_ids)))


def fold_cases(splits: Splits, fold: int | str) -> tuple[list[str], list[str]]:
    """(train ids, val ids) of ``fold``: an index 0..k-1 (int or digit string) or "all".

    "all" trains on every case of the splits and validates on all of them (nnU-Net's fold "all").
    An index out of range raises AutosegError listing the valid folds.
    """
    valid = [str(k) for k in range(len(splits.folds))] + ["all"]
    name = str(fold).strip().lower()
    if name == "all":
        everything = sorted(set().union(*(set(f.train) | set(f.val) for f in splits.folds)))
        return everything, list(everything)
    if isinstance(fold, bool) or not name.isdigit() or int(name) >= len(splits.folds):
        raise AutosegError(f"fold {fold!r} does not exist in the splits from {splits.source}; valid "
                           f"folds: {', '.join(valid)}")
    f = splits.folds[int(name)]
    return list(f.train), list(f.val)
