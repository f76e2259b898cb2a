#!/usr/bin/env python3
"""Which training recipe learns most in a short budget: a study over datasets, folds and budgets.

    python benchmarks/recipe_study.py --budget 5m --folds 0 1 --jobs 2 --out bench_out/recipe_study
    python benchmarks/recipe_study.py --report bench_out/recipe_study     # table only

For every dataset (the two real ones in ../shared/data, skipped with a message when missing, and three
synthetic kinds written here: a 2D RGB set, an anisotropic 3D set and a 3D set of seven small
structures), the script plans once with ``autoseg plan --time-budget BUDGET`` and trains the main
configuration (3d_fullres, else 2d) of each fold with each recipe, then scores the fold's final
validation (full resolution, mirroring, against the original labels).

Budgets become iteration counts: each cell trains the number of iterations the plan says the budget
buys on this machine (the planner's ``training_iterations`` decision) times ``--train-share`` (default
0.87: measured on Hippocampus at 20 minutes, 1305 iterations trained of the 1503 planned, the rest of
the budget went to the final validation and start-up). Counting in iterations makes a cell's Dice
independent of what else the machine does, so cells may run side by side (``--jobs 2``: each pinned
to one core with one thread); wall times and seconds per iteration are recorded but are not the point.

Results: OUT/results.json (one record per cell, rewritten after each) and OUT/recipe_study.md (the
table). Re-running skips finished cells.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info, parse_duration, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

#: The recipes: overrides of autoseg's training settings. "nnunet" is autoseg's recipe before this
#: study (nnU-Net's: SGD Nesterov, momentum 0.99, lr 0.01, poly 0.9 decay, no warm-up, 33 % of each
#: batch centred on foreground).
RECIPES: dict[str, dict[str, Any]] = {
    "nnunet": {"optimizer": "sgd", "initial_lr": 0.01, "momentum": 0.99, "weight_decay": 3e-5,
               "lr_shape": "poly", "warmup_fraction": 0.0},
    "sgd_linear_warmup": {"optimizer": "sgd", "initial_lr": 0.01, "momentum": 0.99, "weight_decay": 3e-5,
                          "lr_shape": "linear", "warmup_fraction": 0.05},
    "adamw_linear_warmup": {"optimizer": "adamw", "initial_lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-2,
                            "lr_shape": "linear", "warmup_fraction": 0.05},
}
# variants that change only the share of each batch centred on foreground
RECIPES["adamw_linear_warmup_fg66"] = {**RECIPES["adamw_linear_warmup"], "foreground_oversample_fraction": 0.66}
RECIPES["adamw_linear_warmup_fg100"] = {**RECIPES["adamw_linear_warmup"], "foreground_oversample_fraction": 1.0}
RECIPES["sgd_linear_warmup_fg66"] = {**RECIPES["sgd_linear_warmup"], "foreground_oversample_fraction": 0.66}
# variants of the short recipe that change only the loss: Dice per sample instead of over the batch, and the
# full-resolution output alone instead of nnU-Net's deep-supervision weights (decay 0.5)
RECIPES["adamw_linear_warmup_sample_dice"] = {**RECIPES["adamw_linear_warmup"], "batch_dice": False}
RECIPES["adamw_linear_warmup_no_ds"] = {**RECIPES["adamw_linear_warmup"], "deep_supervision_decay": 0.0}
ITERATIONS_PER_EPOCH = 50


@dataclass(frozen=True)
class StudyDataset:
    name: str
    kind: str
    configuration: str
    make: Any  # (root) -> Path of the raw dataset, or None when it is not available


def _real(folder: str):
    def make(_root: Path) -> Path | None:
        path = SHARED / folder
        if not (path / "dataset.json").exists():
            print(f"[skip] {path} is missing: the real dataset is read from ../shared/data (never copied)")
            return None
        return path
    return make


def _synthetic(**kwargs):
    def make(root: Path) -> Path:
        from autoseg.data.synthetic import make_synthetic_dataset

        if not (root / "dataset.json").exists():
            make_synthetic_dataset(root, **kwargs)
        return root
    return make


DATASETS = [
    StudyDataset("Hippocampus", "real 3D MRI, 2 small classes", "3d_fullres", _real("Dataset102_Hippocampus")),
    StudyDataset("ISBI2012EM", "real 2D EM, thin membranes", "2d", _real("Dataset101_ISBI2012EM")),
    StudyDataset("syn2d_rgb", "synthetic 2D RGB PNG, 3 classes, bias field", "2d",
                 _synthetic(ndim=2, n_cases=40, shape=(160, 160), rgb=True, file_ending=".png", n_labels=3,
                            bias_field_strength=0.6, seed=21)),
    StudyDataset("syn3d_aniso", "synthetic anisotropic 3D (5 x 0.8 x 0.8 mm), 2 classes", "3d_fullres",
                 _synthetic(ndim=3, n_cases=30, shape=(12, 96, 96), spacing_zyx=(5.0, 0.8, 0.8), n_labels=2,
                            bias_field_strength=0.6, seed=22)),
    StudyDataset("syn3d_small7", "synthetic 3D, 7 classes down to ~2-voxel radius", "3d_fullres",
                 _synthetic(ndim=3, n_cases=30, shape=(48, 64, 64), n_labels=7, bias_field_strength=0.6,
                            seed=23)),
]


def _autoseg() -> list[str]:
    """autoseg of this checkout (not whichever one is installed): the study may run from a snapshot."""
    return [sys.executable, "-m", "autoseg"]


def plan(ds: StudyDataset, out: Path, budget: str) -> tuple[Path, int] | None:
    """Plan ``ds`` once per budget; returns (planned work folder, iterations the budget buys)."""
    raw = ds.make(out / "data" / ds.name)
    if raw is None:
        return None
    wd = out / ds.name / budget / "plan"
    if not (wd / "plans.json").exists():
        log = wd.parent / "plan.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            subprocess.run([*_autoseg(), "plan", str(raw), "--workdir", str(wd), "--time-budget", budget,
                            "--no-progress"], stdout=fh, stderr=subprocess.STDOUT, check=True,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    plans = json.loads((wd / "plans.json").read_text())
    config = plans["configurations"][ds.configuration]
    its = next(d["value"] for d in config["decisions"] if d["subject"] == "training_iterations")
    return wd, int(its)


def cell_workdir(planned: Path, recipe: str) -> Path:
    """A work folder for one recipe that shares the planned one's files (symlinks), with its own results."""
    wd = planned.parent / recipe
    wd.mkdir(exist_ok=True)
    for item in planned.iterdir():
        if item.name in ("results", "locks") or item.name.startswith("."):
            continue
        link = wd / item.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(item.resolve())
    return wd


