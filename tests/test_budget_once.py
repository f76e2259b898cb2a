"""The time budget is recorded once, in plans.json, and `autoseg train` uses that very budget."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.planning.base import DEFAULT_CPU_TIME_BUDGET_S
from autoseg.store import load_plans
from tests.synthetic import make_synthetic_dataset


class _Stop(Exception):
    """Raised instead of training: the test only needs the training's settings and first line."""


@pytest.fixture
def stop_before_fitting(monkeypatch):
    seen = {}

    def fake(trainer):
        seen["settings"] = trainer.settings
        raise _Stop

    monkeypatch.setattr("autoseg.training.isolation.run_training_guarded", fake)
    return seen


def _plan(tmp_path: Path, *extra: str) -> Path:
    ds = make_synthetic_dataset(tmp_path / "Dataset012_Budget", n_cases=5, shape=(12, 16, 16))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100", *extra]) == 0
    return run


def _first_training_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "autoseg.usecases.train"]
    assert lines, "train logged nothing"
    return lines[0]


def test_cpu_plan_without_budget_records_the_default_and_train_uses_it(tmp_path, caplog, stop_before_fitting):
    run = _plan(tmp_path)
    plans = load_plans(run)
    assert plans.time_budget_s == DEFAULT_CPU_TIME_BUDGET_S and not plans.time_budget_given
    assert "training_time_budget_s" not in (run / "plans.json").read_text()  # not in the hardware record
    assert "the CPU plan's default" in (run / "plans_explained.txt").read_text()
    with caplog.at_level(logging.INFO, logger="autoseg"), pytest.raises(_Stop):
        main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", "--no-progress"])
    settings = stop_before_fitting["settings"]
    assert settings.time_budget_s == DEFAULT_CPU_TIME_BUDGET_S  # never the 1000-epoch schedule of days
    first = _first_training_line(caplog)
    assert first.startswith("training 3d_fullres fold 0: time budget 20m for this training")
    assert "default recorded in plans.json" in first


def test_a_given_budget_is_recorded_and_flags_still_win(tmp_path, caplog, stop_before_fitting):
    run = _plan(tmp_path, "--time-budget", "7m")
    plans = load_plans(run)
    assert plans.time_budget_s == 420 and plans.time_budget_given
    with caplog.at_level(logging.INFO, logger="autoseg"), pytest.raises(_Stop):
        main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "1", "--no-progress"])
    assert stop_before_fitting["settings"].time_budget_s == 420
    assert "7m for this training (recorded in plans.json" in _first_training_line(caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autoseg"), pytest.raises(_Stop):
        main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "2", "--epochs", "3", "--no-progress"])
    assert stop_before_fitting["settings"].time_budget_s is None and stop_before_fitting["settings"].epochs == 3
    assert "3 epochs" in _first_training_line(caplog) and "--epochs" in _first_training_line(caplog)


def test_plans_of_an_older_autoseg_keep_their_budget(tmp_path):
    import json

    from autoseg.schemas import Plans, from_dict

    run = _plan(tmp_path, "--time-budget", "5m")
    data = json.loads((run / "plans.json").read_text())
    data["hardware"]["training_time_budget_s"] = data.pop("time_budget_s")
    data.pop("time_budget_given")
    plans = from_dict(Plans, data, where="plans.json")
    assert plans.time_budget_s == 300 and plans.time_budget_given
