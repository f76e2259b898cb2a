"""Which precision to train in on a CPU: measured on the real network, not assumed, and in a child process.

bf16 convolutions were measured 1.9-2.9x faster than fp32 for 3D U-Nets, but 0.94x for some 2D
ones, on an AVX512-BF16 CPU with torch 2.13 (docs/benchmarks/README.md), so the choice is timed.
bf16 training steps were also reported to kill the process with SIGSEGV in ``loss.backward()``
(docs/benchmarks/bf16_crash.md), so every candidate runs in its own child process
(:func:`autoseg.training.isolation.run_in_child`): a candidate whose child dies is reported and
dropped, and training falls back to fp32. The child also leaves this process's network and optimizer
untouched.
"""
from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .isolation import ChildCrashed, run_in_child

log = logging.getLogger(__name__)

PROBE_WARMUP_STEPS = 2  # untimed (oneDNN creates its kernels for the shapes)
PROBE_MAX_STEPS = 8  # timed steps per candidate ...
PROBE_MIN_STEPS = 3  # ... or fewer, at least these, once PROBE_SECONDS have passed
PROBE_SECONDS = 5.0
PROBE_TIMEOUT_S = 900.0  # a candidate's child still running after this is killed and dropped
FALLBACK = "fp32"
#: The probe runs only while its expected cost stays under this share of the training's time budget: on a
#: short budget with large patches it would otherwise eat much of the training it is meant to speed up.
PROBE_BUDGET_SHARE = 0.10
#: Starting one probe child (spawn, importing torch, building the network): ~2-4 s on 2 CPU cores.
PROBE_CHILD_START_S = 4.0
#: fp32 against the plan's per-iteration estimate, which was measured in the faster precision (bf16 steps of
#: 3D U-Nets were 1.9-2.9x faster than fp32).
PROBE_FP32_FACTOR = 2.0


class TrainerSteps:
    """``steps(precision)``: one real training step of ``trainer`` on ``batch`` in ``precision``.

    Picklable, to be run in a child process: it holds a shallow copy of the trainer without its hooks
    and LR scheduler (the probe steps are not part of the schedule)."""

    def __init__(self, trainer: Any, batch: Any):
        self.trainer = copy.copy(trainer)
        self.trainer.hooks, self.trainer.scheduler = [], None
        self.trainer.ddp = None  # the probe steps are this process's alone (no torchrun job in the child)
        self.batch = batch

    def __call__(self, precision: str) -> None:
        self.trainer.state.precision = precision
        self.trainer.train_step(self.batch)


def time_precisions(step: Callable[[str], None], candidates: Sequence[str] = ("fp32", "bf16"), *,
                    warmup: int = PROBE_WARMUP_STEPS, max_steps: int = PROBE_MAX_STEPS,
                    min_steps: int = PROBE_MIN_STEPS, seconds: float = PROBE_SECONDS,
                    timeout: float | None = PROBE_TIMEOUT_S,
                    start_method: str = "spawn") -> dict[str, float | ChildCrashed]:
    """Median seconds per training step for each precision, or the ChildCrashed of its child.

    Each candidate runs in a fresh child process (``step`` must be picklable, e.g. TrainerSteps):
    ``warmup`` untimed steps, then timed steps until ``max_steps``, or ``min_steps`` once ``seconds``
    have passed. A candidate other than fp32 whose steps raise an exception is reported as failed
    (logged) and dropped; an exception in fp32 is raised (training in fp32 would raise it too).
    """
    timings: dict[str, float | ChildCrashed] = {}
    for precision in candidates:
        try:
            timings[precision] = run_in_child(_time_steps, step, precision, warmup, max_steps, min_steps,
                                              seconds, timeout=timeout, start_method=start_method)
        except Exception as e:
            if precision == FALLBACK:
                raise
            timings[precision] = ChildCrashed(exitcode=0, notes={"error": f"{type(e).__name__}: {e}"})
    return timings


