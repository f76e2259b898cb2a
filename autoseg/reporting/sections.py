"""The sections of the run report, each an HTML fragment built from a :class:`RunState` and the pictures
made for it (:class:`Figure`, keyed as :func:`autoseg.reporting.build.figure_jobs` keys them).

Every section shows what is there and says what is not, with the command that makes it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..schemas import ConfigurationPlan, Decision
from .collect import FoldState, RunState
from .html import Markup, code_block, dims, esc, join, num, png_img, section, table, tag, value_text


@dataclass(frozen=True)
class Figure:
    """A picture of the report, or why there is none."""

    png: bytes | None
    caption: str
    problem: str = ""  # shown instead of the picture when png is None


def missing_box(text: Any, command: str | None = None) -> Markup:
    cmd = join([Markup("<br>Run: "), tag("code", command)]) if command else ""
    return Markup(f'<div class="missing">{esc(text)}{cmd}</div>')


def _figure(fig: Figure, alt: str) -> Markup:
    if fig.png is None:
        return missing_box(f"{fig.caption}: {fig.problem}")
    return Markup(f"<figure>{png_img(fig.png, alt)}{tag('figcaption', fig.caption)}</figure>")


def class_columns(state: RunState, keys: Iterable[str]) -> list[str]:
    """The scored keys found, in the dataset's order (labels or regions), then any others."""
    found = list(dict.fromkeys(keys))
    order = list(state.class_names)
    return [k for k in order if k in found] + sorted(k for k in found if k not in order)


def class_header(state: RunState, key: str) -> str:
    name = state.class_names.get(key)
    return f"{name} ({key})" if name else key


# --------------------------------------------------------------------------- status

def status_section(state: RunState) -> Markup:
    rows: list[Sequence[Any]] = []
    done, todo = Markup('<span class="ok">done</span>'), Markup('<span class="todo">missing</span>')
    rows.append(["plan", done if state.plans is not None else todo,
                 ", ".join(state.plans.configurations) if state.plans else "no plans.json"])
    for name, folds in state.folds.items():
        cv = [f for f in folds if f.fold != "all"]
        trained = sum(f.finished for f in cv)
        validated = sum(f.summary is not None for f in cv)
        rows.append([f"train {name}", done if validated == len(cv) else todo,
                     f"{trained}/{len(cv)} folds trained, {validated}/{len(cv)} validated"
                     + ("; fold 'all' trained" if any(f.fold == "all" and f.finished for f in folds) else "")])
    sel = state.selection
    rows.append(["find-best", done if sel is not None else todo,
                 f"winner {sel.winner} (foreground Dice {num(sel.foreground_dice_after_postprocessing)}, "
                 f"folds {', '.join(map(str, sel.folds))})" if sel is not None else "no results/selection.json"])
    parts: list[Any] = [table(["stage", "state", "details"], rows, numeric_from=99)]
    if state.missing:
        parts.append(tag("h3", "Not there yet"))
        parts += [missing_box(m.what, m.command) for m in state.missing]
    parts += [Markup(f'<div class="note">{esc(n)}</div>') for n in state.notes]
    return section("status", "Status", *parts)


# --------------------------------------------------------------------------- plan

def _decisions_table(decisions: Sequence[Decision], caption: str) -> Markup:
    return table(["subject", "value", "rule", "reason"],
                 [[d.subject, value_text(d.value), tag("code", d.rule), d.reason] for d in decisions],
                 caption=caption, numeric_from=99)


def _configuration_facts(cfg: ConfigurationPlan) -> Markup:
    net = cfg.network
    rows = [["spacing (z × y × x)", f"{dims(cfg.spacing_zyx_mm)} mm"],
            ["median shape after resampling (z × y × x)", f"{dims(cfg.median_shape_zyx)} voxels"],
            ["patch size (patch axes)", f"{dims(cfg.patch_size)} voxels"],
            ["batch size", cfg.batch_size],
            ["network", f"{net.dims}D U-Net, {len(net.features_per_stage)} stages, features "
                        f"{', '.join(map(str, net.features_per_stage))}, {net.in_channels} input channel(s), "
                        f"{net.num_classes} outputs"],
            ["strides per stage", "; ".join(dims(s) for s in net.strides)],
            ["normalization", "; ".join(f"{n.name}: {n.scheme}{' (mask)' if n.use_mask else ''}"
                                        for n in cfg.normalization)],
            ["estimated memory", f"{cfg.estimated_memory_gb:.2f} GB"],
            ["compute per iteration", f"{cfg.estimated_gflop_per_iteration:.1f} GFLOP"]]
    if cfg.previous_stage or cfg.next_stage:
        rows.append(["cascade", f"previous stage {cfg.previous_stage or '–'}, next stage {cfg.next_stage or '–'}"])
    return table(["", "value"], rows, numeric_from=99)


