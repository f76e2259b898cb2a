"""The built-in demo: the whole pipeline on a synthetic dataset made on the spot, inside one time budget.

dataset → plan (explained) → train every planned configuration on every fold → find-best → predict
the held-out cases → evaluate them against their reference labels → overlay PNG → summary.

The dataset is generated inside the work folder (nothing is downloaded): 3D, anisotropic spacing
(3 × 1 × 1 mm), one MRI-like channel with a smooth multiplicative bias field and Gaussian noise, two
foreground classes of different sizes (label 2 has about a third of label 1's volume), 30 training
cases and 6 held-out cases with reference labels (``imagesTs/``, ``labelsTs/``; never trained on).

Layout of the demo folder ``DIR``::

    DIR/data/Dataset900_AutosegDemo/   the dataset (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json)
    DIR/run/                           the work folder of plan, train and find-best
    DIR/predictions/                   held-out predictions, prediction_info.json, summary.json (evaluation)
    DIR/overlay.png                    one held-out case: image, reference, prediction
    DIR/demo_summary.json              seconds per stage, Dice, paths

Rerunning reuses what is done: the dataset, current plans, finished folds (skipped), a current
selection and current predictions. Only the CLI prints: progress goes through ``report``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import AutosegError
from ..schemas import FoldSummary
from ..store import RunStore, file_hash, freshness
from ..workdir import Workdir

log = logging.getLogger(__name__)

DEMO_DATASET = "Dataset900_AutosegDemo"
DEMO_CASES = 30
DEMO_TEST_CASES = 6
DEMO_SHAPE_ZYX = (20, 64, 64)
DEMO_SPACING_ZYX = (3.0, 1.0, 1.0)
DEMO_BIAS_FIELD = 0.2  # intensities multiplied by a smooth field in [0.82, 1.22]
DEMO_SEED = 2026
DEMO_TIME_BUDGET_S = 600.0
N_FOLDS = 5
TARGET_DICE = 0.85  # below this mean foreground Dice on the held-out cases the demo warns
_GENERATOR_VERSION = 2  # bump when the generator's output changes, so old demo datasets are not reused


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and where everything is (demo_summary.json holds the same, less plans_explained)."""

    time_budget_s: float
    total_seconds: float
    stage_seconds: dict[str, float]
    mean_foreground_dice: float | None
    dice_per_class: dict[str, float | None]
    target_dice: float
    dice_below_target: bool
    selection: dict[str, Any]  # winner, cv_foreground_dice
    trainings: list[dict[str, Any]]  # one per training run now: configuration, fold, budget_s, seconds, ...
    overlay_png: str
    overlay_case: str
    paths: dict[str, str]
    plans_explained: list[str]


def make_demo_dataset(root: str | Path, *, n_cases: int = DEMO_CASES, n_test_cases: int = DEMO_TEST_CASES,
                      shape_zyx: Sequence[int] = DEMO_SHAPE_ZYX) -> Path:
    """Write (or reuse) the demo dataset under ``root``; returns its folder.

    The generation parameters are recorded in dataset.json (key ``autoseg_demo``, ignored by the
    dataset reader); a folder made with other parameters is refused rather than silently reused.
    """
    from ..data.synthetic import make_synthetic_dataset

    folder = Path(root) / DEMO_DATASET
    params = {"generator_version": _GENERATOR_VERSION, "n_cases": n_cases, "n_test_cases": n_test_cases,
              "shape_zyx": list(shape_zyx), "spacing_zyx": list(DEMO_SPACING_ZYX),
              "bias_field": DEMO_BIAS_FIELD, "seed": DEMO_SEED}
    dataset_json = folder / "dataset.json"
    if dataset_json.exists():
        found = json.loads(dataset_json.read_text(encoding="utf-8")).get("autoseg_demo")
        if found == params:
            return folder
        raise AutosegError(f"{folder} holds a dataset made with other settings ({found or 'not by this demo'}; "
                           f"this demo makes {params}); delete that folder and the demo's run/ next to it, or "
                           f"use another --workdir")
    if folder.exists() and any(folder.iterdir()):
        raise AutosegError(f"{folder} exists without dataset.json: it was not written by this demo; move it away "
                           f"or use another --workdir")
    # written to a side folder and renamed when complete, so an interrupted run leaves no half dataset
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    make_synthetic_dataset(partial, ndim=3, n_cases=n_cases, shape=tuple(shape_zyx), spacing_zyx=DEMO_SPACING_ZYX,
                           n_channels=1, n_labels=2, seed=DEMO_SEED, with_test_cases=n_test_cases,
                           bias_field_strength=DEMO_BIAS_FIELD, test_labels=True)
    data = json.loads((partial / "dataset.json").read_text(encoding="utf-8"))
    data["name"] = "autoseg demo: synthetic MRI-like 3D, bias field and noise, two classes of different sizes"
    data["autoseg_demo"] = params
    atomic_write_json(partial / "dataset.json", data)
    if folder.exists():  # empty
        folder.rmdir()
    partial.rename(folder)
    return folder


