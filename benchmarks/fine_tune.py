#!/usr/bin/env python3
"""Fine-tuning against training from scratch for the same short time, on two related synthetic 3D datasets.

    .venv/bin/python benchmarks/fine_tune.py --out bench_out/fine_tune                    # 1 minute each
    .venv/bin/python benchmarks/fine_tune.py --out bench_out/fine_tune --iterations 350   # fair under load
    .venv/bin/python benchmarks/fine_tune.py --out bench_out/fine_tune --report-only --write-doc

What it does, each step a `python -m autoseg` command of this checkout:

1. writes two synthetic 3D datasets (``autoseg.data.synthetic``) under OUT/data: the *source*
   (Dataset801, 30 cases, clear contrast, mild bias field) and the *target* (Dataset802: another seed,
   fewer and smaller cases, so smaller structures, lower contrast, three times the noise and a strong bias
   field); same channel ("MRI") and the same three foreground labels, so the same plan fits both;
2. plans the source (``autoseg plan --time-budget SOURCE_BUDGET``) and trains its 3d_fullres fold 0
   for --source-budget (default 4m); a finished source training is reused by later runs;
3. plans the target twice with ``--plans-from`` the source run (same topology, so the weights fit; the
   same seeded split), and trains its fold 0 twice, one after the other, never side by side: from
   scratch, then fine-tuned (``--pretrained SOURCE_RUN/results/3d_fullres/fold_0``); each for the same
   --budget (default 1m, start-up and final validation included), or with --iterations N for the
   same N training iterations (the fair comparison when other processes share the machine: a time
   budget then buys a varying number of iterations); with --reference-iterations M, one more scratch
   training of M iterations shows how far from saturation the short one is;
4. records per run (with the commit it ran) the final validation's foreground and per-class Dice, the iterations trained, the
   seconds, the precision, and how much CPU other processes used meanwhile (from /proc: all busy CPU
   time minus that of our own commands), in OUT/results.json; and the report in OUT/fine_tune.md
   (with --write-doc also docs/benchmarks/fine_tune.md and .json).

A rerun reuses the datasets, a finished source training of the same budget and every finished target
training of the same command from the same source model (OUT/<run>.json; delete it to train again).

Both target trainings use the same precision: the one the source training chose with ``--precision
auto`` (unless --precision is given), so neither spends its minute timing precisions or trains faster
for another reason than its starting weights. --seeds S1 S2 ... repeats the pair with those training
seeds (data order and initialisation), else autoseg's default seed. Exit code 1 when the fine-tuned
runs do not beat the scratch runs on mean foreground Dice, 2 for a usage problem.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (EXIT_FAILED, BenchError, machine_info, parse_duration, read_json,  # noqa: E402
                          require_success, run_monitored, tail, write_json)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks" / "fine_tune.md"
CONFIGURATION = "3d_fullres"
FOLD = "0"
ITERATIONS_PER_EPOCH = 50
#: other processes using more than this many cores on average during a run: it was not alone
ALONE_MAX_OTHER_CORES = 0.2
GENERATOR_VERSION = 1  # bump when the datasets below change, so old ones are not reused

#: The two datasets: arguments of ``make_synthetic_dataset``, plus ``noise`` and ``label_step`` (the
#: generator's noise std and per-label intensity step, module constants NOISE and LABEL_STEP, 8 and 60).
DATASETS: dict[str, dict[str, Any]] = {
    "source": {"folder": "Dataset801_FineTuneSource", "n_cases": 30, "shape": [24, 48, 48],
               "spacing_zyx": [2.0, 1.0, 1.0], "n_labels": 3, "bias_field_strength": 0.3, "seed": 1,
               "noise": 8.0, "label_step": 60.0},
    "target": {"folder": "Dataset802_FineTuneTarget", "n_cases": 20, "shape": [20, 40, 40],
               "spacing_zyx": [2.0, 1.0, 1.0], "n_labels": 3, "bias_field_strength": 0.6, "seed": 2,
               "noise": 24.0, "label_step": 35.0},
}
VARIANTS = ("scratch", "fine_tuned")


def _describe_dataset(p: dict[str, Any]) -> str:
    z, y, x = p["shape"]
    return (f"{p['n_cases']} cases of {z} x {y} x {x} voxels at {' x '.join(f'{v:g}' for v in p['spacing_zyx'])} mm, "
            f"{p['n_labels']} ellipsoid labels (radius x 0.7 per label), contrast step {p['label_step']:g} / noise "
            f"{p['noise']:g} (CNR {p['label_step'] / p['noise']:.1f}), bias field {p['bias_field_strength']:g}, "
            f"seed {p['seed']}")


def make_dataset(data_root: Path, params: dict[str, Any]) -> Path:
    """Write (or reuse) one synthetic dataset; a folder made with other parameters is refused."""
    folder = data_root / params["folder"]
    record = {"generator_version": GENERATOR_VERSION, **params}
    if (folder / "dataset.json").exists():
        found = read_json(folder / "dataset.json").get("fine_tune_benchmark")
        if found == record:
            print(f"[reuse] {folder}")
            return folder
        raise BenchError(f"{folder} holds a dataset made with other settings ({found or 'not by this script'}); "
                         f"delete {data_root} (and the runs next to it) or use another --out")
    sys.path.insert(0, str(REPO))
    from unittest import mock

    from autoseg.data import synthetic

    for name in ("NOISE", "LABEL_STEP"):
        if not isinstance(getattr(synthetic, name, None), float):
            raise BenchError(f"autoseg.data.synthetic.{name} is gone: this script sets the generator's noise "
                             f"and contrast through it; update DATASETS in {Path(__file__).name}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"[data] {folder.name}: {_describe_dataset(params)}", flush=True)
    with mock.patch.object(synthetic, "NOISE", float(params["noise"])), \
            mock.patch.object(synthetic, "LABEL_STEP", float(params["label_step"])):
        synthetic.make_synthetic_dataset(partial, ndim=3, n_cases=params["n_cases"], shape=tuple(params["shape"]),
                                         spacing_zyx=tuple(params["spacing_zyx"]), n_channels=1,
                                         n_labels=params["n_labels"], seed=params["seed"],
                                         bias_field_strength=params["bias_field_strength"])
    data = read_json(partial / "dataset.json")
    data["fine_tune_benchmark"] = record
    write_json(partial / "dataset.json", data)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


# --------------------------------------------------------------------------- measured commands

def _autoseg(*args: str) -> list[str]:
    """autoseg of this checkout (not whichever one is installed)."""
    return [sys.executable, "-m", "autoseg", *args]


def _busy_cpu_s() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (all cores), None without psutil."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - the project's interpreter has it
        return None
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def code_version() -> dict[str, Any]:
    """The checkout's commit and how many files under autoseg/ differ from it (each command runs the working
    tree as it is when it starts, which may be edited meanwhile)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
                "autoseg_uncommitted_files": len(git("status", "--porcelain", "--", "autoseg").splitlines())}
    except (OSError, subprocess.SubprocessError):
        return {}


