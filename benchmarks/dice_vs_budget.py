#!/usr/bin/env python3
"""Fold Dice against the wall-clock budget, autoseg beside nnU-Net v2: a table and a plot.

    .venv/bin/python benchmarks/dice_vs_budget.py --dataset ../shared/data/Dataset102_Hippocampus \\
        --budgets 5m 10m 20m [--fold 0] [--out bench_out/dice_vs_budget/hippocampus] [--skip-nnunet]
    .venv/bin/python benchmarks/dice_vs_budget.py --report-only --out bench_out/dice_vs_budget/hippocampus

For each budget, ``train_side_by_side.py`` trains autoseg and then nnU-Net v2 (its own virtual
environment) on the same fold of the same splits with that budget, one after the other, and writes
``OUT/<budget>/report.json``; a budget whose report exists is not run again (delete its folder to redo
it). Then ``OUT/dice_vs_budget.md`` (the table: mean foreground Dice per tool and budget, the
difference, iterations and wall times) and ``OUT/dice_vs_budget.png`` (Dice against minutes, one line
per tool, plus nnU-Net's published full-budget figure where benchmarks/published.py has one).

Run it alone on the machine: the trainings are timed, and anything else running costs iterations.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import dataset_unless_report_only, parse_duration, read_json, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _mean(side: dict[str, Any] | None) -> float | None:
    return None if not side else side.get("dice_mean")


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per budget folder holding a report.json, sorted by budget."""
    rows = []
    for report_path in sorted(out.glob("*/report.json")):
        r = read_json(report_path)
        a, n = r.get("autoseg") or {}, r.get("nnunet") or {}
        rows.append({"budget": r["budget"], "budget_s": parse_duration(r["budget"]), "dataset": r["dataset"],
                     "configuration": r.get("configuration"), "fold": r.get("fold"), "date": r.get("date"),
                     "autoseg_dice": _mean(a), "nnunet_dice": _mean(n),
                     "autoseg_iterations": a.get("iterations_done"), "nnunet_iterations": n.get("iterations_done"),
                     "autoseg_train_s": a.get("train_seconds"), "nnunet_train_s": n.get("train_seconds"),
                     "errors": r.get("errors") or {}})
    return sorted(rows, key=lambda row: row["budget_s"])


def _fmt(v: Any, digits: int = 4) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def write_report(out: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise SystemExit(f"no */report.json under {out}: run the budgets first")
    first = rows[0]
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

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, marker in (("autoseg_dice", "autoseg", "o"), ("nnunet_dice", "nnU-Net v2", "s")):
        pts = [(r["budget_s"] / 60, r[key]) for r in rows if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=label)
    from published import published_for

    for row in published_for(rows[0]["dataset"])[:1]:  # the first published full-budget figure, labelled so
        try:
            value = float(row["value"]) / (100.0 if "%" in row.get("metric", "") else 1.0)
        except (TypeError, ValueError):
            continue
        ax.axhline(value, color="grey", linestyle="--", label=f"{row['method']} (published): {value:.3f}")
    ax.set_xlabel("wall-clock budget per training (minutes)")
    ax.set_ylabel("mean foreground Dice, fold validation")
    ax.set_title(f"{rows[0]['dataset']} {rows[0]['configuration']} fold {rows[0]['fold']}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
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
    args = ap.parse_args(argv)
    out = args.out.resolve()
    dataset = dataset_unless_report_only(ap, args)
    if dataset is not None:
        for budget in sorted(args.budgets, key=parse_duration):
            folder = out / budget
            if (folder / "report.json").exists():
                print(f"[skip] {budget}: {folder / 'report.json'} exists")
                continue
            cmd = [sys.executable, str(REPO / "benchmarks" / "train_side_by_side.py"), "--dataset", str(dataset),
                   "--budget", budget, "--fold", str(args.fold), "--configuration", args.configuration,
                   "--out", str(folder), *(["--skip-nnunet"] if args.skip_nnunet else [])]
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=False)
    write_report(out, collect(out))
    print(f"table: {out / 'dice_vs_budget.md'}, plot: {out / 'dice_vs_budget.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