class _Clock:
    """Wall seconds since the demo started, and per stage."""

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


def _validation_seconds_per_case(wd: Workdir, configuration: str, n_folds: int) -> float | None:
    """Mean measured final-validation seconds per case over the validated folds (None if none)."""
    values = []
    for f in range(n_folds):
        summary = RunStore(wd).fold_summary(configuration, f)
        if summary is not None:
            values += [float(v) for v in summary.seconds_per_case.values()]
    return sum(values) / len(values) if values else None


def _dice_text(summary: FoldSummary) -> str:
    per = " / ".join(f"{r['name']} {r['dice']:.3f}" for r in summary.per_class.values() if r["dice"] is not None)
    fg = summary.foreground_dice
    return f"{per} (foreground mean {fg:.3f})" if fg is not None else per or "no Dice"


def _plan(dataset: Path, run_dir: Path, planning_budget_s: float, *, num_workers: int | None, progress: bool,
          cpu_gflops: float | None, report: Callable[[str], None]):
    """plan_dataset with the demo's per-training budget; finished trainings keep the plans they used."""
    from .plan import plan_dataset

    wd = Workdir(run_dir)
    if wd.plans_json.exists() and any(wd.results_root.glob("*/fold_*/checkpoint_*.pt")):
        recorded = RunStore(run_dir).plans().time_budget_s
        if recorded is not None and recorded != planning_budget_s:
            report(f"{run_dir} has trainings planned for {recorded:.0f} s each: keeping those plans "
                   f"(this --time-budget would plan for {planning_budget_s:.0f} s); the budget still sets how long "
                   f"the unfinished trainings run")
            planning_budget_s = recorded
    return plan_dataset(dataset, run_dir, time_budget_s=planning_budget_s, num_workers=num_workers,
                        progress=progress, cpu_gflops=cpu_gflops).plans


