"""When training stops and what the learning rate is: the trainer's control hook (first in its hook list).

* :class:`EpochControl` (``--epochs N``, no time budget): ``epochs x iterations_per_epoch`` iterations,
  :class:`~.schedule.PolyLR` stepped after every iteration.
* :class:`BudgetController` (``time_budget_s`` set): the learning rate follows the elapsed fraction
  of the training's span, ``span = budget - final validation reserve - last epoch's validation``.
  Training stops when the next iteration would end past the span (fraction 1, lr 0); the last epoch
  is cut short and still validated. Elapsed time is everything since the trainer was created
  (data loading, per-epoch validation, checkpoints, pauses), over every resumed run, so a run that
  slows down, speeds up or is paused still ends on time with its decay complete.
"""
from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .budget import FinalValidation, choose_final_validation, final_validation_seconds, seconds_per_tile

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

RECENT_ITERATIONS = 9  # the next iteration is predicted to take the median of this many recent ones
VALIDATION_LOADING_FACTOR = 1.5  # per-epoch validation estimate: forward time x this (loading the patches)


def estimate_validation_seconds(trainer: Trainer) -> tuple[float, FinalValidation]:
    """(one per-epoch validation in seconds, the final full-resolution validation: how, and its cost),
    from the measured forward time of one tile on this network (see ``training/budget.py``). The final
    validation is made cheaper when the thorough one would take more than its share of the budget."""
    s, config = trainer.settings, trainer.config
    per_tile = seconds_per_tile(trainer.network, config.network.in_channels, s.patch_size, trainer.device,
                                trainer._autocast)
    per_epoch = per_tile * s.batch_size * s.validation_iterations_per_epoch * VALIDATION_LOADING_FACTOR
    pre = trainer.wd.preprocessed_dir(config.data_identifier)

    def seconds(mirror: bool, step_size: float) -> float:
        return final_validation_seconds(pre, trainer.val_ids, s.patch_size, config.dims,
                                        len(config.mirror_axes) if mirror else 0, per_tile,
                                        config.network.num_classes, step_size)

    return per_epoch, choose_final_validation(float(s.time_budget_s or 0.0), len(trainer.val_ids),
                                              len(config.mirror_axes), seconds)


class EpochControl:
    """A fixed number of epochs (fixed by the first run; a resumed run keeps it)."""

    def on_train_start(self, trainer: Trainer) -> None:
        st = trainer.state
        if st.total_epochs is None:
            st.total_epochs = trainer.settings.epochs
        trainer.stop_training = st.epoch >= st.total_epochs
        log.info("training %d epochs of %d iterations (%d done)", st.total_epochs,
                 trainer.settings.iterations_per_epoch, st.iterations_done)

    def on_iteration_end(self, trainer: Trainer, loss: float) -> None:
        trainer.scheduler.step()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        trainer.stop_training = trainer.state.epoch >= trainer.state.total_epochs

    def on_train_end(self, trainer: Trainer) -> None:
        log.info("trained %d iterations (%d epochs) in %.0f s", trainer.state.iterations_done,
                 trainer.state.epoch, trainer.elapsed())

    def describe(self, trainer: Trainer, epoch: int) -> str:
        return f"epoch {epoch}/{trainer.state.total_epochs}"


class BudgetController:
    """The learning rate as a function of the elapsed fraction of the time budget; stop at its end.

    ``estimate(trainer) -> (per-epoch validation s, final validation s)`` is measured once, at the first
    start, and kept in the checkpointed state so a resumed run sees the same span. The per-epoch
    reserve is then replaced by each epoch's measured validation time.
    """

    def __init__(self, budget_s: float,
                 estimate: Callable[[Trainer], tuple[float, FinalValidation]] = estimate_validation_seconds):
        self.budget_s = float(budget_s)
        self.estimate = estimate
        self._iteration_start: float | None = None
        self._recent_s: deque[float] = deque(maxlen=RECENT_ITERATIONS)  # whole iterations, this run

    # ------------------------------------------------------------------ the clock
    def span_s(self, trainer: Trainer) -> float:
        """Seconds the training itself may take: the budget less the validations that follow it."""
        st = trainer.state
        return self.budget_s - (st.final_validation_s or 0.0) - (st.validation_epoch_s or 0.0)

    def fraction(self, trainer: Trainer) -> float:
        """Elapsed share of the span (may exceed 1 once the span is spent)."""
        span = self.span_s(trainer)
        return trainer.elapsed() / span if span > 0 else 1.0

    def _set_lr(self, trainer: Trainer) -> None:
        trainer.scheduler.set_fraction(min(1.0, self.fraction(trainer)))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer) -> None:
        st = trainer.state
        if not st.final_validation_s:  # first run; a resumed run keeps its reserve (and so its span)
            from .distributed import agree  # torchrun: rank 0's measurement on every rank, for one span

            st.validation_epoch_s, final = agree(self.estimate(trainer) if trainer.is_main else None,
                                                 trainer.dist)
            st.final_validation_s, st.final_validation = final.seconds, final.to_dict()
            log.info("%s", final.reason)
        span, elapsed = self.span_s(trainer), trainer.elapsed()
        log.info("time budget %.0f s: %.0f s for training, %.1f s reserved for the final validation "
                 "(estimated) and %.1f s for the last epoch's validation; %.1f s spent so far",
                 self.budget_s, span, st.final_validation_s, st.validation_epoch_s, elapsed)
        if span - elapsed <= 0:
            log.warning("the time budget of %.0f s leaves no time for training (%.0f s reserved for "
                        "validation, %.0f s spent): one iteration at learning rate 0 is run; give a longer "
                        "--time-budget", self.budget_s, self.budget_s - span, elapsed)
        # a run that finished its last epoch (crashed before checkpoint_final.pt) trains nothing more
        trainer.stop_training = st.iterations_done > 0 and st.iteration_in_epoch == 0 and elapsed >= span
        self._set_lr(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._iteration_start = trainer.clock()
        self._set_lr(trainer)  # the validation took time

    def on_iteration_end(self, trainer: Trainer, loss: float) -> None:
        now = trainer.clock()
        if self._iteration_start is not None:  # the whole iteration: data, step and hooks
            self._recent_s.append(now - self._iteration_start)
        self._iteration_start = now
        # stop when the next iteration would end past the span: fraction 1 reached, decay complete.
        # (a median: one pause or hiccup does not end the training early, a lasting slowdown counts)
        next_s = statistics.median(self._recent_s) if self._recent_s else 0.0
        if trainer.elapsed() + next_s >= self.span_s(trainer):
            trainer.stop_training = True
            trainer.scheduler.set_fraction(1.0)
        else:
            self._set_lr(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["elapsed_fraction"] = round(self.fraction(trainer), 4)
        trainer.state.validation_epoch_s = record["validation_seconds"]  # measured: the next one costs as much

    def on_train_end(self, trainer: Trainer) -> None:
        st = trainer.state
        log.info("trained %d iterations in %.0f s of the %.0f s budget (%.1f s reserved for the final "
                 "validation)", st.iterations_done, trainer.elapsed(), self.budget_s, st.final_validation_s)

    def describe(self, trainer: Trainer, epoch: int) -> str:
        return f"epoch {epoch} ({100 * min(1.0, self.fraction(trainer)):.0f}% of the time budget)"
