"""autoseg and nnU-Net v2 trained side by side on one fold, with the same wall-clock budget, on this machine.

    .venv/bin/python benchmarks/train_side_by_side.py --dataset ../shared/data/Dataset102_Hippocampus \\
        --budget 20m [--fold 0] [--configuration auto] [--out bench_out/hippo] [--skip-nnunet] [--skip-autoseg]

1. autoseg: ``autoseg plan DATASET --workdir OUT/autoseg --time-budget BUDGET``, then
   ``autoseg train --workdir OUT/autoseg -c CONFIG --fold F --time-budget BUDGET`` (CONFIG auto:
   3d_fullres if planned, else 2d), each timed with the peak memory of its process tree;
   result in OUT/autoseg_result.json.
2. nnU-Net v2 (benchmarks/nnunet_baseline.py) on the same fold of the same splits file
   (OUT/autoseg/splits.json) with the same budget; result in OUT/nnunet/result.json.
3. OUT/report.json and OUT/report.md: the side-by-side table with the ratio autoseg / nnU-Net, the
   machine, the date and the exact commands.

The two run one after the other, never at once (they would share the cores). A skipped side is
taken from its earlier result file when there is one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_baseline  # noqa: E402
from bench_common import (EXIT_FAILED, BenchError, check_dataset, machine_info, parse_duration,  # noqa: E402
                          read_json, write_json)

REPO = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train autoseg and nnU-Net v2 on the same fold with the same "
                                            "wall-clock budget, one after the other, and compare them.")
    p.add_argument("--dataset", required=True, help="raw dataset folder DatasetXXX_Name (nnU-Net v2 layout)")
    p.add_argument("--budget", required=True, help="wall-clock training budget per tool, e.g. 20m")
    p.add_argument("--fold", type=int, default=0, help="fold index (default: %(default)s)")
    p.add_argument("--configuration", default="auto",
                   help="configuration for both tools; auto: 3d_fullres if autoseg planned it, else 2d")
    p.add_argument("--out", default=None, help="output folder (default: bench_out/<dataset name>)")
    p.add_argument("--skip-nnunet", action="store_true", help="do not run nnU-Net (reuse OUT/nnunet/result.json)")
    p.add_argument("--skip-autoseg", action="store_true",
                   help="do not run autoseg (reuse OUT/autoseg_result.json)")
    p.add_argument("--autoseg", default=str(REPO / ".venv" / "bin" / "autoseg"),
                   help="the autoseg command (default: %(default)s)")
    p.add_argument("--venv", default=str(REPO / ".benchvenv"), help="nnU-Net's virtual environment "
                                                                     "(created if missing; default: %(default)s)")
    p.add_argument("--iterations-per-epoch", type=int, default=25, help="nnU-Net iterations per epoch")
    return p


# --------------------------------------------------------------------------- autoseg

def choose_configuration(plans: dict[str, Any], requested: str) -> str:
    """``requested`` if not 'auto' (and planned), else 3d_fullres if planned, else 2d."""
    planned = list(plans.get("configurations", {}))
    if requested != "auto":
        if requested not in planned:
            raise BenchError(f"--configuration {requested} was not planned by autoseg (planned: "
                             f"{', '.join(planned)}); pick one of those or 'auto'")
        return requested
    for name in ("3d_fullres", "2d"):
        if name in planned:
            return name
    raise BenchError(f"autoseg planned neither 3d_fullres nor 2d (planned: {', '.join(planned)})")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def autoseg_training_stats(records: Sequence[dict[str, Any]], iterations_per_epoch: int) -> dict[str, Any]:
    """Epochs, iterations and mean seconds per iteration from training_log.jsonl records (each has
    ``epoch``, ``seconds_per_iteration`` and ``iterations``; the time-budget guard may cut the last
    epochs short, so ``iterations_per_epoch`` is only the fallback for records without ``iterations``)."""
    spi = [r["seconds_per_iteration"] for r in records if r.get("seconds_per_iteration") is not None]
    epochs = max((int(r["epoch"]) for r in records), default=0)
    iterations = sum(int(r.get("iterations", iterations_per_epoch)) for r in records)
    weights = [int(r.get("iterations", iterations_per_epoch)) for r in records
               if r.get("seconds_per_iteration") is not None]
    mean_spi = sum(a * w for a, w in zip(spi, weights)) / sum(weights) if spi and sum(weights) else None
    return {"epochs_done": epochs, "iterations_done": iterations,
            "seconds_per_iteration": round(mean_spi, 4) if mean_spi is not None else None,
            "training_loop_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in records), 1)}


def autoseg_plan_summary(plans: dict[str, Any], configuration: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Patch and batch as trained (train_settings.json), features and spacing as planned (plans.json)."""
    cfg = plans["configurations"][configuration]
    return {"patch_size": settings.get("patch_size", cfg.get("patch_size")),
            "batch_size": settings.get("batch_size", cfg.get("batch_size")),
            "features_per_stage": cfg.get("network", {}).get("features_per_stage"),
            "n_stages": len(cfg.get("network", {}).get("features_per_stage", [])) or None,
            "spacing": cfg.get("spacing_zyx_mm"), "precision": settings.get("precision"),
            "planner": plans.get("planner")}


