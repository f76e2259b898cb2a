"""The time-budget control on a simulated clock: the real Trainer loop, hooks and checkpoints, with a fake
training step and validation step that only advance the clock (no network compute)."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.model.checkpoint import load_checkpoint
from autoseg.store import load_plans
from autoseg.usecases.train import resolve_training_settings
from autoseg.schemas import Splits, load_json
from autoseg.training.budget import FinalValidation
from autoseg.training.schedule import lr_factor
from autoseg.training.splits import fold_cases
from autoseg.training.trainer import Trainer
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

BUDGET_S = 300.0
FINAL_VALIDATION_S = 30.0  # the simulated estimate of the final validation
VALIDATION_S = 2.0  # every per-epoch validation (estimate and simulated duration)
STEP_S = 1.0
LR = 0.01
IPE = 10  # iterations per epoch


class FakeClock:
    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


class Killed(Exception):
    """A simulated kill -9 (raised by a hook after a checkpoint)."""


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budget")
    ds = make_synthetic_dataset(root / "Dataset012_Budget", n_cases=5, shape=(8, 12, 12))
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    return run


class Simulation:
    """A Trainer whose training step takes ``step_s(iteration, now)`` simulated seconds and whose
    validation takes VALIDATION_S; records the learning rate and the clock at every step."""

    def __init__(self, run: Path, clock: FakeClock, step_s: Callable[[int, float], float], fresh: bool = True,
                 hooks: list | None = None, **overrides):
        wd = Workdir(run)
        plans = load_plans(run)
        config = plans.configuration("2d")
        if fresh:
            shutil.rmtree(wd.fold_dir("2d", 0), ignore_errors=True)
        train_ids, val_ids = fold_cases(load_json(Splits, wd.splits_json), 0)
        settings = resolve_training_settings(plans, config, "0", {
            "time_budget_s": BUDGET_S, "device": "cpu", "precision": "fp32", "num_workers": 0, "initial_lr": LR,
            "recipe": "nnunet",  # the schedule's mechanics below are checked against poly decay, no warm-up
            "iterations_per_epoch": IPE, "validation_iterations_per_epoch": 1, "checkpoint_every_s": 1e9,
            **overrides})
        self.wd, self.clock, self.step_s = wd, clock, step_s
        self.trainer = Trainer(wd, config, settings, train_ids, val_ids, progress=False, clock=clock,
                               hooks=hooks)
        self.trainer.control.estimate = lambda trainer: (VALIDATION_S, FinalValidation(FINAL_VALIDATION_S))
        self.trainer.train_step = self._train_step
        self.trainer.validation_step = self._validation_step
        self.lrs: list[float] = []
        self.times: list[float] = []  # clock at the start of each step

    def _train_step(self, batch: dict) -> float:
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])
        self.times.append(self.clock.now)
        self.clock.now += self.step_s(self.trainer.state.iterations_done, self.clock.now)
        return 1.0 - 0.001 * len(self.lrs)

    def _validation_step(self, batch: dict):
        self.clock.now += VALIDATION_S
        k = self.trainer.config.network.num_classes - 1
        return 0.5, np.ones(k), np.zeros(k), np.zeros(k)

    def fit(self):
        return self.trainer.fit()


def _span() -> float:
    return BUDGET_S - FINAL_VALIDATION_S - VALIDATION_S


def _assert_ends_on_time(sim: Simulation, used_at_least: float = 0.95) -> None:
    state = load_checkpoint(sim.wd.checkpoint("2d", 0, "final"))["state"]
    end = state["elapsed_s"]  # training done: what follows is the final validation
    assert end + FINAL_VALIDATION_S <= BUDGET_S + 0.5, f"overran: {end} s + {FINAL_VALIDATION_S} s"
    assert end + FINAL_VALIDATION_S >= used_at_least * BUDGET_S, f"budget left unused: ended at {end} s"
    assert state["log"][-1]["lr"] == 0.0  # schedule complete
    assert sim.lrs[-1] < 0.1 * LR  # the tail of the decay was trained, not skipped
    assert sum(r["iterations"] for r in state["log"]) == state["iterations_done"] == len(sim.lrs)


def test_steady_clock_ends_at_the_budget_with_lr_zero(planned: Path, caplog) -> None:
    sim = Simulation(planned, FakeClock(100.0), lambda i, now: STEP_S)
    with caplog.at_level(logging.INFO, logger="autoseg.training"):
        state = sim.fit()
    _assert_ends_on_time(sim, used_at_least=0.98)
    # 10 iterations + 2 s validation per epoch within the training span
    expected = _span() / (IPE * STEP_S + VALIDATION_S) * IPE
    assert expected - 3 <= state.iterations_done <= expected + 1
    assert sim.lrs[0] == pytest.approx(LR)
    assert all(b <= a for a, b in zip(sim.lrs, sim.lrs[1:]))  # poly decay, no warm-up: never rises
    # the lr of every step is the schedule at the elapsed fraction when it started
    for lr, t in zip(sim.lrs, sim.times):
        assert lr == pytest.approx(LR * lr_factor((t - 100.0) / _span()), abs=1e-12)
    assert state.log[-1]["elapsed_fraction"] >= 0.99
    text = caplog.text
    assert f"time budget 300 s: {_span():.0f} s for training, 30.0 s reserved for the final validation" in text
    assert f"trained {state.iterations_done} iterations in " in text and "of the 300 s budget" in text


@pytest.mark.parametrize("profile", ["slowdown", "speedup"])
def test_a_machine_that_changes_speed_still_ends_on_time(planned: Path, profile: str) -> None:
    if profile == "slowdown":  # a competing process: steps 5x slower between 60 s and 160 s
        step = lambda i, now: STEP_S * (5.0 if 60 <= now < 160 else 1.0)
    else:  # the competing process ends: steps 4x faster after 100 s
        step = lambda i, now: STEP_S if now < 100 else STEP_S / 4
    sim = Simulation(planned, FakeClock(), step)
    state = sim.fit()
    _assert_ends_on_time(sim)
    steady = _span() / (IPE * STEP_S + VALIDATION_S) * IPE
    if profile == "slowdown":
        assert state.iterations_done < 0.8 * steady
    else:
        assert state.iterations_done > 1.5 * steady


@pytest.mark.parametrize("pause_at", [50, 150])  # early, and late: 27 s of training left after it
def test_a_pause_is_absorbed(planned: Path, pause_at: int) -> None:
    def step(i: int, now: float) -> float:
        return STEP_S + (60.0 if i == pause_at else 0.0)  # the machine sleeps for a minute in this step

    sim = Simulation(planned, FakeClock(), step)
    state = sim.fit()
    _assert_ends_on_time(sim)  # a late pause does not stop the training early either
    # the lr jumps down across the pause (time passed), then continues the same curve to 0
    assert sim.lrs[pause_at + 1] < sim.lrs[pause_at] - 0.1 * LR
    steady = _span() / (IPE * STEP_S + VALIDATION_S) * IPE
    assert state.iterations_done < steady - 40


def test_resume_after_a_kill_continues_the_fraction_and_ends_on_time(planned: Path) -> None:
    class KillAfterEpoch:
        def on_epoch_end(self, trainer, record):  # after the built-in hooks wrote checkpoint_latest.pt
            if record["epoch"] == 8:
                raise Killed

    first = Simulation(planned, FakeClock(), lambda i, now: STEP_S, hooks=[KillAfterEpoch()])
    with pytest.raises(Killed):
        first.fit()
    latest = load_checkpoint(first.wd.checkpoint("2d", 0, "latest"))
    spent = latest["state"]["elapsed_s"]
    assert latest["state"]["epoch"] == 8 and spent == pytest.approx(8 * (IPE * STEP_S + VALIDATION_S))

    # a new process: its monotonic clock starts anywhere; the budget clock continues from the checkpoint
    second = Simulation(planned, FakeClock(5000.0), lambda i, now: STEP_S, fresh=False)
    state = second.fit()
    span = BUDGET_S - FINAL_VALIDATION_S - latest["state"]["validation_epoch_s"]
    assert second.lrs[0] == pytest.approx(LR * lr_factor(spent / span))
    assert second.lrs[0] < first.lrs[0]
    assert [r["epoch"] for r in state.log] == list(range(1, len(state.log) + 1))
    assert state.log[:8] == latest["state"]["log"]
    final = load_checkpoint(second.wd.checkpoint("2d", 0, "final"))["state"]
    assert final["elapsed_s"] + FINAL_VALIDATION_S <= BUDGET_S + 0.5
    assert final["elapsed_s"] + FINAL_VALIDATION_S >= 0.95 * BUDGET_S
    assert state.log[-1]["lr"] == 0.0
    assert len(first.lrs) + len(second.lrs) == state.iterations_done


def test_warmup_fraction_ramps_the_lr_up_first(planned: Path) -> None:
    sim = Simulation(planned, FakeClock(), lambda i, now: STEP_S, warmup_fraction=0.1)
    sim.fit()
    _assert_ends_on_time(sim)
    peak = int(np.argmax(sim.lrs))
    assert sim.lrs[0] == 0.0 and sim.lrs[peak] > 0.95 * LR
    assert 0.08 * _span() <= sim.times[peak] <= 0.12 * _span()
    assert all(b > a for a, b in zip(sim.lrs[:peak - 2], sim.lrs[1:peak - 2]))


def test_epochs_run_exactly_n_epochs_with_poly_lr(planned: Path) -> None:
    clock = FakeClock()
    sim = Simulation(planned, clock, lambda i, now: 100.0, time_budget_s=None, epochs=3)  # slow: ignored
    state = sim.fit()
    assert state.epoch == 3 and [r["iterations"] for r in state.log] == [IPE] * 3
    assert sim.lrs == pytest.approx([LR * (1 - i / (3 * IPE)) ** 0.9 for i in range(3 * IPE)])
    final = load_checkpoint(sim.wd.checkpoint("2d", 0, "final"))
    assert final["scheduler"]["current_step"] == 3 * IPE and state.log[-1]["lr"] == 0.0
    assert "elapsed_fraction" not in state.log[-1]


def test_final_validation_is_made_cheaper_only_when_it_would_take_too_much_of_the_budget():
    from autoseg.training.budget import MAX_FINAL_VALIDATION_SHARE, choose_final_validation

    def cost(per_tile_pass: float):
        # 100 tiles at step 0.5, 45 at step 0.75; 8 passes mirrored (3 axes)
        return lambda mirror, step: (100 if step == 0.5 else 45) * (8 if mirror else 1) * per_tile_pass

    roomy = choose_final_validation(1200, 16, 3, cost(0.1))  # 80 s of 1200: fits
    assert (roomy.mirror, roomy.step_size) == (True, 0.5) and "7% of the 1200 s budget" in roomy.reason
    tight = choose_final_validation(1200, 16, 3, cost(0.5))  # mirrored 400 s (33%), plain 50 s
    assert (tight.mirror, tight.step_size) == (False, 0.5) and tight.seconds == 50
    assert "the full one (8 mirrored passes, tile step 0.5 ~400 s) would take 33%" in tight.reason
    assert "every case is still validated" in tight.reason
    hopeless = choose_final_validation(300, 16, 3, cost(2.0))  # even 45 tiles x 2 s = 90 s > 45 s
    assert (hopeless.mirror, hopeless.step_size) == (False, 0.75) and "give a longer --time-budget" in hopeless.reason
    no_axes = choose_final_validation(1200, 4, 0, cost(0.1))  # a configuration without mirror axes
    assert not no_axes.mirror and no_axes.step_size == 0.5
    assert tight.seconds <= MAX_FINAL_VALIDATION_SHARE * 1200