def run_cell(workdir: Path, configuration: str, fold: str, overrides: dict[str, Any]) -> None:
    """In this process: train one fold with ``overrides`` and validate it (called by --cell)."""
    import logging

    sys.path.insert(0, str(REPO))
    from autoseg.usecases.train import train_fold

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    train_fold(workdir, configuration, fold, overrides=overrides, progress=False)


def _fold_result(wd: Path, configuration: str, fold: str) -> dict[str, Any] | None:
    folder = wd / "results" / configuration / f"fold_{fold}"
    summary = folder / "validation" / "summary.json"
    if not summary.exists():
        return None
    s = json.loads(summary.read_text())
    log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines() if line.strip()]
    per_class = {v.get("name", k): v.get("dice") for k, v in s["per_class"].items()}
    return {"dice": s["foreground_mean"].get("dice"), "per_class": per_class,
            "iterations": sum(r.get("iterations", 0) for r in log),
            "seconds_per_iteration": statistics.median(r["seconds_per_iteration"] for r in log) if log else None,
            "precision": json.loads((folder / "train_settings.json").read_text()).get("precision")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", nargs="+", default=["5m"], help="budgets (default 5m)")
    ap.add_argument("--folds", nargs="+", default=["0", "1"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--datasets", nargs="+", default=[d.name for d in DATASETS],
                    choices=[d.name for d in DATASETS])
    ap.add_argument("--jobs", type=int, default=2, help="cells side by side, each pinned to one core")
    ap.add_argument("--cores", type=int, nargs="+", default=None,
                    help="the cores to pin cells to (default 0..jobs-1); one core each with one thread")
    ap.add_argument("--train-share", type=float, default=0.87)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "recipe_study")
    ap.add_argument("--report", type=Path, default=None, help="only write the table from OUT/results.json")
    ap.add_argument("--cell", nargs=4, metavar=("WORKDIR", "CONFIGURATION", "FOLD", "OVERRIDES_JSON"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        run_cell(Path(args.cell[0]), args.cell[1], args.cell[2], json.loads(args.cell[3]))
        return 0
    if args.report:
        write_report(args.report)
        return 0
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    # a cell that failed (no Dice) runs again: a finished training is not repeated, only what is missing
    done = {(r["dataset"], r["budget"], r["recipe"], r["fold"]) for r in results if r.get("dice") is not None}

    cells = []
    for budget in args.budget:
        for ds in (d for d in DATASETS if d.name in args.datasets):
            planned = plan(ds, out, budget)
            if planned is None:
                continue
            wd, its = planned
            iterations = max(ITERATIONS_PER_EPOCH, int(its * args.train_share))
            epochs = math.ceil(iterations / ITERATIONS_PER_EPOCH)
            for fold in args.folds:
                for recipe in args.recipes:
                    if (ds.name, budget, recipe, fold) not in done:
                        cells.append((ds, budget, wd, epochs, recipe, fold))
    print(f"{len(cells)} cells to run, {args.jobs} at a time")
    running: list[tuple[subprocess.Popen, tuple, float, Any]] = []
    free_cores = list(args.cores) if args.cores else list(range(args.jobs))
    pinned = args.cores is not None or args.jobs > 1
    while cells or running:
        while cells and free_cores:
            ds, budget, wd, epochs, recipe, fold = cell = cells.pop(0)
            core = free_cores.pop(0)
            cwd = cell_workdir(wd, recipe)
            overrides = {**RECIPES[recipe], "epochs": epochs, "iterations_per_epoch": ITERATIONS_PER_EPOCH,
                         "time_budget_s": None}
            env = {**os.environ, "OMP_NUM_THREADS": "1" if pinned else os.environ.get("OMP_NUM_THREADS", ""),
                   "PYTHONPATH": str(REPO)}
            if not env["OMP_NUM_THREADS"]:
                del env["OMP_NUM_THREADS"]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", str(cwd), ds.configuration, fold,
                   json.dumps(overrides)]
            if pinned:
                cmd = ["taskset", "-c", str(core), *cmd]
            log = open(cwd / f"train_fold{fold}.log", "a")
            print(f"[start] {ds.name} {budget} fold {fold} {recipe}: {epochs} x {ITERATIONS_PER_EPOCH} "
                  f"iterations, core {core}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), cell,
                            time.time(), (core, log, cwd)))
        time.sleep(2)
        for item in list(running):
            proc, cell, t0, (core, log, cwd) = item
            if proc.poll() is None:
                continue
            running.remove(item)
            free_cores.append(core)
            log.close()
            ds, budget, wd, epochs, recipe, fold = cell
            res = _fold_result(cwd, ds.configuration, fold)
            record = {"dataset": ds.name, "kind": ds.kind, "configuration": ds.configuration, "budget": budget,
                      "budget_s": parse_duration(budget), "recipe": recipe, "fold": fold,
                      "planned_iterations": epochs * ITERATIONS_PER_EPOCH, "exit_code": proc.returncode,
                      "wall_s": round(time.time() - t0, 1), "threads": 1 if pinned else None,
                      **(res or {"dice": None})}
            print(f"[done] {ds.name} {budget} fold {fold} {recipe}: rc {proc.returncode}, "
                  f"Dice {record['dice']}, {record['wall_s']} s", flush=True)
            # merged with the file as it is now: another study may write to the same folder (--cores)
            on_disk = json.loads(results_path.read_text()) if results_path.exists() else []
            results = [r for r in on_disk if (r["dataset"], r["budget"], r["recipe"], r["fold"])
                       != (ds.name, budget, recipe, fold)] + [record]
            write_json(results_path, results)
            write_report(out)
    write_json(out / "machine.json", machine_info())
    write_report(out)
    return 0


def write_report(out: Path) -> None:
    """OUT/recipe_study.md: mean foreground Dice per dataset x recipe (mean over folds), per budget."""
    results = json.loads((out / "results.json").read_text())
    recipes = [r for r in RECIPES if any(x["recipe"] == r for x in results)]
    lines = ["| dataset | budget | iterations | " + " | ".join(recipes) + " |",
             "|---|---|---|" + "---|" * len(recipes)]
    keys = sorted({(r["dataset"], r["budget_s"], r["budget"]) for r in results}, key=lambda k: (k[1], k[0]))
    for name, _, budget in keys:
        cells, its = [], ""
        for recipe in recipes:
            rows = [r for r in results if (r["dataset"], r["budget"], r["recipe"]) == (name, budget, recipe)]
            dice = [r["dice"] for r in rows if r.get("dice") is not None]
            its = its or str(rows[0]["planned_iterations"]) if rows else its
            folds = ",".join(sorted(r["fold"] for r in rows if r.get("dice") is not None))
            cells.append(f"{statistics.mean(dice):.4f} (folds {folds})" if dice else "–")
        lines.append(f"| {name} | {budget} | {its} | " + " | ".join(cells) + " |")
    (out / "recipe_study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