def run_step(cmd: list[str], log: Path, label: str) -> dict[str, Any]:
    """Run one autoseg command (measured: wall time, peak memory) and how many cores other processes
    used meanwhile on average (machine busy time minus our command's CPU time, over the wall time)."""
    print(f"[{label}] $ {shlex.join(cmd)}", flush=True)
    code = code_version()
    busy0, ours0, load0 = _busy_cpu_s(), _children_cpu_s(), os.getloadavg()[0]
    stats = run_monitored(cmd, log, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, label=label,
                          heartbeat_s=30.0)
    busy1, ours1 = _busy_cpu_s(), _children_cpu_s()
    require_success(stats, label)
    other = None
    if busy0 is not None and busy1 is not None and stats.seconds > 0:
        other = round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / stats.seconds, 2)
    print(f"[{label}] done in {stats.seconds:.0f} s (other processes: {other} cores on average)", flush=True)
    return {"command": shlex.join(cmd), "wall_s": round(stats.seconds, 1), "peak_rss_mb": round(stats.peak_rss_mb),
            "other_processes_cores": other, "load_average_before": round(load0, 2), "code": code, "log": str(log)}


def plan(dataset: Path, workdir: Path, log: Path, label: str, *extra: str) -> dict[str, Any]:
    return run_step(_autoseg("plan", str(dataset), "--workdir", str(workdir), "--no-progress", *extra), log, label)


