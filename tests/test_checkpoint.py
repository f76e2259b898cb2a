"""Tests for autoseg.model.checkpoint: atomic save, weights_only load, RNG restore, resume lookup."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.model.checkpoint import (checkpoint_path, find_resume_checkpoint, load_checkpoint,
                                         restore_checkpoint, restore_rng_states, save_checkpoint)
from autoseg.training.schedule import PolyLR


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.InstanceNorm2d(2, affine=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    sched = PolyLR(opt, 0.01, total_steps=10)
    return model, opt, sched


def _train_steps(model, opt, sched, n=2):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(1, 1, 5, 5)).pow(2).mean().backward()
        opt.step()
        sched.step()


def test_round_trip_states(tmp_path: Path):
    model, opt, sched = _setup()
    _train_steps(model, opt, sched)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = {"epoch": 3, "iteration": 2, "best_ema_dice": 0.5, "log": ["a", "b"], "nested": {"x": [1, 2.5]}}
    p = tmp_path / "fold_0" / "checkpoint_latest.pt"
    save_checkpoint(p, model=model, optimizer=opt, scheduler=sched, scaler=scaler, state=state)
    assert p.is_file() and [q.name for q in p.parent.iterdir()] == [p.name]  # no temp file left

    ckpt = load_checkpoint(p)
    model2, opt2, sched2 = _setup(seed=1)
    scaler2 = torch.amp.GradScaler("cpu")
    got = restore_checkpoint(ckpt, model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2, rng=False)
    assert got == state
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        torch.testing.assert_close(s1["state"][k]["momentum_buffer"], s2["state"][k]["momentum_buffer"])
    assert sched2.current_step == 2 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert scaler2.get_scale() == 1024.0


def test_non_plain_state_is_rejected(tmp_path: Path):
    model, opt, sched = _setup()
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched,
                        state={"dice": np.float64(0.5)})
    assert not (tmp_path / "c.pt").exists()


def test_rng_restore_reproduces_random_numbers(tmp_path: Path):
    model, opt, sched = _setup()
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    np.random.normal()  # leave a cached gaussian in numpy's state
    p = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(p, model=model, optimizer=opt, scheduler=sched, state={})
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng_states(load_checkpoint(p))
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    torch.testing.assert_close(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_truncated_file_gives_clear_error(tmp_path: Path):
    model, opt, sched = _setup()
    p = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(p, model=model, optimizer=opt, scheduler=sched, state={"epoch": 1})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AutosegError, match="delete it") as e:
        load_checkpoint(p)
    assert str(p) in str(e.value)
    with pytest.raises(AutosegError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Malicious:
    """Unpickling this would create a marker file: weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    p = tmp_path / "checkpoint_latest.pt"
    torch.save({"format": "autoseg-checkpoint", "payload": _Malicious(marker)}, p)
    with pytest.raises(AutosegError, match="refused"):
        load_checkpoint(p)
    assert not marker.exists()


def test_not_an_autoseg_checkpoint(tmp_path: Path):
    p = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(AutosegError, match="not an autoseg checkpoint"):
        load_checkpoint(p)


def test_find_resume_checkpoint_prefers_final_and_skips_broken(tmp_path: Path):
    fold = tmp_path / "fold_0"
    assert find_resume_checkpoint(fold) is None
    model, opt, sched = _setup()
    latest, final = checkpoint_path(fold, "latest"), checkpoint_path(fold, "final")
    save_checkpoint(latest, model=model, optimizer=opt, scheduler=sched, state={"epoch": 1})
    assert find_resume_checkpoint(fold) == latest
    save_checkpoint(final, model=model, optimizer=opt, scheduler=sched, state={"epoch": 2})
    assert find_resume_checkpoint(fold) == final
    final.write_bytes(b"not a checkpoint")
    assert find_resume_checkpoint(fold) == latest
    latest.write_bytes(b"")
    assert find_resume_checkpoint(fold) is None
