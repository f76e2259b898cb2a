"""Fast tests of the pure helpers of benchmarks/ (no nnU-Net or autoseg runs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_common as bc  # noqa: E402
import nnunet_baseline as nb  # noqa: E402
import nnunet_budget_trainer as bt  # noqa: E402
import train_side_by_side as sbs  # noqa: E402


# --------------------------------------------------------------------------- bench_common

@pytest.mark.parametrize("text,seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("45", 45),
                                          ("1.5h", 5400), ("2min", 120)])
def test_parse_duration(text, seconds):
    assert bc.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "5x", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(bc.BenchError, match="duration"):
        bc.parse_duration(text)


def test_missing_dataset_says_not_found_and_exits_2(tmp_path, capsys):
    missing = tmp_path / "Dataset999_Nope"
    with pytest.raises(bc.BenchError, match=f"{missing} not found") as e:
        bc.check_dataset(missing)
    assert e.value.exit_code == bc.EXIT_USAGE
    rc = sbs.main(["--dataset", str(missing), "--budget", "1m", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert f"{missing} not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dataset_id_and_name():
    assert bc.dataset_id_and_name("/x/Dataset102_Hippocampus") == (102, "Dataset102_Hippocampus")
    with pytest.raises(bc.BenchError, match="DatasetXXX_Name"):
        bc.dataset_id_and_name("/x/hippo")


def _autoseg_splits():
    return {"schema_version": 1, "seed": 12345, "source": "generated", "case_ids_hash": "h",
            "folds": [{"train": ["c", "b"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]}]}


def test_to_nnunet_splits_from_autoseg_and_nnunet_formats():
    out = bc.to_nnunet_splits(_autoseg_splits())
    assert out == [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]}]
    assert bc.to_nnunet_splits(out) == out  # nnU-Net's own list passes through
    with pytest.raises(bc.BenchError, match="fold 0"):
        bc.to_nnunet_splits([{"train": ["a"]}])
    with pytest.raises(bc.BenchError):
        bc.to_nnunet_splits({"folds": []})


def test_check_splits_fold_range_and_unknown_cases():
    splits = bc.to_nnunet_splits(_autoseg_splits())
    bc.check_splits(splits, 1, ["a", "b", "c"], "s.json")
    with pytest.raises(bc.BenchError, match="fold 2"):
        bc.check_splits(splits, 2, ["a", "b", "c"], "s.json")
    with pytest.raises(bc.BenchError, match="does not have"):
        bc.check_splits(splits, 0, ["a", "b"], "s.json")


def test_dataset_case_ids(tmp_path):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for name in ("b.nii.gz", "a.nii.gz", "notes.txt"):
        (tmp_path / "labelsTr" / name).write_text("")
    assert bc.dataset_case_ids(tmp_path) == ["a", "b"]


def test_dice_from_both_summary_formats():
    autoseg = {"per_class": {"1": {"name": "ant", "dice": 0.8}, "2": {"name": "post", "dice": 0.6}},
               "foreground_mean": {"dice": 0.7}}
    nnunet = {"mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.3}}, "foreground_mean": {"Dice": 0.4}}
    assert bc.dice_from_summary(autoseg) == ({"1": 0.8, "2": 0.6}, 0.7)
    assert bc.dice_from_summary(nnunet) == ({"1": 0.5, "2": 0.3}, 0.4)
    with pytest.raises(bc.BenchError, match="unknown format"):
        bc.dice_from_summary({"foo": 1})


def test_run_monitored_measures_a_child_and_reports_failure(tmp_path):
    code = "import time; x = bytearray(60_000_000); time.sleep(0.8); print('hello')"
    stats = bc.run_monitored([sys.executable, "-c", code], tmp_path / "log.txt", interval_s=0.1,
                             pss_every=1, heartbeat_s=0)
    assert stats.returncode == 0 and stats.seconds >= 0.8
    assert stats.peak_rss_mb > 60 and stats.peak_pss_mb is not None
    assert "hello" in bc.tail(tmp_path / "log.txt")
    bc.require_success(stats, "ok")
    bad = bc.run_monitored([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                           tmp_path / "bad.txt", interval_s=0.05, heartbeat_s=0)
    with pytest.raises(bc.BenchError, match="exit code 3(.|\n)*boom") as e:
        bc.require_success(bad, "the thing")
    assert e.value.exit_code == bc.EXIT_FAILED


def test_write_json_is_atomic_and_readable(tmp_path):
    bc.write_json(tmp_path / "a" / "r.json", {"x": [1, 2]})
    assert bc.read_json(tmp_path / "a" / "r.json") == {"x": [1, 2]}
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_machine_info_has_cores_and_ram():
    m = bc.machine_info()
    assert m["cpu_cores"] >= 1 and m["cpu_cores_usable"] >= 1 and m["ram_gb"] > 0


# --------------------------------------------------------------------------- the budget trainer's helpers

def test_sliding_window_steps_match_nnunet():
    # nnU-Net: image 110, tile 64, step 0.5 -> 3 steps; image <= tile -> 1 step (padded)
    assert bt.sliding_window_steps([110], [64]) == 3
    assert bt.sliding_window_steps([36, 50, 35], [40, 56, 40]) == 1
    assert bt.sliding_window_steps([128, 128], [64, 64]) == 9


def test_count_validation_forwards_3d_and_2d_on_3d():
    assert bt.count_validation_forwards([[36, 50, 35], [80, 50, 35]], [40, 56, 40], 3) == (1 + 3) * 8
    # a 2D patch on a 3D volume: slice by slice along the first axis, 2 mirror axes -> x4
    assert bt.count_validation_forwards([[10, 100, 100]], [64, 64], 2) == 10 * 9 * 4  # 3 x 3 tiles per slice
    assert bt.count_validation_forwards([[1, 512, 512]], [512, 512], 2) == 4


def test_epochs_within_budget():
    # 1200 s budget, 100 s used after 1 epoch of 50 s, 200 s validation, margin 29 s -> 1 + 17 epochs
    assert bt.epochs_within_budget(1200, 100, 1, 50, 200) == 1 + int((1200 - 100 - 200 - 29) // 50)
    assert bt.epochs_within_budget(100, 90, 1, 50, 200) == 1  # over budget: stop after what is done
    assert bt.epochs_within_budget(1000, 10, 1, 0.0, 0) == 1  # degenerate epoch time


def test_must_stop_and_estimate():
    assert not bt.must_stop(100, 1200, 200, 10)
    assert bt.must_stop(995, 1200, 200, 10)
    est = bt.estimate_validation_seconds(100, 0.5, 10)
    assert est == pytest.approx(100 * 0.5 * bt.SINGLE_PATCH_PENALTY + bt.VALIDATION_FIXED_S
                                + 10 * bt.VALIDATION_PER_CASE_S)


# --------------------------------------------------------------------------- nnunet_baseline helpers

def test_baseline_parser_and_auto_configuration(tmp_path):
    args = nb.build_parser().parse_args(["--dataset", "d", "--budget", "20m", "--out", "o"])
    assert args.configuration == "auto" and args.fold == 0 and args.venv.endswith(".benchvenv")
    (tmp_path / "dataset.json").write_text(json.dumps({"file_ending": ".png"}))
    assert nb.resolve_configuration("auto", tmp_path) == "2d"
    (tmp_path / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    assert nb.resolve_configuration("auto", tmp_path) == "3d_fullres"
    assert nb.resolve_configuration("3d_lowres", tmp_path) == "3d_lowres"


def test_nnunet_plan_summary_and_env(tmp_path):
    plans = {"configurations": {"3d_fullres": {
        "patch_size": [40, 56, 40], "batch_size": 9, "spacing": [1, 1, 1],
        "architecture": {"network_class_name": "PlainConvUNet",
                         "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256]}}}}}
    s = nb.nnunet_plan_summary(plans, "3d_fullres")
    assert s["patch_size"] == [40, 56, 40] and s["batch_size"] == 9 and s["features_per_stage"][-1] == 256
    with pytest.raises(bc.BenchError, match="not '2d'"):
        nb.nnunet_plan_summary(plans, "2d")
    env = nb.nnunet_env(tmp_path, 1200.0, 25, 2)
    assert env["nnUNet_results"] == str(tmp_path / "nnUNet_results")
    assert env["AUTOSEG_BENCH_BUDGET_S"] == "1200.0" and env["AUTOSEG_BENCH_ITERS_PER_EPOCH"] == "25"
    assert "PYTHONPATH" not in env


def test_link_raw_dataset_symlinks_never_copies(tmp_path):
    ds = tmp_path / "Dataset001_X"
    ds.mkdir()
    link = nb.link_raw_dataset(ds, tmp_path / "out", ds.name)
    assert link.is_symlink() and link.resolve() == ds.resolve()
    assert nb.link_raw_dataset(ds, tmp_path / "out", ds.name) == link  # idempotent


def test_format_dice_uses_label_names():
    assert nb.format_dice({"2": 0.5, "1": None}, {"1": "ant", "2": "post"}) == "ant -, post 0.500"


# --------------------------------------------------------------------------- side-by-side report

def test_choose_configuration():
    assert sbs.choose_configuration({"configurations": {"2d": {}, "3d_fullres": {}}}, "auto") == "3d_fullres"
    assert sbs.choose_configuration({"configurations": {"2d": {}}}, "auto") == "2d"
    assert sbs.choose_configuration({"configurations": {"2d": {}, "3d_fullres": {}}}, "2d") == "2d"
    with pytest.raises(bc.BenchError, match="not planned"):
        sbs.choose_configuration({"configurations": {"2d": {}}}, "3d_fullres")


def test_autoseg_training_stats(tmp_path):
    log = tmp_path / "training_log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "seconds_per_iteration": s, "epoch_seconds": 10.0}) + "\n"
                           for e, s in [(1, 0.5), (2, 0.7)]) + "\n")
    stats = sbs.autoseg_training_stats(sbs.read_jsonl(log), 20)
    assert stats == {"epochs_done": 2, "iterations_done": 40, "seconds_per_iteration": 0.6,
                     "training_loop_seconds": 20.0}
    assert sbs.autoseg_training_stats([], 20)["seconds_per_iteration"] is None


def _result(tool, dice, spi, mem):
    return {"tool": tool, "dice_per_class": {"1": dice, "2": dice / 2}, "dice_mean": 0.75 * dice,
            "label_names": {"1": "anterior", "2": "posterior"}, "seconds_per_iteration": spi,
            "iterations_done": 100, "epochs_done": 4, "iterations_per_epoch": 25, "train_seconds": 1190.0,
            "train_peak_rss_mb": mem, "plan": {"patch_size": [40, 56, 40], "batch_size": 9,
                                               "features_per_stage": [32, 64]},
            "commands": [f"{tool} train"]}


def test_build_report_ratios_and_markdown():
    rep = sbs.build_report(_result("autoseg", 0.8, 2.0, 1000.0), _result("nnU-Net", 0.4, 8.0, 4000.0),
                           dataset="Dataset102_Hippocampus", configuration="3d_fullres", fold=0, budget="20m",
                           machine={"cpu_model": "TestCPU", "cpu_cores": 2, "cpu_cores_usable": 2, "ram_gb": 8},
                           date="2026-01-01T00:00:00+00:00", commands=["$ a", "$ b"])
    rows = {r["quantity"]: r for r in rep["rows"]}
    assert rows["Dice anterior (label 1)"]["ratio"] == pytest.approx(2.0)
    assert rows["seconds per iteration"]["ratio"] == pytest.approx(0.25)
    assert rows["peak memory, training (MB, RSS sum)"]["ratio"] == pytest.approx(0.25)
    assert rows["patch size"]["ratio"] is None
    md = sbs.format_markdown(rep)
    assert "| Dice anterior (label 1) | 0.8000 | 0.4000 | 2 |" in md
    assert "| patch size | 40×56×40 | 40×56×40 | – |" in md
    assert "TestCPU" in md and "2026-01-01" in md and "$ b" in md


def test_report_with_one_side_missing_and_an_error():
    rep = sbs.build_report(_result("autoseg", 0.8, 2.0, 1000.0), None, dataset="D", configuration=None,
                           fold=0, budget="1m", machine={}, date="d", commands=[], errors={"nnunet": "boom"})
    rows = {r["quantity"]: r for r in rep["rows"]}
    assert rows["Dice mean (foreground)"]["nnunet"] is None and rows["Dice mean (foreground)"]["ratio"] is None
    md = sbs.format_markdown(rep)
    assert "nnunet failed" in md and "boom" in md
    assert sbs.ratio(1, 0) is None and sbs.ratio(True, 1) is None and sbs.ratio(3, 2) == 1.5


def test_dice_vs_budget_table_and_plot_from_side_by_side_reports(tmp_path):
    import dice_vs_budget as dvb

    def report(budget: str, a: float | None, n: float | None) -> dict:
        side = lambda d, it: None if d is None else {"dice_mean": d, "iterations_done": it, "train_seconds": 100.0}
        return {"dataset": "Dataset102_Hippocampus", "configuration": "3d_fullres", "fold": 0, "budget": budget,
                "autoseg": side(a, 900), "nnunet": side(n, 120), "errors": {} if n is not None else
                {"nnunet": "not installed"}}

    for budget, a, n in (("20m", 0.86, 0.41), ("5m", 0.80, 0.0), ("10m", 0.84, None)):
        (tmp_path / budget).mkdir()
        (tmp_path / budget / "report.json").write_text(json.dumps(report(budget, a, n)))
    assert dvb.main(["--report-only", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "dice_vs_budget.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "m |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["5m", "10m", "20m"]  # sorted by budget, not by name
    assert "| 20m | 0.8600 | 0.4100 | +0.4500 | 900 | 120 |" in table
    assert "| 10m | 0.8400 | – | – |" in table and "10m: nnunet: not installed" in table
    png = (tmp_path / "dice_vs_budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads((tmp_path / "dice_vs_budget.json").read_text())[0]["budget_s"] == 300


def test_dice_vs_budget_takes_an_earlier_measurement_and_says_so(tmp_path):
    import dice_vs_budget as dvb

    out = tmp_path / "out"
    (out / "5m").mkdir(parents=True)
    (out / "5m" / "report.json").write_text(json.dumps(
        {"dataset": "Dataset102_Hippocampus", "configuration": "3d_fullres", "fold": 0, "budget": "5m",
         "autoseg": {"dice_mean": 0.80, "iterations_done": 250, "train_seconds": 299.0},
         "nnunet": {"dice_mean": 0.10, "iterations_done": 25, "train_seconds": 280.0}, "errors": {}}))
    busy = tmp_path / "quiet.json"  # a busy_machine.py result
    busy.write_text(json.dumps({"foreground_dice": 0.872, "iterations": 975, "wall_s": 1199.6,
                                "date": "2026-11-30", "code": "4cef8e9"}))
    side_by_side = tmp_path / "old_report.json"  # a train_side_by_side.py report: its nnunet side only
    side_by_side.write_text(json.dumps({"date": "2026-11-24", "autoseg": {"dice_mean": 0.79},
                                        "nnunet": {"dice_mean": 0.31, "iterations_done": 75,
                                                   "train_seconds": 843.7}}))
    assert dvb.main(["--report-only", "--out", str(out), "--earlier", "20m", "autoseg", str(busy),
                     "--earlier", "20m", "nnunet", str(side_by_side)]) == 0
    table = (out / "dice_vs_budget.md").read_text()
    assert "| 20m | 0.8720 | 0.3100 | +0.5620 | 975 | 75 | 1200 | 844 |" in table
    assert f"20m, autoseg: measured earlier, taken from {busy} (2026-11-30)" in table
    assert f"20m, nnunet: measured earlier, taken from {side_by_side} (2026-11-24)" in table
    assert "5m, " not in table.split("Rows not trained")[1]  # the 5m row was measured by the run itself
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(SystemExit, match="no Dice in it"):
        dvb.main(["--report-only", "--out", str(out), "--earlier", "10m", "nnunet", str(tmp_path / "empty.json")])


def test_recipe_study_grid_pairs_the_two_recipes_marks_real_time_runs_and_lists_the_gaps(tmp_path, capsys):
    import recipe_study as rs

    def cell(ds, budget, fold, recipe, dice, **extra):
        return {"dataset": ds, "budget": budget, "budget_s": rs.parse_duration(budget), "fold": fold,
                "recipe": recipe, "dice": dice, "iterations": 1000, **extra}

    results = [cell("Hippocampus", "5m", "0", "nnunet", 0.85), cell("Hippocampus", "5m", "0", rs.SHORT, 0.86),
               cell("Hippocampus", "5m", "1", "nnunet", 0.85), cell("Hippocampus", "5m", "1", rs.SHORT, 0.80),
               cell("Hippocampus", "20m", "0", rs.SHORT, 0.87, schedule="real time", source="q.json"),
               cell("Hippocampus", "20m", "0", "nnunet", 0.86),
               cell("syn3d_small7", "5m", "0", rs.SHORT, 0.70), cell("syn3d_small7", "5m", "0", rs.SHORT, 0.83),
               cell("syn3d_small7", "5m", "0", "nnunet", 0.5), cell("syn3d_small7", "5m", "1", "nnunet", 0.4),
               cell("syn3d_small7", "5m", "0", "adamw_linear_warmup_no_ds", 0.99),  # not in the grid
               cell("syn3d_small7", "20m", "0", "nnunet", None)]  # failed: no Dice, not a measurement
    table = "\n".join(rs.grid_table(results))
    assert "| 5m | Hippocampus | 0 | 1000 | 0.8500 | 0.8600 | +0.0100 |" in table
    assert "| 5m | syn3d_small7 | 0 | 1000 | 0.5000 | 0.8300 | +0.3300 |" in table  # the later record wins
    assert "| 20m | Hippocampus | 0 | 1000 | 0.8600 | 0.8700 † | +0.0100 |" in table
    assert "- † Hippocampus 20m fold 0 `adamw_linear_warmup`: real time (q.json)" in table
    assert "| **5m** | 3 pairs | | | | | mean +0.0967, min -0.0500, 1 worse by more than 0.01 |" in table
    assert "0.99" not in table
    # the grid is 2 datasets x 2 budgets x 2 folds; four pairs are missing (one half, one failed)
    assert ("Not measured yet (4 of 8 dataset × budget × fold pairs of this grid): syn3d_small7 5m fold 1 "
            "(`adamw_linear_warmup`), Hippocampus 20m fold 1, syn3d_small7 20m fold 0, syn3d_small7 20m fold 1."
            ) in table
    # --report on a results file prints the grid and draws it next to the file; a missing file is one line
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert rs.main(["--report", str(path)]) == 0
    assert "| 5m | Hippocampus | 1 |" in capsys.readouterr().out
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rs.main(["--report", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err


def test_gpu_check_table_and_its_refusal_without_cuda(capsys):
    import gpu_check
    import torch

    row = {"dataset": "Hippocampus", "configuration": "3d_fullres", "patch_size": [40, 56, 40], "batch_size": 9,
           "planned_memory_gb": 20.5, "proxy_first_guess_gb": 11.2, "target_gb": 125.1,
           "measured_training_peak_gb": 21.0, "within_tolerance": True, "under_target": True,
           "seconds_per_iteration": 0.11, "data_wait_fraction": 0.04, "loader_iterations_per_second": 30.1,
           "validation_dice": 0.88, "predict_seconds_per_case": {"mirroring": 0.5, "no_mirroring": 0.1},
           "dry_run": "measured on this GPU: ..."}
    text = gpu_check.markdown({"date": "2026-11-30", "gpu": "NVIDIA H200", "machine": "m", "command": "c",
                               "datasets": [row]})
    assert "NVIDIA H200" in text and "40x56x40 × 9" in text and "20.5 (11.2)" in text and "4.0 %" in text
    if torch.cuda.is_available():
        return
    assert gpu_check.main(["--out", "/tmp/never_written_gpu_check"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_recipe_study_page_shows_the_grid_of_its_results_file():
    """docs/benchmarks/recipe_study.md carries the grid table that --report makes from recipe_study.json (a cell
    added to the JSON without refreshing the page, or a number edited by hand, fails here)."""
    import recipe_study as rs

    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    page = (docs / "recipe_study.md").read_text()
    start = page.index("\n", page.index("<!-- grid:")) + 1
    shown = page[start:page.index("<!-- /grid -->")].strip()
    made = "\n".join(rs.grid_table(json.loads((docs / "recipe_study.json").read_text()))).strip()
    assert shown == made
