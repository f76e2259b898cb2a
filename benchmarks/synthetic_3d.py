#!/usr/bin/env python3
"""Accuracy on a synthetic 3D dataset of simple shapes within a wall-clock budget, on this machine.

    python benchmarks/synthetic_3d.py --budget 5m --out bench_out/synthetic
    python benchmarks/synthetic_3d.py --kind regions --budget 5m --out bench_out/regions

Generates the demo dataset (30 cases of 20 × 64 × 64 voxels at 3 × 1 × 1 mm, two ellipsoid classes
of different sizes, bias field and noise; autoseg/demo.py), or with ``--kind regions`` a BraTS-like
region-based dataset (30 cases of 32 × 48 × 48 voxels at 1 mm: three nested labels, edema > core >
enhancing, declared as the regions [1, 2, 3], [2, 3], [3] with regions_class_order [1, 2, 3]; bias field
and noise), or with ``--kind ignore`` the demo's shapes with 30 % of each case's slices unannotated
(the ignore label). Then it runs `autoseg plan --time-budget BUDGET` and
`autoseg train -c 3d_fullres --fold 0 --time-budget BUDGET`, and writes OUT/result.json and
OUT/result.md with the validation Dice per class, seconds per iteration, wall times and peak memory.
Exit code 1 if the mean foreground Dice is below --min-dice (default 0.9).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (dice_from_summary, machine_info, parse_duration, require_success,  # noqa: E402
                          run_monitored, write_json)

REPO = Path(__file__).resolve().parents[1]


def _plan_seconds_per_iteration(cfg: dict) -> float | None:
    """The plan's estimate of seconds per iteration on this machine (its compute Decision), if recorded."""
    for d in cfg.get("decisions", []):
        sec = (d.get("inputs") or {}).get("seconds_per_iteration")
        if d.get("subject") == "compute" and sec:
            return round(float(sec), 3)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="5m", help="training budget (default %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "synthetic")
    ap.add_argument("--min-dice", type=float, default=None,
                    help="exit 1 below this mean foreground (region) Dice (default 0.9; regions 0.85)")
    ap.add_argument("--kind", choices=["demo", "regions", "ignore"], default="demo",
                    help="which synthetic dataset (default %(default)s)")
    ap.add_argument("--iterations", type=int, default=None, metavar="N",
                    help="train N iterations (epochs of 50) instead of the time budget: the same training however "
                         "busy the machine is (say what N iterations cost alone: the plan's seconds per iteration)")
    args = ap.parse_args(argv)
    if args.min_dice is None:
        args.min_dice = 0.85 if args.kind == "regions" else 0.9
    budget_s = parse_duration(args.budget)
    sys.path.insert(0, str(REPO))
    from autoseg.data.synthetic import make_synthetic_dataset
    from autoseg.usecases.demo import make_demo_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    if args.kind == "demo":
        dataset = make_demo_dataset(args.out / "data")
    else:
        dataset = args.out / "data" / ("Dataset971_SynthRegions" if args.kind == "regions" else "Dataset972_SynthIgnore")
        if not (dataset / "dataset.json").exists():
            if args.kind == "regions":
                make_synthetic_dataset(dataset, n_cases=30, shape=(32, 48, 48), n_labels=3, regions=True,
                                       bias_field_strength=0.3, seed=7)
            else:
                make_synthetic_dataset(dataset, n_cases=30, shape=(20, 64, 64), spacing_zyx=(3.0, 1.0, 1.0),
                                       n_labels=2, ignore_fraction=0.3, bias_field_strength=0.3, seed=8)
    run = args.out / "run"
    exe = str(REPO / ".venv" / "bin" / "autoseg")
    plan = run_monitored([exe, "plan", str(dataset), "--workdir", str(run), "--time-budget", args.budget,
                          "--no-progress"], args.out / "plan.log", label="autoseg plan")
    require_success(plan, "autoseg plan")
    schedule = (["--time-budget", args.budget] if args.iterations is None else
                ["--epochs", str(-(-args.iterations // 50)), "--iterations-per-epoch", "50", "--recipe", "short"])
    train = run_monitored([exe, "train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", *schedule,
                           "--no-progress"], args.out / "train.log", label="autoseg train")
    require_success(train, "autoseg train")
    fold = run / "results" / "3d_fullres" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    per_class, mean = dice_from_summary(summary)
    log = [json.loads(line) for line in (fold / "training_log.jsonl").read_text().splitlines() if line]
    spi = [r["seconds_per_iteration"] for r in log]
    settings = json.loads((fold / "train_settings.json").read_text())
    plans = json.loads((run / "plans.json").read_text())["configurations"]["3d_fullres"]
    result = {
        "benchmark": "synthetic_3d", "kind": args.kind, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
        "budget_s": budget_s, "dice_per_class": per_class, "foreground_mean_dice": mean,
        "min_dice": args.min_dice, "passed": mean is not None and mean >= args.min_dice,
        "plan_seconds": round(plan.seconds, 1), "plan_peak_mb": round(plan.peak_rss_mb),
        "train_seconds": round(train.seconds, 1), "train_peak_mb": round(train.peak_rss_mb),
        "epochs": len(log), "iterations": sum(r.get("iterations", settings["iterations_per_epoch"]) for r in log),
        "seconds_per_iteration": round(sum(spi) / len(spi), 4) if spi else None,
        "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
        "features_per_stage": plans["network"]["features_per_stage"],
        "iterations_requested": args.iterations,
        "plan_seconds_per_iteration": _plan_seconds_per_iteration(plans),
        "load_average": __import__("os").getloadavg(),
        "commands": [f"autoseg plan {dataset} --workdir {run} --time-budget {args.budget}",
                     f"autoseg train --workdir {run} -c 3d_fullres --fold 0 {' '.join(schedule)}"],
    }
    write_json(args.out / "result.json", result)
    lines = [f"# Synthetic 3D benchmark, {args.kind} ({result['date']})", "",
             f"Machine: {result['machine']}", f"Budget per training: {args.budget}", "",
             "| class (region: its labels) | Dice |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in per_class.items() if v is not None]
    lines += [f"| foreground mean | {mean:.4f} |", "",
              (f"Schedule: {args.iterations} iterations (the plan estimates "
               f"{result['plan_seconds_per_iteration']} s per iteration alone on this machine, so "
               f"{args.iterations * (result['plan_seconds_per_iteration'] or 0) / 60:.1f} min of training), not "
               f"the time budget. " if args.iterations else "")
              + f"Load average at the end (1, 5, 15 min): {tuple(round(v, 1) for v in result['load_average'])}.",
              f"{result['iterations']} iterations ({result['epochs']} epochs), "
              f"{result['seconds_per_iteration']} s/iteration, training wall time {result['train_seconds']} s "
              f"(budget {budget_s:.0f} s), peak memory {result['train_peak_mb']} MB; "
              f"plan+preprocess {result['plan_seconds']} s, {result['plan_peak_mb']} MB.",
              f"Plan: patch {result['patch_size']}, batch {result['batch_size']}, "
              f"features {result['features_per_stage']}.", "",
              "Commands:", *[f"    {c}" for c in result["commands"]]]
    (args.out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
