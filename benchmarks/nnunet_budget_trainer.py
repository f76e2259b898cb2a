"""nnU-Net v2 trainer that ends inside a wall-clock budget: the fair nnU-Net baseline for autoseg.

``nnUNetTrainer_WallClock`` trains nnU-Net's default recipe unchanged (network, batch, patch,
augmentation, loss, SGD + poly LR, deep supervision, foreground oversampling, checkpoints, final
validation) except for the length of training:

* an epoch is ``AUTOSEG_BENCH_ITERS_PER_EPOCH`` (default 25) training iterations instead of 250,
  with a fifth as many pseudo-Dice validation iterations (nnU-Net's own 250:50 ratio);
* before training, one batch-1 inference forward pass is timed; times the number of forward passes
  nnU-Net's sliding-window validation will make (tiles x mirrorings over the validation cases) it
  gives an estimate of the final validation time;
* after the first epoch (its first, warm-up step discounted), the number of epochs is fixed so that
  training ends at the budget minus that estimate; the poly LR then decays to ~0 over exactly that
  schedule (during epoch 0 the LR is the initial one whatever the schedule length, so fixing it then
  is exact);
* a guard stops training early (mid-epoch if needed) if the budget would otherwise be overrun,
  e.g. when the machine slows down; ``stopped_by_deadline`` records it.

The budget is read from ``AUTOSEG_BENCH_BUDGET_S`` (seconds) and counted from ``AUTOSEG_BENCH_T0``
(a ``time.time()`` stamp set by benchmarks/nnunet_baseline.py just before it starts
``nnUNetv2_train``, so the budget covers the whole command), or from the trainer's creation.

Per-iteration times, per-epoch times, the schedule decision and the final-validation time (estimated
and measured) go to ``wallclock_timing.json`` in the fold's output folder.

nnU-Net finds trainers by class name inside ``nnunetv2.training.nnUNetTrainer``; the baseline script
copies this file there in the benchmark's own virtual environment. Outside that environment only the
pure helpers below are importable (they are unit-tested from the project's test-suite).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Sequence

BUDGET_ENV = "AUTOSEG_BENCH_BUDGET_S"
T0_ENV = "AUTOSEG_BENCH_T0"
ITERS_ENV = "AUTOSEG_BENCH_ITERS_PER_EPOCH"
DEFAULT_ITERS_PER_EPOCH = 25
TIMING_FILE = "wallclock_timing.json"
# Validation-time model: forward passes x the measured time of one batch-1 inference forward pass x a
# factor for the sliding window's own work (Gaussian weighting, flips, accumulation) and for the
# export workers competing for the same cores, plus a fixed cost (spawning nnU-Net's export pool,
# computing metrics) and a per-case cost (loading, export). Calibrated on Hippocampus 3d_fullres on a
# 2-core machine (measured 0.39-0.49 s per forward pass all included vs 0.27 s for a bare forward).
SINGLE_PATCH_PENALTY = 1.4
VALIDATION_FIXED_S = 15.0
VALIDATION_PER_CASE_S = 0.5


# --------------------------------------------------------------------------- pure helpers

def sliding_window_steps(image_size: Sequence[int], tile_size: Sequence[int], step: float = 0.5) -> int:
    """Number of tiles nnU-Net's sliding window uses on one image (the image is padded to at least the
    tile size first, as ``nnUNetPredictor`` does). Sizes are per spatial axis, same order."""
    n = 1
    for i, k in zip(image_size, tile_size):
        i = max(int(i), int(k))
        n *= int(math.ceil((i - k) / (k * step))) + 1
    return n


def count_validation_forwards(shapes: Sequence[Sequence[int]], patch_size: Sequence[int],
                              n_mirror_axes: int, step: float = 0.5) -> int:
    """Forward passes of nnU-Net's final validation: tiles × (2 ** mirror axes) summed over cases.

    ``shapes`` are the preprocessed spatial shapes (without the channel axis). A 2D patch on a 3D
    shape is applied slice by slice along the first axis."""
    total = 0
    for shape in shapes:
        shape = list(shape)
        slices = 1
        if len(patch_size) == 2 and len(shape) == 3:
            slices, shape = shape[0], shape[1:]
        total += slices * sliding_window_steps(shape, patch_size, step)
    return total * 2 ** int(n_mirror_axes)


def estimate_validation_seconds(n_forwards: int, seconds_per_patch: float, n_cases: int) -> float:
    """Seconds of nnU-Net's final validation from the forward count and the measured per-patch time."""
    return (n_forwards * seconds_per_patch * SINGLE_PATCH_PENALTY + VALIDATION_FIXED_S
            + VALIDATION_PER_CASE_S * n_cases)


