"""Use case `autoseg run`: plan → train → find-best (→ predict) inside one wall-clock budget.

The budget is for the result, not for one training. After planning, :func:`choose_trainings` decides
what is worth training in the time there is (which configurations, how many folds) and explains it;
the trainings then share what the other stages leave, re-split after every training from the
measured times (time one training did not use goes to the next; the reserve for find-best and
prediction is re-estimated from the measured validation times). A run that falls behind leaves out its
last trainings rather than giving each too little to learn, and selects among what finished. Re-running
resumes: current plans, finished folds and a current selection are reused.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import AutosegError
from ..schemas import Plans, Selection
from ..store import RunStore
from .budget_split import (MIN_TRAINING_S, TRAINING_OVERHEAD_S, estimate_tail_seconds, planning_budget_per_training,
                           split_training_budget, trainings_that_fit)

log = logging.getLogger(__name__)

#: More configurations or folds are added only while every training keeps at least this long. Measured
#: on 2 CPU cores (docs/benchmarks/README.md): one 3-minute training reached fold-0 Dice 0.82 on
#: Hippocampus 3d_fullres and 0.81 on ISBI 2d (20 minutes: 0.79 and 0.82), while 5 folds of 2 minutes
#: gained from an ensemble (2d+3d_fullres 0.785 vs 3d_fullres 0.751 on Hippocampus): past a few minutes a
#: training gains little, below them it is not yet trained.
GOOD_TRAINING_S = 180.0
N_FOLDS = 5
RUN_JSON = "run_summary.json"


@dataclass(frozen=True)
class TrainingChoice:
    """What `autoseg run` trains: configurations (previous stages first) x folds, and why."""

    configurations: list[str]
    folds: list[int]
    per_training_s: float  # the planned share of each training (re-split as trainings finish)
    reasons: list[str]

    @property
    def trainings(self) -> list[tuple[str, int]]:
        return [(c, f) for c in self.configurations for f in self.folds]


@dataclass(frozen=True)
class RunResult:
    workdir: Path
    time_budget_s: float
    total_seconds: float
    stage_seconds: dict[str, float]
    choice: TrainingChoice
    trainings: list[dict[str, Any]]  # the trainings run now: configuration, fold, budget_s, seconds, iterations, dice
    selection: Selection
    ranking: str
    plans_explained: list[str] = field(repr=False, default_factory=list)
    prediction: Any = None  # a PredictResult when --predict was given


def _primary(plans: Plans) -> str:
    return "3d_fullres" if "3d_fullres" in plans.configurations else "2d"


def choose_trainings(plans: Plans, training_s: float, *, good_training_s: float = GOOD_TRAINING_S,
                     min_training_s: float = MIN_TRAINING_S, folds_available: int = N_FOLDS) -> TrainingChoice:
    """Which configurations and folds fit ``training_s`` seconds of training (a pure function).

    The primary configuration (3d_fullres for 3D data, else 2d) is always trained. All folds (five, or
    ``folds_available``) when each gets ``good_training_s``; fewer folds (at least one) when not, because
    on a small budget one longer training beats five short ones, and find-best then selects on the folds
    there are. Every other configuration (2d for 3D data, then 3d_lowres + 3d_cascade_fullres) is added, all
    folds each, only while every training keeps ``good_training_s``. ``folds_available``: the folds of
    splits.json (fewer than 5 for a dataset of fewer than 5 training cases, or a user's splits file).
    """
    primary = _primary(plans)
    reasons: list[str] = []
    all_folds = max(1, min(N_FOLDS, folds_available))
    n_folds = int(max(1, min(all_folds, math.floor(training_s / good_training_s))))
    if n_folds < all_folds:
        reasons.append(f"{primary} on {n_folds} fold(s): {training_s:.0f} s of training give each of {all_folds} folds "
                       f"{training_s / all_folds:.0f} s, less than the {good_training_s:.0f} s a training needs to get "
                       f"close to what more time gives; one longer training beats several short ones")
    else:
        reasons.append(f"{primary} on all {all_folds} folds: each gets {training_s / all_folds:.0f} s "
                       f"(>= {good_training_s:.0f} s)")
    configs = [primary]
    extras: list[list[str]] = []
    if primary == "3d_fullres" and "2d" in plans.configurations:
        extras.append(["2d"])
    if "3d_lowres" in plans.configurations and "3d_cascade_fullres" in plans.configurations:
        extras.append(["3d_lowres", "3d_cascade_fullres"])
    for extra in extras:
        if n_folds < all_folds:
            reasons.append(f"{' + '.join(extra)} not trained: the budget does not give {primary} its {all_folds} folds")
            continue
        share = training_s / (all_folds * (len(configs) + len(extra)))
        if share >= good_training_s:
            configs += extra
            reasons.append(f"{' + '.join(extra)} added ({all_folds} folds each): every training still gets "
                           f"{share:.0f} s, and find-best can then choose among more configurations and ensembles")
        else:
            reasons.append(f"{' + '.join(extra)} not trained: with it every training would get {share:.0f} s "
                           f"(< {good_training_s:.0f} s)")
    per = training_s / (len(configs) * n_folds)
    if per < min_training_s:
        raise AutosegError(f"the time budget leaves {training_s:.0f} s of training, {per:.0f} s for even one "
                           f"training, below the {min_training_s:.0f} s a training needs; give a larger --time-budget")
    return TrainingChoice(configurations=configs, folds=list(range(n_folds)), per_training_s=per, reasons=reasons)


class _Clock:
    """Wall seconds since the run started, and per stage."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.monotonic() - t0


def _validation_seconds_per_case(store: RunStore, configuration: str, folds: Sequence[int]) -> float | None:
    values = []
    for f in folds:
        summary = store.fold_summary(configuration, f)
        if summary is not None:
            values += [float(v) for v in summary.seconds_per_case.values()]
    return sum(values) / len(values) if values else None


def _case_ids(folder: str | Path | None) -> list[str]:
    """The case ids of a prediction input folder: ``<case>_0000`` files and DICOM case folders (or the folder
    itself when it holds one DICOM series)."""
    from ..data.dicom_io import holds_dicom_files, is_dicom_case

    if folder is None or not Path(folder).is_dir():
        return []
    if holds_dicom_files(folder):
        return [Path(folder).name]
    names = {p.name.split("_0000")[0] for p in Path(folder).iterdir() if "_0000" in p.name}
    names |= {p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".") and is_dicom_case(p)}
    return sorted(names)


