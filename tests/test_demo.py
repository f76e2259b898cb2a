"""The built-in demo: its dataset, its budget arithmetic, its overlay and a tiny end-to-end run.

The full 10-minute demo (the README's `make demo`) is the slow test at the end.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.data.dataset import load_dataset
from autoseg.data.image_io import read_image, read_label
from autoseg.data.synthetic import bias_field, make_synthetic_dataset
from autoseg.usecases.demo import (DEMO_CASES, DEMO_SPACING_ZYX, DEMO_TEST_CASES, N_FOLDS, TARGET_DICE, make_demo_dataset,
                          run_demo)
from autoseg.usecases.budget_split import (MIN_TRAINING_S, TAIL_FRACTION_GUESS, TRAINING_OVERHEAD_S, estimate_tail_seconds,
                                 minimum_budget, planning_budget_per_training, split_training_budget)
from autoseg.errors import AutosegError
from autoseg.overlay import ROWS, choose_slices, overlay_size_px, write_overlay_png
from autoseg.schemas import Selection, load_json
from autoseg.workdir import Workdir

# ----------------------------------------------------------------------------------------- dataset


def test_demo_dataset_is_valid_anisotropic_with_two_classes_and_held_out_labels(tmp_path):
    folder = make_demo_dataset(tmp_path)
    manifest = load_dataset(folder)
    assert len(manifest.cases) == DEMO_CASES and len(manifest.test_cases) == DEMO_TEST_CASES
    assert manifest.foreground_labels == [1, 2]
    assert make_demo_dataset(tmp_path) == folder  # reused, not rewritten
    g = read_image(manifest.cases[0].images[0])[1]
    assert g.spacing_zyx == pytest.approx(DEMO_SPACING_ZYX)
    # every held-out case has a reference label on its image's grid, and was not trained on
    train_ids = {c.case_id for c in manifest.cases}
    for case in manifest.test_cases:
        assert case.case_id not in train_ids
        label, lg = read_label(folder / "labelsTs" / f"{case.case_id}.nii.gz")
        assert lg.size == read_image(case.images[0])[1].size and set(np.unique(label)) == {0, 1, 2}
    # two classes of clearly different sizes
    counts = np.zeros(3)
    for case in manifest.cases[:10]:
        counts += np.bincount(read_label(case.label)[0].ravel(), minlength=3)
    assert counts[1] > 2 * counts[2] > 0


def test_demo_dataset_made_with_other_settings_is_refused(tmp_path):
    make_demo_dataset(tmp_path, n_cases=4, n_test_cases=1, shape_zyx=(8, 16, 16))
    with pytest.raises(AutosegError, match="other settings"):
        make_demo_dataset(tmp_path)


def test_bias_field_is_smooth_bounded_and_seeded():
    shape, s = (20, 64, 64), 0.2
    field = bias_field(np.random.default_rng(3), shape, s)
    assert field.shape == shape
    assert field.min() >= np.exp(-s) - 1e-9 and field.max() <= np.exp(s) + 1e-9
    assert max(abs(np.log(field.min())), abs(np.log(field.max()))) == pytest.approx(s)  # the full strength
    for axis in range(3):  # smooth: neighbouring voxels differ by a few percent at most
        assert np.abs(np.diff(np.log(field), axis=axis)).max() < 0.1
    np.testing.assert_array_equal(field, bias_field(np.random.default_rng(3), shape, s))


def test_bias_field_changes_intensities_only_when_asked(tmp_path):
    kw = dict(n_cases=2, shape=(8, 24, 24), seed=5)
    plain = make_synthetic_dataset(tmp_path / "a", **kw)
    again = make_synthetic_dataset(tmp_path / "b", **kw)
    biased = make_synthetic_dataset(tmp_path / "c", bias_field_strength=0.3, **kw)
    img = {k: read_image(d / "imagesTr" / "synth_000_0000.nii.gz")[0] for k, d in
           (("plain", plain), ("again", again), ("biased", biased))}
    np.testing.assert_array_equal(img["plain"], img["again"])
    assert not np.allclose(img["plain"], img["biased"])
    lab = {k: read_label(d / "labelsTr" / "synth_000.nii.gz")[0] for k, d in (("plain", plain), ("biased", biased))}
    np.testing.assert_array_equal(lab["plain"], lab["biased"])  # same objects, other intensities
    assert not (plain / "labelsTs").exists()


# ----------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize("total,spent,n,reserved", [(600, 40, 10, 90), (900, 12.5, 7, 120), (300, 30, 10, 30)])
def test_split_training_budget_sums_within_the_budget(total, spent, n, reserved):
    shares = split_training_budget(total, spent, n, reserved_s=reserved)
    assert len(shares) == n and all(s >= MIN_TRAINING_S for s in shares)
    assert spent + reserved + sum(shares) + n * TRAINING_OVERHEAD_S == pytest.approx(total)
    assert spent + reserved + sum(shares) + n * TRAINING_OVERHEAD_S <= total + 1e-9


def test_split_training_budget_too_small_names_a_budget_that_works():
    with pytest.raises(AutosegError, match=r"--time-budget 6m or more") as e:
        split_training_budget(120, 30, 10, reserved_s=60)
    assert "20 s a training needs" in str(e.value)
    needed = float(str(e.value).split("at least ")[1].split(" s")[0])
    assert len(split_training_budget(needed + 0.5, 30, 10, reserved_s=60)) == 10  # that budget works
    # a demo already running behind its schedule gives every training the minimum instead of failing
    assert split_training_budget(120, 30, 10, reserved_s=60, strict=False) == [MIN_TRAINING_S] * 10
    assert split_training_budget(600, 0, 0, reserved_s=60) == []


def test_planning_budget_of_the_default_demo_and_of_a_too_small_one():
    share = planning_budget_per_training(600, 2 * N_FOLDS)
    assert MIN_TRAINING_S <= share <= 600 / (2 * N_FOLDS) and share == int(share)
    assert planning_budget_per_training(600, 2 * N_FOLDS) == share  # deterministic: a rerun finds plans current
    with pytest.raises(AutosegError, match=r"too small.*--time-budget \d+m or more") as e:
        planning_budget_per_training(60, 2 * N_FOLDS)
    needed = float(str(e.value).split("at least ")[1].split(" s")[0])
    assert needed == math.ceil(minimum_budget(2 * N_FOLDS))
    assert planning_budget_per_training(needed, 2 * N_FOLDS) >= MIN_TRAINING_S  # the budget it names works
    with pytest.raises(AutosegError):
        planning_budget_per_training(needed - 1, 2 * N_FOLDS)


def test_tail_estimate_uses_measured_validation_times():
    kw = dict(n_folds=5, n_cv_cases=30, n_test_cases=6)
    guessed = estimate_tail_seconds(600, ["2d", "3d_fullres"], {}, **kw)
    assert guessed >= TAIL_FRACTION_GUESS * 600
    slow = estimate_tail_seconds(600, ["2d", "3d_fullres"], {"2d": 1.0, "3d_fullres": 10.0}, **kw)
    fast = estimate_tail_seconds(600, ["2d", "3d_fullres"], {"2d": 0.1, "3d_fullres": 0.2}, **kw)
    assert fast < guessed < slow
    assert slow > 5 * 6 * 11.0  # every fold of every configuration predicts every held-out case


# ----------------------------------------------------------------------------------------- overlay


def test_overlay_png_has_three_rows_of_panels(tmp_path):
    import matplotlib.image

    ref = np.zeros((10, 30, 40), np.uint8)
    ref[3:7, 5:15, 5:15] = 1
    ref[4:6, 20:25, 25:30] = 2
    pred = ref.copy()
    pred[6] = 0
    image = np.random.default_rng(0).normal(100, 10, ref.shape).astype(np.float32)
    assert choose_slices(ref, pred, 4) == [3, 4, 5, 6]
    info = write_overlay_png(image, ref, pred, tmp_path / "o.png", label_names={1: "big", 2: "small"},
                             title="case x: Dice 0.9", spacing_zyx=(3.0, 1.0, 1.0))
    png = matplotlib.image.imread(tmp_path / "o.png")
    width, height = info["size_px"]
    assert (width, height) == overlay_size_px(4) and png.shape[:2] == (height, width)
    panel = (width - overlay_size_px(0)[0]) / 4
    assert height >= len(ROWS) * panel  # three panels high (image, reference, prediction), four wide
    assert png[..., :3].std() > 0.05  # something was drawn


# ----------------------------------------------------------------------------------------- end to end

TINY_TRAINING = {"time_budget_s": None, "epochs": 1, "iterations_per_epoch": 2, "validation_iterations_per_epoch": 1,
                 "precision": "fp32", "num_workers": 0}


@pytest.mark.e2e
def test_demo_runs_end_to_end_on_a_tiny_dataset_and_resumes(tmp_path):
    lines: list[str] = []
    root = tmp_path / "demo"
    # a budget the ten tiny trainings fit even on a slow machine: a run behind its schedule would leave the last
    # ones out (tests/test_run.py), and this test is about the whole pipeline
    kw = dict(time_budget_s=900, progress=False, report=lines.append, n_cases=5, n_test_cases=2,
              shape_zyx=(10, 20, 20), min_training_s=1, cpu_gflops=100, num_workers=1,
              training_overrides=TINY_TRAINING, good_training_s=1)
    result = run_demo(root, **kw)
    text = "\n".join(lines)
    for stage in ("dataset", "autoseg run", "evaluate", "overlay"):
        assert f"/4 {stage}" in text
    assert "3d_fullres on all 5 folds" in text and "2d added" in text  # the run's choice, explained
    assert "Time budget per training" in text and "[10/10] 2d fold 4" in text and "rank" in text
    assert set(result.stage_seconds) == {"dataset", "plan", "train", "find-best", "predict", "evaluate",
                                            "overlay"}
    assert len(result.trainings) == 2 * N_FOLDS
    selection = load_json(Selection, Workdir(root / "run").selection_json)
    assert selection.folds == list(range(N_FOLDS))
    dataset = root / "data" / "Dataset900_AutosegDemo"
    for img in sorted((dataset / "imagesTs").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        ref, pred = sitk.ReadImage(str(img)), sitk.ReadImage(str(root / "predictions" / f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize() and pred.GetSpacing() == pytest.approx(ref.GetSpacing())
        assert pred.GetOrigin() == pytest.approx(ref.GetOrigin())
    evaluation = json.loads((root / "predictions" / "summary.json").read_text())
    assert evaluation["num_cases"] == 2 and evaluation["foreground_mean"]["dice"] == result.mean_foreground_dice
    import matplotlib.image

    png = matplotlib.image.imread(root / "overlay.png")
    assert png.shape[0] >= 3 * (png.shape[1] - overlay_size_px(0)[0]) / 4 and png.shape[2] in (3, 4)
    summary = json.loads((root / "demo_summary.json").read_text())
    assert summary["dice_below_target"] == (result.mean_foreground_dice < TARGET_DICE)

    lines.clear()  # rerun: finished folds and current predictions are reused
    again = run_demo(root, **kw)
    assert again.trainings == [] and "10 of 10 trainings already finished" in "\n".join(lines)
    assert "reusing them" in "\n".join(lines) and again.mean_foreground_dice == result.mean_foreground_dice


def test_demo_cli_refuses_a_budget_too_small_before_any_work(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--time-budget", "60s", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "too small" in err and "--time-budget 4m or more" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_full_demo_reaches_the_target_dice(tmp_path, capsys):
    """The README's demo (10 minutes on 2 CPU cores): mean foreground Dice >= 0.85 on the held-out cases."""
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mean foreground Dice on the held-out cases" in out and "target_spacing" in out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["mean_foreground_dice"] >= TARGET_DICE
    assert summary["total_seconds"] <= 15 * 60
