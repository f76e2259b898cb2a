"""The run report as one HTML document: the pictures to make (:func:`figure_jobs`, so the caller can show
progress while they are drawn) and the page put together from the sections (:func:`render_report`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import AutosegError
from ..workdir import Workdir
from .collect import RunState
from .figures import case_overlay_png, pick_cases, training_curves_png
from .html import Markup, join, page, tag
from .sections import (Figure, cases_section, plan_section, selection_section, status_section, training_section,
                       validation_section)

log = logging.getLogger(__name__)

FigureKey = tuple  # ("curves", configuration, fold) or ("overlay", configuration, role)
NAV = (("status", "Status"), ("plan", "Plan"), ("training", "Training"), ("selection", "Ranking"),
       ("validation", "Dice per fold"), ("cases", "Cases"))


def _curves_job(state: RunState, configuration: str, fold: str) -> Callable[[], Figure]:
    fold_state = next(f for f in state.folds[configuration] if f.fold == fold)
    caption = f"{configuration} fold {fold}: {len(fold_state.log)} epoch(s)" + (
        "" if fold_state.finished else " (not finished)")

    def make() -> Figure:
        if fold_state.log:
            names = list(state.class_names.values())
            return Figure(training_curves_png(fold_state.log, f"{configuration} fold {fold}", names), caption)
        if fold_state.progress_png is not None:  # no readable log: the trainer's own plot
            return Figure(fold_state.progress_png.read_bytes(), caption + " (progress.png)")
        return Figure(None, caption, "training_log.jsonl has no epoch yet")

    return make


def _overlay_job(state: RunState, configuration: str, picked, file_ending: str) -> Callable[[], Figure]:
    manifest = state.manifest
    wd = Workdir(state.root)
    mean = "–" if picked.mean_dice is None else f"{picked.mean_dice:.3f}"
    per_class = ", ".join(f"{state.class_names.get(k, k)} {'–' if v is None else f'{v:.3f}'}"
                          for k, v in picked.dice.items())
    caption = (f"{picked.role}: {picked.case_id} (fold {picked.fold}), mean foreground Dice {mean}"
               + (f" ({per_class})" if per_class else ""))

    def make() -> Figure:
        case = next((c for c in manifest.cases if c.case_id == picked.case_id), None)
        if case is None or case.label is None:
            return Figure(None, caption, f"{picked.case_id} is not a training case of dataset_manifest.json")
        prediction = wd.validation_dir(configuration, picked.fold) / f"{picked.case_id}{file_ending}"
        try:
            png, info = case_overlay_png(case.images[0], case.label, prediction, label_names=state.label_names,
                                         title=f"{configuration} – {picked.role}: {picked.case_id}, Dice {mean}")
        except (AutosegError, OSError, ValueError) as e:
            return Figure(None, caption, f"cannot draw it: {e}")
        return Figure(png, f"{caption}; slice z={info['slice']}")

    return make


def figure_jobs(state: RunState) -> list[tuple[FigureKey, Callable[[], Figure]]]:
    """Every picture of the report, as (key, function that draws it), in page order: each fold's curves
    (folds with a log or progress.png), then per configuration the best, median and worst validation case."""
    jobs: list[tuple[FigureKey, Callable[[], Figure]]] = []
    for name, folds in state.folds.items():
        for f in folds:
            if f.log or f.progress_png is not None:
                jobs.append((("curves", name, f.fold), _curves_job(state, name, f.fold)))
    if state.manifest is None:
        return jobs
    for name, folds in state.folds.items():
        per_case = {f.fold: f.summary.per_case for f in folds if f.summary is not None and f.fold != "all"}
        for picked in pick_cases(per_case):
            jobs.append((("overlay", name, picked.role),
                         _overlay_job(state, name, picked, state.manifest.file_ending)))
    return jobs


def _header(state: RunState, generated_at: str) -> Markup:
    name = state.plans.dataset_name if state.plans else (state.manifest.name if state.manifest else state.root.name)
    facts = [f"work folder {state.root.resolve()}"]
    if state.manifest is not None:
        facts.append(f"dataset {state.manifest.root}: {len(state.manifest.cases)} training cases, "
                     f"channels {', '.join(state.manifest.channel_names.values())}, "
                     f"{'regions' if state.manifest.regions else 'labels'} "
                     f"{', '.join(f'{v} {k}' for k, v in state.class_names.items())}")
    facts.append(f"report written {generated_at}")
    nav = join(tag("a", title, href=f"#{anchor}") for anchor, title in NAV)
    return Markup(f"<header>{tag('h1', f'autoseg run report: {name}')}"
                  f"{join(tag('p', f) for f in facts)}<nav>{nav}</nav></header>")


def render_report(state: RunState, figures: Mapping[FigureKey, Figure], *, generated_at: str) -> str:
    """The report page (a str of HTML) for ``state`` with the pictures ``figures`` (from :func:`figure_jobs`)."""
    name = state.plans.dataset_name if state.plans else state.root.name
    body = [status_section(state), plan_section(state), training_section(state, figures),
            selection_section(state), validation_section(state), cases_section(state, figures)]
    return page(f"autoseg report: {name}", _header(state, generated_at), body)


def count_images(html_text: str) -> int:
    """How many embedded pictures a report holds."""
    return html_text.count('<img src="data:image/png;base64,')


def default_output(root: str | Path) -> Path:
    return Workdir(root).report_html

