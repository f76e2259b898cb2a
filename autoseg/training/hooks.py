"""Trainer hooks: the named moments of the loop, and the built-in hooks for progress, records, checkpoints.

``Trainer.fit`` calls, in this order, for every hook in ``trainer.hooks`` (the budget or epoch control
first, then the progress bar, records and checkpoints below, then the user's hooks)::

    on_train_start(trainer)
    per epoch:  on_epoch_start(trainer)
                per iteration: on_iteration_end(trainer, loss)
                on_epoch_end(trainer, record)       # after the epoch's validation
    on_train_end(trainer)                           # then checkpoint_final.pt is written

A hook implements any subset. Setting ``trainer.stop_training = True`` ends the current epoch after the
iteration (its validation still runs) and the training after it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from .records import append_log, plot_progress

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

PLOT_EVERY_S = 30.0  # progress.png is redrawn at most this often on the trainer's clock (and at the end)
DATA_WAIT_WARNING = 0.10  # on a GPU, waiting for batches longer than this share of an iteration is worth a warning


class TrainerHook(Protocol):
    """Optional callbacks; implement any subset (see the module docstring for when each is called)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer) -> None: ...

    def on_iteration_end(self, trainer: Trainer, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class ProgressBar:
    """A tqdm bar per epoch with the loss of the last iteration."""

    def __init__(self) -> None:
        self._bar = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        st = trainer.state
        self._bar = tqdm(total=trainer.settings.iterations_per_epoch, initial=st.iteration_in_epoch, leave=False,
                         unit="it", desc=trainer.control.describe(trainer, st.epoch + 1))

    def on_iteration_end(self, trainer: Trainer, loss: float) -> None:
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{loss:.3f}")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._bar.close()


class EpochRecords:
    """training_log.jsonl (one line per epoch), the epoch's log line, and progress.png."""

    def __init__(self) -> None:
        self._last_plot: float | None = None
        self._warned_wait = False

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        s = trainer.settings
        if not trainer.is_main:  # torchrun: rank 0 alone writes and reports
            return
        append_log(trainer.wd.training_log_jsonl(trainer.config.name, s.fold), record)
        log.info("%s  train loss %.4f  val loss %.4f  pseudo-Dice %s (EMA %.4f)  lr %.5f  %.1f s",
                 trainer.control.describe(trainer, record["epoch"]), record["train_loss"], record["val_loss"],
                 " ".join(f"{d:.3f}" for d in record["val_dice_per_class"]), record["ema_dice"], record["lr"],
                 record["epoch_seconds"])
        wait = record.get("data_wait_fraction", 0.0)
        if trainer.device.type == "cuda" and wait > DATA_WAIT_WARNING and not self._warned_wait:
            self._warned_wait = True
            log.warning("the GPU waited for data %.0f%% of each training iteration (epoch %d): the augmentation on %d "
                        "CPU worker(s) does not keep up with batch %d; give the training more CPU cores (or "
                        "--num-workers), or a GPU-side augmentation", 100 * wait, record["epoch"],
                        s.num_workers, s.batch_size)
        if self._last_plot is None or trainer.clock() - self._last_plot > PLOT_EVERY_S:
            self._plot(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self._plot(trainer)

    def _plot(self, trainer: Trainer) -> None:
        plot_progress(trainer.state.log, trainer.wd.progress_png(trainer.config.name, trainer.settings.fold))
        self._last_plot = trainer.clock()


class Checkpoints:
    """checkpoint_latest.pt every ``checkpoint_every_s`` and at every epoch end; checkpoint_best.pt when
    the EMA pseudo-Dice improves."""

    def __init__(self) -> None:
        self._last_save: float | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._last_save = trainer.clock()

    def on_iteration_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.clock() - self._last_save > trainer.settings.checkpoint_every_s:
            self._save(trainer, "latest")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        st = trainer.state
        if st.ema_dice > st.best_ema_dice:
            st.best_ema_dice = st.ema_dice
            trainer.save("best")
        self._save(trainer, "latest")

    def _save(self, trainer: Trainer, which: str) -> None:
        trainer.save(which)
        self._last_save = trainer.clock()
