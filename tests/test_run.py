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


def test_fewer_folds_in_the_splits_cap_the_choice(plans_3d):
    three = choose_trainings(plans_3d, 6 * GOOD_TRAINING_S, folds_available=3)
    assert three.folds == [0, 1, 2] and "on all 3 folds" in three.reasons[0]
    # 3 folds of 3d_fullres leave room for 2d too, which 5 folds did not (test above)
    assert three.configurations == ["3d_fullres", "2d"] and three.per_training_s == pytest.approx(GOOD_TRAINING_S)


def test_a_dataset_of_three_cases_is_split_into_three_folds_and_one_case_is_refused(tmp_path, caplog):
    from autoseg.usecases.plan import plan_dataset

    ds = make_synthetic_dataset(tmp_path / "Dataset017_Three", n_cases=3, shape=(10, 16, 16))
    with caplog.at_level("WARNING"):
        plan_dataset(ds, tmp_path / "run", device="cpu", cpu_gflops=100, num_workers=1, progress=False, preprocess=())
    splits = RunStore(tmp_path / "run").splits()
    assert len(splits.folds) == 3
    assert sorted(c for f in splits.folds for c in f.val) == [f"synth_{i:03d}" for i in range(3)]
    assert "3-fold cross-validation" in caplog.text
    one = make_synthetic_dataset(tmp_path / "Dataset018_One", n_cases=1, shape=(10, 16, 16))
    with pytest.raises(AutosegError, match="1 training case.*at least 2.*add training cases"):
        plan_dataset(one, tmp_path / "run1", device="cpu", cpu_gflops=100, num_workers=1, progress=False, preprocess=())
    assert not RunStore(tmp_path / "run1").wd.plans_json.exists()  # nothing that looks planned is left


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
    # only what the run trains was preprocessed
    plans = load_plans(tmp_path / "run")
    wd = RunStore(tmp_path / "run").wd
    assert {p.name for p in wd.preprocessed_root.iterdir() if p.is_dir()} == \
        {plans.configurations[c].data_identifier for c in result.choice.configurations}
    for fold in result.choice.folds:  # a budgeted training chose (and recorded) how to validate, and why
        mode = RunStore(tmp_path / "run").fold_summary("3d_fullres", fold).validation_mode
        assert set(mode) >= {"mirror", "step_size", "reason"} and "final validation of" in mode["reason"]
    lines.clear()
    again = run(ds, tmp_path / "run", **kw)  # everything current: nothing is trained or predicted again
    assert again.trainings == [] and again.prediction is None
    assert "already finished" in "\n".join(lines) and "reusing them" in "\n".join(lines)
    assert RunStore(tmp_path / "run").selection().winner == "3d_fullres"


def test_planning_without_preprocessing_then_only_what_is_chosen(tmp_path):
    from autoseg.usecases.plan import plan_dataset, preprocess_planned

    ds = make_synthetic_dataset(tmp_path / "Dataset016_Later", n_cases=5, shape=(10, 16, 16))
    wd = RunStore(tmp_path / "run").wd
    planned = plan_dataset(ds, tmp_path / "run", device="cpu", cpu_gflops=100, num_workers=1, progress=False,
                           preprocess=())
    assert wd.plans_json.is_file() and not wd.preprocessed_root.exists()
    with pytest.raises(AutosegError, match="no configuration 3d_lowres.*autoseg plan"):
        preprocess_planned(tmp_path / "run", ["3d_lowres"], num_workers=1, progress=False)
    preprocess_planned(tmp_path / "run", ["3d_fullres"], num_workers=1, progress=False)
    folder = wd.preprocessed_dir(planned.plans.configurations["3d_fullres"].data_identifier)
    assert sorted(p.name for p in folder.glob("*_seg.npy")) == [f"synth_{i:03d}_seg.npy" for i in range(5)]
    assert [p for p in wd.preprocessed_root.iterdir() if p.is_dir()] == [folder]


def test_trainings_that_fit_leaves_out_the_last_ones_first():
    from autoseg.usecases.budget_split import trainings_that_fit

    # 1000 s, 300 spent, 100 reserved, 3 s start-up each: three of 199 s, two of 297, one of 597
    assert trainings_that_fit(1000, 300, [50, 50, 50], reserved_s=100) == (3, pytest.approx(197.0))
    assert trainings_that_fit(1000, 300, [50, 50, 250], reserved_s=100) == (2, pytest.approx(297.0))
    assert trainings_that_fit(1000, 300, [600, 50], reserved_s=100) == (0, 0.0)  # the next one first
    assert trainings_that_fit(1000, 990, [20], reserved_s=0) == (0, 0.0)
    # 2d's three remaining folds are all or none: two trainings would fit (297 s each), but the second would
    # start 2d without its other folds, so only the primary's fold runs, with the whole rest
    groups = [None, "2d", "2d", "2d"]
    assert trainings_that_fit(1000, 300, [250] * 4, reserved_s=100, groups=groups) == (1, pytest.approx(597.0))
    assert trainings_that_fit(1000, 300, [140] * 4, reserved_s=100, groups=groups) == (4, pytest.approx(147.0))
    assert trainings_that_fit(1000, 300, [300, 300], reserved_s=100, groups=["2d", "2d"]) == (0, 0.0)


