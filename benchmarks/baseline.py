"""The whole pipeline of autoseg beside nnU-Net v2 on one dataset, same splits, same budget per training.

    .venv/bin/python benchmarks/baseline.py --dataset ../shared/data/Dataset102_Hippocampus --budget 2m --quick
    .venv/bin/python benchmarks/baseline.py --dataset ../shared/data/Dataset102_Hippocampus --budget 2m

Steps, each measured (wall time, peak memory of the whole process tree):

1. autoseg: ``plan`` → ``train`` every (configuration, fold) → ``find-best`` → ``predict`` on the test
   cases (``imagesTs/`` if the dataset has it, else the first ``--predict-cases`` validation cases of
   fold 0) in three settings — default (mirroring), ``--no-mirroring``, ``--fast`` — with the
   configuration both tools trained, and once more with the selection (the winner, possibly an ensemble).
2. nnU-Net v2 (its own virtual environment, ``.benchvenv``, made by this script): plan and preprocess,
   train the same configuration on the same folds (autoseg's splits.json written as nnU-Net's
   splits_final.json) with the same budget (``nnUNetTrainer_WallClock``, ``-device cpu``),
   ``nnUNetv2_find_best_configuration`` on those folds, ``nnUNetv2_predict`` on the same cases with
   the same folds and mirroring setting (``--disable_tta``; for --fast: the first fold, step 0.75).
3. ``report.md`` and ``report.json`` in ``--out``: planning, training per fold, Dice per class per
   fold, selection, prediction seconds per case and peak memory, the ratio autoseg / nnU-Net for
   each, and published numbers for the dataset (benchmarks/published.py), labelled as such.

``--quick``: one fold (``--fold``, default 0) of one configuration (3d_fullres if planned, else 2d).
Full mode: every planned configuration of autoseg (nnU-Net: the compared configuration) on folds 0–4.

Every step's result is saved in ``OUT/steps/<step>.json``; a rerun skips the steps already done
(``--redo PATTERN`` reruns the steps whose name contains PATTERN, e.g. ``--redo predict``), so a
crash or an interruption costs only the step it hit. Tools run one after the other, never at once.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_baseline as nb  # noqa: E402
from bench_common import (EXIT_FAILED, BenchError, check_dataset, dice_from_summary, machine_info,  # noqa: E402
                          parse_duration, read_json, require_success, run_monitored, to_nnunet_splits, write_json)
from published import published_for  # noqa: E402
from train_side_by_side import (_cell, autoseg_plan_summary, autoseg_training_stats, autoseg_versions,  # noqa: E402
                                choose_configuration, ratio, read_jsonl)

REPO = Path(__file__).resolve().parent.parent
PREDICT_MODES = ("default", "no_mirroring", "fast")
FAST_STEP = 0.75


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="autoseg beside nnU-Net v2 on one dataset: plan, train (same "
                                            "folds, same budget), select, predict; markdown + JSON report.")
    p.add_argument("--dataset", required=True, help="raw dataset folder DatasetXXX_Name (nnU-Net v2 layout)")
    p.add_argument("--budget", required=True, help="wall-clock budget of EACH training (one fold of one "
                                                    "configuration), e.g. 2m, 20m")
    p.add_argument("--quick", action="store_true", help="one fold of one configuration")
    p.add_argument("--fold", type=int, default=0, help="the fold of --quick (default: %(default)s)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="folds of the full mode (default: 0 1 2 3 4)")
    p.add_argument("--configuration", default="auto",
                   help="the configuration both tools train and predict with; auto: 3d_fullres if autoseg "
                        "planned it, else 2d (default: %(default)s)")
    p.add_argument("--predict-cases", type=int, default=20,
                   help="at most this many test cases for the prediction timings (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: bench_out/baseline/<dataset>[_quick])")
    p.add_argument("--redo", action="append", default=[], metavar="PATTERN",
                   help="rerun the saved steps whose name contains PATTERN (repeatable; 'all' for every step)")
    p.add_argument("--skip-nnunet", action="store_true", help="autoseg only (the report has no nnU-Net column)")
    p.add_argument("--skip-predict", action="store_true",
                   help="train and select only (run again without it later: finished steps are kept)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--autoseg", default=str(REPO / ".venv" / "bin" / "autoseg"), help="the autoseg command")
    p.add_argument("--venv", default=str(REPO / ".benchvenv"), help="nnU-Net's virtual environment (created if "
                                                                     "missing; default: %(default)s)")
    p.add_argument("--iterations-per-epoch", type=int, default=25, help="nnU-Net iterations per epoch")
    p.add_argument("--num-processes", type=int, default=2, help="nnU-Net's worker processes (default: 2)")
    return p


# --------------------------------------------------------------------------- steps

class Steps:
    """Saved step results under OUT/steps: a step runs once unless --redo names it."""

    def __init__(self, out: Path, redo: Sequence[str]):
        self.dir = out / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redo = list(redo)

    def _wanted_again(self, name: str) -> bool:
        return any(p == "all" or p in name for p in self.redo)

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        if path.exists() and not self._wanted_again(name):
            print(f"[{name}] done earlier: {path}", flush=True)
            return read_json(path)
        result = fn()
        write_json(path, result)
        return result


def autoseg_exe(args: argparse.Namespace) -> list[str]:
    return [args.autoseg] if Path(args.autoseg).exists() else [sys.executable, "-m", "autoseg.cli"]


def autoseg_plan(args: argparse.Namespace, dataset: Path, work: Path, logs: Path) -> dict[str, Any]:
    cmd = autoseg_exe(args) + ["plan", str(dataset), "--workdir", str(work), "--time-budget", args.budget,
                               "--no-progress"]
    if (work / "plans.json").exists():
        cmd.append("--overwrite")
    print(f"[autoseg] plan {dataset.name}", flush=True)
    st = run_monitored(cmd, logs / "autoseg_plan.log", label="autoseg plan", cwd=REPO)
    require_success(st, "autoseg plan")
    return {"seconds": st.seconds, "peak_rss_mb": st.peak_rss_mb, "peak_pss_mb": st.peak_pss_mb,
            "command": " ".join(cmd), "log": st.log}


def autoseg_train(args: argparse.Namespace, work: Path, logs: Path, config: str, fold: int) -> dict[str, Any]:
    fold_dir = work / "results" / config / f"fold_{fold}"
    if fold_dir.exists():  # a fresh measurement, not a resume
        shutil.rmtree(fold_dir)
    cmd = autoseg_exe(args) + ["train", "--workdir", str(work), "-c", config, "--fold", str(fold),
                               "--time-budget", args.budget, "--no-progress"]
    print(f"[autoseg] train {config} fold {fold} for {args.budget}", flush=True)
    st = run_monitored(cmd, logs / f"autoseg_train_{config}_fold{fold}.log", label="autoseg train", cwd=REPO)
    require_success(st, f"autoseg train {config} fold {fold}")
    summary = read_json(fold_dir / "validation" / "summary.json")
    settings = read_json(fold_dir / "train_settings.json")
    stats = autoseg_training_stats(read_jsonl(fold_dir / "training_log.jsonl"), settings["iterations_per_epoch"])
    per_class, mean = dice_from_summary(summary)
    plans = read_json(work / "plans.json")
    print(f"[autoseg] {config} fold {fold}: Dice mean {mean}, {stats['iterations_done']} iterations, "
          f"{st.seconds:.0f} s, peak {st.peak_rss_mb:.0f} MB", flush=True)
    return {"configuration": config, "fold": fold, "train_seconds": st.seconds, "train_peak_rss_mb": st.peak_rss_mb,
            "train_peak_pss_mb": st.peak_pss_mb, **stats, "iterations_per_epoch": settings["iterations_per_epoch"],
            "validation_seconds": round(sum(summary.get("seconds_per_case", {}).values()), 1) or None,
            "validation_cases": summary.get("num_cases"), "dice_per_class": per_class, "dice_mean": mean,
            "label_names": {k: v.get("name", k) for k, v in summary.get("per_class", {}).items()},
            "plan": autoseg_plan_summary(plans, config, settings), "command": " ".join(cmd), "log": st.log}


def autoseg_find_best(args: argparse.Namespace, work: Path, logs: Path, configs: list[str],
                      folds: list[int]) -> dict[str, Any]:
    cmd = autoseg_exe(args) + ["find-best", "--workdir", str(work), "-c", *configs,
                               "--folds", *map(str, folds), "--overwrite", "--no-progress"]
    print("[autoseg] find-best", flush=True)
    st = run_monitored(cmd, logs / "autoseg_find_best.log", label="autoseg find-best", cwd=REPO)
    require_success(st, "autoseg find-best")
    sel = read_json(work / "results" / "selection.json")
    return {"seconds": st.seconds, "peak_rss_mb": st.peak_rss_mb, "winner": sel["winner"],
            "winner_configurations": sel["winner_configurations"],
            "candidates": [{k: c[k] for k in ("name", "foreground_dice", "dice_per_class", "seconds_per_case")}
                           for c in sel["candidates"]],
            "postprocessing": [p["kind"] + (f" {p['labels']}" if p.get("labels") else "")
                               for p in sel["postprocessing"]],
            "dice_before_postprocessing": sel["foreground_dice_before_postprocessing"],
            "dice_after_postprocessing": sel["foreground_dice_after_postprocessing"],
            "command": " ".join(cmd), "log": st.log}


def predict_cases(dataset: Path, splits: list[dict[str, list[str]]], fold: int, limit: int) -> tuple[str, list[str]]:
    """(where the cases come from, case ids): imagesTs if the dataset has one, else fold ``fold``'s
    validation cases (seen in training by the other folds: timing only, their Dice is not independent)."""
    ts = dataset / "imagesTs"
    ending = read_json(dataset / "dataset.json").get("file_ending", ".nii.gz")
    if ts.is_dir():
        ids = sorted({p.name[: -len(ending) - 5] for p in ts.iterdir() if p.name.endswith("_0000" + ending)})
        if ids:
            return "imagesTs", ids[:limit]
    return f"validation cases of fold {fold}", sorted(splits[fold]["val"])[:limit]


def link_inputs(dataset: Path, case_ids: Sequence[str], dest: Path) -> int:
    """dest/<case>_<cccc><ending> symlinks to every channel of the cases (imagesTs first, else imagesTr)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    n = 0
    for sub in ("imagesTs", "imagesTr"):
        folder = dataset / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            case = p.name.split("_")
            stem = "_".join(case[:-1])
            if stem in case_ids and not (dest / p.name).exists():
                (dest / p.name).symlink_to(p.resolve())
                n += 1
    return n