def epochs_within_budget(budget_s: float, elapsed_s: float, epochs_done: int, epoch_s: float,
                         final_validation_s: float, margin_s: float | None = None) -> int:
    """Total number of epochs (>= ``epochs_done``, >= 1) whose schedule ends inside the budget.

    ``elapsed_s`` is the time used so far (since the budget's start) after ``epochs_done`` epochs of
    ``epoch_s`` seconds each; the final validation (``final_validation_s``) and a safety margin
    (default 2 % of the budget + 5 s, for the final checkpoint and shutting down workers) must fit too."""
    if margin_s is None:
        margin_s = 0.02 * budget_s + 5.0
    remaining = budget_s - elapsed_s - final_validation_s - margin_s
    more = int(remaining // epoch_s) if epoch_s > 0 and remaining > 0 else 0
    return max(1, epochs_done + more)


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2]


def must_stop(now_s: float, deadline_s: float, reserved_s: float, next_step_s: float) -> bool:
    """True when one more step of ``next_step_s`` seconds would leave less than ``reserved_s`` (the final
    validation and what else must follow training) before ``deadline_s``; times since the budget's start."""
    return now_s + next_step_s + reserved_s > deadline_s


# --------------------------------------------------------------------------- the trainer

try:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
except ImportError:  # imported outside the benchmark venv (unit tests of the helpers above)
    torch = None
    nnUNetTrainer = object