def planned_seconds_per_iteration(plans: dict[str, Any]) -> float | None:
    """The plan's estimate of one 3d_fullres training iteration alone on this machine: its budget over the
    iterations it expects that budget to buy (decision ``training_iterations``)."""
    config = plans["configurations"][CONFIGURATION]
    its = next((d.get("value") for d in config.get("decisions", []) if d.get("subject") == "training_iterations"),
               None)
    budget = plans.get("time_budget_s")
    return round(budget / its, 4) if its and budget else None


def fold_result(workdir: Path, train_log: Path) -> dict[str, Any]:
    """Dice (foreground mean and per class), iterations, training seconds, precision of a trained fold."""
    folder = workdir / "results" / CONFIGURATION / f"fold_{FOLD}"
    summary_path = folder / "validation" / "summary.json"
    if not summary_path.exists():
        raise BenchError(f"{summary_path} was not written: the training ended without its final validation; "
                         f"see {train_log}\n{tail(train_log, 20)}", exit_code=EXIT_FAILED)
    summary = read_json(summary_path)
    log = [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines() if line.strip()]
    settings = read_json(folder / "train_settings.json")
    precision = settings.get("precision")
    m = re.search(r"precision auto: .*→\s*(\w+)", Path(train_log).read_text(encoding="utf-8", errors="replace"))
    if m:
        precision = m.group(1)
    spi = [r["seconds_per_iteration"] for r in log if r.get("seconds_per_iteration")]
    return {"dice": summary["foreground_mean"].get("dice"), "checkpoint_hash": summary.get("checkpoint_hash"),
            "per_class": {v.get("name", k): v.get("dice") for k, v in summary["per_class"].items()},
            "validation_cases": sorted(summary.get("per_case", {})),
            "validation_mode": {k: v for k, v in summary.get("validation_mode", {}).items() if k != "reason"},
            "iterations": sum(int(r.get("iterations", 0)) for r in log), "epochs": len(log),
            "train_seconds": log[-1].get("elapsed_s") if log else None,
            "seconds_per_iteration": round(statistics.median(spi), 4) if spi else None,
            "precision": precision, "recipe": settings.get("recipe"), "seed": settings.get("seed")}


# --------------------------------------------------------------------------- the benchmark