def autoseg_predict(args: argparse.Namespace, work: Path, logs: Path, inputs: Path, out: Path, mode: str,
                    config: str | None, folds: list[int], n_cases: int) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    cmd = autoseg_exe(args) + ["predict", "--workdir", str(work), "-i", str(inputs), "-o", str(out), "--no-progress"]
    if config is not None:
        cmd += ["-c", config]
    if mode == "fast":
        cmd += ["--fast", "--folds", str(folds[0])]
    else:
        cmd += ["--folds", *map(str, folds)]
        if mode == "no_mirroring":
            cmd.append("--no-mirroring")
    label = f"autoseg predict {config or 'selection'} {mode}"
    print(f"[{label}] {n_cases} cases", flush=True)
    st = run_monitored(cmd, logs / f"autoseg_predict_{config or 'selection'}_{mode}.log", label=label, cwd=REPO)
    require_success(st, label)
    info = read_json(out / "prediction_info.json")
    per_case = info.get("seconds_per_case") or {}
    return {"mode": mode, "configuration": config or "selection", "folds": folds if mode != "fast" else folds[:1],
            "cases": n_cases, "seconds": st.seconds, "seconds_per_case": round(st.seconds / max(1, n_cases), 3),
            "compute_seconds_per_case": (round(sum(per_case.values()) / len(per_case), 3)
                                         if isinstance(per_case, dict) and per_case else None),
            "peak_rss_mb": st.peak_rss_mb, "peak_pss_mb": st.peak_pss_mb, "command": " ".join(cmd), "log": st.log}


