"""The run store: every artifact of a work folder read and written as a typed object, the hashes that
say what each was made from, and the one freshness decision that every stage uses.

Three hashes, three names (all ``schemas.stable_hash`` values):

- ``plans_hash(plans)``: every configuration of plans.json. What a selection and a prediction were made for.
- ``configuration_hash(config)``: one configuration. What a fold was trained with (``train_settings.json``).
- ``preprocessing_hash(config)`` (in :mod:`autoseg.preprocessing.identity`): the fields that change the
  preprocessed data. What a preprocessed case was made with (``<case>.json``).

Plus the dataset's own ``dataset_hash`` (``data.dataset``), and content hashes of files
(:func:`file_hash`, e.g. a fold's final checkpoint), never timestamps.

:func:`freshness` is the only place that decides "is this output current?": each stage passes what the
artifact records about its inputs and what those inputs are now, and gets CURRENT, STALE (with the
reason and the command that makes it current) or MISSING.
"""
from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AutosegError, StaleArtifactError
from .schemas import (ConfigurationPlan, DatasetManifest, Fingerprint, FoldSummary, Plans, Selection, Splits,
                      TrainingSettings, load_json, save_json, stable_hash)
from .workdir import Workdir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- hashes

def plans_hash(plans: Plans) -> str:
    """Every configuration of ``plans`` (not the hardware record): what selections and predictions were made for."""
    return stable_hash({k: v for k, v in plans.configurations.items()})


def configuration_hash(config: ConfigurationPlan) -> str:
    """One configuration: what a fold was trained with."""
    return stable_hash(config)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (first 16 hex digits of its SHA-256): the same bytes give the same hash,
    whatever the file's timestamps."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def validation_hash(summaries: Iterable[FoldSummary | None]) -> str:
    """What a selection was made from: the fold summaries' networks and scores."""
    return stable_hash([[s.configuration, s.fold, s.checkpoint_hash, s.foreground_mean] for s in summaries
                        if s is not None])


# --------------------------------------------------------------------------- freshness

class State(str, enum.Enum):
    CURRENT = "current"
    STALE = "stale"
    MISSING = "missing"


@dataclass(frozen=True)
class Freshness:
    """Whether an artifact can be used as it is, and if not, why and what makes it current."""

    state: State
    path: Path
    reason: str = ""
    rerun: str = ""  # the command that makes it current

    @property
    def current(self) -> bool:
        return self.state is State.CURRENT

    def message(self) -> str:
        """One sentence for a log line or an error."""
        if self.current:
            return f"{self.path} is current"
        text = f"{self.path} is {self.state.value}" + (f" ({self.reason})" if self.reason else "")
        return text + (f"; run `{self.rerun}`" if self.rerun else "")


def freshness(path: str | Path, recorded: Mapping[str, Any] | None, expected: Mapping[str, Any], *,
              rerun: str = "") -> Freshness:
    """The one freshness decision: is the artifact at ``path`` made from the inputs it would be made from now?

    ``recorded``: what the artifact says about its inputs (None: the file is absent or unreadable);
    ``expected``: the same keys for the inputs as they are now. Values are hashes or plain values
    (names, budgets, fold lists), never timestamps. MISSING when the file is absent or unreadable;
    STALE when a key differs (the reason names each one, recorded → now); CURRENT otherwise. A key
    absent from ``recorded`` (an older autoseg did not record it) is not judged; a recorded None is a value.
    """
    path = Path(path)
    if recorded is None or not path.exists():
        return Freshness(State.MISSING, path, "not there" if not path.exists() else "unreadable", rerun)
    changed = [f"{k} {recorded[k]!r} → {v!r}" for k, v in expected.items() if k in recorded and recorded[k] != v]
    if changed:
        return Freshness(State.STALE, path, "made from other inputs: " + ", ".join(changed), rerun)
    return Freshness(State.CURRENT, path)


# --------------------------------------------------------------------------- the store

