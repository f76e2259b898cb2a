"""One work folder shared by many processes (issue 15, item 3): folds trained at the same time, then
find-best; `autoseg plan` excluded while another plan or a training runs, and the reverse."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.locks import exclusive, shared
from autoseg.store import RunStore
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
TRAIN = ["-c", "3d_fullres", "--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]


def _autoseg(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "autoseg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shared")
    ds = make_synthetic_dataset(root / "Dataset060_Shared", n_cases=10, shape=(10, 16, 16))
    assert main(["plan", str(ds), "--workdir", str(root / "run"), *PLAN]) == 0
    return root / "run", ds


def test_five_folds_trained_at_once_then_find_best(planned):
    run, _ = planned
    procs = [_autoseg("train", "--workdir", str(run), "--fold", str(k), *TRAIN) for k in range(5)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [err[-2000:] for _, err in outputs]
    store = RunStore(run)
    for k in range(5):
        summary = store.fold_summary("3d_fullres", k)
        assert summary is not None and summary.num_cases == 2  # every fold validated its own cases
        assert store.fold_freshness(store.plans(), "3d_fullres", k).current
    assert main(["find-best", "--workdir", str(run), "-c", "3d_fullres", "--no-progress"]) == 0
    assert store.selection().folds == [0, 1, 2, 3, 4]


def test_plan_is_refused_while_a_training_runs_and_the_reverse(planned, capsys):
    run, ds = planned
    wd = Workdir(run)
    with shared(wd.plan_lock, "a training (held by this test)"):
        assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 1
    err = capsys.readouterr().err
    assert f"work folder {run} is in use by other processes (lock {wd.plan_lock})" in err
    assert "wait for them to end, or plan into another --workdir" in err
    with exclusive(wd.plan_lock, "a plan (held by this test)"):
        assert main(["train", "--workdir", str(run), "--fold", "0", *TRAIN]) == 1
        err = capsys.readouterr().err
        assert f"is in use by another process (pid {os.getpid()}; lock {wd.plan_lock})" in err
        assert "`autoseg plan` is running on it" in err
        assert main(["find-best", "--workdir", str(run), "--no-progress"]) == 1
        assert "wait for it to end, then run find-best" in capsys.readouterr().err
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0  # free again


def test_two_plans_started_together_leave_one_valid_work_folder(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset061_Race", n_cases=6, shape=(10, 16, 16))
    run = tmp_path / "run"
    procs = [_autoseg("plan", str(ds), "--workdir", str(run), *PLAN) for _ in range(2)]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=600)]]
    assert 0 in [rc for rc, _ in results], results
    for rc, err in results:  # the other one either waited its turn (and found everything current) or refused
        # the refusal names the holder's pid when it has been written yet ("another process (pid N") and
        # says "other processes" in the instant between the holder's lock and its pid write
        refused = "is in use by" in err and str(Workdir(run).plan_lock) in err and "wait for" in err
        assert rc == 0 or (refused and "Traceback" not in err), err
    plans = RunStore(run).plans()
    config = plans.configuration("3d_fullres")
    pre = Workdir(run).preprocessed_dir(config.data_identifier)
    assert len(list(pre.glob("*.json"))) == 6 and len(list(pre.glob("*_seg.npy"))) == 6