def _fake_run(total_s: float, clock_after: list[float], n_folds: int = 3, configurations=("3d_fullres",)):
    """_train with a fake store, clock and train_fold: training i moves the clock to clock_after[i]; every
    finished fold measured its final validation at 10 s per case (one validation case per fold)."""
    from types import SimpleNamespace

    import autoseg.usecases.run as run_module
    from autoseg.usecases.run import TrainingChoice, _train

    finished: set = set()
    clock = SimpleNamespace(now=0.0)
    clock.elapsed = lambda: clock.now
    store = SimpleNamespace(
        splits=lambda: SimpleNamespace(folds=[SimpleNamespace(val=[f"case{f}"]) for f in range(5)]),
        fold_finished=lambda c, f: (c, f) in finished,
        fold_summary=lambda c, f: SimpleNamespace(seconds_per_case={"x": 10.0}) if (c, f) in finished else None,
        wd=SimpleNamespace(results_root="results"), root="run")
    calls = []

    def train_fold(root, c, f, overrides, progress):
        calls.append((c, int(f), round(overrides["time_budget_s"])))
        clock.now = clock_after[len(calls) - 1]
        finished.add((c, int(f)))
        return SimpleNamespace(precision=None, iterations=10, summary=SimpleNamespace(foreground_dice=0.5))

    choice = TrainingChoice(configurations=list(configurations), folds=list(range(n_folds)), per_training_s=180,
                            reasons=["3d_fullres on 3 fold(s)"])
    lines: list[str] = []
    tail = run_module.estimate_tail_seconds
    run_module.estimate_tail_seconds = lambda *a, **k: 50.0
    try:
        results, trained = _train(store, None, choice, total_s, clock, 0, 20.0, {}, False, lines.append, train_fold)
    finally:
        run_module.estimate_tail_seconds = tail
    return calls, results, trained, choice, "\n".join(lines)


def test_a_run_behind_its_schedule_leaves_out_its_last_trainings_instead_of_starving_them():
    # on schedule: three equal shares, then the re-split gives the time fold 0 did not use to the others
    calls, _, trained, choice, _ = _fake_run(600, [150, 330, 520])
    assert [c[:2] for c in calls] == [("3d_fullres", 0), ("3d_fullres", 1), ("3d_fullres", 2)]
    assert calls[0][2] == 180 and calls[1][2] == 197 and trained is choice
    # fold 0 overran: the time left fits one training that can still learn (20 s + 10 s of validation): fold 1
    calls, results, trained, choice, text = _fake_run(600, [510, 560])
    assert calls == [("3d_fullres", 0, 180), ("3d_fullres", 1, 37)] and len(results) == 2
    assert "fits 1 of the 2 trainings" in text and "3d_fullres fold 2 needs 30 s" in text
    assert trained.folds == [0, 1] and trained.configurations == ["3d_fullres"]
    assert "left out 3d_fullres fold 2" in trained.reasons[-1] and choice.folds == [0, 1, 2]
    # nothing fits after fold 0: find-best gets fold 0 alone, not two folds trained for a few steps
    calls, _, trained, _, text = _fake_run(600, [540])
    assert len(calls) == 1 and trained.folds == [0]
    assert "2 training(s) left out" in text and "run the same command again" in trained.reasons[-1]
    # two configurations: after 3d_fullres fold 0 the time fits two of the three trainings left, but the second
    # would be 2d fold 0 without its fold 1: only 3d_fullres fold 1 runs, with all the time, and 2d is left out
    calls, _, trained, _, text = _fake_run(600, [480, 560], n_folds=2, configurations=("3d_fullres", "2d"))
    assert calls == [("3d_fullres", 0, 134), ("3d_fullres", 1, 67)]
    assert trained.configurations == ["3d_fullres"] and trained.folds == [0, 1]
    assert "left out 2d fold 0, 2d fold 1" in trained.reasons[-1]


def test_the_run_predicts_in_the_mode_its_cross_validation_measured():
    from types import SimpleNamespace

    from autoseg.usecases.run import _validated_mode

    def store(*modes):
        selection = SimpleNamespace(winner_configurations=["3d_fullres", "2d"], folds=[0, 1])
        summaries = {(c, f): SimpleNamespace(validation_mode=modes[(i * 2 + f) % len(modes)])
                     for i, c in enumerate(selection.winner_configurations) for f in selection.folds}
        return SimpleNamespace(selection=lambda: selection, fold_summary=lambda c, f: summaries.get((c, f)),
                               root="R")

    full = {"mirror": True, "step_size": 0.5, "reason": "fits"}
    assert _validated_mode(store(full)) == (None, None, "")  # predict's defaults
    cut = {"mirror": False, "step_size": 0.75, "reason": "budget"}
    mirror, step, why = _validated_mode(store(full, cut))
    assert (mirror, step) == (False, 0.75)  # the cheapest mode any fold of the selection was validated in
    assert "no mirroring, tile step 0.75" in why and "autoseg predict --workdir R" in why
    assert _validated_mode(store({"mirror": True, "step_size": 0.75}))[:2] == (True, 0.75)
    assert _validated_mode(SimpleNamespace(selection=lambda: None)) == (None, None, "")


def test_predict_needs_both_folders(tmp_path):
    with pytest.raises(AutosegError, match="--predict IN OUT"):
        run(tmp_path, tmp_path / "run", time_budget_s=600, predict_input=tmp_path)
