#!/usr/bin/env python3
"""The GPU check: what only a real GPU shows, in at most ~8 minutes on one GPU.

    python benchmarks/gpu_check.py --data ../shared/data --out /tmp/gpu_check --minutes 2 [--write-doc]

For Hippocampus (3d_fullres) and ISBI (2d): `autoseg plan --device cuda` (patch and batch fitted by dry
runs of real training steps), `autoseg train --fold 0 --time-budget MINUTES`, then `autoseg predict` on
up to 20 cases with and without mirroring. Printed and written to OUT/gpu_check.json (and, with
--write-doc, docs/benchmarks/gpu.md), with the GPU's name:

* planned memory (the plan's measured peak, and the proxy's first guess) vs the peak the training
  really reached (``peak_memory_gb`` of training_log.jsonl), and the target: within 15 % and never above;
* seconds per iteration, the share of each iteration the GPU waited for data (≤ 10 % wanted), and the
  iterations per second the augmentation alone delivers;
* the fold's validation Dice;
* seconds per case of prediction with and without mirroring.

Needs CUDA (exits 2 without it) and the two datasets (exits 2, naming the folder, when missing). The
device tool's README explains how to carry SimpleITK/batchgenerators wheels and the datasets there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import dice_from_summary, machine_info, parse_duration, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"Hippocampus": ("Dataset102_Hippocampus", "3d_fullres"), "ISBI": ("Dataset101_ISBI2012EM", "2d")}
PREDICT_CASES = 20
TOLERANCE = 0.15
MAX_WAIT = 0.10


def autoseg(*args: str, log: Path) -> float:
    """Run `python -m autoseg ARGS`, its output into ``log``; seconds; raises with the log's tail on failure."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "autoseg", *args], stdout=f, stderr=subprocess.STDOUT,
                            cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"autoseg {args[0]} failed (exit {rc}); the end of {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-30:]))
    return time.monotonic() - t0


def loader_iterations_per_second(run: Path, config_name: str, seconds: float = 20.0) -> float:
    """Batches per second of the training augmentation alone (the trainer's own workers, no network)."""
    sys.path.insert(0, str(REPO))
    from autoseg.store import RunStore
    from autoseg.training.augmentation import deep_supervision_scales
    from autoseg.training.batch_iterator import make_training_iterators
    from autoseg.training.splits import fold_cases
    from autoseg.schemas import TrainingSettings, load_json

    store = RunStore(run)
    config = store.plans().configuration(config_name)
    settings = load_json(TrainingSettings, store.wd.train_settings_json(config_name, "0"))
    train_ids, val_ids = fold_cases(store.splits(), "0")
    n_out = len(config.network.features_per_stage) - 1
    train_it, val_it = make_training_iterators(store.wd.preprocessed_dir(config.data_identifier), config, settings,
                                               train_ids, val_ids, deep_supervision_scales(config.network.strides,
                                                                                           n_out), 0)
    try:
        for _ in range(3):
            next(train_it)  # workers started, queues filled
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            next(train_it)
            n += 1
        return n / (time.monotonic() - t0)
    finally:
        for it in (train_it, val_it):
            if hasattr(it, "close"):
                it.close()


