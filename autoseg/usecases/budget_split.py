"""Time arithmetic of `autoseg run` and the demo: how one wall-clock budget is shared.

A run (see :mod:`autoseg.usecases.run`) plans, trains the (configuration, fold) pairs it chose, runs
find-best and optionally predicts inside one budget; the demo (:mod:`autoseg.usecases.demo`) adds its
dataset before and its evaluation and overlay after. Training takes what the other stages leave: the
stages already done cost what they cost (measured), the stages after training are reserved from
estimates (refined from the measured validation times as folds finish), and every training also pays
a fixed start-up outside its own budget clock. The trainings then share the rest equally; the share
is recomputed before each training, so time an earlier training did not use (or overran) moves to the
later ones. Plain arithmetic: no torch, no clock.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import AutosegError

#: A training needs at least this long to calibrate its schedule and learn anything useful.
MIN_TRAINING_S = 20.0
#: Per training, outside its budget clock: reading plans and settings, building the network,
#: writing the summary; measured ~1-2 s on 2 CPU cores, doubled for safety.
TRAINING_OVERHEAD_S = 3.0
#: Writing the demo dataset and planning it (fingerprint, CPU throughput probe, preprocessing):
#: ~1 s and ~8-16 s on 2 CPU cores; used only to size the plan before they have run.
DATASET_ESTIMATE_S = 5.0
PLAN_ESTIMATE_S = 30.0
#: Share of the whole budget reserved for find-best, predict, evaluate and the overlay before any
#: validation has been timed (predicting with every fold of two configurations costs about as much
#: as all the folds' final validations together).
TAIL_FRACTION_GUESS = 0.15
#: find-best reads and scores every cross-validation case for each candidate and learns postprocessing.
FIND_BEST_S_PER_CASE = 0.4
#: evaluate (per held-out case) and drawing the overlay.
EVALUATE_S_PER_CASE = 0.2
OVERLAY_S = 5.0
#: predict: loading each fold's weights once, and a margin on the measured validation time per case.
MODEL_LOAD_S = 0.5
PREDICT_MARGIN = 1.2


def _suggest(seconds: float) -> str:
    """A --time-budget value of at least ``seconds``, in whole minutes (or seconds under a minute)."""
    if seconds <= 60:
        return f"{math.ceil(seconds)}s"
    return f"{math.ceil(seconds / 60)}m"


def minimum_budget(n_trainings: int, *, min_training_s: float = MIN_TRAINING_S, before_s: float = 0.0,
                   after_s: float = 0.0) -> float:
    """The smallest total budget for which :func:`planning_budget_per_training` gives ``n_trainings``
    trainings ``min_training_s`` each, with ``before_s``/``after_s`` spent before/after the run."""
    return (n_trainings * (min_training_s + TRAINING_OVERHEAD_S) + PLAN_ESTIMATE_S) / (1.0 - TAIL_FRACTION_GUESS) \
        + before_s + after_s


def planning_budget_per_training(total_s: float, n_trainings: int, *,
                                 min_training_s: float = MIN_TRAINING_S) -> float:
    """The per-training budget a run plans with, before anything has run (whole seconds).

    Deterministic in its arguments, so that rerunning with the same ``--time-budget`` finds
    plans.json current. Raises AutosegError naming a budget that works when a training would get
    less than ``min_training_s``.
    """
    fixed = PLAN_ESTIMATE_S + TAIL_FRACTION_GUESS * total_s
    share = (total_s - fixed) / n_trainings - TRAINING_OVERHEAD_S
    if share < min_training_s:
        raise budget_too_small(total_s, minimum_budget(n_trainings, min_training_s=min_training_s),
                               f"after planning (~{PLAN_ESTIMATE_S:.0f} s) and find-best/predict (~"
                               f"{TAIL_FRACTION_GUESS * total_s:.0f} s), each of {n_trainings} trainings would get "
                               f"{max(share, 0.0):.0f} s, below the {min_training_s:.0f} s a training needs")
    return float(math.floor(share))


def budget_too_small(total_s: float, needed_s: float, why: str) -> AutosegError:
    """The error for a --time-budget under ``needed_s``: what it would give, and a budget that works."""
    return AutosegError(f"the time budget of {total_s:.0f} s is too small: {why}; use --time-budget "
                        f"{_suggest(needed_s)} or more (at least {math.ceil(needed_s)} s)")


def estimate_tail_seconds(total_s: float, configurations: Sequence[str],
                          validation_s_per_case: Mapping[str, float | None], *, n_folds: int,
                          n_cv_cases: int, n_test_cases: int, evaluate: bool = True) -> float:
    """Seconds to reserve for find-best, predict, evaluate and the overlay.

    ``validation_s_per_case``: per configuration, the measured final-validation seconds per case of
    one fold (None while none of its folds has validated). Predicting a held-out case with all
    ``n_folds`` folds of a configuration costs about ``n_folds`` such validations; the selection may
    be an ensemble of every configuration, so all are counted. An unmeasured configuration is
    charged its part of :data:`TAIL_FRACTION_GUESS` of the budget instead.
    """
    n = max(1, len(configurations))
    predict = 0.0
    for c in configurations if n_test_cases else ():  # nothing to predict: nothing to reserve
        measured = validation_s_per_case.get(c)
        if measured is None:
            predict += TAIL_FRACTION_GUESS * total_s / n
        else:
            predict += n_folds * (n_test_cases * measured * PREDICT_MARGIN + MODEL_LOAD_S)
    after = EVALUATE_S_PER_CASE * n_test_cases + OVERLAY_S if evaluate else 0.0
    return predict + FIND_BEST_S_PER_CASE * n_cv_cases + after


def split_training_budget(total_s: float, spent_s: float, n_trainings: int, *, reserved_s: float,
                          overhead_per_training_s: float = TRAINING_OVERHEAD_S,
                          min_training_s: float = MIN_TRAINING_S, strict: bool = True) -> list[float]:
    """The budget of each of ``n_trainings`` trainings still to run: equal shares of what is left.

    What is left = ``total_s`` − ``spent_s`` (already used) − ``reserved_s`` (the stages after
    training) − ``overhead_per_training_s`` per training. With the shares, everything sums to
    ``total_s``. A share under ``min_training_s`` raises AutosegError naming a total budget that
    would work (``strict``), or (``strict=False``, for a demo already running behind its schedule)
    every training gets ``min_training_s`` and the total overruns.
    """
    if n_trainings <= 0:
        return []
    left = total_s - spent_s - reserved_s - n_trainings * overhead_per_training_s
    share = left / n_trainings
    if share < min_training_s:
        if not strict:
            return [float(min_training_s)] * n_trainings
        needed = spent_s + reserved_s + n_trainings * (min_training_s + overhead_per_training_s)
        raise budget_too_small(total_s, needed, f"{spent_s:.0f} s are spent, {reserved_s:.0f} s are kept for the "
                                                f"stages after training, and {n_trainings} training(s) would get "
                                                f"{max(share, 0.0):.0f} s each (plus {overhead_per_training_s:.0f} s "
                                                f"start-up), below the {min_training_s:.0f} s a training needs")
    return [float(share)] * n_trainings


def trainings_that_fit(total_s: float, spent_s: float, needs_s: Sequence[float], *, reserved_s: float,
                       overhead_per_training_s: float = TRAINING_OVERHEAD_S,
                       groups: Sequence[str | None] | None = None) -> tuple[int, float]:
    """How many of the trainings still to run (in order of priority, each needing ``needs_s[i]`` seconds
    to be worth running: the minimum training plus its final validation) fit what is left, and the equal
    share each of those gets: the largest k whose share (total − spent − reserved − k × overhead) / k
    covers the largest need of the first k. ``groups``: trainings with the same name are all or nothing (the
    folds of a configuration that find-best can only compare once every fold is trained); None counts alone
    (the primary configuration, selected on the folds it has). (0, 0.0) when not even the next one fits."""
    n = len(needs_s)
    for k in range(n, 0, -1):
        if groups is not None and k < n and groups[k] is not None and groups[k] == groups[k - 1]:
            continue  # the cut would split a group: part of a configuration's folds is worth nothing
        share = (total_s - spent_s - reserved_s - k * overhead_per_training_s) / k
        if share >= max(needs_s[:k]):
            return k, float(share)
    return 0, 0.0
