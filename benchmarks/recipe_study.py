#!/usr/bin/env python3
"""Which training recipe learns most in a short budget: a study over datasets, folds and budgets.

    python benchmarks/recipe_study.py --budget 5m --folds 0 1 --jobs 2 --out bench_out/recipe_study
    python benchmarks/recipe_study.py --report bench_out/recipe_study     # tables and plot only
    python benchmarks/recipe_study.py --report docs/benchmarks/recipe_study.json   # the grid of a results file

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
    ap.add_argument("--report", type=Path, default=None,
                    help="only the report: a study folder (OUT/results.json -> OUT/recipe_study.md and .png) or a "
                         "results JSON file (the grid table printed, the plot written next to the file)")
    ap.add_argument("--cell", nargs=4, metavar=("WORKDIR", "CONFIGURATION", "FOLD", "OVERRIDES_JSON"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        run_cell(Path(args.cell[0]), args.cell[1], args.cell[2], json.loads(args.cell[3]))
        return 0
    if args.report:
        return report_only(args.report)
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
            write_report(out, results)
    write_json(out / "machine.json", machine_info())
    write_report(out)
    return 0


def write_report(out: Path, results: list[dict[str, Any]] | None = None) -> None:
    """OUT/recipe_study.md: mean foreground Dice per dataset x recipe (mean over folds), per budget, then the
    grid of the two main recipes fold by fold; OUT/recipe_study.png: the same grid as a picture."""
    if results is None:
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
    lines += ["", *grid_table(results)]
    (out / "recipe_study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if any(r["recipe"] in (SHORT, BASE) and r.get("dice") is not None for r in results):
        plot_grid(results, out / "recipe_study.png")


def report_only(path: Path) -> int:
    """--report: the tables and plot from finished cells, nothing trained."""
    results_file = path / "results.json" if path.is_dir() else path
    if not results_file.is_file():
        print(f"error: {results_file} does not exist: give a study folder (--out of an earlier run) or its "
              "results JSON file", file=sys.stderr)
        return 2
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: {results_file} is not readable JSON ({exc}): run the study again or restore the file",
              file=sys.stderr)
        return 2
    if path.is_dir():
        write_report(path, results)
        print(f"wrote {path / 'recipe_study.md'}")
        return 0
    print("\n".join(grid_table(results)))
    if any(r.get("recipe") in (SHORT, BASE) and r.get("dice") is not None for r in results):
        plot_grid(results, path.with_suffix(".png"))
        print(f"\nwrote {path.with_suffix('.png')}")
    return 0


#: the two recipes the grid compares: autoseg's short recipe and nnU-Net's
SHORT, BASE = "adamw_linear_warmup", "nnunet"


def _grid(results: list[dict[str, Any]]) -> tuple[list[str], list[tuple[float, str]], list[str],
                                                   dict[tuple[str, str, str], dict[str, dict[str, Any]]]]:
    """Datasets, budgets and folds the records cover, and {(dataset, budget, fold): {recipe: record}} (the
    last record of a cell wins: a cell run again, e.g. as a control, replaces the earlier one)."""
    usable = [r for r in results if r.get("dice") is not None and r["recipe"] in (SHORT, BASE)]
    order = [d.name for d in DATASETS]
    datasets = sorted({r["dataset"] for r in usable},
                      key=lambda n: (order.index(n) if n in order else len(order), n))
    budgets = sorted({(float(r["budget_s"]), r["budget"]) for r in usable})
    folds = sorted({str(r["fold"]) for r in usable})
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in usable:
        cells.setdefault((r["dataset"], r["budget"], str(r["fold"])), {})[r["recipe"]] = r
    return datasets, budgets, folds, cells


def grid_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown: the short recipe against nnU-Net's, cell by cell (dataset x budget x fold), a summary per
    budget, and the cells of that grid not measured yet. A record with a ``schedule`` other than the
    iteration count (an earlier real-time run) is marked with a dagger and named under the table."""
    datasets, budgets, folds, cells = _grid(results)
    if not cells:
        return ["No cell of the short recipe or nnU-Net's has a Dice yet."]
    lines = [f"| budget | dataset | fold | iterations | `{BASE}` | `short` ({SHORT}) | short − nnunet |",
             "|---|---|---|---|---|---|---|"]
    missing, notes = [], []
    for _, budget in budgets:
        diffs = []
        for name in datasets:
            for fold in folds:
                pair = cells.get((name, budget, fold), {})
                if len(pair) < 2:
                    lacking = [f"`{rec}`" for rec in (BASE, SHORT) if rec not in pair]
                    missing.append(f"{name} {budget} fold {fold}" + ("" if not pair else f" ({lacking[0]})"))
                    if not pair:
                        continue
                shown = []
                for rec in (BASE, SHORT):
                    r = pair.get(rec)
                    if r is None:
                        shown.append("–")
                        continue
                    mark = ""
                    if r.get("schedule"):
                        mark = " †"
                        notes.append(f"- † {name} {budget} fold {fold} `{rec}`: {r['schedule']} "
                                     f"({r.get('source', '')})")
                    shown.append(f"{r['dice']:.4f}{mark}")
                its = list(dict.fromkeys(str(pair[rec].get("iterations") or pair[rec].get("planned_iterations"))
                                         for rec in (BASE, SHORT) if rec in pair))  # nnunet's, then short's
                diff = pair[SHORT]["dice"] - pair[BASE]["dice"] if len(pair) == 2 else None
                if diff is not None:
                    diffs.append(diff)
                lines.append(f"| {budget} | {name} | {fold} | {' / '.join(its)} | {shown[0]} | {shown[1]} | "
                             + (f"{diff:+.4f}" if diff is not None else "–") + " |")
        if diffs:
            worse = sum(d < -0.01 for d in diffs)
            lines.append(f"| **{budget}** | {len(diffs)} pairs | | | | | mean {statistics.mean(diffs):+.4f}, "
                         f"min {min(diffs):+.4f}, {worse} worse by more than 0.01 |")
    if notes:
        lines += [""] + notes
    if missing:
        lines += ["", f"Not measured yet ({len(missing)} of {len(datasets) * len(budgets) * len(folds)} "
                  "dataset × budget × fold pairs of this grid): " + ", ".join(missing) + "."]
    return lines


