"""Train nnU-Net v2 on one fold within a wall-clock budget, on the CPU, and measure it.

    .venv/bin/python benchmarks/nnunet_baseline.py --dataset ../shared/data/Dataset102_Hippocampus \\
        --configuration 3d_fullres --fold 0 --budget 20m --splits RUN/splits.json \\
        --out bench_out/nnunet_hippo [--venv .benchvenv]

Steps: create the benchmark's own virtual environment if it is missing (never the project's .venv),
copy benchmarks/nnunet_budget_trainer.py into its nnunetv2 trainer folder, lay out nnUNet_raw
(a symlink to the dataset, nothing copied) / nnUNet_preprocessed / nnUNet_results under --out, run
``nnUNetv2_plan_and_preprocess`` (timed, peak memory), write the given splits as nnU-Net's
``splits_final.json`` (so both tools train and validate on the same cases), run ``nnUNetv2_train ...
-tr nnUNetTrainer_WallClock -device cpu`` (timed, peak memory of the whole process tree), and
write ``--out/result.json`` (format: see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (EXIT_FAILED, BenchError, check_dataset, check_splits,  # noqa: E402
                          dataset_case_ids, dataset_id_and_name, dice_from_summary, machine_info,
                          parse_duration, read_json, require_success, run_monitored, to_nnunet_splits,
                          write_json)

REPO = Path(__file__).resolve().parent.parent
TRAINER_FILE = Path(__file__).resolve().parent / "nnunet_budget_trainer.py"
TRAINER_CLASS = "nnUNetTrainer_WallClock"
PLANS_NAME = "nnUNetPlans"
INSTALL_STEPS = (["torch==2.13.0"], ["nnunetv2==2.8.1"])  # torch first, as the README says; failure of
# the torch pin is tolerated (pip then picks a torch that nnunetv2 accepts), nnunetv2 must install
TWO_D_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="nnU-Net v2 baseline: one fold, one configuration, trained "
                                            "on the CPU within a wall-clock budget, measured.")
    p.add_argument("--dataset", required=True, help="raw dataset folder DatasetXXX_Name (nnU-Net v2 layout)")
    p.add_argument("--configuration", default="auto",
                   help="nnU-Net configuration (2d, 3d_fullres, 3d_lowres); auto: 2d for PNG/BMP "
                        "datasets, else 3d_fullres (default: %(default)s)")
    p.add_argument("--fold", type=int, default=0, help="fold index (default: %(default)s)")
    p.add_argument("--budget", required=True, help="wall-clock budget for nnUNetv2_train, e.g. 20m")
    p.add_argument("--splits", default=None, help="splits file used for both tools: autoseg's splits.json or "
                                                  "nnU-Net's splits_final.json (default: nnU-Net's own 5 folds)")
    p.add_argument("--out", required=True, help="output folder (nnU-Net's folders, logs, result.json)")
    p.add_argument("--venv", default=str(REPO / ".benchvenv"),
                   help="virtual environment with nnunetv2, created if missing (default: %(default)s)")
    p.add_argument("--iterations-per-epoch", type=int, default=25,
                   help="training iterations per nnU-Net epoch (nnU-Net: 250; default: %(default)s)")
    p.add_argument("--num-processes", type=int, default=2,
                   help="nnU-Net's -np / -npfp for plan_and_preprocess (default: %(default)s)")
    return p


def resolve_configuration(configuration: str, dataset: Path) -> str:
    """'auto' → '2d' for natural-image datasets (PNG/BMP/JPG), else '3d_fullres'; others unchanged."""
    if configuration != "auto":
        return configuration
    ending = str(read_json(dataset / "dataset.json").get("file_ending", "")).lower()
    return "2d" if ending in TWO_D_ENDINGS else "3d_fullres"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path) -> None:
    """Create ``venv`` with nnunetv2 if it has no nnUNetv2_train (commands as in the README)."""
    if (venv / "bin" / "nnUNetv2_train").exists():
        return
    if venv.resolve() == (REPO / ".venv").resolve():
        raise BenchError(f"--venv {venv} is the project's own environment; nnU-Net goes into a separate "
                         f"one (default {REPO / '.benchvenv'})")
    print(f"creating the nnU-Net environment {venv} (a few minutes, needs the package index)", flush=True)
    if not venv_python(venv).exists():
        if subprocess.run(["python3", "-m", "venv", str(venv)]).returncode != 0:
            raise BenchError(f"`python3 -m venv {venv}` failed; install python3-venv or pass another --venv",
                             exit_code=EXIT_FAILED)
    pip = [str(venv / "bin" / "pip"), "install"]
    for k, pkgs in enumerate(INSTALL_STEPS):
        print("  $ " + " ".join(pip + pkgs), flush=True)
        r = subprocess.run(pip + pkgs)
        if r.returncode != 0 and k == len(INSTALL_STEPS) - 1:
            raise BenchError(f"installing {' '.join(pkgs)} into {venv} failed; see pip's output above",
                             exit_code=EXIT_FAILED)
    if not (venv / "bin" / "nnUNetv2_train").exists():
        raise BenchError(f"{venv}/bin/nnUNetv2_train is missing after installing nnunetv2", exit_code=EXIT_FAILED)


def venv_versions(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, os, nnunetv2; "
            "print(m.version('nnunetv2'), m.version('torch'), os.path.dirname(nnunetv2.__file__))")
    out = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True, env=_clean_env())
    if out.returncode != 0:
        raise BenchError(f"cannot import nnunetv2 in {venv}: {out.stderr.strip()[-500:]}; delete {venv} "
                         f"and rerun to recreate it", exit_code=EXIT_FAILED)
    nnunet, torch_v, pkg = out.stdout.split()
    return {"nnunetv2": nnunet, "torch": torch_v, "package_dir": pkg}


def install_trainer(nnunet_package_dir: str | Path) -> Path:
    """Copy the wall-clock trainer into nnunetv2/training/nnUNetTrainer/ (where nnU-Net looks it up)."""
    dst = Path(nnunet_package_dir) / "training" / "nnUNetTrainer" / f"{TRAINER_CLASS}.py"
    if not dst.exists() or dst.read_bytes() != TRAINER_FILE.read_bytes():
        shutil.copyfile(TRAINER_FILE, dst)
    return dst


def _clean_env() -> dict[str, str]:
    """The environment minus what would make the benchmark venv import the project's packages."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def nnunet_env(out: Path, budget_s: float, iterations_per_epoch: int, n_proc: int) -> dict[str, str]:
    """Environment for nnU-Net's commands: its three folders under ``out`` and the trainer's budget."""
    env = _clean_env()
    env.update(nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
               nnUNet_results=str(out / "nnUNet_results"), AUTOSEG_BENCH_BUDGET_S=str(budget_s),
               AUTOSEG_BENCH_ITERS_PER_EPOCH=str(iterations_per_epoch))
    # nnU-Net's export / metrics pools default to 8 processes whatever the machine: use the cores there are
    env.setdefault("nnUNet_def_n_proc", str(n_proc))
    return env


