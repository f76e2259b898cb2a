"""Are two autoseg source trees' outputs the same? plan → train 3d_fullres folds 0-4 (2 epochs x 3 iterations,
fp32, one thread) → find-best → predict, on one tiny synthetic dataset, with each tree, then a diff.

    git worktree add /tmp/autoseg_old <commit>
    python benchmarks/equivalence_check.py /tmp/autoseg_old . bench_out/equivalence

Used for the redesign (issue 10): docs/benchmarks/redesign_equivalence.md. Fold training is
deterministic at one thread, so predictions and validation scores must be identical; timings, the
free RAM the plan records and renamed fields may differ, and are listed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RUN = r'''
import sys
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
from autoseg.cli import main
from autoseg.data.synthetic import make_synthetic_dataset
ds = make_synthetic_dataset(out / "Dataset013_Cmp", n_cases=10, shape=(16, 24, 24), with_test_cases=3)
run = out / "run"
common = ["--no-progress"]
assert main(["plan", str(ds), "--workdir", str(run), "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100", *common]) == 0
for k in range(5):
    assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", str(k), "--epochs", "2",
                 "--iterations-per-epoch", "3", "--validation-iterations", "1", "--precision", "fp32",
                 "--num-workers", "0", *common]) == 0
assert main(["find-best", "--workdir", str(run), "-c", "3d_fullres", *common]) == 0
assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(out / "pred"), "--num-workers", "1", *common]) == 0
'''


def run_tree(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", RUN, str(out)], env=env, check=True)


def compare(old: Path, new: Path) -> list[str]:
    import numpy as np
    import SimpleITK as sitk

    lines = []
    for f in sorted((old / "pred").glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(new / "pred" / f.name)))
        lines.append(f"prediction {f.name}: " + ("identical" if np.array_equal(a, b) else
                                                  f"DIFFERS in {np.mean(a != b):.2%} of voxels"))
    for k in range(5):
        p = f"run/results/3d_fullres/fold_{k}/validation/summary.json"
        a, b = json.loads((old / p).read_text()), json.loads((new / p).read_text())
        same = a["per_case"] == b["per_case"]
        lines.append(f"fold {k} validation: foreground Dice {a['foreground_mean']['dice']:.6f} vs "
                     f"{b['foreground_mean']['dice']:.6f}, per-case metrics {'identical' if same else 'DIFFER'}")
    for name in ("plans.json", "results/selection.json", "results/3d_fullres/fold_0/train_settings.json"):
        a, b = json.loads((old / "run" / name).read_text()), json.loads((new / "run" / name).read_text())
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        lines.append(f"{name}: top-level keys that differ: {diff or 'none'}")
    return lines


def main() -> int:
    old_src, new_src, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    run_tree(old_src, out / "old")
    run_tree(new_src, out / "new")
    report = compare(out / "old", out / "new")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