def autoseg_versions(exe: list[str]) -> dict[str, str]:
    """autoseg and torch versions of the interpreter beside the autoseg command ({} if unknown)."""
    py = Path(exe[0]).parent / "python" if len(exe) == 1 else Path(exe[0])
    code = "import importlib.metadata as m; print(m.version('autoseg'), m.version('torch'))"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    parts = r.stdout.split()
    return {"autoseg": parts[0], "torch": parts[1]} if r.returncode == 0 and len(parts) == 2 else {}


def run_autoseg(args: argparse.Namespace, dataset: Path, out: Path) -> dict[str, Any]:
    """Plan and train with autoseg, measured; writes and returns OUT/autoseg_result.json."""
    import baseline  # the plan and train steps of the whole-pipeline benchmark (imports this module)

    work, logs = out / "autoseg", out / "logs"
    plan = baseline.autoseg_plan(args, dataset, work, logs)
    plans = read_json(work / "plans.json")
    config = choose_configuration(plans, args.configuration)
    train = baseline.autoseg_train(args, work, logs, config, args.fold)
    result = {
        "tool": "autoseg", "versions": autoseg_versions(baseline.autoseg_exe(args)), "dataset": dataset.name,
        "dataset_path": str(dataset), "budget": args.budget, "budget_s": parse_duration(args.budget),
        "splits_file": str(work / "splits.json"),
        "plan_seconds": plan["seconds"], "plan_peak_rss_mb": plan["peak_rss_mb"],
        "plan_peak_pss_mb": plan["peak_pss_mb"],
        **{k: v for k, v in train.items() if k not in ("command", "log")},
        "commands": [plan["command"], train["command"]],
        "logs": {"plan": plan["log"], "train": train["log"]}, "machine": machine_info(),
    }
    write_json(out / "autoseg_result.json", result)
    return result


def run_nnunet(args: argparse.Namespace, dataset: Path, out: Path, configuration: str) -> dict[str, Any]:
    """benchmarks/nnunet_baseline.py on the same fold, splits and budget; returns its result.json."""
    splits = out / "autoseg" / "splits.json"
    ns = argparse.Namespace(dataset=str(dataset), configuration=configuration, fold=args.fold,
                            budget=args.budget, splits=str(splits) if splits.exists() else None,
                            out=str(out / "nnunet"), venv=args.venv,
                            iterations_per_epoch=args.iterations_per_epoch, num_processes=2)
    return nnunet_baseline.run_baseline(ns)


# --------------------------------------------------------------------------- report

def ratio(a: Any, b: Any) -> float | None:
    """a / b for numbers, else None; None too when b is ~0 (a ratio to a Dice of 0.0000 means nothing)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(b) > 1e-3 and not isinstance(a, bool):
        return round(a / b, 3)
    return None


def _rows(a: dict[str, Any], n: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(quantity, autoseg value, nnU-Net value, has a meaningful ratio) for the table."""
    names = {**n.get("label_names", {}), **a.get("label_names", {})}
    labels = sorted(set(a.get("dice_per_class", {})) | set(n.get("dice_per_class", {})),
                    key=lambda k: (len(k), k))
    rows = [(f"Dice {names.get(k, k)} (label {k})", a.get("dice_per_class", {}).get(k),
             n.get("dice_per_class", {}).get(k), True) for k in labels]
    pa, pn = a.get("plan", {}), n.get("plan", {})
    rows += [("Dice mean (foreground)", a.get("dice_mean"), n.get("dice_mean"), True),
             ("budget (s)", a.get("budget_s"), n.get("budget_s"), False),
             ("seconds per iteration", a.get("seconds_per_iteration"), n.get("seconds_per_iteration"), True),
             ("iterations done", a.get("iterations_done"), n.get("iterations_done"), True),
             ("epochs done × iterations per epoch",
              _epochs(a), _epochs(n), False),
             ("training command wall time (s)", a.get("train_seconds"), n.get("train_seconds"), True),
             ("final validation (s)", a.get("validation_seconds"), n.get("validation_seconds"), True),
             ("peak memory, training (MB, RSS sum)", a.get("train_peak_rss_mb"), n.get("train_peak_rss_mb"), True),
             ("peak memory, training (MB, PSS sum)", a.get("train_peak_pss_mb"), n.get("train_peak_pss_mb"), True),
             ("plan + preprocess (s)", a.get("plan_seconds"), n.get("plan_seconds"), True),
             ("plan + preprocess peak memory (MB, RSS)", a.get("plan_peak_rss_mb"), n.get("plan_peak_rss_mb"), True),
             ("patch size", pa.get("patch_size"), pn.get("patch_size"), False),
             ("batch size", pa.get("batch_size"), pn.get("batch_size"), True),
             ("features per stage", pa.get("features_per_stage"), pn.get("features_per_stage"), False),
             ("validation cases", a.get("validation_cases"), n.get("validation_cases"), False)]
    return rows


def _epochs(r: dict[str, Any]) -> str | None:
    if r.get("epochs_done") is None:
        return None
    return f"{r['epochs_done']} × {r.get('iterations_per_epoch')}"


