"""The training loop: thin, with hooks. Network, loss, schedule, data, checkpoints live in their own modules.

One Trainer trains one configuration on one fold. :meth:`Trainer.fit` is the whole loop; when to stop
and the learning rate come from the control hook (``training/budget_control.py``: a time budget or a
number of epochs), progress, records and checkpoints from ``training/hooks.py``. Re-running the same
command resumes from the latest checkpoint (written at every epoch end and at least every
``checkpoint_every_s`` seconds). Checkpoints are verified before a resume; a bad one is moved aside
(``<name>.corrupt-<stamp>``) and the previous good one used, else training starts over with a fresh
training_log.jsonl (the old one and progress.png moved aside as ``<name>.old-<stamp>``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import aside_stamp, move_aside
from ..schemas import ConfigurationPlan, TrainingSettings
from ..workdir import Workdir
from .augmentation import deep_supervision_scales
from .batch_iterator import make_training_iterators
from .budget_control import BudgetController, EpochControl
from .distributed import DATA_SEED_STRIDE, DistContext, RankZeroClock, agree, barrier, check_weights_agree, \
    rank_batch_sizes, sum_over_ranks
from ..model.checkpoint import load_resume_checkpoint, restore_rng_states, save_checkpoint
from .hooks import Checkpoints, EpochRecords, ProgressBar, TrainerHook
from .losses import DeepSupervisionLoss, deep_supervision_weights, hard_dice_counts, make_loss
from ..model.network import build_network
from .records import rewrite_log
from .schedule import FractionLR, PolyLR, make_optimizer, make_schedule

__all__ = ["TrainState", "Trainer", "TrainerHook"]

log = logging.getLogger(__name__)

EMA_WEIGHT = 0.9  # nnU-Net's pseudo-Dice smoothing for checkpoint_best


@dataclass
class TrainState:
    """Plain, checkpointed position of the run."""

    epoch: int = 0  # epochs completed
    iteration_in_epoch: int = 0  # iterations done in the current (unfinished) epoch
    iterations_done: int = 0  # over all epochs (under a time budget the last epoch may be cut short)
    total_epochs: int | None = None  # without a time budget: fixed by the first run
    elapsed_s: float = 0.0  # wall seconds spent in this training so far, over every run (budget clock)
    validation_epoch_s: float | None = None  # time budget: seconds of one epoch's validation (reserve)
    final_validation_s: float | None = None  # time budget: estimated seconds of the final validation
    # time budget: how the final validation predicts (mirror, step_size, estimated_s, reason); None: thoroughly
    final_validation: dict[str, Any] | None = None
    pretrained: dict[str, Any] | None = None  # fine-tuning: the model the first run started from (model/pretrained.py)
    phase: int = 1  # `autoseg train --continue-for`: 2, 3, ... for each continuation of a finished training
    precision: str | None = None  # resolved precision ("auto" is measured once, then fixed)
    precision_probe: dict[str, float] = field(default_factory=dict)  # measured s/iteration per precision
    channels_last: bool | None = None  # CUDA: the measured memory layout (training/gpu_kernels.py); None: not chosen
    ema_dice: float | None = None
    best_ema_dice: float = -1.0
    train_seconds: float = 0.0  # seconds inside train_step, over every run
    log: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)  # current epoch so far


class Trainer:
    """Trains one configuration on one fold: :meth:`fit` runs the loop and calls ``self.hooks``
    (the control, progress bar, records and checkpoints, then the user's hooks; see training/hooks.py)."""

    def __init__(self, workdir: Workdir, config: ConfigurationPlan, settings: TrainingSettings,
                 train_ids: list[str], val_ids: list[str], *,
                 previous_stage_segs: Mapping[str, Path] | None = None,
                 progress: bool = True, hooks: list[TrainerHook] | None = None,
                 clock: Callable[[], float] = time.monotonic, dist: DistContext | None = None):
        """``previous_stage_segs`` (cascade): case id -> the previous stage's ``<case>_seg.npy`` on this
        configuration's grid, for every training and validation case; fed as one-hot input channels.
        ``hooks``: the user's hooks, called after the built-in ones (see ``training/hooks.py``).
        ``clock``: seconds (monotonic) for the time budget, checkpoint interval and records; the budget
        clock starts here. ``dist``: this process's rank in a torchrun job (``training/distributed.py``):
        the network trains data-parallel, rank 0 alone writes, and the clock is rank 0's."""
        self.wd, self.config, self.settings = workdir, config, settings
        self.previous_stage_segs = dict(previous_stage_segs) if previous_stage_segs is not None else None
        self.train_ids, self.val_ids = train_ids, val_ids
        self.dist = dist
        self.is_main = dist is None or dist.is_main  # the one process that writes
        self.progress = progress and self.is_main
        self.fold_dir = workdir.fold_dir(config.name, settings.fold)
        self.device = torch.device(dist.device(settings.device) if dist is not None else settings.device)
        self.state = TrainState()
        self.clock: Callable[[], float] = RankZeroClock(clock, dist) if dist is not None else clock
        self.ddp: torch.nn.Module | None = None  # the network wrapped for data-parallel steps (torchrun)
        self._clock_start = self.clock()  # the budget clock: this run started here (rank 0's in a torchrun job)
        self._elapsed_before = 0.0  # elapsed_s restored from a checkpoint
        torch.manual_seed(settings.seed)
        np.random.seed(settings.seed % 2**32)
        self.network = build_network(config.network).to(self.device)
        self.optimizer = make_optimizer(self.network, settings)
        self.scheduler: PolyLR | FractionLR | None = make_schedule(self.optimizer, settings)
        self.scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA: made once the precision is known (fit)
        self._saved_scaler: dict | None = None  # a resumed checkpoint's scaler state
        n_out = len(config.network.features_per_stage) - 1
        self.ds_scales = deep_supervision_scales(config.network.strides, n_out)
        weights = (deep_supervision_weights(n_out, settings.deep_supervision_decay)
                   if config.network.deep_supervision else [1.0])
        base = make_loss(config.labels, batch_dice=settings.batch_dice)  # nnU-Net: batch Dice; regions: Dice + BCE
        self.loss = DeepSupervisionLoss(base, weights) if config.network.deep_supervision else base
        self.control = (BudgetController(settings.time_budget_s) if settings.time_budget_s is not None
                        else EpochControl())
        self.stop_training = False  # set by a hook: ends the epoch after this iteration, then the training
        # `--continue-for`: the finished phase's final checkpoint a new phase starts from (usecases/train.py)
        self.continue_from: Path | None = None
        self.hooks: list[TrainerHook] = [self.control, *([ProgressBar()] if self.progress else []), EpochRecords(),
                                         Checkpoints(), *(hooks or [])]
        self._epoch_start = self._epoch_train_s = self._epoch_wait_s = 0.0
        self._epoch_iterations = 0

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainState:
        """Train (or resume) until the control stops it; writes checkpoint_final.pt."""
        stamp = aside_stamp()
        if not self.is_main:
            barrier(self.dist)  # rank 0 resumes first: a damaged checkpoint is moved aside once
        resumed = self._resume(stamp)  # a bad checkpoint is moved aside: the previous good one, or none
        if self.is_main:
            barrier(self.dist)
        if resumed is None and self.continue_from is not None:  # a new phase: the log goes on, the weights too
            from ..model.pretrained import load_pretrained

            self._rewrite_log()
            load_pretrained(self.continue_from, self.network, what=f"{self.config.name}'s plan")
            log.info("phase %d: continuing from the weights of %s with a new schedule", self.state.phase,
                     self.continue_from.name)
        elif resumed is None:
            if self.is_main:
                self._set_aside_old_records(stamp)  # starting over: a new log, not epochs 1, 1, 2, ...
            if self.settings.pretrained:  # fine-tuning: the first run starts from another model's weights
                from dataclasses import asdict

                from ..model.pretrained import load_pretrained

                loaded = load_pretrained(self.settings.pretrained, self.network, what=f"{self.config.name}'s plan")
                self.state.pretrained = asdict(loaded)
                log.info("%s", loaded.describe())
        else:  # lines written after the checkpoint are dropped: the checkpoint is the truth
            self._rewrite_log()
            if resumed.name == self.wd.checkpoint(self.config.name, self.settings.fold, "final").name:
                log.info("training already finished (%s loaded)", resumed.name)
                return self.state
        train_it, val_it = self._iterators()
        try:
            if self.state.precision is None:  # measured by rank 0 in a torchrun job, the same on every rank
                self.state.precision = agree(self._resolve_precision(train_it) if self.is_main else None, self.dist)
            if self.device.type == "cuda":
                self._choose_memory_format(train_it)
            if self.state.precision == "fp16" and self.scaler is None:
                self.scaler = torch.amp.GradScaler("cuda")
                if self._saved_scaler:
                    self.scaler.load_state_dict(self._saved_scaler)
            self._wrap_data_parallel()
            self._tick()
            self._call("on_train_start")
            while not self.stop_training:
                self._start_epoch()
                while not self.stop_training and self.state.iteration_in_epoch < self.settings.iterations_per_epoch:
                    self._call("on_iteration_end", self._train_iteration(train_it))
                record = self._end_epoch(self._validate(val_it))
                self._call("on_epoch_end", record)
            self._call("on_train_end")
        finally:
            for it in (train_it, val_it):
                if hasattr(it, "close"):
                    it.close()
        if self.dist is not None:
            log.info("%s", check_weights_agree(self.network, self.dist))
        self.save("final")
        if self.is_main:
            self.wd.checkpoint(self.config.name, self.settings.fold, "latest").unlink(missing_ok=True)
        return self.state

    def _choose_memory_format(self, train_it) -> None:
        """CUDA: channels_last when it measured faster on this network and batch (training/gpu_kernels.py)."""
        from .gpu_kernels import apply_measured_memory_format

        apply_measured_memory_format(self, train_it, make_optimizer, _float)

    def _tick(self) -> None:
        """In a torchrun job: every rank takes rank 0's time now (the same points of the loop on every rank)."""
        if isinstance(self.clock, RankZeroClock):
            self.clock.sync()

    def _rewrite_log(self) -> None:
        if self.is_main:
            rewrite_log(self.wd.training_log_jsonl(self.config.name, self.settings.fold), self.state.log)

    def _wrap_data_parallel(self) -> None:
        """torchrun: DistributedDataParallel for the training steps (its start copies rank 0's weights)."""
        if self.dist is None or self.ddp is not None:
            return
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        if isinstance(self.loss, DeepSupervisionLoss):  # DDP needs a gradient for every parameter: the
            self.loss.every_output_in_graph = True  # coarsest head (weight 0) then gets zeros, not none
        self.ddp = DistributedDataParallel(self.network, device_ids=ids)
        sizes = rank_batch_sizes(self.settings.batch_size, self.dist.world_size)
        log.info("data-parallel: %s; global batch %d dealt as %s per rank", self.dist.describe(), sum(sizes),
                 sizes)

    def _call(self, moment: str, *args: Any) -> None:
        for hook in self.hooks:
            fn = getattr(hook, moment, None)
            if fn is not None:
                fn(self, *args)

    def _start_epoch(self) -> None:
        self.network.train()
        self._tick()
        self._epoch_start, self._epoch_train_s, self._epoch_iterations = self.clock(), 0.0, 0
        self._epoch_wait_s = 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._call("on_epoch_start")

    def _train_iteration(self, train_it) -> float:
        st = self.state
        w0 = time.perf_counter()
        batch = next(train_it)
        self._epoch_wait_s += time.perf_counter() - w0  # the step waited this long for its batch
        t0 = self.clock()
        loss = self.train_step(batch)
        self._tick()
        dt = self.clock() - t0
        st.train_seconds += dt
        self._epoch_train_s += dt
        self._epoch_iterations += 1
        st.epoch_losses.append(loss)
        st.iteration_in_epoch += 1
        st.iterations_done += 1
        return loss

    def _end_epoch(self, val: dict[str, Any]) -> dict[str, Any]:
        """The epoch's record (appended to the state's log); advances the epoch counter."""
        st = self.state
        st.ema_dice = val["mean_dice"] if st.ema_dice is None else (
            EMA_WEIGHT * st.ema_dice + (1 - EMA_WEIGHT) * val["mean_dice"])
        train_loss = float(np.mean(st.epoch_losses)) if st.epoch_losses else float("nan")
        record = {"epoch": st.epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                  "val_dice_per_class": val["dice"], "val_dice": val["mean_dice"], "ema_dice": st.ema_dice,
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "epoch_seconds": round(self.clock() - self._epoch_start, 2),
                  "seconds_per_iteration": round(self._epoch_train_s / max(1, self._epoch_iterations), 4),
                  "iterations": st.iteration_in_epoch, "validation_seconds": round(val["seconds"], 4),
                  "elapsed_s": round(self.elapsed(), 1), "phase": st.phase,
                  # share of the training iterations' wall time spent waiting for the augmented batch
                  "data_wait_fraction": round(self._epoch_wait_s / max(1e-9, self._epoch_wait_s + self._epoch_train_s), 4)}
        if self.device.type == "cuda":  # what the plan's estimate is checked against (docs/benchmarks/gpu.md)
            record["peak_memory_gb"] = round(torch.cuda.max_memory_reserved(self.device) / 1024 ** 3, 3)
        st.log.append(record)
        st.epoch += 1
        st.iteration_in_epoch = 0
        st.epoch_losses = []
        return record

    # ------------------------------------------------------------------ data
    def _iterators(self):
        ds = self.ds_scales if self.config.network.deep_supervision else [[1.0] * self.config.dims]
        s = self.settings
        if self.dist is not None:  # this rank's share of the global batch, its own patches
            from dataclasses import replace

            s = replace(s, batch_size=rank_batch_sizes(s.batch_size, self.dist.world_size)[self.dist.rank],
                        seed=s.seed + DATA_SEED_STRIDE * self.dist.rank)
        return make_training_iterators(self.wd.preprocessed_dir(self.config.data_identifier), self.config,
                                       s, self.train_ids, self.val_ids, ds, self.state.epoch,
                                       self.previous_stage_segs)

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor] | torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True).float()
        if self.state.channels_last:
            from .gpu_kernels import memory_format

            data = data.contiguous(memory_format=memory_format(self.network, self.config.dims))
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
            output = (self.ddp if self.ddp is not None else self.network)(data)
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
        tp, fp, fn = hard_dice_counts(out0, t0, self.config.labels)
        return loss, _np(tp), _np(fp), _np(fn)

    # ------------------------------------------------------------------ checkpoints
    def elapsed(self) -> float:
        """Wall seconds spent in this training, over every run (the time-budget clock)."""
        return self._elapsed_before + self.clock() - self._clock_start

    def save(self, which: str) -> None:
        """Write checkpoint_<which>.pt (``latest``, ``best``, ``final``) with the state as plain data."""
        self.state.elapsed_s = self.elapsed()
        if not self.is_main:  # torchrun: rank 0 alone writes
            return
        state = {k: v for k, v in self.state.__dict__.items()}
        save_checkpoint(self.wd.checkpoint(self.config.name, self.settings.fold, which),
                        model=self.network, optimizer=self.optimizer, scheduler=self.scheduler,
                        scaler=self.scaler, state=json.loads(json.dumps(state)))

    def _resume(self, stamp: str | None = None) -> Path | None:
        """Load the checkpoint to resume from (final, else latest; verified against this network, a bad
        one moved aside as ``<name>.corrupt-<stamp>``); its path, or None when training starts over."""
        found = load_resume_checkpoint(self.fold_dir, map_location=self.device, network=self.network,
                                       set_aside_bad=self.is_main, stamp=stamp)
        if found is None:
            return None
        path, ckpt = found
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = _state_from_checkpoint(ckpt["state"])
        self._elapsed_before = self.state.elapsed_s  # + the time since this trainer was created
        try:
            self.scheduler.load_state_dict(ckpt.get("scheduler") or {})
        except KeyError:  # another kind of schedule (budget <-> epochs since the first run)
            log.warning("%s holds another learning-rate schedule than this run's (%s): continuing from the "
                        "%d iterations done", path.name, type(self.scheduler).__name__, self.state.iterations_done)
            if isinstance(self.scheduler, PolyLR):
                self.scheduler.load_state_dict({**self.scheduler.state_dict(),
                                                "current_step": self.state.iterations_done})
        self._saved_scaler = ckpt.get("scaler")  # fp16: the gradient scaler goes on from here (fit)
        restore_rng_states(ckpt)
        log.info("resumed from %s at epoch %d (+%d iterations), %.0f s spent", path.name, self.state.epoch,
                 self.state.iteration_in_epoch, self.state.elapsed_s)
        return path

    def _set_aside_old_records(self, stamp: str) -> None:
        """Training starts from scratch: an earlier run's training_log.jsonl and progress.png (whose
        checkpoints are gone or were moved aside) are renamed ``<name>.old-<stamp>``."""
        name, fold = self.config.name, self.settings.fold
        for path in (self.wd.training_log_jsonl(name, fold), self.wd.progress_png(name, fold)):
            if path.exists():
                moved = move_aside(path, "old", stamp)
                log.warning("%s fold %s starts from scratch: the earlier run's %s was moved aside to %s",
                            name, fold, path.name, moved.name)

    def _resolve_precision(self, train_it) -> str:
        """"auto": measured (CPU: the faster of fp32 and bf16 in child processes) or chosen (CUDA: bf16 where
        supported, else fp16); see training/precision.py."""
        from .precision import resolve_precision

        return resolve_precision(self, train_it)

    @torch.inference_mode()
    def _validate(self, val_it) -> dict[str, Any]:
        """The epoch's pseudo-Dice on ``validation_iterations_per_epoch`` patches (and its seconds)."""
        t0 = self.clock()
        self.network.eval()
        k = len(self.config.labels.items())  # foreground classes, or regions
        tp, fp, fn = np.zeros(k), np.zeros(k), np.zeros(k)
        losses = []
        for _ in range(self.settings.validation_iterations_per_epoch):
            loss, a, b, c = self.validation_step(next(val_it))
            losses.append(loss)
            tp, fp, fn = tp + a, fp + b, fn + c
        if self.dist is not None:  # every rank's patches count: the same Dice (and "best") on every rank
            summed = sum_over_ranks([*tp, *fp, *fn, float(np.sum(losses)), float(len(losses))], self.dist)
            tp, fp, fn = (np.array(summed[i * k:(i + 1) * k]) for i in range(3))
            losses = [summed[3 * k] / summed[3 * k + 1]] if summed[3 * k + 1] else []
        self.network.train()
        self._tick()
        dice = [float(2 * t / (2 * t + f + n)) if (2 * t + f + n) > 0 else float("nan")
                for t, f, n in zip(tp, fp, fn)]
        finite = [d for d in dice if not math.isnan(d)]
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "dice": dice,
                "mean_dice": float(np.mean(finite)) if finite else 0.0, "seconds": self.clock() - t0}


def _float(output):
    if isinstance(output, (list, tuple)):
        return [o.float() for o in output]
    return output.float()


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, float)


def _state_from_checkpoint(saved: dict[str, Any]) -> TrainState:
    """The checkpoint's state; keys of older versions (the calibrated iteration schedule) are dropped."""
    known = {f.name for f in fields(TrainState)}
    state = TrainState(**{k: v for k, v in saved.items() if k in known})
    if "iterations_done" not in saved:
        state.iterations_done = sum(int(r.get("iterations", 0)) for r in state.log) + state.iteration_in_epoch
    return state
