#!/usr/bin/env python3
"""`autoseg run` against the plain split of the same budget: every configuration x 5 folds, equal shares.

    .venv/bin/python benchmarks/run_vs_equal_split.py --dataset ../shared/data/Dataset102_Hippocampus \\
        --budget 1h --out bench_out/run_vs_equal/hippocampus
    .venv/bin/python benchmarks/run_vs_equal_split.py --report-only --out bench_out/run_vs_equal/hippocampus

1. ``autoseg run DATASET --workdir OUT/run --time-budget BUDGET``: wall time against the budget (the
   issue asks for at most 5 % over), the trainings it chose, its selection's cross-validation Dice.
2. The equal split: ``autoseg plan`` (to learn which configurations the plan has), then again with
   ``--time-budget`` = BUDGET / (configurations x 5) minus the planning time, ``autoseg train`` of every
   (configuration, fold) with that budget (3d_lowres before 3d_cascade_fullres), ``autoseg find-best``.
3. OUT/report.md and OUT/report.json: both wall times, both selections (winner, folds, CV Dice after
   postprocessing), and the Dice of each on the folds both trained (the winner's fold summaries), which
   compares the two on the same cases.

Each step writes OUT/steps/<name>.json; a rerun skips finished steps. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import dataset_unless_report_only, machine_info, parse_duration, read_json, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
N_FOLDS = 5


def _autoseg() -> str:
    exe = Path(sys.executable).parent / "autoseg"
    return str(exe) if exe.exists() else "autoseg"


def step(out: Path, name: str, cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` once (skipped when OUT/steps/<name>.json exists); its wall time and exit code."""
    record_path = out / "steps" / f"{name}.json"
    if record_path.exists():
        return read_json(record_path)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with open(out / "steps" / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    record = {"command": " ".join(cmd), "seconds": round(time.monotonic() - t0, 1), "exit_code": rc}
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {out / 'steps' / (name + '.log')}")
    write_json(record_path, record)
    return record


def selection_summary(workdir: Path) -> dict[str, Any]:
    """The selection of ``workdir``: winner, folds, CV Dice, and the winner's Dice per fold."""
    from autoseg.store import RunStore

    store = RunStore(workdir)
    sel = store.selection()
    per_fold: dict[str, float] = {}
    for fold in sel.folds:
        dice = [s.foreground_dice for c in sel.winner_configurations
                if (s := store.fold_summary(c, fold)) is not None and s.foreground_dice is not None]
        if dice:
            per_fold[str(fold)] = statistics.mean(dice)  # an ensemble: the mean of its members' fold Dice
    return {"winner": sel.winner, "folds": sel.folds, "cv_dice": sel.foreground_dice_after_postprocessing,
            "cv_dice_before_postprocessing": sel.foreground_dice_before_postprocessing,
            "winner_dice_per_fold": per_fold}


def equal_split(dataset: Path, out: Path, budget_s: float) -> float:
    """Plan, train every configuration x 5 folds with equal shares, find-best; returns the wall seconds."""
    from autoseg.usecases.train import planned_in_training_order

    wd = out / "equal"
    t0 = time.monotonic()
    first = step(out, "equal_plan_probe", [_autoseg(), "plan", str(dataset), "--workdir", str(out / "equal_probe"),
                                           "--time-budget", str(int(budget_s / N_FOLDS)), "--no-progress"])
    configurations = planned_in_training_order(out / "equal_probe")
    share = (budget_s - first["seconds"]) / (len(configurations) * N_FOLDS)
    write_json(out / "equal_split.json", {"configurations": configurations, "per_training_s": round(share)})
    step(out, "equal_plan", [_autoseg(), "plan", str(dataset), "--workdir", str(wd), "--time-budget",
                             str(int(share)), "--no-progress"])
    for configuration in planned_in_training_order(wd):
        for fold in range(N_FOLDS):
            step(out, f"equal_train_{configuration}_{fold}",
                 [_autoseg(), "train", "--workdir", str(wd), "-c", configuration, "--fold", str(fold),
                  "--time-budget", str(int(share)), "--no-progress"])
    step(out, "equal_find_best", [_autoseg(), "find-best", "--workdir", str(wd), "--no-progress"])
    total = sum(read_json(p)["seconds"] for p in (out / "steps").glob("equal_*.json"))
    return total if total > 0 else time.monotonic() - t0


def write_report(out: Path) -> dict[str, Any]:
    meta = read_json(out / "meta.json")
    run = selection_summary(out / "run")
    equal = selection_summary(out / "equal")
    run_s = read_json(out / "steps" / "run.json")["seconds"]
    equal_s = sum(read_json(p)["seconds"] for p in (out / "steps").glob("equal_*.json"))
    common = sorted(set(run["winner_dice_per_fold"]) & set(equal["winner_dice_per_fold"]))
    on_common = {name: (statistics.mean(side["winner_dice_per_fold"][f] for f in common) if common else None)
                 for name, side in (("run", run), ("equal", equal))}
    report = {"dataset": meta["dataset"], "budget": meta["budget"], "budget_s": meta["budget_s"],
              "machine": meta["machine"], "date": meta["date"],
              "run": {**run, "wall_s": run_s, "wall_share_of_budget": run_s / meta["budget_s"]},
              "equal_split": {**equal, "wall_s": equal_s, "wall_share_of_budget": equal_s / meta["budget_s"],
                              **read_json(out / "equal_split.json")},
              "common_folds": common, "dice_on_common_folds": on_common}
    write_json(out / "report.json", report)
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"# `autoseg run` against the equal split: {meta['dataset']}, {meta['budget']}", "",
             "| | `autoseg run` | every configuration × 5 folds, equal shares |", "|---|---|---|",
             f"| wall time (share of the budget) | {run_s:.0f} s ({pct(report['run']['wall_share_of_budget'])}) | "
             f"{equal_s:.0f} s ({pct(report['equal_split']['wall_share_of_budget'])}) |",
             f"| winner | {run['winner']} | {equal['winner']} |",
             f"| folds | {run['folds']} | {equal['folds']} |",
             f"| CV Dice after postprocessing (its own folds) | {fmt(run['cv_dice'])} | {fmt(equal['cv_dice'])} |",
             f"| winner's Dice on the folds both trained ({common}) | {fmt(on_common['run'])} | "
             f"{fmt(on_common['equal'])} |",
             f"| per training | see steps/run.log | {report['equal_split']['per_training_s']} s × "
             f"{len(report['equal_split']['configurations'])} configurations × 5 folds |", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset")
    ap.add_argument("--budget", default="1h")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    dataset = dataset_unless_report_only(ap, args)
    if dataset is not None:
        budget_s = parse_duration(args.budget)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "meta.json").exists():
            write_json(out / "meta.json", {"dataset": dataset.name, "budget": args.budget, "budget_s": budget_s,
                                           "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")})
        step(out, "run", [_autoseg(), "run", str(dataset), "--workdir", str(out / "run"), "--time-budget",
                          args.budget, "--no-progress"])
        equal_split(dataset, out, budget_s)
    report = write_report(out)
    print((out / "report.md").read_text())
    return 0 if report else 1


if __name__ == "__main__":
    raise SystemExit(main())
