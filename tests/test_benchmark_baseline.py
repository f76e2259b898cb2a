"""benchmarks/baseline.py: the steps bookkeeping, the choice of test cases, the report (no tool is run)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import baseline as bl  # noqa: E402
import published  # noqa: E402


def test_steps_run_once_and_redo_by_pattern(tmp_path):
    calls = []
    steps = bl.Steps(tmp_path, redo=[])
    assert steps.run("autoseg_train_2d_fold0", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    assert steps.run("autoseg_train_2d_fold0", lambda: calls.append(2) or {"x": 2}) == {"x": 1}
    assert calls == [1]
    again = bl.Steps(tmp_path, redo=["train_2d"])
    assert again.run("autoseg_train_2d_fold0", lambda: {"x": 3}) == {"x": 3}
    assert bl.Steps(tmp_path, redo=["all"]).run("autoseg_train_2d_fold0", lambda: {"x": 4}) == {"x": 4}


def test_a_failed_step_is_not_saved(tmp_path):
    steps = bl.Steps(tmp_path, redo=[])

    def boom():
        raise bl.BenchError("failed")

    with pytest.raises(bl.BenchError):
        steps.run("nnunet_predict_fast", boom)
    assert not (tmp_path / "steps" / "nnunet_predict_fast.json").exists()


def _dataset(tmp_path, with_test: bool):
    ds = tmp_path / "Dataset001_X"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "dataset.json").write_text('{"file_ending": ".nii.gz"}')
    for case in ("a_1", "b_2", "c_3"):
        for ch in (0, 1):
            (ds / "imagesTr" / f"{case}_{ch:04d}.nii.gz").write_bytes(b"x")
    if with_test:
        (ds / "imagesTs").mkdir()
        for case in ("t_9", "t_8"):
            (ds / "imagesTs" / f"{case}_0000.nii.gz").write_bytes(b"x")
    return ds


def test_predict_cases_prefers_imagesTs_else_validation_cases(tmp_path):
    splits = [{"train": ["a_1"], "val": ["c_3", "b_2"]}]
    one = _dataset(tmp_path / "one", False)
    src, ids = bl.predict_cases(one, splits, 0, 10)
    assert "validation" in src and ids == ["b_2", "c_3"]
    assert bl.predict_cases(one, splits, 0, 1)[1] == ["b_2"]
    src, ids = bl.predict_cases(_dataset(tmp_path / "two", True), splits, 0, 10)
    assert src == "imagesTs" and ids == ["t_8", "t_9"]


def test_link_inputs_links_every_channel_and_nothing_else(tmp_path):
    ds = _dataset(tmp_path, False)
    dest = tmp_path / "in"
    assert bl.link_inputs(ds, ["b_2"], dest) == 2
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["b_2_0000.nii.gz", "b_2_0001.nii.gz"]
    assert all((dest / n).is_symlink() for n in names)


def _train(tool_cfg, fold, dice, spi):
    return {"configuration": tool_cfg, "fold": fold, "dice_per_class": {"1": dice, "2": dice - 0.1},
            "dice_mean": dice - 0.05, "label_names": {"1": "anterior", "2": "posterior"},
            "seconds_per_iteration": spi, "iterations_done": 100, "train_seconds": 120.0,
            "validation_seconds": 10.0, "train_peak_rss_mb": 1000.0,
            "plan": {"patch_size": [40, 56, 40], "batch_size": 7, "features_per_stage": [16, 32]}}


def test_report_tables_ratios_means_and_markdown():
    r = {"configuration": "3d_fullres",
         "autoseg_plan": {"seconds": 10.0, "peak_rss_mb": 500.0},
         "nnunet_plan": {"plan_seconds": 20.0, "plan_peak_rss_mb": 2000.0},
         "autoseg_train": [_train("3d_fullres", 0, 0.8, 1.0), _train("3d_fullres", 1, 0.6, 1.0),
                           _train("2d", 0, 0.5, 0.3)],
         "nnunet_train": [_train("3d_fullres", 0, 0.4, 8.0), _train("3d_fullres", 1, 0.4, 8.0)],
         "autoseg_select": {"winner": "2d+3d_fullres", "winner_configurations": ["2d", "3d_fullres"],
                            "dice_before_postprocessing": 0.7, "dice_after_postprocessing": 0.71,
                            "postprocessing": ["largest_component [1]"], "seconds": 3.0},
         "nnunet_select": {"winner": "3d_fullres", "dice_before_postprocessing": 0.35,
                           "dice_after_postprocessing": 0.35, "seconds": 30.0},
         "autoseg_predict": [{"mode": "default", "seconds_per_case": 1.0, "peak_rss_mb": 400.0}],
         "nnunet_predict": [{"mode": "default", "seconds_per_case": 4.0, "peak_rss_mb": 1600.0},
                            {"mode": "fast", "seconds_per_case": 1.0, "peak_rss_mb": 1000.0}],
         "predict_source": "validation cases of fold 0", "predict_n_cases": 2}
    tables = bl.build_report(r)
    flat = {row["quantity"]: row for rows in tables.values() for row in rows}
    assert flat["wall time (s)"]["ratio"] == pytest.approx(0.1)  # selection's row overrides the name: last wins
    assert flat["seconds per iteration"]["autoseg"] == 1.0 and flat["seconds per iteration"]["ratio"] == 0.125
    assert flat["mean over folds: anterior"]["autoseg"] == pytest.approx(0.7)
    assert flat["mean over folds: anterior"]["ratio"] == pytest.approx(1.75)
    assert flat["fold 1: mean foreground"]["autoseg"] == pytest.approx(0.55)
    assert flat["mirroring, all folds: seconds per case"]["ratio"] == pytest.approx(0.25)
    fast = flat["--fast: no mirroring, step 0.75, first fold: seconds per case"]
    assert fast["autoseg"] is None and fast["ratio"] is None
    assert flat["winner"]["autoseg"] == "2d+3d_fullres" and flat["winner"]["ratio"] is None
    assert any("2d fold 0" in q for q in flat)  # autoseg's other configuration is listed
    report = {"dataset": "Dataset102_Hippocampus", "budget": "2m", "quick": False, "folds": [0, 1],
              "configuration": "3d_fullres", "autoseg_configurations": ["2d", "3d_fullres"], "date": "d",
              "machine": {"cpu_model": "TestCPU"}, "tables": tables, "published":
              published.published_for("Dataset102_Hippocampus"), "errors": {"nnU-Net predict fast": "boom"},
              "notes": ["shared machine"], "predict_source": "validation cases of fold 0", "commands": ["autoseg plan X"],
              "autoseg_candidates": [{"name": "2d+3d_fullres", "foreground_dice": 0.7, "seconds_per_case": 0.5}]}
    md = bl.format_markdown(report)
    assert "| mirroring, all folds: seconds per case | 1 | 4 | 0.2500 |" in md
    assert "unverified" in md and "TestCPU" in md and "boom" in md and "- shared machine" in md
    assert "$ autoseg plan X" in md and "| 2d+3d_fullres | 0.7000 | 0.5000 |" in md
    assert "validation cases of fold 0 that the other folds saw in training" in md


def test_published_numbers_match_by_name_and_none_for_unknown():
    assert any("0.90" in r["value"] for r in published.published_for("Dataset004_Hippocampus"))
    assert published.published_for("Dataset999_Unknown") == []
    assert all({"method", "metric", "value", "status", "source"} <= set(r)
               for e in published.PUBLISHED for r in e["rows"])


def test_no_dice_ratio_against_an_untrained_network():
    assert bl._row("Dice", 0.8, 0.03, dice=True)["ratio"] is None
    assert bl._row("Dice", 0.8, 0.4, dice=True)["ratio"] == pytest.approx(2.0)
    assert bl._row("s/it", 0.8, 0.03)["ratio"] == pytest.approx(26.667, abs=1e-3)