def _count_cases(folder: str | Path | None) -> int:
    return len(_case_ids(folder))


def run(dataset: str | Path, workdir: str | Path, *, time_budget_s: float, predict_input: str | Path | None = None,
        predict_output: str | Path | None = None, planner: str = "default", device: str | None = None,
        num_workers: int | None = None, progress: bool = True, report: Callable[[str], None] | None = None,
        cpu_gflops: float | None = None, min_training_s: float = MIN_TRAINING_S,
        good_training_s: float = GOOD_TRAINING_S, training_overrides: dict | None = None) -> RunResult:
    """plan → the chosen trainings → find-best (→ predict ``predict_input`` into ``predict_output``) within
    ``time_budget_s`` wall-clock seconds. ``report(line)`` receives the progress lines (default: the log).
    ``cpu_gflops``, ``min_training_s``, ``good_training_s`` and ``training_overrides`` are for tests."""
    from .find_best import find_best
    from .plan import plan_dataset, preprocess_planned
    from .predict import predict
    from .train import train_fold

    if (predict_input is None) != (predict_output is None):
        raise AutosegError("--predict needs both the input folder and the output folder: --predict IN OUT")
    report = report or log.info
    clock = _Clock()
    store = RunStore(workdir)
    n_test = _count_cases(predict_input)

    # plan for the primary configuration alone on 5 folds, the choice's most common case; re-planned below
    # when the choice gives each training another share (planning again is cheap: the fingerprint is
    # reused). Nothing is preprocessed until the choice is made: a configuration the run does not train
    # (often 3d_lowres, whose spacing also changes with the share) costs none of the budget.
    provisional = planning_budget_per_training(time_budget_s, N_FOLDS, min_training_s=min_training_s)

    def plan(seconds: float) -> Any:
        if store.wd.plans_json.exists() and any(store.wd.results_root.glob("*/fold_*/checkpoint_*.pt")):
            recorded = store.plans().time_budget_s
            if recorded is not None and abs(recorded - seconds) > 1:
                report(f"{store.root} has trainings planned for {recorded:.0f} s each: keeping those plans")
                seconds = recorded
        return plan_dataset(dataset, workdir, planner=planner, device=device, time_budget_s=round(seconds),
                            num_workers=num_workers, progress=progress, cpu_gflops=cpu_gflops, preprocess=())

    planned = clock.run("plan", lambda: plan(provisional))
    training_s = provisional * N_FOLDS
    folds_available = len(store.splits().folds)
    choice = choose_trainings(planned.plans, training_s, good_training_s=good_training_s,
                              min_training_s=min_training_s, folds_available=folds_available)
    if abs(choice.per_training_s - provisional) > 0.1 * provisional:
        planned = clock.run("plan", lambda: plan(choice.per_training_s))
        if not set(choice.configurations) <= set(planned.plans.configurations):
            # the plan for the new share has other configurations (e.g. no 3d_lowres): choose among those
            choice = choose_trainings(planned.plans, training_s, good_training_s=good_training_s,
                                      min_training_s=min_training_s, folds_available=folds_available)
    plans = planned.plans
    report(f"budget {time_budget_s:.0f} s: {len(choice.trainings)} training(s) of ~{choice.per_training_s:.0f} s")
    for reason in choice.reasons:
        report(f"  - {reason}")
    clock.run("plan", lambda: preprocess_planned(workdir, choice.configurations, num_workers=num_workers,
                                                 progress=progress))

    overrides = {k: v for k, v in {"device": device, "num_workers": num_workers}.items() if v is not None}
    overrides.update(training_overrides or {})  # as given: a None there replaces the run's share (tests)
    chosen = choice
    trainings, choice = clock.run("train", lambda: _train(store, plans, chosen, time_budget_s, clock, n_test,
                                                          min_training_s, overrides, progress, report, train_fold))
    if choice is not chosen:  # the run fell behind and left trainings out: say what it selects among
        report(f"  - {choice.reasons[-1]}")
    best = clock.run("find-best", lambda: find_best(workdir, configurations=choice.configurations,
                                                     folds=choice.folds, progress=progress))
    report(best.ranking)
    prediction = None
    if predict_input is not None:
        prediction = clock.run("predict", lambda: _predict(store, predict_input, predict_output, progress=progress,
                                                           num_workers=num_workers, device=device, report=report,
                                                           predict=predict))
    result = RunResult(workdir=store.root, time_budget_s=float(time_budget_s), total_seconds=round(clock.elapsed(), 1),
                       stage_seconds={k: round(v, 1) for k, v in clock.stages.items()}, choice=choice,
                       trainings=trainings, selection=best.selection, ranking=best.ranking,
                       plans_explained=planned.explained, prediction=prediction)
    atomic_write_json(store.root / RUN_JSON, {
        "time_budget_s": result.time_budget_s, "total_seconds": result.total_seconds,
        "stage_seconds": result.stage_seconds, "configurations": choice.configurations, "folds": choice.folds,
        "per_training_s": round(choice.per_training_s, 1), "reasons": choice.reasons, "trainings": trainings,
        "winner": best.selection.winner, "cv_foreground_dice": best.selection.foreground_dice_after_postprocessing})
    return result


