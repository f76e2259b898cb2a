"""Learning-rate schedules: a decay shape (registered by name) over a progress in [0, 1].

Two clocks drive the same shape:

* :class:`PolyLR` counts iterations (``--epochs N``, no time budget): progress = step / total steps.
* :class:`FractionLR` follows the elapsed fraction of a training's time budget (set by
  ``training/budget_control.py``): a run that slows down or speeds up still ends on time with the
  decay complete, because the learning rate is a function of time spent, not of steps taken.

The shape (nnU-Net's poly by default) is a small function registered by name, so a recipe study can
swap it (``lr_shape`` in train_settings.json) without touching the trainer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ..errors import AutosegError
from ..schemas import TrainingSettings

logger = logging.getLogger(__name__)

LrShape = Callable[[float, float], float]  # (progress in [0, 1], exponent) -> factor of initial_lr
_SHAPES: dict[str, LrShape] = {}


def register_lr_shape(name: str) -> Callable[[LrShape], LrShape]:
    """Register ``shape(progress, exponent) -> factor``: 1 at progress 0, 0 at progress 1 (exponent may be ignored)."""
    def add(fn: LrShape) -> LrShape:
        _SHAPES[name] = fn
        return fn

    return add


@register_lr_shape("poly")
def poly_shape(progress: float, exponent: float) -> float:
    """nnU-Net's poly decay: ``(1 - progress) ** exponent``."""
    return (1.0 - progress) ** exponent


@register_lr_shape("linear")
def linear_shape(progress: float, exponent: float) -> float:
    """Straight line from 1 to 0 (``exponent`` unused)."""
    return 1.0 - progress


def lr_shape(name: str) -> LrShape:
    """The registered shape called ``name``; an unknown name lists the registered ones."""
    if name not in _SHAPES:
        raise AutosegError(f"unknown learning-rate shape '{name}' (lr_shape in train_settings.json); "
                           f"registered: {', '.join(sorted(_SHAPES))}")
    return _SHAPES[name]


def lr_factor(fraction: float, *, shape: str = "poly", exponent: float = 0.9,
              warmup_fraction: float = 0.0) -> float:
    """Factor of the initial learning rate at ``fraction`` (0 = start, 1 = end, clamped to [0, 1]).

    A linear warm-up from 0 over the first ``warmup_fraction``, then ``shape`` over the rest; 0 at 1.
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if f >= 1.0:
        return 0.0
    if f < warmup_fraction:
        return f / warmup_fraction
    return lr_shape(shape)((f - warmup_fraction) / (1.0 - warmup_fraction), exponent)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class PolyLR:
    """``lr = initial_lr * (1 - step / total_steps) ** exponent``, set on every optimizer param group.

    Stepped once per training iteration (not per epoch). With ``warmup_steps > 0`` the first
    ``warmup_steps`` steps ramp linearly, ``lr = initial_lr * (step + 1) / warmup_steps``, and the decay
    then runs over the remaining ``total_steps - warmup_steps`` steps. Step ``total_steps`` and beyond
    have lr 0. ``shape`` swaps the poly decay for another registered shape. The constructor sets the lr
    of step 0; call :meth:`step` after each ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, total_steps: int,
                 exponent: float = 0.9, warmup_steps: int = 0, shape: str = "poly"):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, found {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), found {warmup_steps}")
        if initial_lr < 0:
            raise ValueError(f"initial_lr must be >= 0, found {initial_lr}")
        lr_shape(shape)  # fail early on an unknown name
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.total_steps = int(total_steps)
        self.exponent = float(exponent)
        self.warmup_steps = int(warmup_steps)
        self.shape = shape
        self.current_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """Learning rate used for iteration ``step`` (0-based)."""
        step = max(0, int(step))
        if step >= self.total_steps:
            return 0.0
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.initial_lr * lr_shape(self.shape)(progress, self.exponent)

    def _apply(self) -> None:
        _set_lr(self.optimizer, self.lr_at(self.current_step))

    def step(self) -> None:
        """Advance one iteration and set the new learning rate."""
        self.current_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each param group (torch scheduler convention)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def lr(self) -> float:
        """Learning rate for the current step."""
        return self.lr_at(self.current_step)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only (safe for ``torch.load(weights_only=True)``)."""
        return {"kind": "iterations", "initial_lr": self.initial_lr, "total_steps": self.total_steps,
                "exponent": self.exponent, "warmup_steps": self.warmup_steps, "shape": self.shape,
                "current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the exact schedule (all fields, not only the step) and set the optimizer's lr.

        Raises KeyError for a state of another schedule kind or with fields missing.
        """
        missing = {"initial_lr", "total_steps", "exponent", "warmup_steps", "current_step"} - set(state)
        if missing or state.get("kind", "iterations") != "iterations":
            raise KeyError(f"not a PolyLR state (kind {state.get('kind')!r}, missing {sorted(missing)})")
        self.initial_lr = float(state["initial_lr"])
        self.total_steps = int(state["total_steps"])
        self.exponent = float(state["exponent"])
        self.warmup_steps = int(state["warmup_steps"])
        self.shape = str(state.get("shape", "poly"))  # checkpoints before lr shapes were poly
        self.current_step = int(state["current_step"])
        self._apply()


