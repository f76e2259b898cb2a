"""The learning-rate schedule (poly decay, stepped per iteration) and sizing it to a time budget.

Rule: a schedule that ends at a deadline. Training speed is measured first (seconds per iteration,
seconds per validation pass), then the number of epochs is fixed once from the budget, and the poly
schedule decays the learning rate to exactly 0 at the last step. Fixing the step count up front
(instead of stopping whenever time runs out) keeps the annealed tail of the schedule, which is where
most of the final accuracy comes from, and makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


class PolyLR:
    """``lr = initial_lr * (1 - step / total_steps) ** exponent``, set on every optimizer param group.

    Stepped once per training iteration (not per epoch). With ``warmup_steps > 0`` the first
    ``warmup_steps`` steps ramp linearly, ``lr = initial_lr * (step + 1) / warmup_steps``, and the poly
    decay then runs over the remaining ``total_steps - warmup_steps`` steps. Step ``total_steps`` and
    beyond have lr 0. The constructor sets the lr of step 0; call :meth:`step` after each
    ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, total_steps: int,
                 exponent: float = 0.9, warmup_steps: int = 0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, found {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), found {warmup_steps}")
        if initial_lr < 0:
            raise ValueError(f"initial_lr must be >= 0, found {initial_lr}")
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.total_steps = int(total_steps)
        self.exponent = float(exponent)
        self.warmup_steps = int(warmup_steps)
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
        return self.initial_lr * (1.0 - progress) ** self.exponent

    def _apply(self) -> None:
        lr = self.lr_at(self.current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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
        return {"initial_lr": self.initial_lr, "total_steps": self.total_steps, "exponent": self.exponent,
                "warmup_steps": self.warmup_steps, "current_step": self.current_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the exact schedule (all fields, not only the step) and set the optimizer's lr."""
        missing = {"initial_lr", "total_steps", "exponent", "warmup_steps", "current_step"} - set(state)
        if missing:
            raise KeyError(f"PolyLR state is missing {sorted(missing)}")
        self.initial_lr = float(state["initial_lr"])
        self.total_steps = int(state["total_steps"])
        self.exponent = float(state["exponent"])
        self.warmup_steps = int(state["warmup_steps"])
        self.current_step = int(state["current_step"])
        self._apply()
