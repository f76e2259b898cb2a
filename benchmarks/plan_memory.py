#!/usr/bin/env python3
"""Peak memory of `autoseg plan` against the number of cases: it must not grow with the dataset.

    .venv/bin/python benchmarks/plan_memory.py --cases 50 400 --out bench_out/plan_memory

For each count, writes a synthetic 3D dataset of that many cases (each 32 x 96 x 96 voxels, two
labels; autoseg.data.synthetic), runs ``autoseg plan --num-workers 1`` on it (dataset check,
fingerprint, planning, preprocessing of every configuration) and samples the peak RSS and PSS of its
process tree (benchmarks/bench_common.run_monitored). Writes OUT/plan_memory.json and
OUT/plan_memory.md. One worker, so that the figure is per process and not a multiple of the workers;
run it alone when the wall times matter (memory does not depend on what else runs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info, run_monitored, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHAPE = (32, 96, 96)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", type=int, default=[50, 400])
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "plan_memory")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from autoseg.data.synthetic import make_synthetic_dataset

    out = args.out.resolve()
    rows = []
    for n in args.cases:
        ds = out / f"Dataset07{len(rows)}_Mem{n}"
        if not (ds / "dataset.json").exists():
            t0 = time.monotonic()
            make_synthetic_dataset(ds, n_cases=n, shape=SHAPE, spacing_zyx=(2.0, 1.0, 1.0), seed=n)
            print(f"wrote {n} cases in {time.monotonic() - t0:.0f} s", flush=True)
        run = out / f"run_{n}"
        stats = run_monitored([sys.executable, "-m", "autoseg", "plan", str(ds), "--workdir", str(run),
                               "--num-workers", "1", "--no-progress", "--cpu-gflops", "100", "--overwrite"],
                              out / f"plan_{n}.log", label=f"autoseg plan ({n} cases)", cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if stats.returncode != 0:
            raise SystemExit(f"autoseg plan failed on {n} cases; see {out / f'plan_{n}.log'}")
        rows.append({"cases": n, "case_shape_zyx": list(SHAPE), "seconds": round(stats.seconds, 1),
                     "peak_rss_mb": round(stats.peak_rss_mb), "peak_pss_mb": None if stats.peak_pss_mb is None
                     else round(stats.peak_pss_mb)})
        print(rows[-1], flush=True)
    write_json(out / "plan_memory.json", {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                                          "rows": rows})
    lines = ["| cases | wall s | peak RSS (MB) | peak PSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {r['cases']} | {r['seconds']} | {r['peak_rss_mb']} | {r['peak_pss_mb']} |" for r in rows]
    (out / "plan_memory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