def _predict(store: RunStore, images: str | Path, out_dir: str | Path, *, progress: bool, num_workers: int | None,
             device: str | None, report: Callable[[str], None], predict: Callable[..., Any]) -> Any:
    """Predict ``images`` with the selection, unless ``out_dir`` holds this selection's predictions of all of them."""
    from ..atomic import read_json
    from ..inference.partial import PREDICTION_INFO_JSON
    from ..store import file_hash, freshness

    info_path = Path(out_dir) / PREDICTION_INFO_JSON
    if info_path.exists() and store.wd.selection_json.exists():
        try:
            info = read_json(info_path)
        except AutosegError:
            info = None
        if info is not None:
            cases = _case_ids(images)
            made_for = {"selection_hash": info.get("selection_hash") or "none",
                        "cases": sorted(info.get("predicted_cases", [])), "failed": bool(info.get("failed_cases"))}
            if freshness(info_path, made_for, {"selection_hash": file_hash(store.wd.selection_json), "cases": cases,
                                               "failed": False}).current:
                report(f"predictions in {out_dir} were made with the current selection: reusing them")
                return None
    mirror, step, why = _validated_mode(store)
    if why:
        report(why)
    result = predict(store.root, images, out_dir, progress=progress, num_workers=num_workers, device=device,
                     mirror=mirror, step_size=step)
    report(f"predicted {len(result.predicted_cases)} case(s) with {', '.join(result.configurations)} (folds "
           f"{result.folds}) into {result.output_dir} in {result.total_seconds:.0f} s")
    return result