# --------------------------------------------------------------------------- nnU-Net

def nnunet_find_best(ctx: nb.NnunetContext, folds: list[int]) -> dict[str, Any]:
    cmd = [str(ctx.bin / "nnUNetv2_find_best_configuration"), str(ctx.ds_id), "-c", ctx.configuration,
           "-tr", nb.TRAINER_CLASS, "-p", nb.PLANS_NAME, "-f", *map(str, folds), "--disable_ensembling",
           "-np", str(ctx.n_proc)]
    print("[nnU-Net] find_best_configuration", flush=True)
    st = run_monitored(cmd, ctx.out / "logs" / "find_best.log", env=ctx.env, label="nnU-Net find-best")
    require_success(st, "nnUNetv2_find_best_configuration")
    info_path = ctx.out / "nnUNet_results" / ctx.ds_name / "inference_information.json"
    info = read_json(info_path) if info_path.exists() else {}
    best = info.get("best_model_or_ensemble", {})
    return {"seconds": st.seconds, "peak_rss_mb": st.peak_rss_mb,
            "winner": ", ".join(m.get("configuration", "?") if isinstance(m, dict) else str(m)
                                for m in best.get("selected_model_or_models", [])) or None,
            "dice_before_postprocessing": best.get("result_on_crossval_pre_pp"),
            "dice_after_postprocessing": best.get("result_on_crossval_post_pp"),
            "command": " ".join(cmd), "log": st.log}