class RunStore:
    """Typed reading and writing of the artifacts below ``RUN/`` (names from :class:`Workdir`)."""

    def __init__(self, root: str | Path | Workdir):
        self.wd = root if isinstance(root, Workdir) else Workdir(root)

    @property
    def root(self) -> Path:
        return self.wd.root

    def _need(self, path: Path, what: str) -> None:
        if not path.exists():
            raise AutosegError(f"{path} does not exist: run `autoseg plan DATASET --workdir {self.root}` first "
                               f"(it writes {what})")

    # ---------------------------------------------------------------- written by plan
    def manifest(self) -> DatasetManifest:
        self._need(self.wd.manifest_json, "the checked dataset")
        return load_json(DatasetManifest, self.wd.manifest_json)

    def fingerprint(self) -> Fingerprint:
        self._need(self.wd.fingerprint_json, "the dataset fingerprint")
        return load_json(Fingerprint, self.wd.fingerprint_json)

    def plans(self) -> Plans:
        self._need(self.wd.plans_json, "the plans")
        return load_json(Plans, self.wd.plans_json)

    def splits(self) -> Splits:
        self._need(self.wd.splits_json, "the cross-validation splits")
        return load_json(Splits, self.wd.splits_json)

    def read_optional(self, cls: type, path: Path) -> Any | None:
        """``path`` as ``cls``; None when absent, and (with a warning) when unreadable."""
        if not path.exists():
            return None
        try:
            return load_json(cls, path)
        except AutosegError as e:
            log.warning("%s cannot be read (%s)", path, e)
            return None

    def save(self, obj: Any, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_json(obj, path)

    # ---------------------------------------------------------------- written by train
    def train_settings(self, configuration: str, fold: int | str) -> TrainingSettings | None:
        return self.read_optional(TrainingSettings, self.wd.train_settings_json(configuration, fold))

    def fold_summary(self, configuration: str, fold: int | str) -> FoldSummary | None:
        return self.read_optional(FoldSummary, self.wd.validation_summary_json(configuration, fold))

    def fold_freshness(self, plans: Plans, configuration: str, fold: int | str) -> Freshness:
        """Was this fold trained with the configuration plans.json holds now? (MISSING: no settings file.)"""
        path = self.wd.train_settings_json(configuration, fold)
        settings = self.train_settings(configuration, fold)
        # a fold of an autoseg that recorded no hash is not judged
        recorded = None if settings is None else (
            {"configuration_hash": settings.configuration_hash} if settings.configuration_hash else {})
        return freshness(path, recorded, {"configuration_hash": configuration_hash(plans.configuration(configuration))},
                         rerun=f"rm -r {self.wd.fold_dir(configuration, fold)} && autoseg train --workdir "
                               f"{self.root} -c {configuration} --fold {fold}")

    def fold_finished(self, configuration: str, fold: int | str) -> bool:
        """Trained to the end and validated with that very network (summary's checkpoint hash)."""
        final = self.wd.checkpoint(configuration, fold, "final")
        summary = self.fold_summary(configuration, fold)
        if summary is None or not final.exists():
            return False
        # a summary without the hash (older autoseg) cannot vouch for its network: not finished
        return freshness(self.wd.validation_summary_json(configuration, fold),
                         {"checkpoint_hash": summary.checkpoint_hash} if summary.checkpoint_hash else None,
                         {"checkpoint_hash": file_hash(final)}).current

    def stale_folds(self, plans: Plans, folds: Iterable[tuple[str, int | str]]) -> list[tuple[str, str, Freshness]]:
        """(configuration, fold, freshness) of the folds of ``folds`` trained with another plan than
        plans.json holds now (see :meth:`fold_freshness`)."""
        out = []
        for c, k in folds:
            fresh = self.fold_freshness(plans, c, k)
            if fresh.state is State.STALE:
                out.append((c, str(k), fresh))
        return out

    def refuse_stale_folds(self, plans: Plans, folds: Iterable[tuple[str, int | str]], *, purpose: str,
                           alternative: str = "") -> None:
        """StaleArtifactError naming every stale fold of ``folds`` and the commands that retrain it."""
        stale = self.stale_folds(plans, folds)
        if not stale:
            return
        what = "\n".join(f"  - {c} fold {k}: {f.path} {f.reason}" for c, k, f in stale)
        cmds = "\n".join(f"  {f.rerun}" for *_, f in stale)
        raise StaleArtifactError(f"{len(stale)} trained fold(s) needed {purpose} were trained with other plans than "
                                 f"{self.wd.plans_json} holds now (it was re-planned since), so their networks and "
                                 f"validation do not belong to the current plans:\n{what}\nretrain each (delete "
                                 f"the fold folder, then train it again):\n{cmds}"
                                 + (f"\n{alternative}" if alternative else ""))

    # ---------------------------------------------------------------- written by find-best
    def selection(self) -> Selection | None:
        return self.read_optional(Selection, self.wd.selection_json)

    def selection_for(self, plans: Plans, *, optional: bool = False) -> Selection | None:
        """``selection.json`` for prediction, made for the current plans.

        Missing, unreadable or made for other plans: AutosegError / StaleArtifactError naming the
        command to run, or (``optional``, when the configurations were named) a warning and None.
        """
        path = self.wd.selection_json
        if not path.exists():
            if optional:
                return None
            raise AutosegError(f"{path} does not exist, so the best configuration is not known yet; run "
                               f"`autoseg find-best --workdir {self.root}` first, or name the "
                               f"configurations to use (-c 3d_fullres)")
        try:
            selection = load_json(Selection, path)
        except AutosegError as e:
            if not optional:
                raise
            log.warning("%s cannot be read (%s); its postprocessing is not used", path, e)
            return None
        fresh = freshness(path, {"plans_hash": selection.plans_hash}, {"plans_hash": plans_hash(plans)},
                          rerun=f"autoseg find-best --workdir {self.root} --overwrite")
        if not fresh.current:
            if optional:
                log.warning("%s was made for other plans; its postprocessing is not used", path)
                return None
            raise StaleArtifactError(f"{path} was made for other plans ({fresh.reason}); rerun "
                                     f"`{fresh.rerun}`")
        return selection


def load_plans(workdir: str | Path) -> Plans:
    """``RUN/plans.json`` (AutosegError naming `autoseg plan` when it is missing)."""
    return RunStore(workdir).plans()


def load_manifest(workdir: str | Path) -> DatasetManifest:
    """``RUN/dataset_manifest.json`` (AutosegError naming `autoseg plan` when it is missing)."""
    return RunStore(workdir).manifest()
