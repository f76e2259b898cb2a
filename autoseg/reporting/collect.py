"""What a work folder holds, read for the run report: every artifact that is there, and for every one
that is not (or is out of date) what is missing and the command that makes it.

Nothing here writes, and nothing fails on a partial run: an absent or unreadable file becomes a
:class:`Missing` entry. Only a folder that is no work folder at all raises (:func:`collect_run`).
"""
from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AutosegError
from ..schemas import DatasetManifest, FoldSummary, Plans, Selection, Splits, load_json
from ..store import RunStore, State, plans_hash, validation_hash
from ..workdir import Workdir

log = logging.getLogger(__name__)

DEFAULT_N_FOLDS = 5  # when splits.json is missing


@dataclass(frozen=True)
class Missing:
    """Something the report cannot show yet (or shows out of date), and the command that makes it."""

    what: str
    command: str


@dataclass(frozen=True)
class FoldState:
    """One fold of one configuration as found on disk."""

    configuration: str
    fold: str  # "0".."4" or "all"
    log: list[dict[str, Any]]  # training_log.jsonl records ([] when absent)
    progress_png: Path | None  # progress.png when present
    finished: bool  # checkpoint_final.pt exists
    summary: FoldSummary | None  # validation/summary.json
    stale: str = ""  # why the fold does not belong to the current plans ("" when it does or is not trained)

    @property
    def started(self) -> bool:
        return bool(self.log) or self.finished or self.summary is not None