def plan_section(state: RunState) -> Markup:
    plans = state.plans
    if plans is None:
        command = next((m.command for m in state.missing if m.what.startswith("the plan")), None)
        return section("plan", "Plan and its reasons", missing_box("No plans.json yet.", command))
    hw = plans.hardware
    device = (f"GPU {hw.gpu_name or ''} {num(hw.gpu_total_memory_gb, 1)} GB" if hw.device == "cuda"
              else f"CPU, {hw.cpu_cores} cores, {num(hw.ram_total_gb, 1)} GB RAM")
    budget = ("none (epochs)" if plans.time_budget_s is None else
              f"{plans.time_budget_s / 60:.1f} min per training"
              + ("" if plans.time_budget_given else " (the CPU plan's default)"))
    parts: list[Any] = [tag("p", f"Planner '{plans.planner}' (autoseg {plans.autoseg_version}) planned for {device}; "
                                 f"time budget {budget}.")]
    if plans.warnings:
        parts += [tag("h3", "Warnings"), Markup("<ul>" + "".join(tag("li", w) for w in plans.warnings) + "</ul>")]
    else:
        parts.append(tag("p", "The planner gave no warnings.", class_="muted"))
    parts.append(_decisions_table(plans.decisions, "Dataset-level decisions"))
    for name, cfg in plans.configurations.items():
        parts += [tag("h3", f"Configuration {name}"), _configuration_facts(cfg),
                  _decisions_table(cfg.decisions, f"{name}: decisions and their reasons")]
    if state.explained:
        parts.append(Markup(f"<details><summary>plans_explained.txt (the same, as text)</summary>"
                            f"{code_block(state.explained)}</details>"))
    return section("plan", "Plan and its reasons", *parts)


# --------------------------------------------------------------------------- training

def _training_row(f: FoldState) -> list[Any]:
    last = f.log[-1] if f.log else {}
    state = "finished" if f.finished else ("in progress or stopped" if f.started else "not started")
    return [f.fold, state, len(f.log), num(last.get("train_loss")), num(last.get("val_loss")),
            num(last.get("ema_dice")), num(last.get("elapsed_s"), 1)]


def training_section(state: RunState, figures: Mapping[tuple, Figure]) -> Markup:
    if not state.folds:
        return section("training", "Training curves", missing_box("Nothing can be trained before the plan exists."))
    parts: list[Any] = []
    for name, folds in state.folds.items():
        parts.append(tag("h3", name))
        parts.append(table(["fold", "state", "epochs", "last train loss", "last val loss", "last EMA pseudo-Dice",
                            "elapsed s"], [_training_row(f) for f in folds], numeric_from=2))
        figs = [_figure(figures[("curves", name, f.fold)], f"training curves of {name} fold {f.fold}")
                for f in folds if ("curves", name, f.fold) in figures]
        if figs:
            parts.append(Markup(f'<div class="figs">{join(figs)}</div>'))
        untrained = [f.fold for f in folds if not f.started]
        if untrained:
            parts.append(missing_box(f"no curves for fold(s) {', '.join(untrained)}: not trained yet."))
    return section("training", "Training curves", *parts)


# --------------------------------------------------------------------------- selection