def nnunet_predict(ctx: nb.NnunetContext, inputs: Path, out: Path, mode: str, folds: list[int],
                   n_cases: int) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    use = folds[:1] if mode == "fast" else folds
    cmd = [str(ctx.bin / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out), "-d", str(ctx.ds_id),
           "-c", ctx.configuration, "-tr", nb.TRAINER_CLASS, "-p", nb.PLANS_NAME, "-f", *map(str, use),
           "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", str(ctx.n_proc), "-nps", str(ctx.n_proc)]
    if mode in ("no_mirroring", "fast"):
        cmd.append("--disable_tta")
    if mode == "fast":
        cmd += ["-step_size", str(FAST_STEP)]
    label = f"nnU-Net predict {mode}"
    print(f"[{label}] {n_cases} cases", flush=True)
    st = run_monitored(cmd, ctx.out / "logs" / f"predict_{mode}.log", env=ctx.env, label=label)
    require_success(st, label)
    return {"mode": mode, "configuration": ctx.configuration, "folds": use, "cases": n_cases,
            "seconds": st.seconds, "seconds_per_case": round(st.seconds / max(1, n_cases), 3),
            "peak_rss_mb": st.peak_rss_mb, "peak_pss_mb": st.peak_pss_mb, "command": " ".join(cmd), "log": st.log}


# --------------------------------------------------------------------------- report