class nnUNetTrainer_WallClock(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming convention)
    """nnU-Net's default trainer with its epoch count sized to a wall-clock budget (see module doc)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: "torch.device" = None):
        super().__init__(plans, configuration, fold, dataset_json,
                         device if device is not None else torch.device("cuda"))
        if BUDGET_ENV not in os.environ:
            raise RuntimeError(f"{self.__class__.__name__} needs the environment variable {BUDGET_ENV} "
                               f"(seconds); run it through benchmarks/nnunet_baseline.py")
        self.budget_s = float(os.environ[BUDGET_ENV])
        self.t0 = float(os.environ.get(T0_ENV, time.time()))
        self.num_iterations_per_epoch = int(os.environ.get(ITERS_ENV, DEFAULT_ITERS_PER_EPOCH))
        self.num_val_iterations_per_epoch = max(1, round(self.num_iterations_per_epoch / 5))
        self.num_epochs = 1000  # provisional: fixed after the first epoch
        self._timing: dict[str, Any] = {
            "budget_s": self.budget_s, "budget_counted_from": "AUTOSEG_BENCH_T0" if T0_ENV in os.environ
            else "trainer creation", "iterations_per_epoch": self.num_iterations_per_epoch,
            "validation_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "num_epochs": None, "schedule_fixed_at_s": None, "estimated_final_validation_s": None,
            "final_validation_forwards": None, "seconds_per_validation_patch": None,
            "stopped_by_deadline": False, "iteration_seconds": [], "epochs": [],
            "training_seconds": None, "final_validation_s": None, "total_seconds": None}
        self._final_val_estimate_s: float | None = None
        self._per_patch_s: float | None = None  # seconds of one batch-1 inference forward pass
        self._val_shapes: list[list[int]] | None = None

    # -- helpers ---------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.time() - self.t0

    def _write_timing(self) -> None:
        t = self._timing
        its = t["iteration_seconds"]
        t["iterations_done"] = len(its)
        t["seconds_per_iteration_mean"] = round(sum(its) / len(its), 4) if its else None
        t["seconds_per_iteration_median"] = round(sorted(its)[len(its) // 2], 4) if its else None
        path = os.path.join(self.output_folder, TIMING_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(t, f, indent=1)
        os.replace(path + ".tmp", path)

    def _validation_shapes(self) -> list[list[int]]:
        if self._val_shapes is not None:
            return self._val_shapes
        _, val_keys = self.do_split()
        ds = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        shapes = []
        for k in ds.identifiers:
            data = ds.load_case(k)[0]
            shapes.append(list(data.shape[1:]))
        self._val_shapes = shapes
        return shapes

    def _estimate_final_validation(self, seconds_per_patch: float) -> float:
        self._per_patch_s = seconds_per_patch
        shapes = self._validation_shapes()
        mirror = self.inference_allowed_mirroring_axes or ()
        n = count_validation_forwards(shapes, self.configuration_manager.patch_size, len(mirror))
        est = estimate_validation_seconds(n, seconds_per_patch, len(shapes))
        self._timing.update(final_validation_forwards=n, seconds_per_validation_patch=round(seconds_per_patch, 4),
                            estimated_final_validation_s=round(est, 1))
        return est

    def _fix_schedule(self, epoch_s: float) -> None:
        """After epoch 0: fix num_epochs (and the poly LR's length) to end inside the budget."""
        n = epochs_within_budget(self.budget_s, self._elapsed(), self.current_epoch, epoch_s,
                                 self._final_val_estimate_s)
        self.num_epochs = n
        self.lr_scheduler.max_steps = n
        self._timing.update(num_epochs=n, schedule_fixed_at_s=round(self._elapsed(), 1))
        self.print_to_log_file(f"wall-clock budget {self.budget_s:.0f} s: epoch 0 took {epoch_s:.1f} s, "
                               f"final validation estimated at {self._final_val_estimate_s:.0f} s -> "
                               f"{n} epochs x {self.num_iterations_per_epoch} iterations")

    def _time_patch_forward(self, repeats: int = 3) -> float:
        """Median seconds of one inference forward pass on one patch (batch 1, deep supervision off),
        after a warm-up pass: the unit cost of the final sliding-window validation."""
        x = torch.randn((1, self.num_input_channels, *self.configuration_manager.patch_size), device=self.device)
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        times = []
        with torch.no_grad():
            for k in range(repeats + 1):
                ts = time.perf_counter()
                self.network(x)
                if k:
                    times.append(time.perf_counter() - ts)
        self.network.train()
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        return sorted(times)[len(times) // 2]

    # -- the loop (nnUNetTrainer.run_training with timing, the schedule fix and the deadline guard) --
    def run_training(self):
        self.on_train_start()
        deadline = self.budget_s
        t_train0 = time.time()
        self._final_val_estimate_s = self._estimate_final_validation(self._time_patch_forward())
        its = self._timing["iteration_seconds"]
        while self.current_epoch < self.num_epochs:
            t_epoch = time.time()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                ts = time.perf_counter()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                its.append(round(time.perf_counter() - ts, 4))
                if len(its) < 2:  # the first step includes warm-up (thread pools, allocator, workers)
                    continue
                # what must still fit after one more step: this epoch's pseudo-validation, the final
                # checkpoint (a few seconds) and the final validation
                step_s = _median(its[1:])
                still = (self._final_val_estimate_s + 5.0
                         + self.num_val_iterations_per_epoch * self.batch_size * self._per_patch_s)
                if must_stop(self._elapsed(), deadline, still, step_s):
                    self._timing["stopped_by_deadline"] = True
                    break
            t_train = time.time() - t_epoch
            self.on_train_epoch_end(train_outputs)
            t_val = time.time()
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            t_val = time.time() - t_val
            self.on_epoch_end()  # increments current_epoch
            epoch_s = time.time() - t_epoch
            self._timing["epochs"].append({"epoch": self.current_epoch - 1, "iterations": len(train_outputs),
                                           "train_s": round(t_train, 2), "pseudo_validation_s": round(t_val, 2),
                                           "epoch_s": round(epoch_s, 2), "lr": self.optimizer.param_groups[0]["lr"],
                                           "elapsed_s": round(self._elapsed(), 1)})
            if self._timing["num_epochs"] is None:
                # an epoch like the next ones: without the first step's warm-up, with all its iterations
                steady = _median(its[1:]) if len(its) > 1 else its[0]
                self._fix_schedule(epoch_s - (t_train - steady * self.num_iterations_per_epoch))
            self._write_timing()
            if self._timing["stopped_by_deadline"]:
                self.print_to_log_file("wall-clock budget reached: training stops early")
                break
        self._timing["training_seconds"] = round(time.time() - t_train0, 1)
        self._write_timing()
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        t = time.time()
        super().perform_actual_validation(save_probabilities)
        self._timing["final_validation_s"] = round(time.time() - t, 1)
        self._timing["total_seconds"] = round(self._elapsed(), 1)
        self._write_timing()