def selection_section(state: RunState) -> Markup:
    sel = state.selection
    title = "Cross-validation ranking and postprocessing"
    if sel is None:
        command = next((m.command for m in state.missing if "selection.json" in m.what), None)
        return section("selection", title, missing_box("No results/selection.json yet: no ranking, no winner.",
                                                       command))
    keys = class_columns(state, (k for c in sel.candidates for k in c.dice_per_class))
    rows = [[i + 1, Markup(f"{esc(c.name)}{' ★ winner' if c.name == sel.winner else ''}"),
             " + ".join(c.configurations), num(c.foreground_dice), *[num(c.dice_per_class.get(k)) for k in keys],
             num(c.seconds_per_case, 2)] for i, c in enumerate(sel.candidates)]
    winner_rows = [i for i, c in enumerate(sel.candidates) if c.name == sel.winner]
    parts: list[Any] = [
        tag("p", f"Winner: {sel.winner} ({' + '.join(sel.winner_configurations)}), on the merged cross-validation "
                 f"of folds {', '.join(map(str, sel.folds))}. Ranked by mean foreground Dice, then fewer members, "
                 f"then fewer seconds per case."),
        table(["rank", "candidate", "members", "foreground Dice", *[class_header(state, k) for k in keys],
               "s per case"], rows, highlight=winner_rows, numeric_from=3, caption="Candidates (Dice per class)"),
        tag("h3", "Postprocessing of the winner"),
        tag("p", f"Foreground Dice {num(sel.foreground_dice_before_postprocessing)} before, "
                 f"{num(sel.foreground_dice_after_postprocessing)} after postprocessing.")]
    if sel.postprocessing:
        parts.append(table(["step", "kind", "labels", "minimum size (voxels)", "reason"],
                           [[i + 1, tag("code", s.kind), ", ".join(map(str, s.labels)) or "all foreground",
                             ", ".join(f"{k}: {v}" for k, v in s.min_size_voxels.items()) or "–", s.reason]
                            for i, s in enumerate(sel.postprocessing)], numeric_from=99))
    else:
        parts.append(tag("p", "No postprocessing step made the cross-validation better without making a class "
                              "worse, so none is applied."))
    after = class_columns(state, sel.dice_per_class_after_postprocessing)
    parts.append(table(["", *[class_header(state, k) for k in after]],
                       [["Dice after postprocessing", *[num(sel.dice_per_class_after_postprocessing.get(k))
                                                        for k in after]]]))
    return section("selection", title, *parts)


# --------------------------------------------------------------------------- validation

def validation_section(state: RunState) -> Markup:
    title = "Validation Dice per fold"
    if not state.folds:
        return section("validation", title, missing_box("No folds before the plan exists."))
    parts: list[Any] = [tag("p", "Each fold's held-out cases predicted at full resolution after training "
                                 "(validation/summary.json); Dice per class is the mean over the cases where "
                                 "it is defined.", class_="muted")]
    for name, folds in state.folds.items():
        summaries = [f.summary for f in folds if f.summary is not None]
        parts.append(tag("h3", name))
        if not summaries:
            parts.append(missing_box(f"no fold of {name} is validated yet (validation/summary.json is written at "
                                     f"the end of each training)."))
            continue
        keys = class_columns(state, (k for s in summaries for k in s.per_class))
        rows = []
        for f in folds:
            s = f.summary
            if s is None:
                rows.append([f.fold, "–", *["–"] * len(keys), "not validated yet", "–"])
                continue
            rows.append([f.fold, s.num_cases, *[num((s.per_class.get(k) or {}).get("dice")) for k in keys],
                         num(s.foreground_mean.get("dice")), num(s.mean_seconds_per_case, 2)])
        cv = [f.summary for f in folds if f.summary is not None and f.fold != "all"]
        if len(cv) > 1:
            def mean(values: list[Any]) -> float | None:
                vals = [float(v) for v in values if v is not None]
                return sum(vals) / len(vals) if vals else None
            rows.append(["mean of folds", sum(s.num_cases for s in cv),
                         *[num(mean([(s.per_class.get(k) or {}).get("dice") for s in cv])) for k in keys],
                         num(mean([s.foreground_mean.get("dice") for s in cv])),
                         num(mean([s.mean_seconds_per_case for s in cv]), 2)])
        parts.append(table(["fold", "cases", *[class_header(state, k) for k in keys], "foreground mean",
                            "s per case"], rows, highlight=[len(rows) - 1] if len(cv) > 1 else ()))
    return section("validation", title, *parts)


# --------------------------------------------------------------------------- cases

def cases_section(state: RunState, figures: Mapping[tuple, Figure]) -> Markup:
    title = "Validation cases: best, median, worst"
    parts: list[Any] = [tag("p", "Per configuration, the validation cases with the highest, median and lowest mean "
                                 "foreground Dice, on the slice with the most reference foreground: image, "
                                 "reference, prediction.", class_="muted")]
    shown = False
    for name in state.folds:
        figs = [(key, fig) for key, fig in figures.items() if key[0] == "overlay" and key[1] == name]
        parts.append(tag("h3", name))
        if not figs:
            validated = any(f.summary is not None for f in state.folds[name])
            parts.append(missing_box(f"no validated fold of {name} yet." if not validated else
                                     "dataset_manifest.json is missing or unreadable, so the cases' images are "
                                     "not known (see Status)."))
            continue
        shown = True
        parts.append(Markup('<div class="figs">' + "".join(_figure(f, f"{name} {k[2]} validation case")
                                                            for k, f in figs) + "</div>"))
    if not state.folds:
        parts.append(missing_box("No validation cases before the plan exists."))
    elif not shown:
        parts.append(tag("p", "Overlays appear once a fold is trained and validated.", class_="muted"))
    return section("cases", title, *parts)