def _mean(values: Sequence[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    return round(sum(nums) / len(nums), 4) if nums else None


MIN_DICE_FOR_RATIO = 0.1  # a ratio to a Dice near 0 (an untrained network) says nothing


def _row(quantity: str, a: Any, n: Any, with_ratio: bool = True, dice: bool = False) -> dict[str, Any]:
    if dice and isinstance(n, (int, float)) and n < MIN_DICE_FOR_RATIO:
        with_ratio = False
    return {"quantity": quantity, "autoseg": a, "nnunet": n, "ratio": ratio(a, n) if with_ratio else None}


def build_report(r: dict[str, Any]) -> dict[str, Any]:
    """Tables (rows with ratios) from the collected step results ``r``."""
    a_plan, n_plan = r.get("autoseg_plan", {}), r.get("nnunet_plan", {})
    config = r["configuration"]
    a_folds = [t for t in r.get("autoseg_train", []) if t["configuration"] == config]
    n_folds = r.get("nnunet_train", [])
    labels = sorted({k for t in a_folds + n_folds for k in t.get("dice_per_class", {})}, key=lambda k: (len(k), k))
    names = {}
    for t in n_folds + a_folds:
        names.update(t.get("label_names", {}))
    tables: dict[str, list[dict[str, Any]]] = {}
    tables["planning and preprocessing"] = [
        _row("wall time (s)", a_plan.get("seconds"), n_plan.get("plan_seconds")),
        _row("peak memory (MB, RSS of the process tree)", a_plan.get("peak_rss_mb"), n_plan.get("plan_peak_rss_mb"))]
    tables[f"training {config} (mean over folds)"] = [
        _row("seconds per iteration", _mean([t.get("seconds_per_iteration") for t in a_folds]),
             _mean([t.get("seconds_per_iteration") for t in n_folds])),
        _row("iterations per training", _mean([t.get("iterations_done") for t in a_folds]),
             _mean([t.get("iterations_done") for t in n_folds])),
        _row("training command wall time (s)", _mean([t.get("train_seconds") for t in a_folds]),
             _mean([t.get("train_seconds") for t in n_folds])),
        _row("final validation (s)", _mean([t.get("validation_seconds") for t in a_folds]),
             _mean([t.get("validation_seconds") for t in n_folds])),
        _row("peak memory (MB, RSS)", max((t.get("train_peak_rss_mb") or 0 for t in a_folds), default=None),
             max((t.get("train_peak_rss_mb") or 0 for t in n_folds), default=None)),
        _row("patch size", (a_folds[0]["plan"]["patch_size"] if a_folds else None),
             (n_folds[0]["plan"]["patch_size"] if n_folds else None), False),
        _row("batch size", (a_folds[0]["plan"]["batch_size"] if a_folds else None),
             (n_folds[0]["plan"]["batch_size"] if n_folds else None), False),
        _row("features per stage", (a_folds[0]["plan"]["features_per_stage"] if a_folds else None),
             (n_folds[0]["plan"]["features_per_stage"] if n_folds else None), False)]
    dice_rows = []
    folds = sorted({t["fold"] for t in a_folds + n_folds})
    for f in folds:
        at = next((t for t in a_folds if t["fold"] == f), {})
        nt = next((t for t in n_folds if t["fold"] == f), {})
        for k in labels:
            dice_rows.append(_row(f"fold {f}: {names.get(k, k)} (label {k})", at.get("dice_per_class", {}).get(k),
                                  nt.get("dice_per_class", {}).get(k), dice=True))
        dice_rows.append(_row(f"fold {f}: mean foreground", at.get("dice_mean"), nt.get("dice_mean"), dice=True))
    if len(folds) > 1:
        for k in labels:
            dice_rows.append(_row(f"mean over folds: {names.get(k, k)}",
                                  _mean([t.get("dice_per_class", {}).get(k) for t in a_folds]),
                                  _mean([t.get("dice_per_class", {}).get(k) for t in n_folds]), dice=True))
        dice_rows.append(_row("mean over folds: mean foreground", _mean([t.get("dice_mean") for t in a_folds]),
                              _mean([t.get("dice_mean") for t in n_folds]), dice=True))
    tables[f"validation Dice {config} (each tool's own final validation, same splits)"] = dice_rows
    other = [t for t in r.get("autoseg_train", []) if t["configuration"] != config]
    if other:
        tables["autoseg's other configurations (no nnU-Net counterpart trained)"] = [
            _row(f"{t['configuration']} fold {t['fold']}: mean foreground Dice / s per iteration / iterations",
                 f"{_cell(t.get('dice_mean'))} / {_cell(t.get('seconds_per_iteration'))} / {t.get('iterations_done')}",
                 None, False) for t in other]
    a_sel, n_sel = r.get("autoseg_select", {}), r.get("nnunet_select", {})
    tables["selection (cross-validation of the trained folds)"] = [
        _row("winner", a_sel.get("winner"), n_sel.get("winner"), False),
        _row("mean foreground Dice before postprocessing", a_sel.get("dice_before_postprocessing"),
             n_sel.get("dice_before_postprocessing"), dice=True),
        _row("after postprocessing", a_sel.get("dice_after_postprocessing"), n_sel.get("dice_after_postprocessing"),
             dice=True),
        _row("postprocessing accepted", ", ".join(a_sel.get("postprocessing", [])) or "none", None, False),
        _row("wall time (s)", a_sel.get("seconds"), n_sel.get("seconds"))]
    pred_rows = []
    a_pred = {p["mode"]: p for p in r.get("autoseg_predict", [])}
    n_pred = {p["mode"]: p for p in r.get("nnunet_predict", [])}
    for mode in PREDICT_MODES:
        ap, np_ = a_pred.get(mode, {}), n_pred.get(mode, {})
        if not ap and not np_:
            continue
        what = {"default": "mirroring, all folds", "no_mirroring": "no mirroring, all folds",
                "fast": f"--fast: no mirroring, step {FAST_STEP}, first fold"}[mode]
        pred_rows += [_row(f"{what}: seconds per case", ap.get("seconds_per_case"), np_.get("seconds_per_case")),
                      _row(f"{what}: peak memory (MB, RSS)", ap.get("peak_rss_mb"), np_.get("peak_rss_mb"))]
    sel_pred = r.get("autoseg_predict_selection")
    if sel_pred:
        pred_rows += [_row(f"autoseg's selection ({a_sel.get('winner')}), mirroring: seconds per case",
                           sel_pred.get("seconds_per_case"), None, False),
                      _row("autoseg's selection: peak memory (MB, RSS)", sel_pred.get("peak_rss_mb"), None, False)]
    tables[f"prediction of {r.get('predict_n_cases')} cases ({r.get('predict_source')}), {config}, "
           f"whole command wall time / cases"] = pred_rows
    return tables


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    mode = "quick: one fold, one configuration" if report["quick"] else f"folds {report['folds']}"
    lines = [f"# autoseg vs nnU-Net v2: {report['dataset']} ({mode}), budget {report['budget']} per training", "",
             f"- date: {report['date']}; autoseg commit {report.get('commit') or '?'}",
             f"- machine: {m.get('cpu_model')}, {m.get('cpu_cores_usable')} usable of {m.get('cpu_cores')} cores, "
             f"{m.get('ram_gb')} GB RAM, {m.get('os')}, no GPU used (`-device cpu` for nnU-Net)",
             f"- versions: autoseg {report.get('versions', {}).get('autoseg')}, nnU-Net "
             f"{report.get('versions', {}).get('nnunet')}",
             f"- compared configuration: {report['configuration']}; autoseg trained: "
             f"{', '.join(report['autoseg_configurations'])}", ""]
    for title, rows in report["tables"].items():
        lines += [f"## {title}", "", "| quantity | autoseg | nnU-Net v2 | autoseg / nnU-Net |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {x['quantity']} | {_cell(x['autoseg'])} | {_cell(x['nnunet'])} | {_cell(x['ratio'])} |"
                  for x in rows]
        lines.append("")
    cands = report.get("autoseg_candidates") or []
    if cands:
        lines += ["## autoseg's ranking (find-best)", "", "| candidate | mean foreground Dice | est. s/case |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {c['name']} | {_cell(c['foreground_dice'])} | {_cell(c['seconds_per_case'])} |" for c in cands]
        lines.append("")
    pub = report.get("published") or []
    lines += ["## Published numbers (other machines, other splits, full-length training: context, not a ratio)", ""]
    if pub:
        lines += ["| method | metric | value | status | source |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {p['method']} | {p['metric']} | {p['value']} | {p['status']} | {p['source']} |" for p in pub]
    else:
        lines.append("None known for this dataset (benchmarks/published.py).")
    for tool, msg in report.get("errors", {}).items():
        lines += ["", f"**{tool} failed:**", "", "```", msg.strip()[-3000:], "```"]
    lines += ["", "Notes:"] + [f"- {n}" for n in report.get("notes", [])] + [
              "- Both tools train the same folds of the same splits file with the same wall-clock budget per "
              "training (start-up, training and final validation included); nnU-Net runs its default recipe "
              "with `nnUNetTrainer_WallClock` (epochs sized to the budget).",
              "- Prediction timings: whole command wall time (loading the networks included) divided by the "
              "number of cases, same cases, same folds, same mirroring setting for both tools. "
              + ("The cases are validation cases of fold 0 that the other folds saw in training: "
                 "timing only, no accuracy is claimed on them." if "validation" in str(report.get("predict_source"))
                 else ""),
              "- Memory: peak of the summed RSS of each command's whole process tree, sampled every 0.5 s.",
              "- Ratios: autoseg / nnU-Net (below 1: autoseg is faster or lighter; above 1 for Dice: better); "
              f"none against a Dice below {MIN_DICE_FOR_RATIO} (a network that has not learnt yet).", "", "Commands:", "", "```"]
    lines += [f"$ {c}" for c in report["commands"]] + ["```", ""]
    return "\n".join(lines)


def git_commit() -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


# --------------------------------------------------------------------------- main

def run(args: argparse.Namespace) -> int:
    parse_duration(args.budget)
    dataset = check_dataset(args.dataset)
    out = Path(args.out or REPO / "bench_out" / "baseline" / (dataset.name + ("_quick" if args.quick else ""))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs, work = out / "logs", out / "autoseg"
    steps = Steps(out, args.redo)
    errors: dict[str, str] = {}
    r: dict[str, Any] = {}
    folds = [args.fold] if args.quick else (args.folds or [0, 1, 2, 3, 4])

    r["autoseg_plan"] = steps.run("autoseg_plan", lambda: autoseg_plan(args, dataset, work, logs))
    plans = read_json(work / "plans.json")
    config = choose_configuration(plans, args.configuration)
    configs = [config] if args.quick else list(plans["configurations"])
    r["configuration"] = config
    splits = to_nnunet_splits(read_json(work / "splits.json"), where=str(work / "splits.json"))
    r["autoseg_train"] = []
    for c in configs:
        for f in folds:
            try:
                r["autoseg_train"].append(steps.run(f"autoseg_train_{c}_fold{f}",
                                                    lambda c=c, f=f: autoseg_train(args, work, logs, c, f)))
            except BenchError as e:
                errors[f"autoseg train {c} fold {f}"] = str(e)
    trained = sorted({t["configuration"] for t in r["autoseg_train"]},
                     key=lambda c: configs.index(c))
    complete = [c for c in trained if sum(t["configuration"] == c for t in r["autoseg_train"]) == len(folds)]
    source, case_ids = predict_cases(dataset, splits, folds[0], args.predict_cases)
    inputs = out / "predict_input"
    link_inputs(dataset, case_ids, inputs)
    r["predict_source"], r["predict_n_cases"] = source, len(case_ids)
    if complete:
        try:
            r["autoseg_select"] = steps.run("autoseg_select",
                                            lambda: autoseg_find_best(args, work, logs, complete, folds))
        except BenchError as e:
            errors["autoseg find-best"] = str(e)
    if config in complete and not args.skip_predict:
        r["autoseg_predict"] = []
        for mode in PREDICT_MODES:
            try:
                r["autoseg_predict"].append(steps.run(f"autoseg_predict_{mode}", lambda mode=mode: autoseg_predict(
                    args, work, logs, inputs, out / "predictions" / f"autoseg_{mode}", mode, config, folds,
                    len(case_ids))))
            except BenchError as e:
                errors[f"autoseg predict {mode}"] = str(e)
        if r.get("autoseg_select") and r["autoseg_select"]["winner_configurations"] != [config]:
            try:
                r["autoseg_predict_selection"] = steps.run("autoseg_predict_selection", lambda: autoseg_predict(
                    args, work, logs, inputs, out / "predictions" / "autoseg_selection", "default", None, folds,
                    len(case_ids)))
            except BenchError as e:
                errors["autoseg predict selection"] = str(e)

    versions = {"autoseg": autoseg_versions(autoseg_exe(args)).get("autoseg")}
    if not args.skip_nnunet:
        try:
            ctx = nb.prepare(dataset, config, out / "nnunet", budget=args.budget, venv=args.venv,
                             iterations_per_epoch=args.iterations_per_epoch, num_processes=args.num_processes)
            versions["nnunet"] = ctx.versions.get("nnunetv2")
            r["nnunet_plan"] = steps.run("nnunet_plan", lambda: nb.plan_and_preprocess(
                ctx, splits, str(work / "splits.json")))
            ctx.splits_file = str(work / "splits.json")
            r["nnunet_train"] = []
            for f in folds:
                try:
                    r["nnunet_train"].append(steps.run(f"nnunet_train_{config}_fold{f}",
                                                       lambda f=f: nb.train_fold(ctx, f, r["nnunet_plan"])))
                except BenchError as e:
                    errors[f"nnU-Net train fold {f}"] = str(e)
            if len(r["nnunet_train"]) == len(folds):
                try:
                    r["nnunet_select"] = steps.run("nnunet_select", lambda: nnunet_find_best(ctx, folds))
                except BenchError as e:
                    errors["nnU-Net find_best_configuration"] = str(e)
                r["nnunet_predict"] = []
                for mode in (() if args.skip_predict else PREDICT_MODES):
                    try:
                        r["nnunet_predict"].append(steps.run(f"nnunet_predict_{mode}", lambda mode=mode: nnunet_predict(
                            ctx, inputs, out / "predictions" / f"nnunet_{mode}", mode, folds, len(case_ids))))
                    except BenchError as e:
                        errors[f"nnU-Net predict {mode}"] = str(e)
        except BenchError as e:
            errors["nnU-Net"] = str(e)

    commands = ["$ " + " ".join([sys.executable] + sys.argv)]
    for key in ("autoseg_plan", "autoseg_train", "autoseg_select", "autoseg_predict", "autoseg_predict_selection",
                "nnunet_plan", "nnunet_train", "nnunet_select", "nnunet_predict"):
        items = r.get(key)
        for item in (items if isinstance(items, list) else [items] if items else []):
            commands.append(item.get("command", ""))
    report = {"dataset": dataset.name, "budget": args.budget, "quick": args.quick, "folds": folds,
              "configuration": config, "autoseg_configurations": configs,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(),
              "machine": machine_info(), "versions": versions, "tables": build_report(r),
              "autoseg_candidates": (r.get("autoseg_select") or {}).get("candidates"),
              "published": published_for(dataset.name), "errors": errors, "notes": args.note,
              "predict_source": r.get("predict_source"),
              "commands": [c.removeprefix("$ ") for c in commands if c], "results": r}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(format_markdown(report), encoding="utf-8")
    print(format_markdown(report))
    print(f"report: {out / 'report.md'} and {out / 'report.json'}")
    return EXIT_FAILED if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        print(f"baseline: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
