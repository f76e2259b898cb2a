"""The built-in demo: the whole pipeline on a synthetic dataset made on the spot, inside one time budget.

dataset → `autoseg run` (plan, explained; the trainings it chooses for the budget; find-best; predict the
held-out cases) → evaluate them against their reference labels → overlay PNG → summary.

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
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import AutosegError
from ..store import RunStore
from ..workdir import Workdir
from .run import N_FOLDS

log = logging.getLogger(__name__)

DEMO_DATASET = "Dataset900_AutosegDemo"
DEMO_CASES = 30
DEMO_TEST_CASES = 6
DEMO_SHAPE_ZYX = (20, 64, 64)
DEMO_SPACING_ZYX = (3.0, 1.0, 1.0)
DEMO_BIAS_FIELD = 0.2  # intensities multiplied by a smooth field in [0.82, 1.22]
DEMO_SEED = 2026
DEMO_TIME_BUDGET_S = 600.0
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
             training_overrides: dict | None = None, cpu_gflops: float | None = None,
             good_training_s: float | None = None) -> DemoResult:
    """The whole demo in ``workdir`` within ``time_budget_s`` seconds: the dataset, then `autoseg run` (plan,
    the trainings it chooses, find-best, prediction of the held-out cases) on what is left after the
    evaluation's reserve, then the evaluation and the overlay (demo_summary.json holds the result).

    ``report(line)`` receives the progress lines; default: the log, which then also warns when the mean
    foreground Dice is below :data:`TARGET_DICE` (``dice_below_target`` in the result). ``n_cases``,
    ``n_test_cases``, ``shape_zyx`` size the dataset (tests use tiny ones); ``min_training_s``,
    ``good_training_s``, ``training_overrides`` and ``cpu_gflops`` are passed to :func:`autoseg.usecases.run.run`
    (for tests). Raises AutosegError before any work when the budget cannot give a training its minimum.
    """
    from ..evaluation import evaluate_folders, format_table
    from .budget_split import (DATASET_ESTIMATE_S, EVALUATE_S_PER_CASE, MIN_TRAINING_S, OVERLAY_S, budget_too_small,
                               minimum_budget)
    from .run import GOOD_TRAINING_S, _Clock, run

    quiet_warning = report is not None  # a caller with its own report prints the Dice warning itself
    report = report or log.info
    clock = _Clock()
    root = Path(workdir)
    run_dir, pred_dir, overlay_png = root / "run", root / "predictions", root / "overlay.png"
    min_training_s = MIN_TRAINING_S if min_training_s is None else float(min_training_s)
    tail_s = EVALUATE_S_PER_CASE * n_test_cases + OVERLAY_S
    needed = minimum_budget(N_FOLDS, min_training_s=min_training_s, before_s=DATASET_ESTIMATE_S, after_s=tail_s)
    if time_budget_s < needed:  # refuse before any work, with a budget that works for the dataset, run and evaluation
        raise budget_too_small(time_budget_s, needed, f"the demo needs ~{DATASET_ESTIMATE_S:.0f} s for its dataset, "
                                                      f"~{tail_s:.0f} s to evaluate and draw, and `autoseg run` "
                                                      f"at least {needed - DATASET_ESTIMATE_S - tail_s:.0f} s for "
                                                      f"one training per fold")

    def header(i: int, title: str) -> None:
        report(f"\n=== {i}/4 {title} ({clock.elapsed():.0f} s of {time_budget_s:.0f} s) ===")

    header(1, "dataset")
    existed = (root / "data" / DEMO_DATASET / "dataset.json").exists()
    dataset = clock.run("dataset", lambda: make_demo_dataset(root / "data", n_cases=n_cases,
                                                             n_test_cases=n_test_cases, shape_zyx=shape_zyx))
    report(f"{'reusing' if existed else 'wrote'} {dataset}: {n_cases} training + {n_test_cases} held-out cases of "
           f"{' x '.join(map(str, shape_zyx))} voxels at {' x '.join(f'{s:g}' for s in DEMO_SPACING_ZYX)} mm, one "
           f"MRI-like channel (bias field, noise), labels 1 (larger) and 2 (smaller)")

    header(2, "autoseg run: plan, train, find-best, predict the held-out cases")
    ran = run(dataset, run_dir, time_budget_s=time_budget_s - clock.elapsed() - tail_s,
              predict_input=dataset / "imagesTs", predict_output=pred_dir, num_workers=num_workers,
              progress=progress, report=report, cpu_gflops=cpu_gflops, min_training_s=min_training_s,
              good_training_s=GOOD_TRAINING_S if good_training_s is None else good_training_s,
              training_overrides=training_overrides)
    clock.stages.update(ran.stage_seconds)
    for line in ran.plans_explained:
        report(line)

    header(3, "evaluate")
    manifest = RunStore(run_dir).manifest()
    label_names = {v: k for k, v in manifest.labels.items() if v != 0}
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (dataset / "imagesTs").glob("*_0000.nii.gz"))

    def evaluate() -> dict:
        s = evaluate_folders(pred_dir, dataset / "labelsTs", sorted(label_names), manifest.file_ending,
                             label_names=label_names, case_ids=cases)
        s = json.loads(json.dumps(s, default=float))  # numpy scalars -> plain JSON
        atomic_write_json(pred_dir / "summary.json", s)
        return s

    evaluation = clock.run("evaluate", evaluate)
    report(format_table(evaluation))

    header(4, "overlay")
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
        "selection": {"winner": ran.selection.winner,
                      "cv_foreground_dice": ran.selection.foreground_dice_after_postprocessing},
        "trainings": ran.trainings, "overlay_png": str(overlay_png), "overlay_case": overlay["case"],
        "paths": {"overlay": str(overlay_png), "predictions": str(pred_dir),
                  "evaluation": str(pred_dir / "summary.json"), "selection": str(Workdir(run_dir).selection_json),
                  "run": str(run_dir), "dataset": str(dataset), "summary": str(root / "demo_summary.json")},
        "plans_explained": ran.plans_explained,
    }
    result = DemoResult(**fields)
    atomic_write_json(root / "demo_summary.json", {k: v for k, v in fields.items() if k != "plans_explained"})
    if result.dice_below_target and not quiet_warning:
        log.warning("mean foreground Dice %s on the held-out cases is below the demo's target of %.2f", dice,
                    TARGET_DICE)
    return result
