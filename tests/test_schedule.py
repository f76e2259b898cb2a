"""Tests for autoseg.training.schedule: poly LR per iteration, warm-up, resume, budget sizing."""
from __future__ import annotations

import pytest
import torch

from autoseg.training.schedule import PolyLR, epochs_for_time_budget


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.99, nesterov=True)


def test_poly_values():
    opt = _opt()
    s = PolyLR(opt, initial_lr=0.01, total_steps=100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # set at construction
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(50) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert s.lr_at(99) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert s.lr_at(100) == 0.0 and s.lr_at(1000) == 0.0
    for _ in range(50):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert s.get_last_lr() == [pytest.approx(s.lr_at(50))]


def test_warmup_then_poly_over_remaining_steps():
    s = PolyLR(_opt(), initial_lr=1.0, total_steps=110, warmup_steps=10)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(4) == pytest.approx(0.5)
    assert s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.5 ** 0.9)
    assert s.lr_at(110) == 0.0
    with pytest.raises(ValueError):
        PolyLR(_opt(), initial_lr=1.0, total_steps=10, warmup_steps=10)


def test_state_round_trip_is_exact():
    opt_a = _opt()
    a = PolyLR(opt_a, initial_lr=0.01, total_steps=40, exponent=0.9, warmup_steps=3)
    for _ in range(17):
        a.step()
    opt_b = _opt()
    b = PolyLR(opt_b, initial_lr=0.5, total_steps=7)  # different settings: all restored from the state
    b.load_state_dict(a.state_dict())
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    for _ in range(30):
        a.step()
        b.step()
        assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    assert all(type(v) in (int, float) for v in a.state_dict().values())
    with pytest.raises(KeyError):
        b.load_state_dict({"current_step": 1})


def test_epochs_for_time_budget_examples():
    # 1 h budget, 0.5 s/it * 100 it + 10 s validation = 60 s/epoch, 120 s final validation:
    # (0.95 * 3600 - 120) / 60 = 55
    assert epochs_for_time_budget(3600, 0.5, 100, 10, 120) == 55
    assert epochs_for_time_budget(3600, 0.5, 100, 10, 120, safety=1.0) == 58
    # the whole run fits: epochs * per_epoch + final <= safety * budget
    e = epochs_for_time_budget(10_000, 0.37, 250, 7.5, 300)
    assert e * (0.37 * 250 + 7.5) + 300 <= 0.95 * 10_000 < (e + 1) * (0.37 * 250 + 7.5) + 300
    # too small a budget still trains one epoch
    assert epochs_for_time_budget(10, 1.0, 250, 5, 100) == 1
    with pytest.raises(ValueError):
        epochs_for_time_budget(100, 0.0, 10, 1, 1)
