"""Tests for autoseg.training.schedule: poly LR per iteration, warm-up, resume, budget sizing."""
from __future__ import annotations

import pytest
import torch

from autoseg.training.schedule import PolyLR


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


def test_total_iterations_for_budget_uses_partial_epochs():
    from autoseg.training.budget import shortened_total_iterations, total_iterations_for_budget

    # 2 full epochs of (250 x 1 s + 10 s) = 520 s fill 520 s exactly; no time left for a third
    assert total_iterations_for_budget(520, 1.0, 250, 10) == 500
    # 100 s: one partial epoch of 90 iterations plus its 10 s validation
    assert total_iterations_for_budget(100, 1.0, 250, 10) == 90
    # the Hippocampus case: 3 full epochs and a partial fourth instead of 3 whole epochs
    assert total_iterations_for_budget(1070, 1.138, 250, 10) == 905
    assert total_iterations_for_budget(-5, 1.0, 250, 10, done=7) == 7  # never below what is done
    assert total_iterations_for_budget(0, 1.0, 250, 10) == 1
    assert shortened_total_iterations(10, 100, 50, 1.0) == 60
    assert shortened_total_iterations(10, 100, 500, 1.0) is None  # never extended