class FractionLR:
    """``lr = initial_lr * lr_factor(fraction)``: the schedule over the elapsed fraction of a time budget.

    The owner (the budget control) calls :meth:`set_fraction` before every iteration; nothing is
    counted here, so a resumed run continues from the fraction its restored clock gives.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, *, shape: str = "poly",
                 exponent: float = 0.9, warmup_fraction: float = 0.0):
        if initial_lr < 0:
            raise ValueError(f"initial_lr must be >= 0, found {initial_lr}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), found {warmup_fraction}")
        lr_shape(shape)
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.shape, self.exponent, self.warmup_fraction = shape, float(exponent), float(warmup_fraction)
        self.fraction = 0.0
        self.set_fraction(0.0)

    def lr_at(self, fraction: float) -> float:
        """Learning rate at ``fraction`` of the training's time (0 at 1 and beyond)."""
        return self.initial_lr * lr_factor(fraction, shape=self.shape, exponent=self.exponent,
                                           warmup_fraction=self.warmup_fraction)

    def set_fraction(self, fraction: float) -> None:
        """Move the schedule to ``fraction`` and set the optimizer's learning rate."""
        self.fraction = float(fraction)
        _set_lr(self.optimizer, self.lr_at(self.fraction))

    @property
    def lr(self) -> float:
        return self.lr_at(self.fraction)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "time_fraction", "initial_lr": self.initial_lr, "shape": self.shape,
                "exponent": self.exponent, "warmup_fraction": self.warmup_fraction, "fraction": self.fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule; raises KeyError for a state of another kind."""
        if state.get("kind") != "time_fraction":
            raise KeyError(f"not a FractionLR state (kind {state.get('kind')!r})")
        self.initial_lr = float(state["initial_lr"])
        self.shape, self.exponent = str(state["shape"]), float(state["exponent"])
        self.warmup_fraction = float(state["warmup_fraction"])
        self.set_fraction(float(state["fraction"]))


# --------------------------------------------------------------------------- a training's optimizer and schedule

def make_optimizer(network: torch.nn.Module, s: TrainingSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net's) or AdamW (``momentum`` is its first beta)."""
    if s.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=s.initial_lr, betas=(s.momentum, 0.999),
                                 weight_decay=s.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=s.initial_lr, momentum=s.momentum, nesterov=True,
                           weight_decay=s.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, s: TrainingSettings) -> PolyLR | FractionLR:
    """Over the elapsed fraction of the time budget, else over ``epochs x iterations_per_epoch`` iterations."""
    if s.time_budget_s is not None:
        return FractionLR(optimizer, s.initial_lr, shape=s.lr_shape, exponent=s.poly_exponent,
                          warmup_fraction=s.warmup_fraction)
    total = max(1, s.epochs * s.iterations_per_epoch)
    return PolyLR(optimizer, s.initial_lr, total, exponent=s.poly_exponent, shape=s.lr_shape,
                  warmup_steps=min(total - 1, round(s.warmup_fraction * total)))