def check_dataset(name: str, folder: Path, config: str, out: Path, minutes: str) -> dict:
    run, logs = out / f"run_{name}", out / f"logs_{name}"
    logs.mkdir(parents=True, exist_ok=True)
    plan_s = autoseg("plan", str(folder), "--workdir", str(run), "--device", "cuda", "--no-progress",
                     log=logs / "plan.log")
    plans = json.loads((run / "plans.json").read_text())
    cfg = plans["configurations"][config]
    dry = next((d for d in cfg["decisions"] if d["subject"] == "measured_memory"), None)
    proxy = next((d["value"] for d in cfg["decisions"] if d["subject"] == "estimated_memory_gb"), None)
    train_s = autoseg("train", "--workdir", str(run), "-c", config, "--fold", "0", "--time-budget", minutes,
                      "--no-progress", log=logs / "train.log")
    fold = run / "results" / config / "fold_0"
    records = [json.loads(line) for line in (fold / "training_log.jsonl").read_text().splitlines() if line]
    peak = max((r.get("peak_memory_gb") or 0.0) for r in records)
    spi = [r["seconds_per_iteration"] for r in records]
    wait = [r.get("data_wait_fraction", 0.0) for r in records]
    _, dice = dice_from_summary(json.loads((fold / "validation" / "summary.json").read_text()))
    loader = loader_iterations_per_second(run, config)
    cases = sorted((folder / "imagesTr").glob("*_0000*"))[:PREDICT_CASES]
    pred_in = out / f"predict_in_{name}"
    pred_in.mkdir(exist_ok=True)
    for p in cases:
        target = pred_in / p.name
        if not target.exists():
            target.symlink_to(p.resolve())
    timings = {}
    for mode, extra in (("mirroring", []), ("no_mirroring", ["--no-mirroring"])):
        seconds = autoseg("predict", "--workdir", str(run), "-c", config, "--folds", "0", "-i", str(pred_in),
                          "-o", str(out / f"pred_{name}_{mode}"), "--no-progress", *extra,
                          log=logs / f"predict_{mode}.log")
        timings[mode] = round(seconds / max(1, len(cases)), 3)
    target = dry["inputs"]["target_gb"] if dry else None
    planned = cfg["estimated_memory_gb"]
    return {
        "dataset": name, "configuration": config, "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
        "planned_memory_gb": planned, "proxy_first_guess_gb": proxy, "target_gb": target,
        "measured_training_peak_gb": round(peak, 3),
        "planned_vs_measured": round(peak / planned - 1.0, 3) if planned else None,
        "within_tolerance": bool(planned and abs(peak / planned - 1.0) <= TOLERANCE),
        "under_target": bool(target and peak <= target),
        "seconds_per_iteration": round(sum(spi) / len(spi), 4) if spi else None,
        "iterations": sum(int(r.get("iterations", 0)) for r in records),
        "data_wait_fraction": round(max(wait), 4) if wait else None, "data_wait_ok": bool(wait and max(wait) <= MAX_WAIT),
        "loader_iterations_per_second": round(loader, 2), "validation_dice": dice,
        "predict_seconds_per_case": timings, "predict_cases": len(cases),
        "plan_seconds": round(plan_s, 1), "train_seconds": round(train_s, 1),
        "dry_run": dry["reason"] if dry else "no dry run recorded",
    }


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['date']})", "", f"GPU: **{result['gpu']}**; machine: {result['machine']}", "",
             f"Command: `{result['command']}`", "",
             "| dataset | config | patch × batch | planned GB (proxy) | training peak GB | target GB | within 15 % | "
             "s/it | waiting for data | loader it/s | Dice | predict s/case (mirror / none) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["datasets"]:
        t = r["predict_seconds_per_case"]
        lines.append(f"| {r['dataset']} | {r['configuration']} | {'x'.join(map(str, r['patch_size']))} × {r['batch_size']} "
                     f"| {r['planned_memory_gb']} ({r['proxy_first_guess_gb']}) | {r['measured_training_peak_gb']} | "
                     f"{r['target_gb']} | {'yes' if r['within_tolerance'] else 'NO'} | {r['seconds_per_iteration']} | "
                     f"{100 * (r['data_wait_fraction'] or 0):.1f} % | {r['loader_iterations_per_second']} | "
                     f"{r['validation_dice']:.4f} | {t['mirroring']} / {t['no_mirroring']} |")
    lines += ["", *[f"- {r['dataset']}: {r['dry_run']}" for r in result["datasets"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder with the datasets")
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    ap.add_argument("--minutes", default="2m", help="training budget per dataset (default %(default)s)")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--write-doc", action="store_true", help="also write docs/benchmarks/gpu.md")
    args = ap.parse_args(argv)
    parse_duration(args.minutes)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run it on a GPU machine (the device tool)", file=sys.stderr)
        return 2
    missing = [str(args.data / DATASETS[d][0]) for d in args.datasets if not (args.data / DATASETS[d][0]).is_dir()]
    if missing:
        print(f"gpu_check: dataset folder(s) missing: {', '.join(missing)}; give --data", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0),
              "machine": machine_info(), "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
              "datasets": [check_dataset(d, args.data / DATASETS[d][0], DATASETS[d][1], args.out, args.minutes)
                           for d in args.datasets]}
    write_json(args.out / "gpu_check.json", result)
    text = markdown(result)
    print(text)
    if args.write_doc:
        (REPO / "docs" / "benchmarks" / "gpu.md").write_text(text)
        write_json(REPO / "docs" / "benchmarks" / "gpu.json", result)
    ok = all(r["within_tolerance"] and r["under_target"] and r["data_wait_ok"] for r in result["datasets"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
