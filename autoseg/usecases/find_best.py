"""Use case `autoseg find-best`: rank every complete configuration and ensemble on the cross-validation,
learn the winner's postprocessing, write ``results/selection.json`` (the scoring is
:func:`autoseg.selection.find_best`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..schemas import Selection


@dataclass(frozen=True)
class FindBestResult:
    selection: Selection
    ranking: str  # the ranking table, for people


def find_best(workdir: str | Path, *, configurations: list[str] | None = None, folds: list[int] | None = None,
              progress: bool = True, overwrite: bool = False, num_workers: int | None = None) -> FindBestResult:
    """See :func:`autoseg.selection.find_best`; a current selection.json is kept unless ``overwrite``."""
    from ..locks import exclusive, shared
    from ..selection import find_best as select, format_ranking
    from ..workdir import Workdir

    wd = Workdir(workdir)
    with shared(wd.plan_lock, f"work folder {wd.root}",
                hint="`autoseg plan` is running on it; wait for it to end, then run find-best"), \
         exclusive(wd.results_root / ".find_best.lock", f"find-best of {wd.root}",
                   hint="another find-best is choosing for this work folder; wait for it, its selection.json "
                        "will be current"):
        selection = select(workdir, configurations=configurations, folds=folds, progress=progress,
                           overwrite=overwrite, num_workers=num_workers)
    return FindBestResult(selection=selection, ranking=format_ranking(selection))
