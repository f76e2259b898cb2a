"""The precision probe: each candidate timed in its own child process; a candidate whose child
crashes (SIGSEGV) is dropped with a warning and training falls back to fp32; the timings decide
between the survivors; the trainer's own network and optimizer are left untouched."""
from __future__ import annotations

import copy
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from autoseg.training import precision as precision_module
from autoseg.training.isolation import ChildCrashed
from autoseg.training.precision import choose_precision, format_timings, time_precisions


class _SleepySteps:
    """A picklable step: sleeps per precision, SIGSEGV for those in ``crash``."""

    def __init__(self, seconds: dict[str, float], crash: tuple[str, ...] = ()):
        self.seconds, self.crash = seconds, crash

    def __call__(self, precision: str) -> None:
        if precision in self.crash:
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(self.seconds[precision])


FAST = {"warmup": 1, "max_steps": 3, "min_steps": 2, "seconds": 1.0, "start_method": "fork"}


def test_timings_decide_between_survivors() -> None:
    timings = time_precisions(_SleepySteps({"fp32": 0.03, "bf16": 0.005}), **FAST)
    assert set(timings) == {"fp32", "bf16"}
    assert timings["fp32"] == pytest.approx(0.03, abs=0.02) and timings["bf16"] < timings["fp32"]
    assert choose_precision(timings) == "bf16"
    timings = time_precisions(_SleepySteps({"fp32": 0.005, "bf16": 0.03}), **FAST)
    assert choose_precision(timings) == "fp32"


def test_crashing_bf16_candidate_falls_back_to_fp32_with_a_warning(caplog) -> None:
    timings = time_precisions(_SleepySteps({"fp32": 0.001, "bf16": 0.0}, crash=("bf16",)), **FAST)
    assert isinstance(timings["bf16"], ChildCrashed) and timings["bf16"].signal == 11
    assert isinstance(timings["fp32"], float)
    with caplog.at_level(logging.WARNING):
        assert choose_precision(timings) == "fp32"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "bf16" in warning and "signal 11 (SIGSEGV)" in warning
    assert "bf16 failed (SIGSEGV)" in format_timings(timings)


def test_every_candidate_crashing_still_gives_fp32(caplog) -> None:
    timings = {"fp32": ChildCrashed(signal=11, exitcode=-11), "bf16": ChildCrashed(signal=6, exitcode=-6)}
    with caplog.at_level(logging.WARNING):
        assert choose_precision(timings) == "fp32"
    assert any("falling back to fp32" in r.getMessage() for r in caplog.records)


def test_exception_in_bf16_is_a_failed_candidate_but_fp32_raises(caplog) -> None:
    timings = time_precisions(_RaisingSteps("bf16"), **FAST)
    assert isinstance(timings["bf16"], ChildCrashed) and "oneDNN said no" in timings["bf16"].notes["error"]
    assert choose_precision(timings) == "fp32"
    with pytest.raises(RuntimeError, match="oneDNN said no"):
        time_precisions(_RaisingSteps("fp32"), **FAST)


class _RaisingSteps:
    def __init__(self, bad: str):
        self.bad = bad

    def __call__(self, precision: str) -> None:
        if precision == self.bad:
            raise RuntimeError("oneDNN said no")


# --------------------------------------------------------------------------- in the trainer

@pytest.fixture
def probe_parts(tmp_path: Path):
    from tests.conftest import tiny_training

    return tiny_training(tmp_path, "Dataset013_Probe", {
        "epochs": 1, "iterations_per_epoch": 2, "validation_iterations_per_epoch": 1, "precision": "auto"})


@pytest.fixture
def auto_trainer(probe_parts):
    from autoseg.training.trainer import Trainer

    return Trainer(*probe_parts, progress=False)


def test_a_configuration_measures_its_precision_once(probe_parts, monkeypatch, caplog) -> None:
    """The probe costs 10-30 s of every training's budget: the first fold of a configuration measures, its
    other folds reuse the choice; another batch size measures again, and a busy measurement is not kept."""
    import dataclasses

    import autoseg.hardware
    from autoseg.training import speed_probe
    from autoseg.training.trainer import Trainer

    wd, config, settings, train_ids, val_ids = probe_parts
    monkeypatch.setattr(autoseg.hardware, "cpu_has_bf16", lambda *a: True)
    measured: list[str] = []

    def fake_time(steps):
        measured.append(steps.trainer.settings.fold)
        return {"fp32": 0.30, "bf16": 0.20}

    others = {"share": 0.0}
    monkeypatch.setattr(precision_module, "time_precisions", fake_time)
    monkeypatch.setattr(speed_probe, "measure_share_of_others", lambda fn, **kw: (fn(), others["share"]))

    def resolve(**changes) -> str:
        trainer = Trainer(wd, config, dataclasses.replace(settings, **changes), train_ids, val_ids, progress=False)
        return trainer._resolve_precision(iter([None]))

    assert resolve(fold="0") == "bf16" and measured == ["0"]
    assert wd.precision_choice_json(config.name).is_file()
    with caplog.at_level(logging.INFO):
        assert resolve(fold="1") == "bf16" and measured == ["0"]  # reused, not measured
    assert any("measured in fold 0" in r.getMessage() and "bf16 0.2 s/it" in r.getMessage() for r in caplog.records)

    assert resolve(fold="2", batch_size=settings.batch_size + 1) == "bf16" and measured == ["0", "2"]  # new key
    others["share"] = 0.6  # the machine got busy: used, not remembered
    assert resolve(fold="3", batch_size=settings.batch_size + 2) == "bf16" and measured == ["0", "2", "3"]
    assert resolve(fold="4", batch_size=settings.batch_size + 2) == "bf16" and measured == ["0", "2", "3", "4"]