def link_raw_dataset(dataset: Path, out: Path, name: str) -> Path:
    """out/nnUNet_raw/<name> → the dataset (a symlink: the data is never copied)."""
    raw = out / "nnUNet_raw"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / name
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == dataset.resolve():
            return link
        if not link.is_symlink():
            raise BenchError(f"{link} exists and is not a link to {dataset}; remove it or use another --out")
        link.unlink()
    link.symlink_to(dataset, target_is_directory=True)
    return link


def nnunet_plan_summary(plans: dict[str, Any], configuration: str) -> dict[str, Any]:
    """Patch, batch, features per stage and spacing of one configuration of nnU-Net's plans."""
    cfgs = plans.get("configurations", {})
    if configuration not in cfgs:
        raise BenchError(f"nnU-Net planned {', '.join(cfgs)} but not '{configuration}'; pick one of those")
    c = cfgs[configuration]
    arch = c.get("architecture", {}).get("arch_kwargs", {})
    return {"patch_size": c.get("patch_size"), "batch_size": c.get("batch_size"),
            "features_per_stage": arch.get("features_per_stage"), "n_stages": arch.get("n_stages"),
            "spacing": c.get("spacing"), "network": c.get("architecture", {}).get("network_class_name")}


def label_names(dataset: Path) -> dict[str, str]:
    """{'1': 'anterior', ...}: foreground label value → name, from dataset.json."""
    labels = read_json(dataset / "dataset.json").get("labels", {})
    return {str(v): k for k, v in labels.items() if isinstance(v, int) and v != 0}


