"""`autoseg run` and `autoseg demo`: the whole pipeline inside one time budget."""
from __future__ import annotations

import argparse

from .common import common_options, duration

# --------------------------------------------------------------------------- run

def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="plan, train, find-best (and predict) inside one wall-clock budget",
                       description="The whole pipeline for one result inside --time-budget (planning and selection "
                                   "included): plans, decides which configurations and how many folds are worth "
                                   "training in the time there is (and says why), trains them sharing the budget "
                                   "(re-split after every training from the measured times), runs find-best and, "
                                   "with --predict IN OUT, segments IN. Rerunning resumes.")
    p.add_argument("dataset", help="raw dataset folder in nnU-Net v2 layout")
    p.add_argument("--workdir", required=True, help="work folder for everything autoseg writes")
    p.add_argument("--time-budget", type=duration, required=True, metavar="DURATION",
                   help="wall-clock budget of the whole run, e.g. 2h, 45m")
    p.add_argument("--predict", nargs=2, default=None, metavar=("IN", "OUT"),
                   help="also segment the cases in folder IN into OUT with the selection")
    p.add_argument("--planner", default="default", help="registered planner name (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="plan and train for this device")
    common_options(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from ..usecases.run import run

    pin, pout = args.predict if args.predict else (None, None)
    result = run(args.dataset, args.workdir, time_budget_s=args.time_budget, predict_input=pin, predict_output=pout,
                 planner=args.planner, device=args.device, num_workers=args.num_workers,
                 progress=not args.no_progress, report=lambda line: print(line, flush=True))
    print("\n=== summary ===")
    for name, seconds in result.stage_seconds.items():
        print(f"  {name:12s} {seconds:7.1f} s")
    print(f"  {'total':12s} {result.total_seconds:7.1f} s (budget {result.time_budget_s:.0f} s)")
    print(f"selection {result.selection.winner}: cross-validation foreground Dice "
          f"{result.selection.foreground_dice_after_postprocessing:.4f} (folds {result.selection.folds}); "
          f"`autoseg predict --workdir {args.workdir} -i IN -o OUT` segments new cases")
    return 0


# --------------------------------------------------------------------------- demo

def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a built-in synthetic dataset, within a time budget",
                       description="Generates a synthetic 3D dataset (anisotropic, bias field and noise, two "
                                   "classes of different sizes, 30 training + 6 held-out cases) in --workdir, "
                                   "then runs `autoseg run` on it (plan, printing every decision; the trainings "
                                   "worth the time; find-best; prediction of the held-out cases), evaluates the "
                                   "predictions against their reference labels and writes overlay.png; all "
                                   "within --time-budget. Rerunning reuses what is done.")
    p.add_argument("--workdir", default="autoseg_demo", help="folder for the dataset, the run, the predictions "
                   "and overlay.png (default: %(default)s)")
    p.add_argument("--time-budget", type=duration, default=600.0, metavar="DURATION",
                   help="wall-clock budget of the whole demo, e.g. 10m (default 10m); the trainings share what "
                        "the other stages leave")
    common_options(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..usecases.demo import run_demo

    def report(line: str) -> None:
        print(line, flush=True)

    result = run_demo(args.workdir, time_budget_s=args.time_budget, progress=not args.no_progress,
                      report=report, num_workers=args.num_workers)
    print("\n=== summary ===")
    stages = result.stage_seconds
    for name, seconds in stages.items():
        print(f"  {name:12s} {seconds:7.1f} s")
    print(f"  {'total':12s} {result.total_seconds:7.1f} s (budget {result.time_budget_s:.0f} s)")
    dice = result.mean_foreground_dice if result.mean_foreground_dice is not None else float("nan")
    per_class = ", ".join(f"{k} {v:.4f}" for k, v in result.dice_per_class.items() if v is not None)
    n = len(result.trainings)
    print(f"mean foreground Dice on the held-out cases: {dice:.4f} ({per_class}); selection "
          f"{result.selection['winner']}; {n} training(s) run now")
    print("outputs:")
    for name, path in result.paths.items():
        print(f"  {name:12s} {path}")
    if result.dice_below_target:
        print(f"WARNING: the mean foreground Dice {dice:.4f} is below the demo's target of "
              f"{result.target_dice:.2f}: the trainings were too short for this machine or it was busy; "
              f"rerun with a larger --time-budget in a new --workdir")
    return 0