def _validated_mode(store: RunStore) -> tuple[bool | None, float | None, str]:
    """How to predict: as the selection's folds were validated. A budgeted training may validate without
    mirroring or with a larger tile step to fit its budget (``validation_mode`` of its fold summary); the
    cross-validation Dice the selection rests on was measured that way, and the run reserved prediction time
    from those validation times, so predicting with every mirror would overrun the budget (8 passes in 3D)
    for a result the cross-validation never measured. (None, None, "") when every fold validated in the full
    mode (predict's defaults)."""
    selection = store.selection()
    if selection is None:
        return None, None, ""
    modes = [s.validation_mode for c in selection.winner_configurations for f in selection.folds
             if (s := store.fold_summary(c, f)) is not None and s.validation_mode]
    if not modes:
        return None, None, ""
    mirror = all(bool(m.get("mirror", True)) for m in modes)
    step = max(float(m.get("step_size", 0.5)) for m in modes)
    if mirror and step <= 0.5:
        return None, None, ""
    how = ", ".join(p for p in ("" if mirror else "no mirroring", f"tile step {step:g}" if step > 0.5 else "") if p)
    return mirror, step, (f"predicting as the cross-validation measured: {how} (the mode the budget gave the final "
                          f"validations; `autoseg predict --workdir {store.root}` predicts with every mirror)")


