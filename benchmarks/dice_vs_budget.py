#!/usr/bin/env python3
"""Fold Dice against the wall-clock budget, autoseg beside nnU-Net v2: a table and a plot.

    .venv/bin/python benchmarks/dice_vs_budget.py --dataset ../shared/data/Dataset102_Hippocampus \\
        --budgets 5m 10m 20m [--fold 0] [--out bench_out/dice_vs_budget/hippocampus] [--skip-nnunet]
    .venv/bin/python benchmarks/dice_vs_budget.py --report-only --out bench_out/dice_vs_budget/hippocampus
    ... --earlier 20m autoseg docs/benchmarks/X.json --earlier 20m nnunet docs/benchmarks/Y.json

For each budget, ``train_side_by_side.py`` trains autoseg and then nnU-Net v2 (its own virtual
environment) on the same fold of the same splits with that budget, one after the other, and writes
``OUT/<budget>/report.json``; a budget whose report exists is not run again (delete its folder to redo
it). Then ``OUT/dice_vs_budget.md`` (the table: mean foreground Dice per tool and budget, the
difference, iterations and wall times) and ``OUT/dice_vs_budget.png`` (Dice against minutes, one line
per tool, plus nnU-Net's published full-budget figure where benchmarks/published.py has one).

``--earlier BUDGET TOOL FILE`` puts a measurement made before (by ``train_side_by_side.py``, whose
``report.json`` or per-tool result file it reads, or by ``busy_machine.py``) into the curve instead of
training that tool again at that budget; it is copied to ``OUT/<budget>/earlier_<tool>.json`` and the
table names its file and date, so a row never hides that its two sides were measured apart.

Run it alone on the machine: the trainings are timed, and anything else running costs iterations.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BenchError, dataset_unless_report_only, parse_duration, read_json, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _mean(side: dict[str, Any] | None) -> float | None:
    return None if not side else side.get("dice_mean")


TOOLS = ("autoseg", "nnunet")


def earlier_side(path: Path, tool: str) -> dict[str, Any]:
    """One tool's result from a file written by an earlier benchmark, in the side-by-side result's keys
    (``dice_mean``, ``iterations_done``, ``train_seconds``) plus ``source`` and ``date``.

    Reads a ``train_side_by_side.py`` report.json (its ``tool`` entry), a per-tool result file
    (``autoseg_result.json``, ``nnunet/result.json``) or a ``busy_machine.py`` result."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--earlier {tool} {path}: cannot read it as JSON ({e})") from None
    date = data.get("date") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(data.get(tool), dict):
        data = data[tool]
    if not isinstance(data, dict):
        raise SystemExit(f"--earlier {tool} {path}: not a benchmark result (a JSON object is expected)")
    if "dice_mean" in data:
        side = dict(data)
    elif "foreground_dice" in data:  # busy_machine.py
        side = {"dice_mean": data["foreground_dice"], "iterations_done": data.get("iterations"),
                "train_seconds": data.get("wall_s"), "code": data.get("code")}
    else:
        raise SystemExit(f"--earlier {tool} {path}: no Dice in it (expected a train_side_by_side.py report or "
                         f"result, or a busy_machine.py result)")
    side["source"] = str(path)
    side["date"] = str(data.get("date") or date or "date not recorded")
    return side


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per budget folder holding a report.json or earlier_<tool>.json, sorted by budget; an earlier
    measurement fills a side the folder's own report lacks."""
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in (out.iterdir() if out.is_dir() else ()) if p.is_dir()):
        try:
            budget_s = parse_duration(folder.name)
        except BenchError:
            continue  # not a budget folder
        report = read_json(folder / "report.json") if (folder / "report.json").exists() else {}
        sides = {tool: report.get(tool) or {} for tool in TOOLS}
        errors = dict(report.get("errors") or {})
        sources = {}
        for tool in TOOLS:
            earlier = folder / f"earlier_{tool}.json"
            if earlier.exists() and sides[tool].get("dice_mean") is None:
                sides[tool] = read_json(earlier)
                errors.pop(tool, None)
                sources[tool] = f"{sides[tool]['source']} ({sides[tool]['date']})"
        if not report and not sources:
            continue
        # what was trained: the report's, else an earlier side's that says (a busy_machine.py result does not)
        meta = report or next((sides[t] for t in TOOLS if t in sources and sides[t].get("dataset")), {})
        a, n = sides["autoseg"], sides["nnunet"]
        rows.append({"budget": report.get("budget", folder.name), "budget_s": budget_s,
                     "dataset": meta.get("dataset"), "configuration": meta.get("configuration"),
                     "fold": meta.get("fold"), "date": report.get("date"),
                     "autoseg_dice": _mean(a), "nnunet_dice": _mean(n),
                     "autoseg_iterations": a.get("iterations_done"), "nnunet_iterations": n.get("iterations_done"),
                     "autoseg_train_s": a.get("train_seconds"), "nnunet_train_s": n.get("train_seconds"),
                     "sources": sources, "errors": errors})
    return sorted(rows, key=lambda row: row["budget_s"])