def plot_grid(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per dataset: Dice against the budget for the two recipes, one line per fold through the budgets
    that fold was measured at (a mean over folds would jump where a budget has fewer folds measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets, budgets, folds, cells = _grid(results)
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3.6), squeeze=False)
    markers, styles = "osD^v", ["-", "--", ":", "-."]
    for ax, name in zip(axes[0], datasets):
        for rec, colour in ((BASE, "tab:orange"), (SHORT, "tab:blue")):
            for i, fold in enumerate(folds):
                pts = [(budget_s / 60, cells[(name, budget, fold)][rec]) for budget_s, budget in budgets
                       if rec in cells.get((name, budget, fold), {})]
                if not pts:
                    continue
                ax.plot([x for x, _ in pts], [r["dice"] for _, r in pts], styles[i % len(styles)], color=colour,
                        alpha=0.8)
                for x, r in pts:
                    ax.plot(x, r["dice"], markers[i % len(markers)], color=colour,
                            markerfacecolor="white" if r.get("schedule") else colour)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([b / 60 for b, _ in budgets])
        ax.set_xlabel("budget (minutes)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean foreground Dice, fold validation")
    handles = [plt.Line2D([], [], color="tab:orange"), plt.Line2D([], [], color="tab:blue")]
    labels = ["nnU-Net's recipe", "short recipe"]
    handles += [plt.Line2D([], [], marker=markers[i % len(markers)], color="grey", linestyle=styles[i % len(styles)])
                for i in range(len(folds))]
    labels += [f"fold {f}" for f in folds]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("short recipe against nnU-Net's, same plan, split, seed and iterations (open: real-time run)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)

if __name__ == "__main__":
    raise SystemExit(main())