@dataclass
class NnunetContext:
    """Everything nnU-Net's commands need, prepared once per dataset (see :func:`prepare`)."""

    dataset: Path
    ds_id: int
    ds_name: str
    configuration: str
    out: Path
    venv: Path
    versions: dict[str, str]
    env: dict[str, str]
    n_proc: int
    budget: str
    budget_s: float
    splits_file: str | None = None

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def results_dir(self) -> Path:
        return self.out / "nnUNet_results" / self.ds_name / f"{TRAINER_CLASS}__{PLANS_NAME}__{self.configuration}"


def prepare(dataset: str | Path, configuration: str, out: str | Path, *, budget: str, venv: str | Path,
            iterations_per_epoch: int = 25, num_processes: int = 2) -> NnunetContext:
    """Virtual environment (created if missing), the wall-clock trainer installed, nnUNet_raw linked."""
    budget_s = parse_duration(budget)
    dataset = check_dataset(dataset)
    ds_id, ds_name = dataset_id_and_name(dataset)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv = Path(venv)
    ensure_venv(venv)
    versions = venv_versions(venv)
    install_trainer(versions["package_dir"])
    link_raw_dataset(dataset, out, ds_name)
    n_proc = max(1, int(num_processes))
    return NnunetContext(dataset=dataset, ds_id=ds_id, ds_name=ds_name,
                         configuration=resolve_configuration(configuration, dataset), out=out, venv=venv,
                         versions={k: v for k, v in versions.items() if k != "package_dir"},
                         env=nnunet_env(out, budget_s, iterations_per_epoch, n_proc), n_proc=n_proc,
                         budget=budget, budget_s=budget_s)


def plan_and_preprocess(ctx: NnunetContext, splits: list[dict[str, list[str]]] | None,
                        splits_file: str | None = None) -> dict[str, Any]:
    """``nnUNetv2_plan_and_preprocess`` (timed, peak memory), then the given splits as splits_final.json."""
    print(f"[nnU-Net] plan and preprocess {ctx.ds_name} ({ctx.configuration})", flush=True)
    plan_cmd = [str(ctx.bin / "nnUNetv2_plan_and_preprocess"), "-d", str(ctx.ds_id), "-c", ctx.configuration,
                "-np", str(ctx.n_proc), "-npfp", str(ctx.n_proc), "--clean"]  # --clean: redo the fingerprint
    plan = run_monitored(plan_cmd, ctx.out / "logs" / "plan_and_preprocess.log", env=ctx.env, label="nnU-Net plan")
    require_success(plan, "nnUNetv2_plan_and_preprocess")
    print(f"[nnU-Net] planned and preprocessed in {plan.seconds:.0f} s, peak {plan.peak_rss_mb:.0f} MB", flush=True)
    pre = ctx.out / "nnUNet_preprocessed" / ctx.ds_name
    plans = read_json(pre / f"{PLANS_NAME}.json")
    if splits is not None:
        write_json(pre / "splits_final.json", splits)
    elif (pre / "splits_final.json").exists():
        (pre / "splits_final.json").unlink()  # a stale file from an earlier run: let nnU-Net make its own
    ctx.splits_file = str(Path(splits_file).resolve()) if splits_file else None
    return {"plan_seconds": plan.seconds, "plan_peak_rss_mb": plan.peak_rss_mb,
            "plan_peak_pss_mb": plan.peak_pss_mb, "plan": nnunet_plan_summary(plans, ctx.configuration),
            "command": " ".join(plan_cmd), "log": plan.log}


