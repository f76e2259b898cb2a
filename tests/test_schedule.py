"""Tests for autoseg.training.schedule: decay shapes, poly LR per iteration, lr over a time fraction, resume."""
from __future__ import annotations

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.training.schedule import FractionLR, PolyLR, lr_factor, register_lr_shape


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
    assert all(type(v) in (int, float, str) for v in a.state_dict().values())  # plain data (weights_only)
    with pytest.raises(KeyError):
        b.load_state_dict({"current_step": 1})


def test_lr_factor_shapes_and_warmup():
    assert lr_factor(0.0) == 1.0 and lr_factor(0.5) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(1.0) == 0.0 and lr_factor(1.7) == 0.0 and lr_factor(-0.2) == 1.0  # clamped
    assert lr_factor(0.5, exponent=2.0) == pytest.approx(0.25)
    assert lr_factor(0.25, shape="linear") == pytest.approx(0.75)
    # warm-up: linear from 0 over the first 10 %, then the shape over the remaining 90 %
    assert lr_factor(0.0, warmup_fraction=0.1) == 0.0
    assert lr_factor(0.05, warmup_fraction=0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, warmup_fraction=0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, warmup_fraction=0.1) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(0.999999, warmup_fraction=0.1) < 1e-4


def test_shapes_are_registered_by_name():
    with pytest.raises(AutosegError, match="unknown learning-rate shape 'cosine'.*registered: linear, poly"):
        lr_factor(0.5, shape="cosine")
    register_lr_shape("test_square")(lambda p, e: (1 - p) ** 2)
    assert lr_factor(0.5, shape="test_square") == pytest.approx(0.25)
    s = PolyLR(_opt(), initial_lr=1.0, total_steps=10, shape="linear")
    assert s.lr_at(5) == pytest.approx(0.5)
    with pytest.raises(AutosegError):
        FractionLR(_opt(), 0.01, shape="nope")


def test_fraction_lr_follows_the_fraction_and_round_trips():
    opt = _opt()
    s = FractionLR(opt, 0.01, exponent=0.9, warmup_fraction=0.2)
    assert opt.param_groups[0]["lr"] == 0.0  # fraction 0 with warm-up
    s.set_fraction(0.6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    opt_b = _opt()
    b = FractionLR(opt_b, 0.5)
    b.load_state_dict(s.state_dict())
    assert opt_b.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and b.warmup_fraction == 0.2
    with pytest.raises(KeyError):  # an iteration schedule's state is not a time schedule's
        b.load_state_dict(PolyLR(_opt(), 0.01, 10).state_dict())
    with pytest.raises(KeyError):
        PolyLR(_opt(), 0.01, 10).load_state_dict(s.state_dict())


def test_poly_lr_reads_a_state_from_before_lr_shapes():
    old = {"initial_lr": 0.01, "total_steps": 20, "exponent": 0.9, "warmup_steps": 0, "current_step": 10}
    s = PolyLR(_opt(), 1.0, 5, shape="linear")
    s.load_state_dict(old)
    assert s.shape == "poly" and s.lr == pytest.approx(0.01 * 0.5 ** 0.9)