def _time_steps(step: Callable[[str], None], precision: str, warmup: int, max_steps: int, min_steps: int,
                seconds: float) -> float:
    for _ in range(warmup):
        step(precision)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps and not (len(times) >= min_steps and time.perf_counter() - start >= seconds):
        t0 = time.perf_counter()
        step(precision)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose_precision(timings: Mapping[str, float | ChildCrashed]) -> str:
    """The fastest candidate that survived its probe; fp32 when none did. Each failed candidate is
    logged as a warning naming it and how its child died (e.g. 'killed by signal 11 (SIGSEGV)')."""
    survivors = {p: t for p, t in timings.items() if not isinstance(t, ChildCrashed)}
    for precision, t in timings.items():
        if isinstance(t, ChildCrashed):
            why = t.notes.get("error") or f"its process was {t.describe()}"
            log.warning("precision probe: %s training steps failed (%s); not training in %s%s", precision, why,
                        precision, "" if survivors else f", falling back to {FALLBACK}")
    if not survivors:
        return FALLBACK
    return min(survivors, key=survivors.get)


def format_timings(timings: Mapping[str, float | ChildCrashed]) -> str:
    """'fp32 0.513 s/it, bf16 crashed (signal 11)' for the log."""
    parts = []
    for precision, t in timings.items():
        if isinstance(t, ChildCrashed):
            parts.append(f"{precision} failed" + (f" ({t.signal_name})" if t.signal is not None else ""))
        else:
            parts.append(f"{precision} {t:.3f} s/it")
    return ", ".join(parts)


def cuda_precision(bf16_supported: bool) -> tuple[str, str]:
    """(precision, reason) of ``auto`` on a CUDA GPU: bf16 autocast where the GPU supports it (Ampere and
    later: the range of fp32, so no gradient scaler), else fp16 autocast with a gradient scaler."""
    if bf16_supported:
        return "bf16", "precision auto on CUDA: bf16 autocast (the GPU supports bf16; fp32's range, no gradient scaler)"
    return "fp16", "precision auto on CUDA: fp16 autocast with a gradient scaler (this GPU has no bf16)"


def _choice_key(trainer: Any) -> dict[str, Any]:
    """What a measured precision choice depends on: the configuration's plan, the batch and patch, the
    threads, and the CPU class (model, usable cores, native bf16, torch version)."""
    import torch

    from .speed_probe import cpu_class

    s = trainer.settings
    return {"configuration_hash": s.configuration_hash, "batch_size": s.batch_size, "patch_size": list(s.patch_size),
            "threads": torch.get_num_threads(), **cpu_class()}


def remembered_choice(trainer: Any) -> dict[str, Any] | None:
    """The choice another fold of this configuration measured on this CPU class (``precision_choice.json``
    in the configuration's folder), or None when there is none for this key or it cannot be read."""
    try:
        saved = json.loads(trainer.wd.precision_choice_json(trainer.config.name).read_text(encoding="utf-8"))
        if saved.get("key") == _choice_key(trainer) and saved.get("choice") in ("fp32", "bf16"):
            return saved
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return None