def _train(store: RunStore, plans: Plans, choice: TrainingChoice, total_s: float, clock: _Clock, n_test: int,
           min_training_s: float, overrides: dict, progress: bool, report: Callable[[str], None],
           train_fold: Callable[..., Any]) -> tuple[list[dict[str, Any]], TrainingChoice]:
    """Every chosen (configuration, fold) not finished yet, one after the other, sharing what is left.

    Before each training after the first, the trainings still to run are re-split: a training is worth
    running only when its share covers the minimum training plus its final validation (measured on the
    configuration's finished folds). When the run is behind its schedule, the last ones in priority order
    are left out instead of all getting too little: a fold that trains a handful of steps would dilute the
    ensemble with a network that has learned nothing. The primary configuration's folds are left out one by
    one (find-best selects on the folds it has); another configuration's remaining folds all or none (it is
    compared only on every chosen fold, so part of them would be time spent for nothing). Returns the trainings run now and the choice as
    trained (configurations and folds reduced to the ones finished, with the reason)."""
    splits = store.splits()
    n_cv = sum(len(splits.folds[f].val) for f in choice.folds if f < len(splits.folds))  # find-best scores these
    todo = [t for t in choice.trainings if not store.fold_finished(*t)]
    done = len(choice.trainings) - len(todo)
    if done:
        report(f"{done} of {len(choice.trainings)} trainings already finished in {store.wd.results_root}: reusing them")

    def measured() -> dict[str, float | None]:  # read once per training: the fold summaries written so far
        return {c: _validation_seconds_per_case(store, c, choice.folds) for c in choice.configurations}

    def tail(per_case: dict[str, float | None]) -> float:
        return estimate_tail_seconds(total_s, choice.configurations, per_case, n_folds=len(choice.folds),
                                     n_cv_cases=n_cv, n_test_cases=n_test, evaluate=False)

    def need(per_case: dict[str, float | None], c: str, f: int) -> float:
        n_val = len(splits.folds[f].val) if f < len(splits.folds) else 0
        return min_training_s + (per_case[c] * n_val if per_case[c] is not None else 0.0)

    precision: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    left_out: list[tuple[str, int]] = []
    for i, (c, f) in enumerate(todo):
        per_case = measured()
        reserved = tail(per_case)
        if i == 0:  # the first share must be a real training (else: a clear error naming a budget that works)
            share = split_training_budget(total_s, clock.elapsed(), len(todo), reserved_s=reserved,
                                          min_training_s=min_training_s, strict=True)[0]
        else:
            rest = todo[i:]
            needs = [need(per_case, *t) for t in rest]
            # the primary configuration's folds count one by one; another configuration's folds are all or none
            groups = [None if t[0] == choice.configurations[0] else t[0] for t in rest]
            fit, share = trainings_that_fit(total_s, clock.elapsed(), needs, reserved_s=reserved, groups=groups)
            if fit == 0:
                left_out = rest
                report(f"the run is behind its schedule: {total_s - clock.elapsed():.0f} s are left and "
                       f"{reserved:.0f} s are kept for the stages after training, but {c} fold {f} needs "
                       f"{needs[0]:.0f} s to be worth training (its final validation included): "
                       f"{len(rest)} training(s) left out")
                break
            if fit < len(rest):
                report(f"the run is behind its schedule: the time left fits {fit} of the {len(rest)} trainings still "
                       f"to run; the last {len(rest) - fit} are left out unless time frees up")
        o = {"time_budget_s": share, **overrides}
        if c in precision and "precision" not in overrides:
            o["precision"] = precision[c]  # measured once per configuration (the auto probe costs steps)
        report(f"[{done + i + 1}/{len(choice.trainings)}] {c} fold {f}: budget {share:.0f} s "
               f"({clock.elapsed():.0f} s of {total_s:.0f} s used so far; {TRAINING_OVERHEAD_S:.0f} s start-up each)")
        t0 = time.monotonic()
        trained = train_fold(store.root, c, str(f), overrides=o, progress=progress)
        if trained.precision:
            precision.setdefault(c, trained.precision)
        seconds = time.monotonic() - t0
        dice = trained.summary.foreground_dice if trained.summary is not None else None
        report(f"    {seconds:.0f} s, {trained.iterations} iterations, validation foreground Dice "
               f"{'-' if dice is None else f'{dice:.3f}'}")
        results.append({"configuration": c, "fold": f, "budget_s": round(share, 1), "seconds": round(seconds, 1),
                        "iterations": trained.iterations, "foreground_dice": dice})
    return results, _as_trained(store, choice, left_out)


def _as_trained(store: RunStore, choice: TrainingChoice, left_out: Sequence[tuple[str, int]]) -> TrainingChoice:
    """The choice reduced to what finished: the primary configuration's finished folds, and the configurations
    finished on all of them (find-best compares configurations on the same folds)."""
    if not left_out:
        return choice
    finished = {t for t in choice.trainings if store.fold_finished(*t)}
    folds = [f for f in choice.folds if (choice.configurations[0], f) in finished]
    configs = [c for c in choice.configurations if all((c, f) in finished for f in folds)]
    dropped = [c for c in choice.configurations if c not in configs]
    why = (f"trained: {', '.join(configs)} on fold(s) {', '.join(map(str, folds))}, not the "
           f"{len(choice.trainings)} trainings planned: the run fell behind its schedule and left out "
           f"{', '.join(f'{c} fold {f}' for c, f in left_out)}"
           + (f" ({', '.join(dropped)} then lacks folds and is not compared)" if dropped else "")
           + "; run the same command again to train them with a new budget")
    return replace(choice, configurations=configs, folds=folds, reasons=[*choice.reasons, why])
