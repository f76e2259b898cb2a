#!/usr/bin/env python3
"""Compare autoseg's plans with nnU-Net v2's on real datasets: target spacing, axis order, normalization.

For each dataset this runs nnU-Net v2's own fingerprint extraction and experiment planning
(`nnUNetv2_extract_fingerprint`, `nnUNetv2_plan_experiment`, in the benchmark's virtual environment
.benchvenv, created if missing) and `autoseg plan` with the `default` planner (this machine) and the
`nnunet_v2` planner (nnU-Net's 8 GB GPU sizing), then writes a markdown table.

    python benchmarks/compare_plans_with_nnunet.py ../shared/data/Dataset101_ISBI2012EM \
        ../shared/data/Dataset102_Hippocampus --out docs/nnunet_comparison.md

Nothing is copied into the repository: nnU-Net's folders and autoseg's work folders go to --scratch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NNUNET_NORM = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "no_norm",
               "RescaleTo01Normalization": "rescale_0_1", "RGBTo01Normalization": "rgb_0_1"}


def ensure_bench_venv(venv: Path) -> Path:
    """The nnU-Net virtual environment (never the project's own .venv)."""
    bindir = venv / "bin"
    if not (bindir / "nnUNetv2_plan_experiment").exists():
        print(f"creating {venv} with nnunetv2 2.8.1 (several GB)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bindir / "pip"), "install", "-q", "torch==2.13.0"], check=False)
        subprocess.run([str(bindir / "pip"), "install", "-q", "nnunetv2==2.8.1"], check=True)
    return bindir


def nnunet_plans(dataset: Path, scratch: Path, bindir: Path) -> dict:
    name = dataset.name
    dataset_id = int(name.split("_")[0].replace("Dataset", ""))
    raw, pre = scratch / "nnUNet_raw", scratch / "nnUNet_preprocessed"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / name
    if not link.exists():
        link.symlink_to(dataset.resolve())
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(scratch / "nnUNet_results")}
    plans = pre / name / "nnUNetPlans.json"
    if not plans.exists():
        for cmd in (["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", "2"],
                    ["nnUNetv2_plan_experiment", "-d", str(dataset_id)]):
            r = subprocess.run([str(bindir / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{cmd[0]} failed for {name}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return json.loads(plans.read_text())


def autoseg_plans(dataset: Path, scratch: Path, planner: str) -> tuple[dict, float]:
    wd = scratch / f"autoseg_{planner}_{dataset.name}"
    t0 = time.monotonic()
    r = subprocess.run([str(REPO / ".venv/bin/autoseg"), "plan", str(dataset), "--workdir", str(wd),
                        "--planner", planner, "--no-progress", "--time-budget", "20m"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"autoseg plan failed for {dataset.name}:\n{r.stderr[-3000:]}")
    return json.loads((wd / "plans.json").read_text()), time.monotonic() - t0


def _fmt(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def compare(dataset: Path, nn: dict, ours: dict, ours_nn: dict) -> list[str]:
    rows = []
    fp = nn["configurations"]
    main_cfg = "3d_fullres" if "3d_fullres" in fp else "2d"

    def row(what, a, b, c, same=None):
        same = (a == b == c) if same is None else same
        rows.append(f"| {dataset.name} | {what} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | {'yes' if same else '**no**'} |")

    row("configurations", sorted(fp), sorted(ours["configurations"]), sorted(ours_nn["configurations"]))
    nn_sp = fp[main_cfg]["spacing"]
    tf = nn["transpose_forward"]
    # nnU-Net stores spacing after its transpose; autoseg stores it in the original (z, y, x) order
    ours_sp = ours["configurations"][main_cfg]["spacing_zyx_mm"]
    ours_nn_sp = ours_nn["configurations"][main_cfg]["spacing_zyx_mm"]
    ours_sp_t = [ours_sp[a] for a in tf][-len(nn_sp):]
    ours_nn_sp_t = [ours_nn_sp[a] for a in tf][-len(nn_sp):]
    row(f"target spacing ({main_cfg}, after transpose, mm)", nn_sp, ours_sp_t, ours_nn_sp_t,
        all(abs(a - b) < 1e-4 and abs(a - c) < 1e-4 for a, b, c in zip(nn_sp, ours_sp_t, ours_nn_sp_t)))
    row("axis order (transpose_forward)", tf, ours["configurations"][main_cfg]["transpose_forward"],
        ours_nn["configurations"][main_cfg]["transpose_forward"])
    row("normalization per channel", [NNUNET_NORM.get(s, s) for s in fp[main_cfg]["normalization_schemes"]],
        [n["scheme"] for n in ours["configurations"][main_cfg]["normalization"]],
        [n["scheme"] for n in ours_nn["configurations"][main_cfg]["normalization"]])
    row("masked normalization", fp[main_cfg]["use_mask_for_norm"],
        [n["use_mask"] for n in ours["configurations"][main_cfg]["normalization"]],
        [n["use_mask"] for n in ours_nn["configurations"][main_cfg]["normalization"]])
    for cfg in sorted(fp):
        if cfg in ours["configurations"] and cfg in ours_nn["configurations"]:
            a = (fp[cfg]["patch_size"], fp[cfg]["batch_size"])
            b = (ours["configurations"][cfg]["patch_size"], ours["configurations"][cfg]["batch_size"])
            c = (ours_nn["configurations"][cfg]["patch_size"], ours_nn["configurations"][cfg]["batch_size"])
            rows.append(f"| {dataset.name} | {cfg} patch, batch (sizing; differs by design on CPU) | "
                        f"{_fmt(a[0])}, {a[1]} | {_fmt(b[0])}, {b[1]} | {_fmt(c[0])}, {c[1]} | "
                        f"{'yes' if a == c else '**no**'} (nnU-Net vs nnunet_v2) |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "nnunet_comparison.md")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/autoseg_plan_comparison"))
    ap.add_argument("--venv", type=Path, default=REPO / ".benchvenv")
    args = ap.parse_args()
    missing = [d for d in args.datasets if not (d / "dataset.json").exists()]
    if missing:
        print("dataset folder(s) not found: " + ", ".join(map(str, missing))
              + " (the real datasets live in ../shared/data)", file=sys.stderr)
        return 2
    bindir = ensure_bench_venv(args.venv)
    rows = []
    for ds in args.datasets:
        print(f"planning {ds.name} with nnU-Net v2 and autoseg", flush=True)
        nn = nnunet_plans(ds, args.scratch, bindir)
        ours, _ = autoseg_plans(ds, args.scratch, "default")
        ours_nn, _ = autoseg_plans(ds, args.scratch, "nnunet_v2")
        rows += compare(ds, nn, ours, ours_nn)
    head = ["| dataset | quantity | nnU-Net v2 2.8.1 (its own planner) | autoseg `default` (this machine) "
            "| autoseg `nnunet_v2` | equal |", "| --- | --- | --- | --- | --- | --- |"]
    text = ("# autoseg's plans beside nnU-Net v2's\n\n"
            "Made by `python benchmarks/compare_plans_with_nnunet.py "
            + " ".join(str(d) for d in args.datasets) + "` on " + time.strftime("%Y-%m-%d") + ".\n"
            "nnU-Net's column is nnU-Net v2 2.8.1's own `nnUNetv2_plan_experiment` output. Target spacing, "
            "axis order and normalization must be equal (same rules). Patch and batch are equal between "
            "nnU-Net and autoseg's `nnunet_v2` planner (nnU-Net's 8 GB GPU sizing); autoseg's `default` "
            "planner sizes them for the machine it runs on (here: a 2-core CPU with a 20-minute budget "
            "per training), so they differ by design.\n\n" + "\n".join(head + rows) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if all("**no**" not in r or "sizing" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
