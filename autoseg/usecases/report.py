"""Use case `autoseg report`: a run as one HTML page that people can look at.

The work folder is read as it is (:func:`autoseg.reporting.collect.collect_run`): the plan with every
decision's reason, each training's curves, the cross-validation ranking and postprocessing, per-class
Dice per fold and overlays of the best, median and worst validation case per configuration. A partial
run gives a partial report that names what is missing and the command that makes it. The page is one
file: pictures are embedded PNGs, the style sheet is inline, nothing is loaded from elsewhere.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..reporting.build import count_images, default_output, figure_jobs, render_report
from ..reporting.collect import collect_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    """Where the report is and what it holds."""

    path: Path
    n_images: int  # embedded pictures
    missing: list[tuple[str, str]]  # (what, the command that makes it)
    notes: list[str]  # artifacts out of date or unreadable
    seconds: float


def write_report(workdir: str | Path, output: str | Path | None = None, *, progress: bool = True) -> ReportResult:
    """Write the report of the work folder ``workdir`` to ``output`` (default ``RUN/report.html``), atomically.

    Raises AutosegError when ``workdir`` is not a work folder. A progress bar (tqdm) shows the pictures
    being drawn when that takes more than two seconds; ``progress=False`` turns it off.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    state = collect_run(workdir)
    path = Path(output) if output is not None else default_output(workdir)
    if path.is_dir():
        path = path / default_output(workdir).name
    figures = {}
    jobs = figure_jobs(state)
    for key, make in tqdm(jobs, desc="report", unit="picture", disable=not progress, delay=2.0, leave=False):
        figures[key] = make()
    for key, fig in figures.items():
        if fig.png is None:
            log.warning("report: no picture for %s: %s", " ".join(key), fig.problem)
    text = render_report(state, figures, generated_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    path.parent.mkdir(parents=True, exist_ok=True)

    def _w(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, _w, suffix=".html")
    return ReportResult(path, count_images(text), [(m.what, m.command) for m in state.missing], list(state.notes),
                        time.perf_counter() - start)
