"""Shared test set-up: make ``autoseg`` and ``tests.synthetic`` importable without installing, and
offer a ``synthetic_dataset`` factory fixture (see tests/synthetic.py for its arguments) and the
``lowres_run`` fixture (a work folder with a forced 3d_lowres + 3d_cascade_fullres plan)."""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # plain `pytest` does not put the repository root on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from tests.synthetic import make_synthetic_dataset  # noqa: E402

# Machine measurements a plan remembers (the CPU speed) go to a folder of this test session, never to the
# user's ~/.cache/autoseg (subprocesses inherit it).
os.environ["AUTOSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoseg-test-cache-")


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``synthetic_dataset(name="Dataset900_Synth", **kwargs) -> Path``: a fresh dataset under tmp_path."""

    def make(name: str = "Dataset900_Synth", **kwargs) -> Path:
        return make_synthetic_dataset(tmp_path / name, **kwargs)

    return make


CASCADE_DATASET = "Dataset011_Cascade"  # lowres_run's dataset: <run>/../Dataset011_Cascade (2 imagesTs cases)
FAST_TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision",
              "fp32", "--num-workers", "0", "--no-progress"]


def make_cascade_run(root: Path) -> Path:
    """5 cases planned into ``root/run`` with hand-made 3d_lowres (spacing x2) + 3d_cascade_fullres
    entries, the lowres data preprocessed; nothing trained."""
    from dataclasses import replace

    from autoseg.cli import main
    from autoseg.store import load_manifest, load_plans
    from autoseg.planning.base import data_identifier
    from autoseg.preprocessing.dataset import preprocess_dataset
    from autoseg.schemas import save_json
    from autoseg.workdir import Workdir

    ds = make_synthetic_dataset(root / CASCADE_DATASET, n_cases=5, shape=(12, 16, 16), with_test_cases=2)
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    wd = Workdir(run)
    plans = load_plans(run)
    full = plans.configuration("3d_fullres")
    spacing = [2.0 * s for s in full.spacing_zyx_mm]
    lowres = replace(full, name="3d_lowres", spacing_zyx_mm=spacing, next_stage="3d_cascade_fullres",
                     data_identifier=data_identifier(spacing, full.transpose_forward, full.normalization,
                                                     full.resampling),
                     median_shape_zyx=[max(1, round(s / 2)) for s in full.median_shape_zyx])
    cascade = replace(full, name="3d_cascade_fullres", previous_stage="3d_lowres",
                      network=replace(full.network, in_channels=full.network.in_channels + 2))
    save_json(replace(plans, configurations={**plans.configurations, "3d_lowres": lowres,
                                             "3d_cascade_fullres": cascade}), wd.plans_json)
    preprocess_dataset(load_manifest(run), lowres, wd, num_workers=1, progress=False)
    return run


@pytest.fixture(scope="session")
def lowres_run(tmp_path_factory) -> Path:
    """:func:`make_cascade_run` with all 5 lowres folds trained (a few iterations) with their final
    validation. Shared by the cascade training and prediction tests: they may add cascade folds, nothing else."""
    from autoseg.cli import main

    run = make_cascade_run(tmp_path_factory.mktemp("cascade"))
    for k in range(5):
        assert main(["train", "--workdir", str(run), "-c", "3d_lowres", "--fold", str(k), *FAST_TRAIN]) == 0
    return run


def tiny_training(tmp_path: Path, name: str, overrides: dict):
    """A 5-case 3D dataset planned for the CPU and the resolved settings of 3d_fullres fold 0 with
    ``overrides``: ``(workdir, config, settings, train_ids, val_ids)``, the fold folder made."""
    from autoseg.cli import main
    from autoseg.store import RunStore
    from autoseg.training.splits import fold_cases
    from autoseg.usecases.train import resolve_training_settings

    ds = make_synthetic_dataset(tmp_path / name, n_cases=5, shape=(8, 16, 16))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1", "--device", "cpu",
                 "--cpu-gflops", "100"]) == 0
    store = RunStore(run)
    plans = store.plans()
    config = plans.configuration("3d_fullres")
    train_ids, val_ids = fold_cases(store.splits(), 0)
    settings = resolve_training_settings(plans, config, "0", {"num_workers": 0, "device": "cpu", **overrides})
    store.wd.fold_dir(config.name, 0).mkdir(parents=True, exist_ok=True)
    return store.wd, config, settings, train_ids, val_ids
