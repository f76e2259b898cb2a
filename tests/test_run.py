"""`autoseg run`: what it chooses to train for a budget, and the end-to-end run with resume."""
from __future__ import annotations

from dataclasses import replace

import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.schemas import Plans
from autoseg.store import RunStore, load_plans
from autoseg.usecases.run import GOOD_TRAINING_S, choose_trainings, run
from tests.synthetic import make_synthetic_dataset

TINY = {"time_budget_s": None, "epochs": 1, "iterations_per_epoch": 2, "validation_iterations_per_epoch": 1,
        "precision": "fp32", "num_workers": 0}


@pytest.fixture(scope="module")
def plans_3d(tmp_path_factory) -> Plans:
    root = tmp_path_factory.mktemp("runplan")
    ds = make_synthetic_dataset(root / "Dataset014_Run", n_cases=5, shape=(12, 16, 16))
    assert main(["plan", str(ds), "--workdir", str(root / "run"), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    plans = load_plans(root / "run")
    assert {"2d", "3d_fullres"} <= set(plans.configurations)
    return plans


def test_a_small_budget_trains_the_primary_configuration_on_fewer_folds(plans_3d):
    choice = choose_trainings(plans_3d, 2.5 * GOOD_TRAINING_S)
    assert choice.configurations == ["3d_fullres"] and choice.folds == [0, 1]
    assert choice.per_training_s == pytest.approx(1.25 * GOOD_TRAINING_S)
    assert "one longer training beats several short ones" in choice.reasons[0]
    assert any("2d not trained" in r for r in choice.reasons)


def test_a_larger_budget_adds_folds_then_configurations(plans_3d):
    five = choose_trainings(plans_3d, 6 * GOOD_TRAINING_S)
    assert five.configurations == ["3d_fullres"] and five.folds == [0, 1, 2, 3, 4]
    assert any("2d not trained" in r and "would get" in r for r in five.reasons)
    both = choose_trainings(plans_3d, 10 * GOOD_TRAINING_S)
    assert both.configurations == ["3d_fullres", "2d"] and len(both.trainings) == 10
    assert both.per_training_s == pytest.approx(GOOD_TRAINING_S)


def test_2d_data_and_the_cascade(plans_3d):
    only_2d = replace(plans_3d, configurations={"2d": plans_3d.configurations["2d"]})
    assert choose_trainings(only_2d, 100 * GOOD_TRAINING_S).configurations == ["2d"]
    full = plans_3d.configurations["3d_fullres"]
    cascade = replace(plans_3d, configurations={**plans_3d.configurations,
                                                "3d_lowres": replace(full, name="3d_lowres"),
                                                "3d_cascade_fullres": replace(full, name="3d_cascade_fullres")})
    assert choose_trainings(cascade, 15 * GOOD_TRAINING_S).configurations == ["3d_fullres", "2d"]
    assert choose_trainings(cascade, 20 * GOOD_TRAINING_S).configurations == \
        ["3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres"]  # previous stage first


def test_a_budget_too_small_for_one_training_is_refused(plans_3d):
    with pytest.raises(AutosegError, match="larger --time-budget"):
        choose_trainings(plans_3d, 5.0, min_training_s=20)


@pytest.mark.e2e
def test_run_end_to_end_then_resume(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset015_RunE2E", n_cases=5, shape=(10, 16, 16), with_test_cases=2)
    lines: list[str] = []
    kw = dict(time_budget_s=200, predict_input=ds / "imagesTs", predict_output=tmp_path / "pred", progress=False,
              report=lines.append, cpu_gflops=100, num_workers=1, min_training_s=1, good_training_s=50,
              training_overrides=TINY)
    result = run(ds, tmp_path / "run", **kw)
    text = "\n".join(lines)
    assert result.choice.configurations == ["3d_fullres"] and len(result.choice.folds) < 5  # 200 s is small
    assert "one longer training beats several short ones" in text
    assert result.selection.folds == result.choice.folds and result.selection.winner == "3d_fullres"
    assert sorted(result.prediction.predicted_cases) == ["synth_005", "synth_006"]
    assert (tmp_path / "run" / "run_summary.json").is_file()
    assert set(result.stage_seconds) == {"plan", "train", "find-best", "predict"}
    for fold in result.choice.folds:  # a budgeted training chose (and recorded) how to validate, and why
        mode = RunStore(tmp_path / "run").fold_summary("3d_fullres", fold).validation_mode
        assert set(mode) >= {"mirror", "step_size", "reason"} and "final validation of" in mode["reason"]
    lines.clear()
    again = run(ds, tmp_path / "run", **kw)  # everything current: nothing is trained or predicted again
    assert again.trainings == [] and again.prediction is None
    assert "already finished" in "\n".join(lines) and "reusing them" in "\n".join(lines)
    assert RunStore(tmp_path / "run").selection().winner == "3d_fullres"


def test_predict_needs_both_folders(tmp_path):
    with pytest.raises(AutosegError, match="--predict IN OUT"):
        run(tmp_path, tmp_path / "run", time_budget_s=600, predict_input=tmp_path)
