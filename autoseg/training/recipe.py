"""The training recipe: optimizer, peak learning rate, decay shape and warm-up, chosen from the number
of iterations the training will run.

nnU-Net's recipe (SGD, Nesterov momentum 0.99, lr 0.01, poly decay, no warm-up) is tuned for 250,000
iterations. Under a short budget (a CPU, a few minutes to an hour: a few hundred to a few thousand
iterations) the study in docs/benchmarks/recipe_study.md measured AdamW with a linear decay to zero
(Li, Yumer, Ramanan, ICLR 2020: the most robust shape under a budget) and a short warm-up to learn
more in the same iterations. Long schedules keep nnU-Net's recipe: nothing here measured better there.
"""
from __future__ import annotations

from typing import Any

from ..schemas import ConfigurationPlan

#: name -> the training settings it sets
RECIPES: dict[str, dict[str, Any]] = {
    "nnunet": {"optimizer": "sgd", "initial_lr": 0.01, "momentum": 0.99, "weight_decay": 3e-5,
               "lr_shape": "poly", "warmup_fraction": 0.0},
    "short": {"optimizer": "adamw", "initial_lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-2,
              "lr_shape": "linear", "warmup_fraction": 0.05},
}
#: Trainings expected to run fewer iterations than this use the short-schedule recipe.
SHORT_SCHEDULE_MAX_ITERATIONS = 20_000


#: The planner's cost model counts convolution FLOPs only; an iteration also loads and augments a batch
#: and steps the optimizer: ~0.04-0.2 s for the smallest plans measured on a 2-core CPU. Iteration counts
#: for the recipe are estimated with at least this many seconds per iteration.
MIN_SECONDS_PER_ITERATION = 0.05


def planned_seconds_per_iteration(config: ConfigurationPlan) -> float | None:
    """The plan's estimate of one training iteration on the CPU it was made for (the
    ``training_iterations`` decision), at least :data:`MIN_SECONDS_PER_ITERATION`; None without one."""
    for d in config.decisions:
        if d.subject == "training_iterations":
            try:
                return max(float(d.inputs["seconds_per_iteration"]), MIN_SECONDS_PER_ITERATION)
            except (KeyError, TypeError, ValueError):
                return None
    return None


def choose_recipe(config: ConfigurationPlan, settings: dict[str, Any]) -> tuple[str, str]:
    """(recipe name, the reason) for a training with the resolved ``settings`` (time budget, epochs)."""
    budget = settings.get("time_budget_s")
    if budget is None:
        iterations = int(settings["epochs"]) * int(settings["iterations_per_epoch"])
        source = f"{settings['epochs']} epochs x {settings['iterations_per_epoch']} iterations"
    else:
        seconds = planned_seconds_per_iteration(config)
        if seconds is None:
            return "nnunet", (f"recipe nnunet (SGD momentum 0.99, lr 0.01, poly decay): the plan has no iteration "
                              f"estimate for a {budget:.0f} s budget on this device (GPU plans), so nnU-Net's")
        iterations = round(float(budget) / seconds)
        source = f"{budget:.0f} s at the plan's ~{seconds:.2f} s per iteration"
    if iterations < SHORT_SCHEDULE_MAX_ITERATIONS:
        return "short", (f"recipe short (AdamW lr 2e-3, linear decay to 0, 5% warm-up): ~{iterations} iterations "
                         f"({source}) < {SHORT_SCHEDULE_MAX_ITERATIONS}; it learned more than nnU-Net's recipe in "
                         f"short schedules (docs/benchmarks/recipe_study.md)")
    return "nnunet", (f"recipe nnunet (SGD momentum 0.99, lr 0.01, poly decay): ~{iterations} iterations ({source}) "
                      f">= {SHORT_SCHEDULE_MAX_ITERATIONS}, a long schedule")