def _fmt(v: Any, digits: int = 4) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _described(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first row that names its dataset (a row made only of busy_machine.py results does not)."""
    return next((r for r in rows if r["dataset"]), rows[0])


def write_report(out: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise SystemExit(f"no */report.json or */earlier_*.json under {out}: run the budgets first")
    first = _described(rows)
    lines = [f"# Dice against the budget: {first['dataset']} {first['configuration']} fold {first['fold']}", "",
             "| budget | autoseg Dice | nnU-Net v2 Dice | autoseg − nnU-Net | autoseg iterations | "
             "nnU-Net iterations | autoseg train s | nnU-Net train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = (None if r["autoseg_dice"] is None or r["nnunet_dice"] is None
                else r["autoseg_dice"] - r["nnunet_dice"])
        lines.append(f"| {r['budget']} | {_fmt(r['autoseg_dice'])} | {_fmt(r['nnunet_dice'])} | "
                     f"{'–' if diff is None else f'{diff:+.4f}'} | {_fmt(r['autoseg_iterations'])} | "
                     f"{_fmt(r['nnunet_iterations'])} | {_fmt(r['autoseg_train_s'], 0)} | "
                     f"{_fmt(r['nnunet_train_s'], 0)} |")
    earlier = [f"- {r['budget']}, {tool}: measured earlier, taken from {src}" for r in rows
               for tool, src in r.get("sources", {}).items()]
    if earlier:
        lines += ["", "Rows not trained by this run (`--earlier`):", *earlier]
    errors = [f"- {r['budget']}: {side}: {msg}" for r in rows for side, msg in r["errors"].items()]
    if errors:
        lines += ["", "Errors:", *errors]
    lines += ["", "![Dice against the budget](dice_vs_budget.png)", ""]
    (out / "dice_vs_budget.md").write_text("\n".join(lines), encoding="utf-8")
    write_json(out / "dice_vs_budget.json", rows)
    _plot(out / "dice_vs_budget.png", rows)


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool, label, marker in (("autoseg", "autoseg", "o"), ("nnunet", "nnU-Net v2", "s")):
        key = f"{tool}_dice"
        pts = [(r["budget_s"] / 60, r[key]) for r in rows if r[key] is not None]
        if pts:
            line, = ax.plot(*zip(*pts), marker=marker, label=label)
            old = [(r["budget_s"] / 60, r[key]) for r in rows if r[key] is not None and tool in r.get("sources", {})]
            if old:  # measured earlier (--earlier): drawn open, and said so in the legend
                ax.plot(*zip(*old), marker=marker, linestyle="none", markersize=9, markerfacecolor="white",
                        color=line.get_color(), label=f"{label}, measured earlier")
    from published import published_for

    first = _described(rows)
    for row in published_for(first["dataset"] or ""):  # the first published full-budget figure with a number
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(row.get("value", "")))]
        if not numbers:
            continue
        value = sum(numbers) / len(numbers) / (100.0 if "%" in row.get("metric", "") else 1.0)
        status = str(row.get("status", "")).split(" ")[0]
        ax.axhline(value, color="grey", linestyle="--",
                   label=f"{row['method']} (published{', ' + status if status else ''}): {value:.3f}")
        break
    ax.set_xticks(sorted({r["budget_s"] / 60 for r in rows}))
    ax.set_xlim(left=0)
    ax.set_xlabel("wall-clock budget per training (minutes)")
    ax.set_ylabel("mean foreground Dice, fold validation")
    ax.set_title(f"{first['dataset']} {first['configuration']} fold {first['fold']}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="raw dataset folder DatasetXXX_Name (nnU-Net v2 layout)")
    ap.add_argument("--budgets", nargs="+", default=["5m", "10m", "20m"])
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--configuration", default="auto")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-nnunet", action="store_true", help="autoseg only (nnU-Net columns stay empty)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table and plot")
    ap.add_argument("--earlier", nargs=3, action="append", default=[], metavar=("BUDGET", "TOOL", "FILE"),
                    help="take TOOL's (autoseg or nnunet) point at BUDGET from FILE, an earlier measurement, "
                         "instead of training it; repeatable")
    ap.add_argument("--venv", default=None, help="nnU-Net's virtual environment (train_side_by_side.py's default "
                                                 "if not given)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    dataset = dataset_unless_report_only(ap, args)
    earlier_tools: dict[str, set[str]] = {}
    for budget, tool, file in args.earlier:
        if tool not in TOOLS:
            ap.error(f"--earlier {budget} {tool} {file}: TOOL must be one of {', '.join(TOOLS)}")
        try:
            parse_duration(budget)
        except BenchError as e:
            ap.error(f"--earlier {budget} {tool} {file}: {e}")
        side = earlier_side(Path(file), tool)
        (out / budget).mkdir(parents=True, exist_ok=True)
        write_json(out / budget / f"earlier_{tool}.json", side)
        earlier_tools.setdefault(budget, set()).add(tool)
    if dataset is not None:
        for budget in sorted(set(args.budgets) | set(earlier_tools), key=parse_duration):
            folder = out / budget
            skip = earlier_tools.get(budget, set()) | ({"nnunet"} if args.skip_nnunet else set())
            if (folder / "report.json").exists() or skip == set(TOOLS):
                print(f"[skip] {budget}: " + (f"{folder / 'report.json'} exists" if skip != set(TOOLS)
                                               else "both tools taken from --earlier"))
                continue
            cmd = [sys.executable, str(REPO / "benchmarks" / "train_side_by_side.py"), "--dataset", str(dataset),
                   "--budget", budget, "--fold", str(args.fold), "--configuration", args.configuration,
                   "--out", str(folder), *[f"--skip-{tool}" for tool in TOOLS if tool in skip],
                   *(["--venv", args.venv] if args.venv else [])]
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=False)
    write_report(out, collect(out))
    print(f"table: {out / 'dice_vs_budget.md'}, plot: {out / 'dice_vs_budget.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