def remember_choice(trainer: Any, choice: str, timings: Mapping[str, float | ChildCrashed], fold: str) -> None:
    """Keep ``choice`` for the configuration's other folds (best effort: a write that fails only costs them
    a measurement)."""
    from ..atomic import atomic_write_text

    record = {"key": _choice_key(trainer), "choice": choice, "measured_in_fold": fold,
              "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "timings": {k: (round(v, 4) if isinstance(v, float) else f"failed: {v.describe()}")
                          for k, v in timings.items()}}
    path = trainer.wd.precision_choice_json(trainer.config.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    except OSError as e:
        log.debug("cannot remember the precision choice in %s: %s", path, e)


def expected_probe_seconds(seconds_per_iteration: float) -> float:
    """What :func:`time_precisions` is expected to cost, fp32 and bf16, from the plan's seconds per iteration
    (measured in bf16 on a CPU with native bf16): per candidate a child start, the warm-up steps and the
    timed steps (at least ``PROBE_MIN_STEPS``; up to ``PROBE_MAX_STEPS`` while under ``PROBE_SECONDS``)."""
    total = 0.0
    for factor in (PROBE_FP32_FACTOR, 1.0):
        step = seconds_per_iteration * factor
        timed = max(PROBE_MIN_STEPS * step, min(PROBE_MAX_STEPS * step, PROBE_SECONDS))
        total += PROBE_CHILD_START_S + PROBE_WARMUP_STEPS * step + timed
    return total


def _unmeasured_choice(trainer: Any) -> tuple[str, str] | None:
    """(precision, reason) when measuring would cost more than ``PROBE_BUDGET_SHARE`` of the training's time
    budget: the precision the plan's CPU speed was measured in for this dimensionality (the faster one on
    reference U-Nets, ``hardware.cpu_unet_precision`` in plans.json). None when the probe is affordable or
    there is no such figure."""
    from ..store import RunStore
    from .recipe import planned_seconds_per_iteration

    budget = trainer.settings.time_budget_s
    seconds = planned_seconds_per_iteration(trainer.config)
    if not budget or seconds is None:
        return None
    cost = expected_probe_seconds(seconds)
    if cost <= PROBE_BUDGET_SHARE * float(budget):
        return None
    try:
        hardware = RunStore(trainer.wd).plans().hardware
    except Exception:  # noqa: BLE001 - no readable plans: measure as usual
        return None
    key = f"{len(trainer.config.patch_size)}d"
    choice = (hardware.cpu_unet_precision or {}).get(key)
    if choice not in ("fp32", "bf16"):
        return None
    return choice, (f"precision auto: {choice} without measuring this network: measuring fp32 and bf16 would "
                    f"take ~{cost:.0f} s, over {PROBE_BUDGET_SHARE:.0%} of the {float(budget):.0f} s budget; {choice} "
                    f"was the faster on this CPU's reference {key} U-Net (the plan's speed figure; not written to "
                    f"precision_choice.json, so a later training of this configuration with a longer budget measures)")


def resolve_precision(trainer: Any, train_it: Any) -> str:
    """The trainer's precision: its setting, or for "auto" on CUDA :func:`cuda_precision`, on a CPU without
    native bf16 fp32, else the faster of fp32 and bf16 on this network and batch, each timed in a child process
    (a candidate whose child crashes is dropped; fp32 when none survives).

    The CPU measurement costs 10-30 s of the training's budget (two child processes, a few steps each), more
    with large patches; when that would exceed a tenth of the training's time budget, the precision the plan's
    speed figure was measured in is taken instead (:func:`_unmeasured_choice`). It is made once per
    configuration and CPU class: the configuration's other folds reuse it from
    ``precision_choice.json`` (the same network, batch and patch). A measurement taken while other
    processes used more than a fifth of the CPU is used but not remembered: a busy machine can change
    which precision looks faster."""
    p = trainer.settings.precision
    if p != "auto":
        return p
    if trainer.device.type == "cuda":
        import torch

        choice, reason = cuda_precision(torch.cuda.is_bf16_supported())
        log.info("%s", reason)
        return choice
    from ..hardware import cpu_has_bf16
    from .isolation import note
    from .speed_probe import BUSY_SHARE, measure_share_of_others

    if not cpu_has_bf16():
        return "fp32"
    saved = remembered_choice(trainer)
    if saved is not None:
        best = saved["choice"]
        trainer.state.precision_probe = {k: v for k, v in saved.get("timings", {}).items() if isinstance(v, float)}
        log.info("precision auto: %s, measured in fold %s of %s on this CPU (%s; %s)", best,
                 saved.get("measured_in_fold", "?"), trainer.config.name,
                 ", ".join(f"{k} {v}" + (" s/it" if isinstance(v, float) else "") for k, v in saved.get("timings", {}).items()),
                 trainer.wd.precision_choice_json(trainer.config.name))
        note("precision", best)
        return best
    unmeasured = _unmeasured_choice(trainer)
    if unmeasured is not None:  # a bf16 crash still falls back to fp32 (training runs in a child: isolation.py)
        log.info("%s", unmeasured[1])
        note("precision", unmeasured[0])
        return unmeasured[0]
    # each candidate trains a few steps in its own child process: one that crashes (SIGSEGV) is dropped
    timings, others = measure_share_of_others(lambda: time_precisions(TrainerSteps(trainer, next(train_it))))
    best = choose_precision(timings)
    trainer.state.precision_probe = {k: round(v, 4) for k, v in timings.items() if isinstance(v, float)}
    log.info("precision auto: %s → %s", format_timings(timings), best)
    if others <= BUSY_SHARE:
        remember_choice(trainer, best, timings, str(trainer.settings.fold))
    else:
        log.info("precision auto: not remembered for the other folds: other processes used %.0f%% of the CPU "
                 "while it was measured", 100 * others)
    note("precision", best)  # for run_training_guarded, if this runs in its child
    return best