def _train_all(run_dir: Path, plans, total_s: float, clock: _Clock, *, n_test_cases: int, min_training_s: float,
               overrides: dict, progress: bool, report: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train every (configuration, fold) not finished yet, one after the other in this process."""
    from .budget_split import TRAINING_OVERHEAD_S, estimate_tail_seconds, split_training_budget
    from .train import train_fold

    store = RunStore(run_dir)
    wd = store.wd
    configs = list(plans.configurations)
    n_cv = len(store.manifest().cases)
    trainings = [(c, f) for c in configs for f in range(N_FOLDS)]
    todo = [t for t in trainings if not store.fold_finished(*t)]
    done = len(trainings) - len(todo)
    if done:
        report(f"{done} of {len(trainings)} trainings already finished in {wd.results_root}: reusing them")

    def tail() -> float:
        measured = {c: _validation_seconds_per_case(wd, c, N_FOLDS) for c in configs}
        return estimate_tail_seconds(total_s, configs, measured, n_folds=N_FOLDS, n_cv_cases=n_cv,
                                     n_test_cases=n_test_cases)

    if todo:
        reserved = tail()
        share = split_training_budget(total_s, clock.elapsed(), len(todo), reserved_s=reserved,
                                      min_training_s=min_training_s)[0]
        report(f"{len(todo)} training(s) ({', '.join(configs)} x folds 0-{N_FOLDS - 1}) share the "
               f"{total_s - clock.elapsed():.0f} s left of the {total_s:.0f} s budget: ~{share:.0f} s each + "
               f"{TRAINING_OVERHEAD_S:.0f} s start-up; {reserved:.0f} s kept for find-best, predict and evaluate "
               f"(re-estimated from the measured validation times as folds finish)")
    precision: dict[str, str] = {}
    results = []
    for i, (c, f) in enumerate(todo):
        share = split_training_budget(total_s, clock.elapsed(), len(todo) - i, reserved_s=tail(),
                                      min_training_s=min_training_s, strict=False)[0]
        if share <= min_training_s and i > 0:
            log.warning("the demo is behind its schedule: %s fold %d gets the minimum of %.0f s", c, f, share)
        o = {"time_budget_s": share, **overrides}
        if c in precision and "precision" not in overrides:
            o["precision"] = precision[c]  # measured once per configuration (the auto probe costs steps)
        report(f"[{done + i + 1}/{len(trainings)}] {c} fold {f}: budget {share:.0f} s "
               f"({clock.elapsed():.0f} s of {total_s:.0f} s used so far)")
        t0 = time.monotonic()
        trained = train_fold(run_dir, c, str(f), overrides=o, progress=progress)
        summary = trained.summary
        precision.setdefault(c, trained.precision)
        seconds = time.monotonic() - t0
        iterations = trained.iterations
        report(f"    {seconds:.0f} s, {iterations} iterations, validation Dice {_dice_text(summary)}")
        results.append({"configuration": c, "fold": f, "budget_s": round(share, 1), "seconds": round(seconds, 1),
                        "iterations": iterations, "foreground_dice": summary.foreground_dice})
    return results


def _predict(run_dir: Path, images: Path, out_dir: Path, *, progress: bool,
             report: Callable[[str], None]) -> dict[str, Any]:
    """Predict the held-out cases with the selection, unless current predictions of all of them exist."""
    from ..atomic import read_json
    from ..inference.predict_cases import PREDICTION_INFO_JSON, predict_cases

    info_path, selection = out_dir / PREDICTION_INFO_JSON, Workdir(run_dir).selection_json
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    if info_path.exists():
        info = read_json(info_path)
        made_for = {"selection_hash": info.get("selection_hash") or "none", "cases": sorted(info.get("predicted_cases", [])),
                    "failed": bool(info.get("failed_cases"))}
        if freshness(info_path, made_for, {"selection_hash": file_hash(selection), "cases": cases,
                                           "failed": False}).current:
            report(f"predictions in {out_dir} were made with the current selection: reusing them")
            return info
    info = predict_cases(run_dir, images, out_dir, progress=progress)
    report(f"predicted {len(info['predicted_cases'])} held-out case(s) with {', '.join(info['configurations'])} "
           f"(folds {info['folds']}) in {info['total_seconds']:.0f} s")
    return info


def _overlay(dataset: Path, pred_dir: Path, summary: dict, out_path: Path, label_names: dict[int, str]) -> dict:
    """overlay.png of the held-out case with the median foreground Dice (a representative one)."""
    from ..data.image_io import read_image, read_label
    from ..overlay import write_overlay_png

    def fg(case: dict) -> float:
        values = [v["dice"] for k, v in case.items() if k != "0" and isinstance(v, dict) and v.get("dice") is not None]
        return sum(values) / len(values) if values else 0.0

    ranked = sorted(summary["per_case"], key=lambda cid: (fg(summary["per_case"][cid]), cid))
    cid = ranked[len(ranked) // 2]
    image, geom = read_image(dataset / "imagesTs" / f"{cid}_0000.nii.gz")
    ref, _ = read_label(dataset / "labelsTs" / f"{cid}.nii.gz")
    pred, _ = read_label(pred_dir / f"{cid}.nii.gz")
    per_class = ", ".join(f"{label_names[int(k)]} {v['dice']:.3f}" for k, v in summary["per_case"][cid].items()
                          if int(k) in label_names and v.get("dice") is not None)
    title = f"held-out case {cid}: Dice {per_class} (mean {fg(summary['per_case'][cid]):.3f})"
    info = write_overlay_png(image[0], ref, pred, out_path, label_names=label_names, title=title,
                             spacing_zyx=geom.spacing_zyx)
    info["case"] = cid
    return info


def run_demo(workdir: str | Path, *, time_budget_s: float = DEMO_TIME_BUDGET_S, progress: bool = True,
             report: Callable[[str], None] | None = None, n_cases: int = DEMO_CASES,
             n_test_cases: int = DEMO_TEST_CASES, shape_zyx: Sequence[int] = DEMO_SHAPE_ZYX,
             num_workers: int | None = None, min_training_s: float | None = None,
             training_overrides: dict | None = None, cpu_gflops: float | None = None) -> DemoResult:
    """Run the whole demo in ``workdir`` within ``time_budget_s`` seconds (demo_summary.json holds the result).

    ``report(line)`` receives the progress lines (stage headers, the explained plan, the budget, one
    line per training, the ranking, the evaluation table); default: the log, which then also warns
    when the mean foreground Dice is below :data:`TARGET_DICE` (``dice_below_target`` in the result). ``n_cases``,
    ``n_test_cases``, ``shape_zyx`` size the dataset (tests use tiny ones); ``min_training_s`` (default
    :data:`autoseg.usecases.budget_split.MIN_TRAINING_S`), ``training_overrides`` (TrainingSettings fields for
    every training) and ``cpu_gflops`` (skip the CPU probe) are for tests. Raises AutosegError before
    any work when the budget cannot give every training its minimum.
    """
    from .budget_split import MIN_TRAINING_S, planning_budget_per_training
    from ..evaluation import evaluate_folders, format_table
    from ..planning.explain import explain_plans
    from .find_best import find_best

    quiet_warning = report is not None  # a caller with its own report prints the Dice warning itself
    report = report or log.info
    clock = _Clock()
    root = Path(workdir)
    run_dir, pred_dir, overlay_png = root / "run", root / "predictions", root / "overlay.png"
    min_training_s = MIN_TRAINING_S if min_training_s is None else float(min_training_s)
    # 2d and 3d_fullres for this dataset (3d_lowres is not worth it at 20 x 64 x 64 voxels)
    planning_budget_s = planning_budget_per_training(time_budget_s, 2 * N_FOLDS, min_training_s=min_training_s)

    def header(i: int, title: str) -> None:
        report(f"\n=== {i}/7 {title} ({clock.elapsed():.0f} s of {time_budget_s:.0f} s) ===")

    header(1, "dataset")
    existed = (root / "data" / DEMO_DATASET / "dataset.json").exists()
    dataset = clock.run("dataset", lambda: make_demo_dataset(root / "data", n_cases=n_cases,
                                                             n_test_cases=n_test_cases, shape_zyx=shape_zyx))
    report(f"{'reusing' if existed else 'wrote'} {dataset}: {n_cases} training + {n_test_cases} held-out cases of "
           f"{' x '.join(map(str, shape_zyx))} voxels at {' x '.join(f'{s:g}' for s in DEMO_SPACING_ZYX)} mm, one "
           f"MRI-like channel (bias field, noise), labels 1 (larger) and 2 (smaller)")

    header(2, "plan")
    plans = clock.run("plan", lambda: _plan(dataset, run_dir, planning_budget_s, num_workers=num_workers,
                                            progress=progress, cpu_gflops=cpu_gflops, report=report))
    for line in explain_plans(plans):
        report(line)

    header(3, "train")
    overrides = dict(training_overrides or {})
    if num_workers is not None:
        overrides.setdefault("num_workers", num_workers)
    trainings = clock.run("train", lambda: _train_all(run_dir, plans, time_budget_s, clock, n_test_cases=n_test_cases,
                                                      min_training_s=min_training_s, overrides=overrides,
                                                      progress=progress, report=report))

    header(4, "find-best")
    # predict does not chain 3d_lowres -> 3d_cascade_fullres yet, so cascade stages are not candidates
    candidates = [c for c, cfg in plans.configurations.items() if not cfg.previous_stage]
    best = clock.run("find-best", lambda: find_best(run_dir, configurations=candidates, progress=progress))
    selection = best.selection
    report(best.ranking)

    header(5, "predict held-out cases")
    info = clock.run("predict", lambda: _predict(run_dir, dataset / "imagesTs", pred_dir, progress=progress,
                                                 report=report))

    header(6, "evaluate")
    manifest = RunStore(run_dir).manifest()
    label_names = {v: k for k, v in manifest.labels.items() if v != 0}

    def evaluate() -> dict:
        s = evaluate_folders(pred_dir, dataset / "labelsTs", sorted(label_names), manifest.file_ending,
                             label_names=label_names, case_ids=info["predicted_cases"])
        s = json.loads(json.dumps(s, default=float))  # numpy scalars -> plain JSON
        atomic_write_json(pred_dir / "summary.json", s)
        return s

    evaluation = clock.run("evaluate", evaluate)
    report(format_table(evaluation))

    header(7, "overlay")
    overlay = clock.run("overlay", lambda: _overlay(dataset, pred_dir, evaluation, overlay_png, label_names))
    report(f"wrote {overlay_png} (held-out case {overlay['case']}, slices z={overlay['slices']}: image, reference, "
           f"prediction)")

    dice = evaluation["foreground_mean"]["dice"]
    fields = {
        "time_budget_s": time_budget_s, "total_seconds": round(clock.elapsed(), 1),
        "stage_seconds": {k: round(v, 1) for k, v in clock.stages.items()},
        "mean_foreground_dice": dice,
        "dice_per_class": {r["name"]: r["dice"] for r in evaluation["per_class"].values()},
        "target_dice": TARGET_DICE, "dice_below_target": dice is None or dice < TARGET_DICE,
        "selection": {"winner": selection.winner, "cv_foreground_dice": selection.foreground_dice_after_postprocessing},
        "trainings": trainings, "overlay_png": str(overlay_png), "overlay_case": overlay["case"],
        "paths": {"overlay": str(overlay_png), "predictions": str(pred_dir),
                  "evaluation": str(pred_dir / "summary.json"), "selection": str(Workdir(run_dir).selection_json),
                  "run": str(run_dir), "dataset": str(dataset), "summary": str(root / "demo_summary.json")},
        "plans_explained": explain_plans(plans),
    }
    result = DemoResult(**fields)
    atomic_write_json(root / "demo_summary.json", {k: v for k, v in fields.items() if k != "plans_explained"})
    if result.dice_below_target and not quiet_warning:
        log.warning("mean foreground Dice %s on the held-out cases is below the demo's target of %.2f", dice,
                    TARGET_DICE)
    return result

