"""The training loop: thin, with hooks. Network, loss, schedule, data, checkpoints live in their own modules.

One Trainer trains one configuration on one fold. Re-running the same command resumes from the
latest checkpoint (written at every epoch end and at least every ``checkpoint_every_s`` seconds).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..schemas import ConfigurationPlan, TrainingSettings
from ..workdir import Workdir
from .augmentation import deep_supervision_scales
from .batch_iterator import make_training_iterators
from .budget import (final_validation_seconds, seconds_per_tile,
                     shortened_total_iterations, total_iterations_for_budget)
from ..model.checkpoint import load_resume_checkpoint, restore_rng_states, save_checkpoint
from .losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, hard_dice_counts
from ..model.network import build_network
from .precision import time_precisions
from .schedule import PolyLR

log = logging.getLogger(__name__)

CALIBRATION_ITERATIONS = 12  # iterations timed before the epoch count is fixed under a time budget
BUDGET_SAFETY = 0.95  # the schedule plans for 95% of the budget: checkpoints, plots and noise take the rest
CALIBRATION_WARMUP = 3  # of those, the first ones are not counted (one-off start-up costs)
GUARD_EVERY = 25  # iterations between re-projections of the finish time under a time budget
EMA_WEIGHT = 0.9  # nnU-Net's pseudo-Dice smoothing for checkpoint_best
PLOT_EVERY_S = 30.0  # progress.png is redrawn at most this often (and after the last epoch)


class TrainerHook(Protocol):
    """Optional callbacks; implement any subset."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """Plain, checkpointed position of the run."""

    epoch: int = 0  # epochs completed
    iteration_in_epoch: int = 0  # iterations done in the current (unfinished) epoch
    total_epochs: int | None = None  # fixed once (from settings or the time budget); may shrink
    total_iterations: int | None = None  # the schedule's length; the last epoch may be cut short
    elapsed_s: float = 0.0  # wall seconds spent in this training so far, over every run (budget clock)
    validation_epoch_s: float = 0.0  # estimated seconds of one epoch's validation patches
    final_validation_s: float = 0.0  # estimated seconds of the final full-resolution validation
    recent_seconds_per_iteration: float | None = None  # exponential average, drives the budget guard
    seconds_per_iteration: float | None = None
    precision: str | None = None  # resolved precision ("auto" is measured once, then fixed)
    precision_probe: dict[str, float] = field(default_factory=dict)  # measured s/iteration per precision
    ema_dice: float | None = None
    best_ema_dice: float = -1.0
    train_seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)  # current epoch so far


class Trainer:
    def __init__(self, workdir: Workdir, config: ConfigurationPlan, settings: TrainingSettings,
                 train_ids: list[str], val_ids: list[str], *,
                 previous_stage_segs: Mapping[str, Path] | None = None,
                 progress: bool = True, hooks: list[TrainerHook] | None = None):
        """``previous_stage_segs`` (cascade): case id -> the previous stage's ``<case>_seg.npy`` on this
        configuration's grid, for every training and validation case; fed as one-hot input channels."""
        self.wd, self.config, self.settings = workdir, config, settings
        self.previous_stage_segs = dict(previous_stage_segs) if previous_stage_segs is not None else None
        self.train_ids, self.val_ids = train_ids, val_ids
        self.progress, self.hooks = progress, list(hooks or [])
        self.fold_dir = workdir.fold_dir(config.name, settings.fold)
        self.device = torch.device(settings.device)
        self.state = TrainState()
        torch.manual_seed(settings.seed)
        np.random.seed(settings.seed % 2**32)
        self.network = build_network(config.network).to(self.device)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=settings.initial_lr,
                                         momentum=settings.momentum, nesterov=True,
                                         weight_decay=settings.weight_decay)
        self.scheduler: PolyLR | None = None
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
        n_out = len(config.network.features_per_stage) - 1
        self.ds_scales = deep_supervision_scales(config.network.strides, n_out)
        weights = deep_supervision_weights(n_out) if config.network.deep_supervision else [1.0]
        base = DiceCELoss(batch_dice=True)  # nnU-Net: batch Dice for 2d and 3d_fullres
        self.loss = DeepSupervisionLoss(base, weights) if config.network.deep_supervision else base
        self._last_checkpoint_time = time.monotonic()
        self._last_plot_time = 0.0
        self._clock_start = time.monotonic()  # the budget clock: this run started here
        self._calibration_times: list[float] = []
        self._elapsed_before = 0.0  # elapsed_s restored from a checkpoint

    # ------------------------------------------------------------------ data
    def _iterators(self):
        ds = self.ds_scales if self.config.network.deep_supervision else [[1.0] * self.config.dims]
        return make_training_iterators(self.wd.preprocessed_dir(self.config.data_identifier), self.config,
                                       self.settings, self.train_ids, self.val_ids, ds, self.state.epoch,
                                       self.previous_stage_segs)

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor] | torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True).float()
        target = batch["target"] if "target" in batch else batch["seg"]
        if isinstance(target, (list, tuple)):
            target = [t.to(self.device, non_blocking=True).long() for t in target]
            if not self.config.network.deep_supervision:
                target = target[0]
        else:
            target = target.to(self.device, non_blocking=True).long()
            if self.config.network.deep_supervision:
                target = [target]
        return data, target

    def _autocast(self):
        p = self.state.precision or self.settings.precision
        if p == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if p == "fp16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(self.device.type, enabled=False)

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict) -> float:
        data, target = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
        loss = self.loss(_float(output), target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip_norm)
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())

    @torch.inference_mode()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        data, target = self._to_device(batch)
        with self._autocast():
            output = self.network(data)
        output = _float(output)
        loss = float(self.loss(output, target))
        out0 = output[0] if isinstance(output, (list, tuple)) else output
        t0 = target[0] if isinstance(target, (list, tuple)) else target
        tp, fp, fn = hard_dice_counts(out0, t0, self.config.network.num_classes)
        return loss, _np(tp), _np(fp), _np(fn)

    # ------------------------------------------------------------------ checkpoints
    def elapsed(self) -> float:
        """Wall seconds spent in this training, over every run (the time-budget clock)."""
        return self._elapsed_before + time.monotonic() - self._clock_start

    def _save(self, which: str) -> None:
        self.state.elapsed_s = self.elapsed()
        state = {k: v for k, v in self.state.__dict__.items()}
        save_checkpoint(self.wd.checkpoint(self.config.name, self.settings.fold, which),
                        model=self.network, optimizer=self.optimizer, scheduler=self.scheduler,
                        scaler=self.scaler, state=json.loads(json.dumps(state)))
        if which == "latest":
            self._last_checkpoint_time = time.monotonic()

    def _resume(self) -> bool:
        found = load_resume_checkpoint(self.fold_dir, map_location=self.device)
        if found is None:
            return False
        path, ckpt = found
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        self._elapsed_before, self._clock_start = self.state.elapsed_s, time.monotonic()
        if self.state.total_iterations is not None:
            self._make_scheduler()
            if ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_states(ckpt)
        log.info("resumed from %s at epoch %d (+%d iterations)", path.name, self.state.epoch,
                 self.state.iteration_in_epoch)
        return True

    def _make_scheduler(self) -> None:
        total = self.state.total_iterations
        self.scheduler = PolyLR(self.optimizer, self.settings.initial_lr, total,
                                exponent=self.settings.poly_exponent)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainState:
        """Train (or resume) until the schedule is complete; writes checkpoint_final.pt."""
        from .records import append_log, plot_progress, rewrite_log

        if self._resume():  # lines written after the checkpoint are dropped: the checkpoint is the truth
            rewrite_log(self.wd.training_log_jsonl(self.config.name, self.settings.fold), self.state.log)
        if self.wd.checkpoint(self.config.name, self.settings.fold, "final").exists():
            log.info("training already finished (checkpoint_final.pt exists)")
            return self.state
        s = self.settings
        if self.state.total_epochs is None and s.time_budget_s is None:
            self.state.total_epochs = s.epochs
            self.state.total_iterations = s.epochs * s.iterations_per_epoch
            self._make_scheduler()
        train_it, val_it = self._iterators()
        if self.state.precision is None:
            self.state.precision = self._resolve_precision(train_it)
        try:
            while self.state.total_epochs is None or self.state.epoch < self.state.total_epochs:
                record = self._run_epoch(train_it, val_it)
                append_log(self.wd.training_log_jsonl(self.config.name, s.fold), record)
                last = self.state.epoch >= (self.state.total_epochs or 0)
                if last or time.monotonic() - self._last_plot_time > PLOT_EVERY_S:
                    plot_progress(self.state.log, self.wd.progress_png(self.config.name, s.fold))
                    self._last_plot_time = time.monotonic()
                for h in self.hooks:
                    if hasattr(h, "on_epoch_end"):
                        h.on_epoch_end(self, record)
        finally:
            for it in (train_it, val_it):
                if hasattr(it, "close"):
                    it.close()
        self._save("final")
        latest = self.wd.checkpoint(self.config.name, s.fold, "latest")
        latest.unlink(missing_ok=True)
        return self.state

    def _run_epoch(self, train_it, val_it) -> dict[str, Any]:
        from tqdm import tqdm

        s, st = self.settings, self.state
        self.network.train()
        t_epoch = time.monotonic()
        bar = tqdm(total=self._iterations_this_epoch(), initial=st.iteration_in_epoch, leave=False, unit="it",
                   disable=not self.progress, desc=f"epoch {st.epoch + 1}/{st.total_epochs or '?'}")
        done_before = st.iteration_in_epoch
        while st.iteration_in_epoch < self._iterations_this_epoch():
            t0 = time.monotonic()
            st.epoch_losses.append(self.train_step(next(train_it)))
            st.iteration_in_epoch += 1
            dt = time.monotonic() - t0
            st.train_seconds += dt
            if st.total_iterations is None:
                self._calibration_times.append(dt)
            st.recent_seconds_per_iteration = dt if st.recent_seconds_per_iteration is None else (
                0.9 * st.recent_seconds_per_iteration + 0.1 * dt)
            bar.update(1)
            bar.set_postfix(loss=f"{st.epoch_losses[-1]:.3f}")
            if st.total_epochs is None and st.iteration_in_epoch == min(CALIBRATION_ITERATIONS,
                                                                        s.iterations_per_epoch):
                self._fix_schedule_from_budget()
                bar.set_description(f"epoch {st.epoch + 1}/{st.total_epochs}")
                bar.total = self._iterations_this_epoch()
            elif st.total_iterations is not None and st.iteration_in_epoch % GUARD_EVERY == 0:
                self._guard_budget()
                bar.total = self._iterations_this_epoch()
            if time.monotonic() - self._last_checkpoint_time > s.checkpoint_every_s:
                self._save("latest")
        bar.close()
        train_time = time.monotonic() - t_epoch
        n_iterations = max(1, st.iteration_in_epoch - done_before)
        val = self._validate(val_it)
        st.ema_dice = val["mean_dice"] if st.ema_dice is None else (
            EMA_WEIGHT * st.ema_dice + (1 - EMA_WEIGHT) * val["mean_dice"])
        record = {"epoch": st.epoch + 1, "train_loss": float(np.mean(st.epoch_losses)),
                  "val_loss": val["loss"], "val_dice_per_class": val["dice"], "val_dice": val["mean_dice"],
                  "ema_dice": st.ema_dice, "lr": self.optimizer.param_groups[0]["lr"],
                  "epoch_seconds": round(time.monotonic() - t_epoch, 2),
                  "seconds_per_iteration": round(train_time / n_iterations, 4),
                  "iterations": st.iteration_in_epoch}
        st.log.append(record)
        st.epoch += 1
        st.iteration_in_epoch = 0
        st.epoch_losses = []
        if st.total_iterations is not None and s.time_budget_s is not None:
            self._guard_budget()
        log.info("epoch %d/%d  train loss %.4f  val loss %.4f  pseudo-Dice %s (EMA %.4f)  lr %.5f  %.1f s",
                 record["epoch"], st.total_epochs, record["train_loss"], record["val_loss"],
                 " ".join(f"{d:.3f}" for d in val["dice"]), st.ema_dice, record["lr"], record["epoch_seconds"])
        if st.ema_dice > st.best_ema_dice:
            st.best_ema_dice = st.ema_dice
            self._save("best")
        self._save("latest")
        return record

    def _resolve_precision(self, train_it) -> str:
        """"auto": the faster of fp32 and bf16 on this network, timed in child processes; a candidate
        whose child crashes is dropped, fp32 when none survives (see training/precision.py)."""
        p = self.settings.precision
        if p != "auto":
            return p
        if self.device.type == "cuda":
            return "fp16"
        from ..hardware import cpu_has_bf16
        from .isolation import note
        from .precision import TrainerSteps, choose_precision, format_timings

        if not cpu_has_bf16():
            return "fp32"
        # each candidate trains a few steps in its own child process: one that crashes (SIGSEGV) is dropped
        timings = time_precisions(TrainerSteps(self, next(train_it)))
        best = choose_precision(timings)
        self.state.precision_probe = {k: round(v, 4) for k, v in timings.items() if isinstance(v, float)}
        log.info("precision auto: %s → %s", format_timings(timings), best)
        note("precision", best)  # for run_training_guarded, if this runs in its child
        return best

    def _iterations_this_epoch(self) -> int:
        ipe = self.settings.iterations_per_epoch
        if self.state.total_iterations is None:
            return ipe
        return max(0, min(ipe, self.state.total_iterations - self.state.epoch * ipe))

    def _guard_budget(self) -> None:
        """Re-project the finish time; shorten the schedule if iterations got slower than calibrated.

        The poly decay is recomputed towards the earlier end (never extended), and the last epoch
        may be cut short, so that training plus the final validation still ends inside the budget.
        """
        s, st = self.settings, self.state
        spi = st.recent_seconds_per_iteration or st.seconds_per_iteration
        if s.time_budget_s is None or not spi:
            return
        ipe = s.iterations_per_epoch
        done = st.epoch * ipe + st.iteration_in_epoch
        epochs_left = max(0, (st.total_epochs or 0) - st.epoch)
        left = s.time_budget_s - self.elapsed() - st.final_validation_s - st.validation_epoch_s * epochs_left
        shorter = shortened_total_iterations(done, st.total_iterations, left, spi)
        if shorter is not None:
            old, st.total_iterations = st.total_iterations, shorter
            st.total_epochs = max(st.epoch + (1 if st.iteration_in_epoch else 0), -(-st.total_iterations // ipe))
            if self.scheduler is not None:
                self.scheduler.total_steps = max(st.total_iterations, self.scheduler.current_step, 1)
            log.info("time budget guard: %.3f s/iteration now (calibrated %.3f): schedule shortened from %d "
                     "to %d iterations to end inside %.0f s", spi, st.seconds_per_iteration or spi, old,
                     st.total_iterations, s.time_budget_s)

    def _fix_schedule_from_budget(self) -> None:
        """Fix the schedule so that training (and the final validation) ends inside the budget."""
        s, st = self.settings, self.state
        times = self._calibration_times
        # the first iterations include one-off costs (oneDNN kernel creation, page cache): skip them
        spi = (float(np.mean(times[CALIBRATION_WARMUP:] if len(times) > 2 * CALIBRATION_WARMUP else times))
               if times else st.train_seconds / max(1, st.iteration_in_epoch))  # (resumed right here)
        st.seconds_per_iteration = spi
        per_tile = self._seconds_per_tile()
        val_s = per_tile * s.batch_size * s.validation_iterations_per_epoch * 1.5  # + loading the patches
        final_val_s = final_validation_seconds(self.wd.preprocessed_dir(self.config.data_identifier),
                                               self.val_ids, s.patch_size, self.config.dims,
                                               len(self.config.mirror_axes), per_tile,
                                               self.config.network.num_classes)
        st.validation_epoch_s, st.final_validation_s = val_s, final_val_s
        remaining = s.time_budget_s - self.elapsed()
        available = BUDGET_SAFETY * (remaining + spi * st.iteration_in_epoch) - final_val_s
        st.total_iterations = total_iterations_for_budget(available, spi, s.iterations_per_epoch, val_s,
                                                          done=st.iteration_in_epoch)
        st.total_epochs = -(-st.total_iterations // s.iterations_per_epoch)
        self._make_scheduler()
        for _ in range(st.iteration_in_epoch):  # the timed iterations are part of the schedule
            self.scheduler.step()
        log.info("time budget %.0f s: %.3f s/iteration measured → %d iterations (%d epochs of up to %d; "
                 "final validation estimated at %.0f s)", s.time_budget_s, spi, st.total_iterations,
                 st.total_epochs, s.iterations_per_epoch, final_val_s)

    def _seconds_per_tile(self) -> float:
        return seconds_per_tile(self.network, self.config.network.in_channels, self.settings.patch_size,
                                self.device, self._autocast)

    @torch.inference_mode()
    def _validate(self, val_it) -> dict[str, Any]:
        self.network.eval()
        k = self.config.network.num_classes - 1
        tp, fp, fn = np.zeros(k), np.zeros(k), np.zeros(k)
        losses = []
        for _ in range(self.settings.validation_iterations_per_epoch):
            loss, a, b, c = self.validation_step(next(val_it))
            losses.append(loss)
            tp, fp, fn = tp + a, fp + b, fn + c
        self.network.train()
        dice = [float(2 * t / (2 * t + f + n)) if (2 * t + f + n) > 0 else float("nan")
                for t, f, n in zip(tp, fp, fn)]
        finite = [d for d in dice if not math.isnan(d)]
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "dice": dice,
                "mean_dice": float(np.mean(finite)) if finite else 0.0}


def _float(output):
    if isinstance(output, (list, tuple)):
        return [o.float() for o in output]
    return output.float()


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, float)