def schedule_args(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The target trainings' schedule: CLI arguments and its record."""
    if args.iterations:
        cli, record = iteration_schedule(args.iterations)
        return cli, {**record, "stands_for_budget": args.budget}
    return ["--time-budget", args.budget], {"mode": "time_budget", "budget": args.budget,
                                            "budget_s": parse_duration(args.budget)}


def iteration_schedule(iterations: int) -> tuple[list[str], dict[str, Any]]:
    """``iterations`` (rounded up) as whole epochs of at most ITERATIONS_PER_EPOCH: CLI arguments, record."""
    epochs = math.ceil(iterations / ITERATIONS_PER_EPOCH)
    per_epoch = math.ceil(iterations / epochs)
    return (["--epochs", str(epochs), "--iterations-per-epoch", str(per_epoch)],
            {"mode": "iterations", "iterations": epochs * per_epoch, "epochs": epochs,
             "iterations_per_epoch": per_epoch})


def run_source(args: argparse.Namespace, out: Path, dataset: Path) -> dict[str, Any]:
    """Plan and train the source (reused when a finished training with the same budget is there)."""
    run = out / "source"
    record_path = out / "source.json"
    fold = run / "results" / CONFIGURATION / f"fold_{FOLD}"
    if record_path.exists() and (fold / "validation" / "summary.json").exists():
        record = read_json(record_path)
        if record.get("budget") == args.source_budget and record.get("precision_asked") == args.source_precision:
            record.update(fold_result(run, out / "logs" / "source_train.log"))
            print(f"[reuse] source model {fold} ({args.source_budget}, Dice {record['dice']:.4f})")
            return record
        raise BenchError(f"{run} was trained with {record.get('budget')} / precision "
                         f"{record.get('precision_asked')}, not {args.source_budget} / {args.source_precision}: "
                         f"delete {run} and {record_path} to train it again, or use another --out")
    shutil.rmtree(run, ignore_errors=True)
    date = time.strftime("%Y-%m-%d %H:%M")
    planned = plan(dataset, run, out / "logs" / "source_plan.log", "plan source", "--time-budget", args.source_budget)
    log = out / "logs" / "source_train.log"
    trained = run_step(_autoseg("train", "--workdir", str(run), "-c", CONFIGURATION, "--fold", FOLD, "--time-budget",
                                args.source_budget, "--precision", args.source_precision, "--no-progress"),
                       log, "train source")
    plans = read_json(run / "plans.json")
    config = plans["configurations"][CONFIGURATION]
    record = {"run": str(run), "date": date, "budget": args.source_budget, "budget_s": parse_duration(args.source_budget),
              "precision_asked": args.source_precision, "plan": planned, "train": trained,
              "planned_seconds_per_iteration": planned_seconds_per_iteration(plans),
              "network": {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
                          "features_per_stage": config["network"]["features_per_stage"]},
              **fold_result(run, log)}
    write_json(record_path, record)
    return record


def run_target(out: Path, dataset: Path, source: dict[str, Any], variant: str, seed: int | None,
               schedule: list[str], precision: str, name: str | None = None) -> dict[str, Any]:
    """Plan the target with the source's plans (a fresh work folder) and train fold 0 from scratch or
    fine-tuned. A finished run of the same command from the same source model is reused."""
    name = name or f"target_{variant}" + (f"_seed{seed}" if seed is not None else "")
    run = out / name
    record_path = out / f"{name}.json"
    cmd = _autoseg("train", "--workdir", str(run), "-c", CONFIGURATION, "--fold", FOLD, *schedule,
                   "--precision", precision, "--no-progress")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if variant == "fine_tuned":
        cmd += ["--pretrained", str(Path(source["run"]) / "results" / CONFIGURATION / f"fold_{FOLD}")]
    if record_path.exists():
        record = read_json(record_path)
        if (record.get("command") == shlex.join(cmd) and record.get("source_checkpoint") == source["checkpoint_hash"]
                and (run / "results" / CONFIGURATION / f"fold_{FOLD}" / "validation" / "summary.json").exists()):
            print(f"[reuse] {name}: Dice {record['dice']:.4f} ({record['iterations']} iterations, trained "
                  f"{record.get('date')}); delete {record_path} to train it again", flush=True)
            return record
    shutil.rmtree(run, ignore_errors=True)
    date = time.strftime("%Y-%m-%d %H:%M")
    planned = plan(dataset, run, out / "logs" / f"{name}_plan.log", f"plan {name}", "--plans-from", source["run"])
    log = out / "logs" / f"{name}_train.log"
    trained = run_step(cmd, log, f"train {name}")
    record = {"variant": variant, "seed_asked": seed, "run": str(run), "date": date,
              "finished": time.strftime("%Y-%m-%d %H:%M"), "source_checkpoint": source["checkpoint_hash"],
              "plan": planned, **trained, **fold_result(run, log)}
    write_json(record_path, record)
    print(f"[{name}] Dice {record['dice']:.4f} after {record['iterations']} iterations, {record['wall_s']:.0f} s",
          flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring (the top of this file) for the datasets and "
                                        "what is recorded.")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "fine_tune",
                    help="work folder: datasets, runs, logs, results.json (default %(default)s)")
    ap.add_argument("--source-budget", default="4m",
                    help="time budget of the source training (default %(default)s)")
    ap.add_argument("--budget", default="1m",
                    help="time budget of EACH target training, start-up and final validation included "
                         "(default %(default)s)")
    ap.add_argument("--iterations", type=int, default=None, metavar="N",
                    help="instead of --budget: both target trainings run N training iterations (rounded up to "
                         f"whole epochs of at most {ITERATIONS_PER_EPOCH}); fair when other processes load the "
                         "machine")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="repeat the scratch/fine-tuned pair with these training seeds (default: one pair, "
                         "autoseg's default seed)")
    ap.add_argument("--reference-iterations", type=int, default=None, metavar="M",
                    help="also train the target from scratch for M iterations (first seed), after the pairs: "
                         "how far from saturation the short scratch run is")
    ap.add_argument("--source-precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="precision of the source training (default %(default)s: measured)")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                    help="precision of both target trainings (default: the one the source training used)")
    ap.add_argument("--write-doc", action="store_true",
                    help=f"also write {DOC.relative_to(REPO)} and its .json (the committed report)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rewrite the report from OUT/results.json")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    try:
        for flag, value in (("--iterations", args.iterations), ("--reference-iterations", args.reference_iterations)):
            if value is not None and value < 1:
                raise BenchError(f"{flag} must be >= 1, got {value}")
        parse_duration(args.budget)
        parse_duration(args.source_budget)
        if args.report_only:
            if not (out / "results.json").exists():
                raise BenchError(f"{out / 'results.json'} not found: run the benchmark first (without "
                                 f"--report-only), or point --out at the folder of an earlier run")
            results = read_json(out / "results.json")
        else:
            results = run_benchmark(args, out, argv if argv is not None else sys.argv[1:])
    except BenchError as e:
        print(f"fine_tune: error: {e}", file=sys.stderr)
        return e.exit_code
    write_reports(results, out, write_doc=args.write_doc)
    verdict = results["verdict"]
    print(f"\nscratch {verdict['scratch_mean_dice']:.4f}, fine-tuned {verdict['fine_tuned_mean_dice']:.4f} "
          f"(difference {verdict['difference']:+.4f}); report: {out / 'fine_tune.md'}"
          + (f" and {DOC}" if args.write_doc else ""))
    return 0 if verdict["fine_tuned_beats_scratch"] else EXIT_FAILED


def run_benchmark(args: argparse.Namespace, out: Path, argv: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    source_data = make_dataset(out / "data", DATASETS["source"])
    target_data = make_dataset(out / "data", DATASETS["target"])
    source = run_source(args, out, source_data)
    schedule, schedule_record = schedule_args(args)
    precision = args.precision or source["precision"]
    if precision not in ("fp32", "bf16"):
        raise BenchError(f"the source training's precision could not be read ({precision!r}); pass --precision")
    runs = []
    for seed in (args.seeds or [None]):
        for variant in VARIANTS:  # one after the other, never side by side
            runs.append(run_target(out, target_data, source, variant, seed, schedule, precision))
    reference = None
    if args.reference_iterations:
        seed = (args.seeds or [None])[0]
        reference = run_target(out, target_data, source, "scratch", seed, iteration_schedule(
            args.reference_iterations)[0], precision, name=f"target_scratch_{args.reference_iterations}its")
    cases = {tuple(r["validation_cases"]) for r in runs + ([reference] if reference else [])}
    if len(cases) != 1:
        raise BenchError("the target runs validated different cases (their splits differ): the comparison is "
                         "void; see the runs' splits.json", exit_code=EXIT_FAILED)
    script = Path(__file__).resolve().relative_to(REPO)
    results = {
        "benchmark": "fine_tune", "date": min([started, *(r.get("date") or started for r in [source, *runs])]),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "command": f".venv/bin/python {script} {shlex.join(argv)}".strip(), "machine": machine_info(),
        "datasets": {k: {**v, "path": str(out / "data" / v["folder"])} for k, v in DATASETS.items()},
        "configuration": CONFIGURATION, "fold": FOLD, "source": source,
        "schedule": schedule_record, "precision": precision, "runs": runs, "reference": reference,
        "alone_max_other_cores": ALONE_MAX_OTHER_CORES,
    }
    results["verdict"] = verdict(runs)
    write_json(out / "results.json", results)
    return results


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Dice per variant (over seeds), their difference, and the pairs the fine-tuned run won."""
    mean = {v: statistics.mean(r["dice"] for r in runs if r["variant"] == v) for v in VARIANTS}
    pairs = {}
    for r in runs:
        pairs.setdefault(r.get("seed_asked"), {})[r["variant"]] = r["dice"]
    won = sum(1 for p in pairs.values() if p.get("fine_tuned", 0) > p.get("scratch", 1))
    return {"scratch_mean_dice": round(mean["scratch"], 4), "fine_tuned_mean_dice": round(mean["fine_tuned"], 4),
            "difference": round(mean["fine_tuned"] - mean["scratch"], 4), "pairs": len(pairs),
            "pairs_won_by_fine_tuned": won, "fine_tuned_beats_scratch": mean["fine_tuned"] > mean["scratch"]}


# --------------------------------------------------------------------------- report

def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    """The report: datasets, schedule, one row per training, the verdict, the machine and the command."""
    sched, src, runs, v = res["schedule"], res["source"], res["runs"], res["verdict"]
    labels = list(src["per_class"])
    spi = src.get("planned_seconds_per_iteration")
    if sched["mode"] == "iterations":
        what = (f"the same **{sched['iterations']} training iterations** each ({sched['epochs']} epoch{'s' if sched['epochs'] != 1 else ''} of "
                f"{sched['iterations_per_epoch']}), not a time budget, so that the comparison does not depend on "
                f"what else the machine did")
        if spi:
            budget = sched.get("stands_for_budget", "1m")
            what += (f"; at the plan's estimate of {spi:.3f} s per iteration on this machine alone, that is "
                     f"{sched['iterations'] * spi:.0f} s of training steps, for a budget of {budget} "
                     f"({parse_duration(budget):.0f} s) whose rest goes to start-up, the per-epoch pseudo-Dice "
                     f"and the final validation")
    else:
        what = f"the same **time budget of {sched['budget']}** each (start-up and final validation included)"
    others = [r.get("other_processes_cores") for r in runs + ([res["reference"]] if res.get("reference") else [])]
    known = [o for o in others if o is not None]
    if not known:
        alone = "Whether other processes ran during the target trainings was not measured."
    elif max(known) <= res["alone_max_other_cores"]:
        alone = (f"The target trainings were alone on the machine: other processes used at most {max(known):.2f} "
                 f"cores on average during each.")
    else:
        alone = (f"The target trainings were **not** alone on the machine: other processes used "
                 f"{min(known):.2f}–{max(known):.2f} of the {res['machine'].get('cpu_cores')} cores on average "
                 f"during them (another benchmark ran at the same time)"
                 + ("; their iteration counts are fixed, so their Dice is not affected, but their seconds are "
                    "longer than alone." if sched["mode"] == "iterations" else
                    "; under a time budget this costs both runs iterations."))
    src_other = src.get("train", {}).get("other_processes_cores")
    lines = [
        "# Fine-tuning against training from scratch, same short schedule",
        "",
        f"`benchmarks/fine_tune.py`, {res['date']}. A model trained on one synthetic dataset (the *source*), "
        f"fine-tuned on another with the same plan topology (the *target*, planned with `--plans-from` the "
        f"source run), against the same target training from scratch, with {what}.",
        "",
        f"**Result: fine-tuned {_f(v['fine_tuned_mean_dice'])} against scratch {_f(v['scratch_mean_dice'])} "
        f"mean foreground Dice ({v['difference']:+.4f}"
        + (f"; the fine-tuned run won {v['pairs_won_by_fine_tuned']} of {v['pairs']} pairs" if v["pairs"] > 1 else "")
        + f"): fine-tuning {'beats' if v['fine_tuned_beats_scratch'] else 'does NOT beat'} training from scratch.**",
        "",
        "## Setup",
        "",
        f"- Source: `{res['datasets']['source']['folder']}`, {_describe_dataset(res['datasets']['source'])}.",
        f"- Target: `{res['datasets']['target']['folder']}`, {_describe_dataset(res['datasets']['target'])}.",
        "- Both: `autoseg.data.synthetic` (one channel named MRI, z-score normalised; the image is 0 outside the "
        "body); the target differs by its seed, smaller structures, lower contrast, more noise and a stronger "
        "bias field.",
        f"- Plan (the source's, copied to the target): {res['configuration']}, patch {src['network']['patch_size']}, "
        f"batch {src['network']['batch_size']}, features {src['network']['features_per_stage']}"
        + (f"; estimated {spi:.3f} s per training iteration alone" if spi else "") + ".",
        f"- Source training: fold {res['fold']}, time budget {src['budget']}, {src['iterations']} iterations in "
        f"{_f(src['train_seconds'], 0)} s ({src['precision']}), validation Dice {_f(src['dice'])}"
        + (f"; other processes used {src_other:.2f} cores on average meanwhile" if src_other is not None else "")
        + ".",
        f"- Target trainings: fold {res['fold']} (the same split and validation cases for both: "
        f"{len(runs[0]['validation_cases'])} cases), one after the other, precision {res['precision']} (the "
        f"source's) and the default recipe ({runs[0].get('recipe')}) for both; the fine-tuned one starts from the "
        f"source's `checkpoint_final.pt` (`--pretrained`). Score: the final validation at full resolution "
        f"against the original labels.",
        "",
        "## Results",
        "",
        "| run | seed | iterations | training s | command s | s/iteration | " + " | ".join(labels)
        + " | foreground Dice |",
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * len(labels) + " --- |",
        f"| source (`{res['datasets']['source']['folder']}`) | {src.get('seed')} | {src['iterations']} | "
        f"{_f(src['train_seconds'], 0)} | {_f(src['train']['wall_s'], 0)} | {_f(src.get('seconds_per_iteration'), 3)} | "
        + " | ".join(_f(src["per_class"].get(k)) for k in labels) + f" | {_f(src['dice'])} |",
    ]
    ref = res.get("reference")
    for r in runs + ([ref] if ref else []):
        what = ("scratch, longer (reference)" if r is ref else r["variant"].replace("_", "-"))
        lines.append(f"| target, {what} | {r.get('seed')} | {r['iterations']} | "
                     f"{_f(r['train_seconds'], 0)} | {_f(r['wall_s'], 0)} | {_f(r.get('seconds_per_iteration'), 3)} | "
                     + " | ".join(_f(r["per_class"].get(k)) for k in labels) + f" | **{_f(r['dice'])}** |")
    lines += [
        "",
        "*training s*: the training's own clock at its last epoch (validation excluded); *command s*: the whole "
        "`autoseg train` command, start-up and final validation included; *s/iteration*: median over epochs.",
        "",
    ]
    if ref:
        short = [r for r in runs if r["variant"] == "scratch" and r.get("seed_asked") == ref.get("seed_asked")]
        lines += [f"How far from saturation the short scratch run is: from scratch with {ref['iterations']} "
                  f"iterations ({ref['iterations'] / runs[0]['iterations']:.1f}x as many, seed {ref.get('seed')}) the "
                  f"target reached {_f(ref['dice'])}"
                  + (f", against {_f(short[0]['dice'])} after {short[0]['iterations']}" if short else "")
                  + f"; the fine-tuned runs reached {_f(v['fine_tuned_mean_dice'])} on average after "
                  f"{runs[0]['iterations']}: "
                  + ("the source's weights were worth fewer than the extra "
                     f"{ref['iterations'] - runs[0]['iterations']} iterations from scratch (given time, scratch "
                     f"catches up)." if ref["dice"] >= v["fine_tuned_mean_dice"] else
                     f"even {ref['iterations']} iterations from scratch stay below them."), ""]
    codes = [r.get("code") or {} for r in [src.get("train", {}), *runs, *([ref] if ref else [])]]
    if all(c.get("commit") for c in codes):
        commits = list(dict.fromkeys(c["commit"] for c in codes))
        dirty = any(c.get("autoseg_uncommitted_files") for c in codes)
        lines += [f"Code: the trainings ran commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}"
                  + (" with uncommitted changes under autoseg/" if dirty else "") + ".", ""]
    if res.get("notes"):  # free text added to results.json by hand (kept by --report-only)
        lines += ["Notes:", "", *[f"- {n}" for n in res["notes"]], ""]
    lines += [
        alone,
        "",
        "## Machine and command",
        "",
        f"{res['machine'].get('cpu_model')}, {res['machine'].get('cpu_cores')} cores, {res['machine'].get('ram_gb')} GB "
        f"RAM, {res['machine'].get('os')}, Python {res['machine'].get('python')}; no GPU used. Run "
        f"{res['date']} to {res.get('finished', '?')}.",
        "",
        "```",
        res["command"],
        "```",
        "",
        "Each step is a `python -m autoseg` command; they are in `fine_tune.json` (`source.plan.command`, "
        "`source.train.command`, `runs[].plan.command`, `runs[].command`).",
    ]
    return "\n".join(lines) + "\n"


def write_reports(res: dict[str, Any], out: Path, *, write_doc: bool) -> None:
    text = render_markdown(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fine_tune.md").write_text(text, encoding="utf-8")
    if write_doc:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
        write_json(DOC.with_suffix(".json"), res)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
