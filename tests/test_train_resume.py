"""Training through the CLI: kill -9 mid-run, re-run the same command, and it continues from the checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.store import load_plans
from autoseg.usecases.train import resolve_training_settings
from autoseg.schemas import Splits, TrainingSettings, load_json
from autoseg.model.checkpoint import load_checkpoint
from autoseg.training.splits import fold_cases
from autoseg.training.trainer import Trainer
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

EPOCHS = 10
TRAIN = ["-c", "3d_fullres", "--fold", "0", "--epochs", str(EPOCHS), "--iterations-per-epoch", "2",
         "--validation-iterations", "1", "--precision", "fp32", "--num-workers", "0", "--no-progress"]


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    ds = make_synthetic_dataset(tmp_path / "Dataset010_Resume", n_cases=6, shape=(12, 16, 16))
    wd = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(wd), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    return wd


def _log_epochs(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.e2e
def test_kill_and_resume_continues_from_checkpoint(planned: Path, capsys) -> None:
    wd = Workdir(planned)
    log_path = wd.training_log_jsonl("3d_fullres", 0)
    cmd = [sys.executable, "-m", "autoseg.cli", "train", "--workdir", str(planned), *TRAIN, "--no-validation"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    try:
        while len(_log_epochs(log_path)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    latest = wd.checkpoint("3d_fullres", 0, "latest")
    assert latest.exists() and not wd.checkpoint("3d_fullres", 0, "final").exists()
    ckpt = load_checkpoint(latest)
    epoch_at_kill = ckpt["state"]["epoch"]
    # the epoch's log line is written just before its checkpoint: a kill in between leaves the checkpoint one
    # epoch behind the log (resume then rewrites the log from the checkpoint, below)
    assert 2 <= epoch_at_kill < EPOCHS
    records_at_kill = ckpt["state"]["log"]

    # the trainer restores epoch counter, log and optimizer state (momentum buffers, or Adam's moments:
    # this short training runs the short-schedule recipe) from the checkpoint
    plans = load_plans(planned)
    config = plans.configuration("3d_fullres")
    train_ids, val_ids = fold_cases(load_json(Splits, wd.splits_json), 0)
    settings = load_json(TrainingSettings, wd.train_settings_json("3d_fullres", 0))
    trainer = Trainer(wd, config, settings, train_ids, val_ids, progress=False)
    assert trainer._resume()
    assert trainer.state.epoch == epoch_at_kill and trainer.state.log == records_at_kill
    restored = trainer.optimizer.state_dict()["state"]
    saved = ckpt["optimizer"]["state"]
    assert restored and set(restored) == set(saved)
    for k in saved:
        tensors = [name for name, v in saved[k].items() if isinstance(v, torch.Tensor) and v.numel() > 1]
        assert tensors  # momentum_buffer (SGD) or exp_avg, exp_avg_sq (AdamW)
        for name in tensors:
            assert torch.equal(restored[k][name], saved[k][name])
    assert trainer.scheduler.state_dict() == ckpt["scheduler"]

    # the same command again: only the remaining epochs run, and the log continues without gaps
    capsys.readouterr()
    assert main(["train", "--workdir", str(planned), *TRAIN, "--no-validation"]) == 0
    final = load_checkpoint(wd.checkpoint("3d_fullres", 0, "final"))
    assert [r["epoch"] for r in final["state"]["log"]] == list(range(1, EPOCHS + 1))
    assert final["state"]["log"][:epoch_at_kill] == records_at_kill
    assert _log_epochs(log_path) == list(range(1, EPOCHS + 1))
    assert final["scheduler"]["current_step"] == EPOCHS * 2
    assert not latest.exists()


@pytest.mark.e2e
def test_train_validates_and_writes_records(planned: Path) -> None:
    assert main(["train", "--workdir", str(planned), "-c", "3d_fullres", "--fold", "1", "--epochs", "2",
                 "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-progress"]) == 0
    wd = Workdir(planned)
    summary = json.loads(wd.validation_summary_json("3d_fullres", 1).read_text())
    splits = load_json(Splits, wd.splits_json)
    assert set(summary["per_case"]) == set(splits.folds[1].val)
    assert "foreground_mean" in summary
    assert wd.progress_png("3d_fullres", 1).stat().st_size > 1000
    settings = json.loads(wd.train_settings_json("3d_fullres", 1).read_text())
    assert settings["epochs"] == 2 and settings["overrides"]["epochs"] == 2
    import SimpleITK as sitk

    manifest = json.loads(wd.manifest_json.read_text())
    for case in manifest["cases"]:
        if case["case_id"] in summary["per_case"]:
            ref = sitk.ReadImage(case["label"])
            pred = sitk.ReadImage(str(wd.validation_dir("3d_fullres", 1) / f"{case['case_id']}.nii.gz"))
            assert pred.GetSize() == ref.GetSize()
            assert pred.GetSpacing() == pytest.approx(ref.GetSpacing())
            assert pred.GetOrigin() == pytest.approx(ref.GetOrigin())
            assert pred.GetDirection() == pytest.approx(ref.GetDirection())


def test_cascade_needs_lowres_first(planned: Path, capsys) -> None:
    # a hand-made plans entry with a previous stage: train must name the commands to run first
    from dataclasses import replace

    from autoseg.schemas import save_json

    wd = Workdir(planned)
    plans = load_plans(planned)
    full = plans.configuration("3d_fullres")
    cascade = replace(full, name="3d_cascade_fullres", previous_stage="3d_lowres")
    save_json(replace(plans, configurations={**plans.configurations, "3d_cascade_fullres": cascade}),
              wd.plans_json)
    assert main(["train", "--workdir", str(planned), "-c", "3d_cascade_fullres", "--fold", "0"]) == 1
    err = capsys.readouterr().err
    assert "autoseg train --workdir" in err and "-c 3d_lowres --fold 0" in err


def test_settings_overrides_win_and_epochs_disable_budget(planned: Path) -> None:
    plans = load_plans(planned)
    cfg = plans.configuration("3d_fullres")
    s = resolve_training_settings(plans, cfg, "0", {"epochs": 7, "initial_lr": 0.02, "device": "cpu"})
    assert s.epochs == 7 and s.initial_lr == 0.02 and s.time_budget_s is None
    s2 = resolve_training_settings(plans, cfg, "0", {"time_budget_s": 60.0, "device": "cpu"})
    assert s2.time_budget_s == 60.0


@pytest.mark.e2e
def test_time_budget_trains_until_the_budget_is_spent(planned: Path) -> None:
    # real time (tests/test_budget_control.py checks the same on a simulated clock, exactly)
    budget = 25.0
    assert main(["train", "--workdir", str(planned), "-c", "2d", "--fold", "0", "--time-budget", "25s",
                 "--iterations-per-epoch", "15", "--validation-iterations", "1", "--no-validation",
                 "--no-progress"]) == 0
    wd = Workdir(planned)
    final = load_checkpoint(wd.checkpoint("2d", 0, "final"))
    state = final["state"]
    assert state["final_validation_s"] > 0 and state["validation_epoch_s"] > 0
    assert all(r["seconds_per_iteration"] > 0 for r in state["log"])
    assert sum(r["iterations"] for r in state["log"]) == state["iterations_done"] > 0
    # the schedule ran over the budget's time and is complete; the budget was used, not cut short
    assert final["scheduler"]["kind"] == "time_fraction" and final["scheduler"]["fraction"] == 1.0
    assert state["log"][-1]["lr"] == 0.0 and state["log"][-1]["elapsed_fraction"] >= 0.95
    assert 0.8 * budget <= state["elapsed_s"] + state["final_validation_s"] <= budget + 5.0
    settings = json.loads(wd.train_settings_json("2d", 0).read_text())
    assert settings["time_budget_s"] == 25.0


def test_a_fold_trained_with_other_plans_is_not_reused(planned: Path, capsys) -> None:
    from dataclasses import replace

    from autoseg.schemas import save_json

    args = ["train", "--workdir", str(planned), "-c", "2d", "--fold", "2", "--epochs", "1",
            "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation", "--no-progress"]
    assert main(args) == 0
    wd = Workdir(planned)
    plans = load_plans(planned)
    changed = replace(plans.configuration("2d"), batch_size=plans.configuration("2d").batch_size + 1)
    save_json(replace(plans, configurations={**plans.configurations, "2d": changed}), wd.plans_json)
    capsys.readouterr()
    assert main(args) == 1
    assert "trained with another plan" in capsys.readouterr().err


def test_fp16_on_cpu_is_refused_before_training(planned: Path, capsys) -> None:
    assert main(["train", "--workdir", str(planned), "-c", "2d", "--fold", "3", "--precision", "fp16",
                 "--device", "cpu", "--epochs", "1"]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not Workdir(planned).checkpoint("2d", 3, "final").exists()


def test_adamw_recipe_trains_and_resumes_with_its_own_optimizer(planned: Path) -> None:
    """The optimizer is a training setting: AdamW (momentum = its first beta) trains, is recorded, and a
    resumed run restores AdamW's state (not SGD's)."""
    from autoseg.usecases.train import train_fold

    wd = Workdir(planned)
    overrides = {"optimizer": "adamw", "initial_lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-2,
                 "epochs": 1, "iterations_per_epoch": 2, "validation_iterations_per_epoch": 1,
                 "precision": "fp32", "num_workers": 0, "lr_shape": "linear", "warmup_fraction": 0.25}
    train_fold(planned, "3d_fullres", "0", overrides=overrides, progress=False, validate=False)
    settings = load_json(TrainingSettings, wd.train_settings_json("3d_fullres", 0))
    assert settings.optimizer == "adamw" and settings.lr_shape == "linear"
    ckpt = load_checkpoint(wd.checkpoint("3d_fullres", 0, "final"))
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) or list(group["betas"]) == [0.9, 0.999]
    assert "exp_avg_sq" in next(iter(ckpt["optimizer"]["state"].values()))  # Adam's second moment
    with pytest.raises(Exception, match="optimizer"):
        resolve_training_settings(load_plans(planned), load_plans(planned).configuration("3d_fullres"), "1",
                                  {"optimizer": "adam"})


def test_the_recipe_follows_the_iterations_the_training_will_run(planned: Path) -> None:
    """training/recipe.py: a budgeted CPU training (a few thousand iterations at most) gets the short-schedule
    recipe, a long epoch schedule nnU-Net's; --recipe and single settings (--lr) win; a resumed training keeps
    its recipe."""
    from autoseg.training.recipe import RECIPES, SHORT_SCHEDULE_MAX_ITERATIONS

    plans = load_plans(planned)
    cfg = plans.configuration("3d_fullres")
    budgeted = resolve_training_settings(plans, cfg, "0", {"time_budget_s": 600.0, "device": "cpu"})
    assert budgeted.recipe == "short" and budgeted.optimizer == "adamw" and budgeted.lr_shape == "linear"
    assert "iterations" in budgeted.recipe_reason and str(SHORT_SCHEDULE_MAX_ITERATIONS) in budgeted.recipe_reason
    long = resolve_training_settings(plans, cfg, "0", {"epochs": 1000, "device": "cpu"})
    assert long.recipe == "nnunet" and long.optimizer == "sgd" and long.momentum == 0.99
    assert "1000 epochs x 250 iterations" in long.recipe_reason
    chosen = resolve_training_settings(plans, cfg, "0", {"time_budget_s": 600.0, "device": "cpu",
                                                         "recipe": "nnunet", "initial_lr": 0.02})
    assert chosen.recipe == "nnunet" and chosen.optimizer == "sgd" and chosen.initial_lr == 0.02
    with pytest.raises(Exception, match="recipe 'fast' is unknown"):
        resolve_training_settings(plans, cfg, "0", {"recipe": "fast", "device": "cpu"})
    # a resumed training keeps the recipe it started with, even when the budget would now choose another
    wd = Workdir(planned)
    path = wd.train_settings_json("3d_fullres", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    from autoseg.schemas import save_json
    save_json(long, path)
    resumed = resolve_training_settings(plans, cfg, "0", {"time_budget_s": 600.0, "device": "cpu"}, existing=path)
    assert resumed.recipe == "nnunet" and resumed.optimizer == RECIPES["nnunet"]["optimizer"]


def test_continue_for_adds_a_phase_to_a_finished_training(planned: Path, capsys) -> None:
    """`autoseg train --continue-for`: a finished fold trains on from its final weights with a new schedule;
    the log and progress.png go on as phase 2; the earlier final checkpoint is kept."""
    wd = Workdir(planned)
    base = ["train", "--workdir", str(planned), "-c", "3d_fullres", "--fold", "0", "--precision", "fp32",
            "--num-workers", "0", "--no-progress", "--no-validation", "--validation-iterations", "1"]
    assert main([*base, "--continue-for", "1m"]) == 1  # nothing finished yet
    assert "nothing to continue: 3d_fullres fold 0" in capsys.readouterr().err
    assert main([*base, "--epochs", "2", "--iterations-per-epoch", "2"]) == 0
    phase1 = load_checkpoint(wd.checkpoint("3d_fullres", 0, "final"))
    assert main([*base, "--continue-for", "15s"]) == 0
    fold = wd.fold_dir("3d_fullres", 0)
    kept = fold / "checkpoint_final.phase1.pt"
    assert kept.is_file()
    assert torch.equal(load_checkpoint(kept)["model"][next(iter(phase1["model"]))],
                       phase1["model"][next(iter(phase1["model"]))])
    final = load_checkpoint(wd.checkpoint("3d_fullres", 0, "final"))
    assert final["state"]["phase"] == 2
    records = [json.loads(line) for line in wd.training_log_jsonl("3d_fullres", 0).read_text().splitlines() if line]
    assert [r["phase"] for r in records[:2]] == [1, 1] and [r["epoch"] for r in records[:2]] == [1, 2]
    assert len(records) > 2 and all(r["phase"] == 2 for r in records[2:])
    assert [r["epoch"] for r in records[2:]] == list(range(3, len(records) + 1))  # numbering goes on
    assert wd.progress_png("3d_fullres", 0).is_file()
    settings = load_json(TrainingSettings, wd.train_settings_json("3d_fullres", 0))
    assert settings.time_budget_s == 15.0
    assert main([*base, "--continue-for", "15s"]) == 0  # and once more: phase 3
    assert (fold / "checkpoint_final.phase2.pt").is_file()
    assert load_checkpoint(wd.checkpoint("3d_fullres", 0, "final"))["state"]["phase"] == 3


def test_a_continuation_killed_before_its_first_checkpoint_starts_again(planned: Path, caplog) -> None:
    import logging

    wd = Workdir(planned)
    base = ["train", "--workdir", str(planned), "-c", "3d_fullres", "--fold", "0", "--precision", "fp32",
            "--num-workers", "0", "--no-progress", "--no-validation", "--validation-iterations", "1",
            "--epochs", "2", "--iterations-per-epoch", "2"]
    assert main(base) == 0
    final = wd.checkpoint("3d_fullres", 0, "final")
    final.rename(final.with_name("checkpoint_final.phase1.pt"))  # moved aside, then the process was killed
    with caplog.at_level(logging.WARNING):
        assert main(base) == 0  # the same command again: not a training from scratch
    assert "was interrupted before its first checkpoint; starting it again" in caplog.text
    state = load_checkpoint(final)["state"]
    assert state["phase"] == 2 and [r["phase"] for r in state["log"]] == [1, 1, 2, 2]  # 2 more epochs
