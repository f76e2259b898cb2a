"""The built-in demo: a synthetic dataset made on the spot, then plan → train → validate.

The dataset is generated inside the work folder (nothing is downloaded): 3D, anisotropic spacing
(3 × 1 × 1 mm), one MRI-like channel, two foreground classes of different sizes, noise.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_DATASET = "Dataset900_AutosegDemo"
DEMO_CASES = 30
DEMO_SHAPE_ZYX = (20, 64, 64)
DEMO_SPACING_ZYX = (3.0, 1.0, 1.0)


def make_demo_dataset(root: str | Path) -> Path:
    """Write (or reuse) the demo dataset under ``root``; returns its folder."""
    from .data.synthetic import make_synthetic_dataset

    folder = Path(root) / DEMO_DATASET
    if (folder / "dataset.json").exists():
        return folder
    return make_synthetic_dataset(folder, ndim=3, n_cases=DEMO_CASES, shape=DEMO_SHAPE_ZYX,
                                  spacing_zyx=DEMO_SPACING_ZYX, n_channels=1, n_labels=2, seed=2026,
                                  with_test_cases=4)


def run_demo(workdir: str | Path, *, time_budget_s: float = 180.0, progress: bool = True,
             configuration: str = "3d_fullres", fold: int = 0) -> dict[str, Any]:
    """plan (explained) → train one fold within ``time_budget_s`` → validation summary.

    Returns {"plans_explained": [lines], "summary": validation summary}. Re-running reuses everything
    that is already done (plan outputs, finished training).
    """
    from .pipeline import plan_dataset, train_fold
    from .planning.explain import explain_plans

    workdir = Path(workdir)
    dataset = make_demo_dataset(workdir / "data")
    plans = plan_dataset(dataset, workdir / "run", time_budget_s=time_budget_s, progress=progress)
    if configuration not in plans.configurations:
        configuration = next(iter(plans.configurations))
    _, summary = train_fold(workdir / "run", configuration, str(fold),
                            overrides={"time_budget_s": time_budget_s}, progress=progress)
    return {"plans_explained": explain_plans(plans), "summary": summary, "configuration": configuration,
            "workdir": str(workdir / "run"), "dataset": str(dataset)}