@dataclass(frozen=True)
class RunState:
    """Everything the report shows, read from the work folder ``root``."""

    root: Path
    manifest: DatasetManifest | None
    plans: Plans | None
    explained: str | None  # plans_explained.txt
    splits: Splits | None
    folds: dict[str, list[FoldState]]  # per planned configuration, folds 0..n-1 (and "all" when trained)
    selection: Selection | None
    missing: list[Missing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # out-of-date or unreadable artifacts

    @property
    def class_names(self) -> dict[str, str]:
        """Scored key (``"1"``, or a region ``"1,2,3"``) -> name, from the dataset's labels or regions."""
        return class_names(self.manifest)

    @property
    def label_names(self) -> dict[int, str]:
        """Foreground label value (as in the label files) -> name; the ignore label left out."""
        if self.manifest is None:
            return {}
        ignore = self.manifest.ignore_label
        return {int(v): name for name, v in self.manifest.labels.items() if int(v) != 0 and int(v) != ignore}


def class_names(manifest: DatasetManifest | None) -> dict[str, str]:
    """Scored key -> name, in the networks' output order: regions as their label values joined by commas
    (``"1,2,3"``, in dataset.json's order), labels as the value (ascending)."""
    if manifest is None:
        return {}
    if manifest.regions:
        return {",".join(str(int(v)) for v in values): name for name, values in manifest.regions.items()}
    labels = sorted((int(v), name) for name, v in manifest.labels.items())  # the networks' output order
    return {str(v): name for v, name in labels if v != 0 and v != manifest.ignore_label}


def is_run(root: Path) -> bool:
    wd = Workdir(root)
    return wd.plans_json.exists() or wd.manifest_json.exists()


def _read(cls: type, path: Path, notes: list[str]) -> Any | None:
    """``path`` as ``cls``; None when absent; None and a note when it cannot be read."""
    if not path.exists():
        return None
    try:
        return load_json(cls, path)
    except AutosegError as e:
        notes.append(f"{path} cannot be read: {e}")
        return None


def read_training_log(path: Path) -> list[dict[str, Any]]:
    """The records of a training_log.jsonl; lines that are not JSON objects (a line cut by a crash) are skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
    return records


def _fold_state(store: RunStore, plans: Plans, configuration: str, fold: str, notes: list[str]) -> FoldState:
    wd = store.wd
    summary = _read(FoldSummary, wd.validation_summary_json(configuration, fold), notes)
    progress = wd.progress_png(configuration, fold)
    stale = ""
    if wd.train_settings_json(configuration, fold).exists():
        fresh = store.fold_freshness(plans, configuration, fold)
        stale = fresh.reason if fresh.state is State.STALE else ""
    return FoldState(configuration, fold, read_training_log(wd.training_log_jsonl(configuration, fold)),
                     progress if progress.exists() else None, wd.checkpoint(configuration, fold, "final").exists(),
                     summary, stale)


def _fold_names(wd: Workdir, configuration: str, n_folds: int) -> list[str]:
    names = [str(k) for k in range(n_folds)]
    return names + (["all"] if wd.fold_dir(configuration, "all").exists() else [])


def collect_run(root: str | Path) -> RunState:
    """Read the work folder ``root`` for the report.

    Raises AutosegError when ``root`` is not a work folder (neither ``plans.json`` nor
    ``dataset_manifest.json`` in it), naming what was expected and the command that makes one.
    """
    root = Path(root)
    wd = Workdir(root)
    if not root.is_dir():
        raise AutosegError(f"{root} is not a folder; expected the work folder of a run (made by "
                           f"`autoseg plan DATASET --workdir {root}`); check the --workdir path")
    if not is_run(root):
        raise AutosegError(f"{root} is not an autoseg work folder: it has neither {wd.plans_json.name} nor "
                           f"{wd.manifest_json.name}; pass the folder given as --workdir to `autoseg plan` "
                           f"(or make one: `autoseg plan DATASET --workdir {root}`)")
    store = RunStore(wd)
    q = shlex.quote(str(root))
    notes: list[str] = []
    missing: list[Missing] = []
    manifest = _read(DatasetManifest, wd.manifest_json, notes)
    plans = _read(Plans, wd.plans_json, notes)
    splits = _read(Splits, wd.splits_json, notes)
    explained = wd.plans_explained_txt.read_text(encoding="utf-8") if wd.plans_explained_txt.exists() else None
    dataset = shlex.quote(manifest.root) if manifest is not None else "DATASET"
    if plans is None or splits is None:
        what = ", ".join(p.name for p, obj in ((wd.plans_json, plans), (wd.splits_json, splits)) if obj is None)
        missing.append(Missing(f"the plan ({what}): nothing can be trained before it",
                               f"autoseg plan {dataset} --workdir {q}"))
    if manifest is None:
        missing.append(Missing("dataset_manifest.json (the dataset's case files): without it no validation case "
                               "can be drawn", f"autoseg plan DATASET --workdir {q}"))
    folds: dict[str, list[FoldState]] = {}
    selection = _read(Selection, wd.selection_json, notes)
    if plans is None:
        return RunState(root, manifest, plans, explained, splits, folds, selection, missing, notes)

    n_folds = len(splits.folds) if splits is not None else DEFAULT_N_FOLDS
    complete = []
    for name in plans.configurations:
        states = [_fold_state(store, plans, name, k, notes) for k in _fold_names(wd, name, n_folds)]
        folds[name] = states
        cv = [s for s in states if s.fold != "all"]
        for s in cv:
            if s.stale:
                notes.append(f"{name} fold {s.fold} was trained with other plans than plans.json holds now "
                             f"({s.stale}); retrain it: `rm -r {shlex.quote(str(wd.fold_dir(name, s.fold)))} && "
                             f"autoseg train --workdir {q} -c {name} --fold {s.fold}`")
        not_started = [s.fold for s in cv if not s.started]
        unfinished = [s.fold for s in cv if s.started and not s.finished]
        unvalidated = [s.fold for s in cv if s.finished and s.summary is None]
        for folds_, what in ((not_started, "not trained"), (unfinished, "training not finished (rerun resumes it)"),
                             (unvalidated, "trained, but no validation/summary.json")):
            if folds_:
                label = "fold" if len(folds_) == 1 else "folds"
                missing.append(Missing(f"{name} {label} {', '.join(folds_)}: {what}", _train_loop(q, name, folds_)))
        if cv and all(s.summary is not None for s in cv):
            complete.append(name)

    if selection is None:
        if complete:
            missing.append(Missing(f"the cross-validation ranking (results/selection.json); complete now: "
                                   f"{', '.join(complete)}", f"autoseg find-best --workdir {q}"))
        else:
            missing.append(Missing("the cross-validation ranking (results/selection.json): find-best needs every "
                                   "fold of at least one configuration trained and validated; after the trainings "
                                   "above", f"autoseg find-best --workdir {q}"))
    else:
        notes += _selection_notes(store, plans, selection, folds, complete, q)
    return RunState(root, manifest, plans, explained, splits, folds, selection, missing, notes)


def _train_loop(q: str, configuration: str, folds: list[str]) -> str:
    if len(folds) == 1:
        return f"autoseg train --workdir {q} -c {configuration} --fold {folds[0]}"
    return f"for k in {' '.join(folds)}; do autoseg train --workdir {q} -c {configuration} --fold $k; done"


def _selection_notes(store: RunStore, plans: Plans, selection: Selection, folds: dict[str, list[FoldState]],
                     complete: list[str], q: str) -> list[str]:
    """Why selection.json may be out of date (find-best would select again), with the command."""
    notes = []
    used = [c for c in plans.configurations if any(c in cand.configurations for cand in selection.candidates)]
    if selection.plans_hash != plans_hash(plans):
        notes.append(f"results/selection.json was made for other plans (re-planned since); "
                     f"run `autoseg find-best --workdir {q} --overwrite`")
        return notes
    by_fold = {(s.configuration, s.fold): s.summary for states in folds.values() for s in states}
    now = validation_hash(by_fold.get((c, str(f))) for c in used for f in selection.folds)
    if selection.validation_hash and selection.validation_hash != now:
        notes.append(f"results/selection.json was made from other fold validations than those there now "
                     f"(a fold was retrained); run `autoseg find-best --workdir {q}`")
    new = [c for c in complete if c not in used]
    if new:
        notes.append(f"{', '.join(new)} completed after results/selection.json was made, so the ranking does not "
                     f"include it; run `autoseg find-best --workdir {q}`")
    return notes
