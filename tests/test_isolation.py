"""run_in_child: results, exceptions, deaths by a signal and timeouts of a child process; and the
guarded training that survives a crash of its child by training again in fp32."""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.training.isolation import ChildCrashed, note, run_in_child

METHODS = ["fork", "spawn"]


def _add(a, b, *, times=1):
    return {"sum": (a + b) * times, "pid": os.getpid(), "tensor": torch.arange(3) * times}


def _segfault(after_note: bool = False):
    if after_note:
        note("precision", "bf16")
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)  # not reached


def _raise():
    raise AutosegError("bad input in the child")


def _exit_quietly():
    os._exit(3)


def _sleep():
    time.sleep(60)


def test_returns_the_childs_result() -> None:
    out = run_in_child(_add, 2, 3, times=2, start_method="fork")  # spawn: see the torch threads test
    assert out["sum"] == 10 and out["pid"] != os.getpid()
    assert torch.equal(out["tensor"], torch.tensor([0, 2, 4]))


@pytest.mark.parametrize("method", METHODS)
def test_sigsegv_is_reported_as_crashed_with_signal_11(method: str) -> None:
    out = run_in_child(_segfault, True, start_method=method)
    assert isinstance(out, ChildCrashed)
    assert out.signal == signal.SIGSEGV == 11 and out.exitcode == -11 and not out.timed_out
    assert out.signal_name == "SIGSEGV" and "signal 11 (SIGSEGV)" in out.describe()
    assert out.notes == {"precision": "bf16"}  # sent before it died


def test_exception_in_the_child_is_raised_here() -> None:
    with pytest.raises(AutosegError, match="bad input in the child"):
        run_in_child(_raise, start_method="fork")


def test_exit_without_result_and_timeout() -> None:
    out = run_in_child(_exit_quietly, start_method="fork")
    assert isinstance(out, ChildCrashed) and out.signal is None and out.exitcode == 3
    t0 = time.monotonic()
    out = run_in_child(_sleep, timeout=1.0, start_method="fork")
    assert isinstance(out, ChildCrashed) and out.timed_out and "in time" in out.describe()
    assert time.monotonic() - t0 < 10


def test_torch_threads_work_in_a_spawned_child_after_parallel_work_here() -> None:
    # why spawn: after a parallel torch op here, a forked child hangs at its first parallel op (GNU OpenMP)
    x = torch.randn(64, 64, 64)
    (x * 2).sum()
    out = run_in_child(torch.mul, x, 2, timeout=120)
    assert not isinstance(out, ChildCrashed) and torch.equal(out, x * 2)


# --------------------------------------------------------------------------- guarded training

@pytest.fixture
def tiny_trainer(tmp_path: Path):
    from tests.conftest import tiny_training

    wd, config, settings, train_ids, val_ids = tiny_training(tmp_path, "Dataset012_Guard", {
        "epochs": 3, "iterations_per_epoch": 2, "validation_iterations_per_epoch": 1, "precision": "bf16"})

    def make():
        from autoseg.training.trainer import Trainer

        return Trainer(wd, config, settings, train_ids, val_ids, progress=False)

    return wd, config, make


def test_guarded_training_restarts_in_fp32_after_a_crash(tiny_trainer, monkeypatch, caplog) -> None:
    from autoseg.training import trainer as trainer_module
    from autoseg.model.checkpoint import load_checkpoint
    from autoseg.training.isolation import run_training_guarded

    wd, config, make = tiny_trainer
    monkeypatch.setattr(trainer_module.Trainer, "train_step", _train_step_crashing_in_bf16_epoch_2)
    trainer = make()
    with caplog.at_level(logging.WARNING):
        state = _guarded_with_fork(run_training_guarded, trainer, monkeypatch)
    final = wd.checkpoint(config.name, 0, "final")
    assert final.exists() and not wd.checkpoint(config.name, 0, "latest").exists()
    assert state.precision == "fp32" and state.epoch == 3
    ckpt = load_checkpoint(final)
    assert ckpt["state"]["precision"] == "fp32"
    assert [r["epoch"] for r in ckpt["state"]["log"]] == [1, 2, 3]  # epoch 1 (bf16) kept: resumed from it
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("crashed in bf16" in m and "signal 11 (SIGSEGV)" in m and "fp32" in m for m in warnings), warnings
    # the parent's network holds the final weights (used by the validation after fit)
    for k, v in trainer.network.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_guarded_training_crash_in_fp32_is_an_error(tiny_trainer, monkeypatch) -> None:
    from autoseg.training import trainer as trainer_module
    from autoseg.training.isolation import run_training_guarded

    _, _, make = tiny_trainer
    monkeypatch.setattr(trainer_module.Trainer, "train_step", _train_step_always_crashing)
    trainer = make()
    trainer.settings = replace(trainer.settings, precision="fp32")
    with pytest.raises(AutosegError, match=r"3d_fullres fold 0 crashed.*signal 11 \(SIGSEGV\).*fp32"):
        _guarded_with_fork(run_training_guarded, trainer, monkeypatch, isolate=True)


def _guarded_with_fork(run_training_guarded, trainer, monkeypatch, **kwargs):
    """run_training_guarded with forked children: the monkeypatched train_step is inherited (a spawned
    child would import the real one), and the tiny network trains single-threaded there."""
    from autoseg.training import isolation

    real = isolation.run_in_child

    def forked(fn, *args, **kw):
        kw["start_method"] = "fork"
        return real(_single_threaded, fn, *args, **kw)

    monkeypatch.setattr(isolation, "run_in_child", forked)
    return run_training_guarded(trainer, **kwargs)


def _single_threaded(fn, *args, **kwargs):
    torch.set_num_threads(1)  # a forked child of a process that used torch's threads must not use them
    return fn(*args, **kwargs)


from autoseg.training.trainer import Trainer as _Trainer

_REAL_TRAIN_STEP = _Trainer.train_step


def _train_step_crashing_in_bf16_epoch_2(self, batch):
    if (self.state.precision or self.settings.precision) == "bf16" and self.state.epoch >= 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _REAL_TRAIN_STEP(self, batch)


def _train_step_always_crashing(self, batch):
    os.kill(os.getpid(), signal.SIGSEGV)


class _Unpicklable(Exception):
    def __init__(self, a, b):  # unpickling calls _Unpicklable(*self.args) with one argument: TypeError
        super().__init__(f"{a}-{b}")


def _raise_unpicklable():
    raise _Unpicklable(1, 2)


def test_exception_that_does_not_unpickle_comes_back_as_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="could not be sent back(.|\n)*_Unpicklable: 1-2"):
        run_in_child(_raise_unpicklable, start_method="fork")
