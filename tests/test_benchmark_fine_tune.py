"""Fast tests of benchmarks/fine_tune.py on a made-up report and a tiny dataset (no training)."""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_common as bc  # noqa: E402
import fine_tune as ft  # noqa: E402


def _run(variant: str, seed: int, dice: float) -> dict:
    return {"variant": variant, "seed_asked": seed, "seed": seed, "iterations": 350, "train_seconds": 110.2,
            "wall_s": 131.0, "seconds_per_iteration": 0.31, "dice": dice,
            "per_class": {"label_1": dice, "label_2": dice - 0.01, "label_3": dice + 0.01},
            "validation_cases": ["synth_000", "synth_003"], "recipe": "short", "other_processes_cores": 1.1,
            "command": "python -m autoseg train ..."}


def _results() -> dict:
    runs = [_run("scratch", 1, 0.80), _run("fine_tuned", 1, 0.95), _run("scratch", 2, 0.82),
            _run("fine_tuned", 2, 0.81)]
    source = {"run": "/x/source", "budget": "4m", "iterations": 751, "train_seconds": 229.6, "precision": "bf16",
              "dice": 0.9996, "seed": 12345, "seconds_per_iteration": 0.24, "planned_seconds_per_iteration": 0.1403,
              "per_class": {"label_1": 0.999, "label_2": 0.999, "label_3": 1.0},
              "network": {"patch_size": [16, 32, 32], "batch_size": 2, "features_per_stage": [16, 32, 64, 128]},
              "train": {"wall_s": 248.0, "other_processes_cores": 1.2}}
    return {"benchmark": "fine_tune", "date": "2026-11-30 10:00", "finished": "2026-11-30 10:30",
            "command": ".venv/bin/python benchmarks/fine_tune.py --iterations 350", "machine": bc.machine_info(),
            "datasets": {k: {**v, "path": "/x"} for k, v in ft.DATASETS.items()}, "configuration": "3d_fullres",
            "fold": "0", "source": source, "precision": "bf16", "runs": runs, "alone_max_other_cores": 0.2,
            "schedule": {"mode": "iterations", "iterations": 350, "epochs": 7, "iterations_per_epoch": 50},
            "verdict": ft.verdict(runs)}


def test_verdict_means_over_seeds_and_counts_pairs():
    v = ft.verdict(_results()["runs"])
    assert v["scratch_mean_dice"] == 0.81 and v["fine_tuned_mean_dice"] == 0.88
    assert v["difference"] == pytest.approx(0.07) and v["fine_tuned_beats_scratch"]
    assert (v["pairs"], v["pairs_won_by_fine_tuned"]) == (2, 1)


def test_report_only_rewrites_the_table_and_exits_on_the_verdict(tmp_path, capsys):
    res = _results()
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert ft.main(["--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "fine_tune.md").read_text()
    assert "fine-tuned 0.8800 against scratch 0.8100" in md and "won 1 of 2 pairs" in md
    assert "350 training iterations" in md and "49 s of training steps, for a budget of 1m (60 s)" in md  # 350 x 0.1403 s
    assert "**not** alone" in md and res["command"] in md
    assert md.count("| target, fine-tuned |") == 2 and "| target, scratch | 2 | 350 |" in md
    assert "reference" not in md and "Code:" not in md and "Notes:" not in md
    res["reference"] = {**_run("scratch", 1, 0.90), "iterations": 1050}
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert ft.main(["--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "fine_tune.md").read_text()
    assert "| target, scratch, longer (reference) | 1 | 1050 |" in md
    assert "1050 iterations (3.0x as many, seed 1) the target reached 0.9000, against 0.8000 after 350" in md
    assert "worth fewer than the extra 700 iterations from scratch" in md  # 0.90 >= the fine-tuned mean 0.88
    for r in [res["source"]["train"], *res["runs"], res["reference"]]:
        r["code"] = {"commit": "abc1234", "autoseg_uncommitted_files": 0}
    res["runs"][3]["code"] = {"commit": "def5678", "autoseg_uncommitted_files": 2}
    res["notes"] = ["written by hand"]
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert ft.main(["--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "fine_tune.md").read_text()
    assert "the trainings ran commits abc1234, def5678 with uncommitted changes under autoseg/" in md
    assert "Notes:\n\n- written by hand\n" in md
    worse = copy.deepcopy(res)
    for r in worse["runs"]:
        r["dice"] = 0.9 if r["variant"] == "scratch" else 0.5
    worse["verdict"] = ft.verdict(worse["runs"])
    (tmp_path / "results.json").write_text(json.dumps(worse))
    assert ft.main(["--report-only", "--out", str(tmp_path)]) == bc.EXIT_FAILED
    assert "does NOT beat" in (tmp_path / "fine_tune.md").read_text()


def test_report_only_without_results_is_a_usage_error(tmp_path, capsys):
    assert ft.main(["--report-only", "--out", str(tmp_path)]) == bc.EXIT_USAGE
    assert "results.json not found" in capsys.readouterr().err


def test_schedule_in_iterations_or_time():
    args = argparse.Namespace(iterations=120, budget="1m")
    cli, rec = ft.schedule_args(args)  # 120 = 3 epochs of 40
    assert cli == ["--epochs", "3", "--iterations-per-epoch", "40"] and rec["iterations"] == 120
    cli, rec = ft.schedule_args(argparse.Namespace(iterations=None, budget="90s"))
    assert cli == ["--time-budget", "90s"] and rec == {"mode": "time_budget", "budget": "90s", "budget_s": 90.0}


def test_make_dataset_sets_noise_only_inside_and_refuses_other_settings(tmp_path):
    from autoseg.data import synthetic

    params = {**ft.DATASETS["target"], "folder": "Dataset899_Tiny", "n_cases": 2, "shape": [8, 16, 16]}
    folder = ft.make_dataset(tmp_path, params)
    assert (synthetic.NOISE, synthetic.LABEL_STEP) == (8.0, 60.0)  # restored after the generator ran
    assert json.loads((folder / "dataset.json").read_text())["fine_tune_benchmark"]["noise"] == params["noise"]
    assert len(list((folder / "imagesTr").iterdir())) == 2
    assert ft.make_dataset(tmp_path, params) == folder  # reused
    with pytest.raises(bc.BenchError, match="other settings"):
        ft.make_dataset(tmp_path, {**params, "noise": 1.0})