def build_report(autoseg: dict[str, Any] | None, nnunet: dict[str, Any] | None, *, dataset: str,
                 configuration: str | None, fold: int, budget: str, machine: dict[str, Any], date: str,
                 commands: list[str], errors: dict[str, str] | None = None) -> dict[str, Any]:
    """Plain-data report: both results, the table rows with ratios autoseg / nnU-Net, machine, date, commands."""
    a, n = autoseg or {}, nnunet or {}
    rows = [{"quantity": q, "autoseg": va, "nnunet": vn, "ratio": ratio(va, vn) if r else None}
            for q, va, vn, r in _rows(a, n)]
    return {"dataset": dataset, "configuration": configuration, "fold": fold, "budget": budget,
            "date": date, "machine": machine, "rows": rows, "autoseg": autoseg, "nnunet": nnunet,
            "errors": errors or {}, "commands": commands}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, list):
        return "×".join(str(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else str(v)
    return str(v)


def format_markdown(report: dict[str, Any]) -> str:
    """report.md: title, machine, date, the side-by-side table, errors, notes and the exact commands."""
    m = report["machine"]
    lines = [f"# autoseg vs nnU-Net v2: {report['dataset']}, {report['configuration'] or '?'} fold "
             f"{report['fold']}, budget {report['budget']}", "",
             f"- date: {report['date']}",
             f"- machine: {m.get('cpu_model')}, {m.get('cpu_cores_usable')} usable of {m.get('cpu_cores')} "
             f"cores, {m.get('ram_gb')} GB RAM, {m.get('os')}", ""]
    for tool, res in (("autoseg", report.get("autoseg")), ("nnU-Net", report.get("nnunet"))):
        if res and res.get("versions"):
            lines.append(f"- {tool} versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
        if res:
            lines.append(f"- {tool} splits: {res.get('splits_file') or 'its own 5 folds'}")
    lines += ["", "| quantity | autoseg | nnU-Net v2 | autoseg / nnU-Net |", "| --- | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lines.append(f"| {r['quantity']} | {_cell(r['autoseg'])} | {_cell(r['nnunet'])} | {_cell(r['ratio'])} |")
    for tool, msg in report.get("errors", {}).items():
        lines += ["", f"**{tool} failed:**", "", "```", msg.strip(), "```"]
    lines += ["", "Notes:",
              "- Dice: each tool's own final validation of the fold's held-out cases at full resolution "
              "(same splits file for both).",
              "- seconds per iteration: mean wall time of one training step (data wait included), "
              "excluding pseudo-validation and epoch overhead.",
              "- training command wall time: the whole `train` command (start-up, training, final validation).",
              "- memory: peak of the summed RSS (and PSS, shared pages divided among processes) of the "
              "command's whole process tree, sampled every 0.5 s.",
              "- nnU-Net runs its default recipe with `nnUNetTrainer_WallClock` (benchmarks/nnunet_budget_"
              "trainer.py): epochs sized so that training and final validation fit the budget.",
              "", "Commands:", "", "```"] + report["commands"] + ["```", ""]
    return "\n".join(lines)


def _load_if_exists(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_duration(args.budget)
        dataset = check_dataset(args.dataset)
    except BenchError as e:
        print(f"train_side_by_side: error: {e}", file=sys.stderr)
        return e.exit_code
    out = Path(args.out or REPO / "bench_out" / dataset.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    autoseg = nnunet = None
    if args.skip_autoseg:
        autoseg = _load_if_exists(out / "autoseg_result.json")
    else:
        try:
            autoseg = run_autoseg(args, dataset, out)
        except BenchError as e:
            errors["autoseg"] = str(e)
            print(f"[autoseg] error: {e}", file=sys.stderr)
    configuration = args.configuration
    if configuration == "auto" and (out / "autoseg" / "plans.json").exists():
        try:
            configuration = choose_configuration(read_json(out / "autoseg" / "plans.json"), "auto")
        except BenchError:
            pass
    if args.skip_nnunet:
        nnunet = _load_if_exists(out / "nnunet" / "result.json")
    else:
        try:
            nnunet = run_nnunet(args, dataset, out, configuration)
        except BenchError as e:
            errors["nnunet"] = str(e)
            print(f"[nnU-Net] error: {e}", file=sys.stderr)
    commands = ["$ " + " ".join([sys.executable] + sys.argv)]
    for res in (autoseg, nnunet):
        commands += [f"$ {c}" for c in (res or {}).get("commands", [])]
    conf = (autoseg or nnunet or {}).get("configuration", None if configuration == "auto" else configuration)
    report = build_report(autoseg, nnunet, dataset=dataset.name, configuration=conf, fold=args.fold,
                          budget=args.budget, machine=machine_info(),
                          date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                          commands=commands, errors=errors)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(format_markdown(report), encoding="utf-8")
    print(format_markdown(report))
    print(f"report: {out / 'report.md'} and {out / 'report.json'}")
    return EXIT_FAILED if errors else 0


if __name__ == "__main__":
    sys.exit(main())