def test_expected_probe_cost_follows_the_plans_step_time() -> None:
    from autoseg.training.precision import expected_probe_seconds

    # 1 s/it planned (bf16): fp32 4 s start + 2 x 2 s warm-up + 3 x 2 s timed; bf16 4 + 2 x 1 + 5 s (the 5-s floor)
    assert expected_probe_seconds(1.0) == pytest.approx(14.0 + 11.0)
    # tiny steps: at most 8 timed steps each; what remains is the two child starts
    assert expected_probe_seconds(0.001) == pytest.approx(2 * 4.0, abs=0.05)


def test_a_short_budget_takes_the_plans_precision_instead_of_measuring(probe_parts, monkeypatch, caplog) -> None:
    """Measuring costs ~25 s at 1 s per planned step: over a tenth of a 200-s budget, so the training takes the
    precision the plan's speed figure was measured in, and remembers nothing; a 300-s budget measures."""
    import dataclasses

    import autoseg.hardware
    from autoseg.store import RunStore
    from autoseg.training import recipe, speed_probe
    from autoseg.training.trainer import Trainer

    wd, config, settings, train_ids, val_ids = probe_parts
    monkeypatch.setattr(autoseg.hardware, "cpu_has_bf16", lambda *a: True)
    monkeypatch.setattr(recipe, "planned_seconds_per_iteration", lambda c: 1.0)
    measured: list[str] = []
    monkeypatch.setattr(precision_module, "time_precisions",
                        lambda steps: measured.append(steps.trainer.settings.fold) or {"fp32": 0.3, "bf16": 0.2})
    monkeypatch.setattr(speed_probe, "measure_share_of_others", lambda fn, **kw: (fn(), 0.0))
    store = RunStore(wd)
    plans = store.plans()
    hardware = dataclasses.replace(plans.hardware, cpu_unet_precision={"3d": "fp32", "2d": "bf16"})
    store.save(dataclasses.replace(plans, hardware=hardware), wd.plans_json)

    def resolve(fold: str, budget: float) -> str:
        s = dataclasses.replace(settings, fold=fold, time_budget_s=budget)
        return Trainer(wd, config, s, train_ids, val_ids, progress=False)._resolve_precision(iter([None]))

    with caplog.at_level(logging.INFO):
        assert resolve("0", 200.0) == "fp32" and measured == []  # the plan's 3d figure, not measured
    assert any("fp32 without measuring this network" in r.getMessage() and "~25 s" in r.getMessage()
               for r in caplog.records)
    assert not wd.precision_choice_json(config.name).exists()  # nothing remembered for the other folds
    assert resolve("1", 300.0) == "bf16" and measured == ["1"]  # 25 s <= 30 s: measured


def test_trainer_probe_drops_a_crashing_bf16_and_leaves_its_network_alone(auto_trainer, monkeypatch,
                                                                           caplog) -> None:
    import autoseg.hardware
    from autoseg.training.trainer import Trainer

    real_step = Trainer.train_step
    calls = []

    def step(self, batch):  # inherited by the forked probe children
        calls.append(self.state.precision)
        if self.state.precision == "bf16":
            os.kill(os.getpid(), signal.SIGSEGV)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(autoseg.hardware, "cpu_has_bf16", lambda *a: True)  # also on a CPU without bf16
    real_time = precision_module.time_precisions
    monkeypatch.setattr(precision_module, "time_precisions",
                        lambda steps: real_time(_OneThread(steps), **{**FAST, "seconds": 0.1}))
    trainer = auto_trainer
    weights = copy.deepcopy(trainer.network.state_dict())
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    train_it, val_it = trainer._iterators()
    try:
        with caplog.at_level(logging.INFO):
            chosen = trainer._resolve_precision(train_it)
    finally:
        for it in (train_it, val_it):
            if hasattr(it, "close"):
                it.close()
    assert chosen == "fp32"
    assert set(trainer.state.precision_probe) == {"fp32"} and trainer.state.precision_probe["fp32"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("bf16" in m and "SIGSEGV" in m for m in warnings), warnings
    assert any("precision auto: fp32" in r.getMessage() and "bf16 failed (SIGSEGV) → fp32" in r.getMessage()
               for r in caplog.records)
    # the steps ran in the children only: this process trained nothing, weights and momentum untouched
    assert calls == [] and trainer.state.precision is None
    for k, v in trainer.network.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert trainer.optimizer.state_dict()["state"] == optimizer["state"] == {}


class _OneThread:
    """Forked children of a process that used torch's threads must run single-threaded."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, precision: str) -> None:
        torch.set_num_threads(1)
        self.steps(precision)


def test_trainer_steps_pickle_for_a_spawned_child(auto_trainer) -> None:
    """A spawned child gets the trainer by pickle: that must keep working whatever the trainer holds."""
    import pickle

    from autoseg.training.precision import TrainerSteps

    trainer = auto_trainer
    trainer.hooks = [lambda *a: None]  # hooks need not pickle: the probe drops them
    train_it, val_it = trainer._iterators()
    try:
        steps = TrainerSteps(trainer, next(train_it))
    finally:
        for it in (train_it, val_it):
            if hasattr(it, "close"):
                it.close()
    copy_ = pickle.loads(pickle.dumps(steps))
    copy_("fp32")
    assert copy_.trainer.state.precision == "fp32" and trainer.state.precision is None
    assert copy_.trainer.optimizer.state_dict()["state"] and not trainer.optimizer.state_dict()["state"]