def train_fold(ctx: NnunetContext, fold: int, plan_info: dict[str, Any]) -> dict[str, Any]:
    """``nnUNetv2_train`` of one fold with the wall-clock trainer (timed, peak memory); its result."""
    fold_dir = ctx.results_dir() / f"fold_{fold}"
    if fold_dir.exists():  # a fresh measurement: never read an earlier run's summary
        shutil.rmtree(fold_dir)
    train_cmd = [str(ctx.bin / "nnUNetv2_train"), str(ctx.ds_id), ctx.configuration, str(fold),
                 "-tr", TRAINER_CLASS, "-device", "cpu"]
    print(f"[nnU-Net] train {ctx.configuration} fold {fold} for {ctx.budget_s:.0f} s "
          f"(patch {plan_info['plan']['patch_size']}, batch {plan_info['plan']['batch_size']})", flush=True)
    env = dict(ctx.env, AUTOSEG_BENCH_T0=repr(time.time()))
    train = run_monitored(train_cmd, ctx.out / "logs" / f"train_{ctx.configuration}_fold{fold}.log", env=env,
                          label="nnU-Net train")
    require_success(train, "nnUNetv2_train")
    summary_path = fold_dir / "validation" / "summary.json"
    if not summary_path.exists():
        raise BenchError(f"nnUNetv2_train finished but {summary_path} is missing; see {train.log}",
                         exit_code=EXIT_FAILED)
    summary = read_json(summary_path)
    timing_path = fold_dir / "wallclock_timing.json"
    timing = read_json(timing_path) if timing_path.exists() else {}
    per_class, mean = dice_from_summary(summary)
    names = label_names(ctx.dataset)
    result = {
        "tool": "nnU-Net v2", "versions": ctx.versions, "dataset": ctx.ds_name, "dataset_path": str(ctx.dataset),
        "configuration": ctx.configuration, "fold": fold, "budget": ctx.budget, "budget_s": ctx.budget_s,
        "splits_file": ctx.splits_file,
        "plan_seconds": plan_info["plan_seconds"], "plan_peak_rss_mb": plan_info["plan_peak_rss_mb"],
        "plan_peak_pss_mb": plan_info["plan_peak_pss_mb"],
        "train_seconds": train.seconds, "train_peak_rss_mb": train.peak_rss_mb,
        "train_peak_pss_mb": train.peak_pss_mb,
        "iterations_done": timing.get("iterations_done"), "epochs_done": len(timing.get("epochs", [])),
        "epochs_planned": timing.get("num_epochs"), "iterations_per_epoch": timing.get("iterations_per_epoch"),
        "seconds_per_iteration": timing.get("seconds_per_iteration_mean"),
        "seconds_per_iteration_median": timing.get("seconds_per_iteration_median"),
        "stopped_by_deadline": timing.get("stopped_by_deadline"),
        "training_loop_seconds": timing.get("training_seconds"),
        "validation_seconds": timing.get("final_validation_s"),
        "validation_seconds_estimated": timing.get("estimated_final_validation_s"),
        "validation_cases": len(summary.get("metric_per_case", [])),
        "dice_per_class": per_class, "dice_mean": mean, "label_names": names,
        "plan": plan_info["plan"],
        "environment": {k: ctx.env[k] for k in ("nnUNet_def_n_proc", "AUTOSEG_BENCH_ITERS_PER_EPOCH")
                        if k in ctx.env} | {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "nnU-Net default")},
        "commands": [plan_info["command"], " ".join(train_cmd)],
        "logs": {"plan_and_preprocess": plan_info["log"], "train": train.log},
        "files": {"summary": str(summary_path), "timing": str(timing_path)},
        "machine": machine_info(),
    }
    print(f"[nnU-Net] done: Dice {format_dice(per_class, names)} (mean {_f(mean)}), "
          f"{result['iterations_done']} iterations at {_f(result['seconds_per_iteration'])} s, "
          f"training {train.seconds:.0f} s, peak {train.peak_rss_mb:.0f} MB", flush=True)
    return result


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The whole baseline (see module doc); returns the result also written to ``--out/result.json``."""
    parse_duration(args.budget)
    dataset = check_dataset(args.dataset)
    splits = None
    if args.splits:
        if not Path(args.splits).is_file():
            raise BenchError(f"--splits {args.splits} not found")
        splits = to_nnunet_splits(read_json(args.splits), where=args.splits)
        check_splits(splits, args.fold, dataset_case_ids(dataset), where=args.splits)
    ctx = prepare(dataset, args.configuration, args.out, budget=args.budget, venv=args.venv,
                  iterations_per_epoch=args.iterations_per_epoch, num_processes=args.num_processes)
    plan_info = plan_and_preprocess(ctx, splits, args.splits)
    result = train_fold(ctx, args.fold, plan_info)
    write_json(ctx.out / "result.json", result)
    print(f"[nnU-Net] result → {ctx.out / 'result.json'}", flush=True)
    return result


def _f(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def format_dice(per_class: dict[str, Any], names: dict[str, str]) -> str:
    """'anterior 0.812, posterior 0.795' (label names from dataset.json, values to 3 decimals)."""
    return ", ".join(f"{names.get(k, k)} {'-' if v is None else f'{v:.3f}'}" for k, v in sorted(
        per_class.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_baseline(args)
    except BenchError as e:
        print(f"nnunet_baseline: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
