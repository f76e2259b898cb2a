"""`autoseg plan`, `autoseg train` and `autoseg find-best`: the subcommands that build a model."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from ..schemas import to_dict
from .common import common_options, duration

# --------------------------------------------------------------------------- plan

def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="check a dataset, fingerprint it, plan, split and preprocess",
                       description="validate → fingerprint → plan → split → preprocess, into --workdir. "
                                   "Safe to re-run: outputs that are current are kept.")
    p.add_argument("dataset", nargs="?", help="raw dataset folder in nnU-Net v2 layout "
                                              "(imagesTr/, labelsTr/, dataset.json)")
    p.add_argument("--workdir", help="work folder for everything autoseg writes")
    p.add_argument("--planner", default="default", help="registered planner name (default: %(default)s)")
    p.add_argument("--list-planners", action="store_true", help="list the registered planners and exit")
    p.add_argument("--explain", action="store_true", help="print every planning decision and its reason")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="plan for this device instead of the detected one")
    p.add_argument("--gpu-memory-gb", type=float, default=None, metavar="GB",
                   help="plan for a GPU with this much memory (implies --device cuda)")
    p.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                   help="wall-clock budget per training (one fold of one configuration), e.g. 20m, 1h30m; "
                        "recorded in plans.json: it sizes the plan and `autoseg train` uses it (a CPU plan "
                        "without it records the 20m it assumed)")
    p.add_argument("--cpu-gflops", type=float, default=None, metavar="N",
                   help="plan for a CPU that trains U-Nets at N GFLOP/s instead of measuring this one "
                        "(a few seconds); e.g. to plan on one machine for another")
    p.add_argument("--plans-from", default=None, metavar="OTHER_RUN",
                   help="use another run's plans (spacing, normalization, patch, batch, network topology) for this "
                        "dataset, as nnU-Net's plans transfer; its models can then be fine-tuned here (train "
                        "--pretrained)")
    p.add_argument("--no-dry-run", action="store_true",
                   help="on CUDA, keep the memory proxy's patch and batch instead of correcting them by dry runs of "
                        "real training steps on the GPU (measured peak memory under the target)")
    p.add_argument("--remeasure-cpu", action="store_true",
                   help="measure this CPU's training speed again instead of reusing the figure remembered for "
                        "it (~/.cache/autoseg/cpu_speed.json; $AUTOSEG_CACHE_DIR moves it): plans then change "
                        "only when the measurement does")
    p.add_argument("--splits", default=None, metavar="FILE",
                   help="your own splits file (nnU-Net splits_final.json or autoseg splits.json)")
    p.add_argument("--overwrite", action="store_true", help="redo every step even if its output is current")
    common_options(p)
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..planning.registry import available_planners

    if args.list_planners:
        for name, desc in sorted(available_planners().items()):
            print(f"{name:12s} {desc}")
        return 0
    if not args.dataset or not args.workdir:
        raise UsageError("autoseg plan needs a DATASET folder and --workdir RUN, e.g. "
                           "`autoseg plan data/Dataset102_Hippocampus --workdir runs/hippo`")
    from ..usecases.plan import plan_dataset

    result = plan_dataset(args.dataset, args.workdir, planner=args.planner, device=args.device,
                         gpu_memory_gb=args.gpu_memory_gb, time_budget_s=args.time_budget,
                         splits_file=args.splits, num_workers=args.num_workers, cpu_gflops=args.cpu_gflops,
                         progress=not args.no_progress, overwrite=args.overwrite,
                         remeasure_cpu=args.remeasure_cpu, plans_from=args.plans_from,
                         gpu_dry_run=not args.no_dry_run)
    plans = result.plans
    if args.explain:
        print("\n".join(result.explained))
    else:
        print(f"planned {', '.join(plans.configurations)} with planner '{plans.planner}' "
              f"for {plans.hardware.device}")
        for name, cfg in plans.configurations.items():
            print(f"  {name:20s} spacing {_fmt(cfg.spacing_zyx_mm)} mm, patch {_fmt(cfg.patch_size)}, "
                  f"batch {cfg.batch_size}, {len(cfg.network.features_per_stage)} stages "
                  f"{cfg.network.features_per_stage[0]}→{cfg.network.features_per_stage[-1]} features")
        for w in plans.warnings:
            print(f"  warning: {w}")
        print(f"the reasons: `autoseg plan {args.dataset} --workdir {args.workdir} --explain` "
              f"(also in {args.workdir}/plans_explained.txt)")
    return 0


def _fmt(values: Sequence[float]) -> str:
    return "×".join(f"{v:g}" for v in values)


# --------------------------------------------------------------------------- train

def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train",
                       help="train one fold of one configuration, or of every planned one (resumes by itself)",
                       description="Train a U-Net for one configuration and fold from plans.json, then "
                                   "predict the fold's held-out cases at full resolution. Re-running the "
                                   "same command after a crash continues from the latest checkpoint.")
    p.add_argument("--workdir", required=True, help="work folder made by `autoseg plan`")
    p.add_argument("-c", "--configuration", default=None,
                   help="2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres (default: every planned configuration, "
                        "one after the other, 3d_lowres before 3d_cascade_fullres; --time-budget then applies "
                        "to each)")
    p.add_argument("--fold", required=True, help="0..4, or 'all' (train on every case)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default 1000, or sized "
                   "from the time budget)")
    p.add_argument("--iterations-per-epoch", type=int, default=None, metavar="N")
    p.add_argument("--validation-iterations", type=int, default=None, metavar="N",
                   help="validation patches batches per epoch (pseudo-Dice)")
    p.add_argument("--recipe", choices=["auto", "nnunet", "short"], default=None,
                   help="optimizer and learning-rate schedule: nnunet (SGD momentum 0.99, lr 0.01, poly decay) or "
                        "short (AdamW lr 2e-3, linear decay, 5%% warm-up); default auto: short when the training "
                        "is expected to run fewer than 20,000 iterations (a time budget on a CPU), else nnunet")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="fine-tune: start from the weights of another autoseg model (a checkpoint file or a fold "
                        "folder RUN/results/CONFIG/fold_K) with the same network topology and input channels; "
                        "segmentation heads are re-initialised when the classes differ")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--oversample-fraction", type=float, default=None, metavar="F",
                   help="fraction of each batch centred on foreground (default 0.33)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="default auto: on CUDA bf16 autocast where the GPU supports it, else fp16; on a CPU with "
                        "native bf16 the faster of fp32 and bf16, measured on the real network; else fp32")
    p.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                   help="wall-clock budget for this training, e.g. 20m: the epoch count is sized from the "
                        "measured iteration time so that training and final validation end inside it")
    p.add_argument("--continue-for", type=duration, default=None, metavar="DURATION",
                   help="continue a finished training for this much more time, e.g. 30m: a new phase from its final "
                        "weights with a fresh schedule, recorded as the next phase in training_log.jsonl and "
                        "progress.png (the earlier final checkpoint is kept as checkpoint_final.phaseN.pt)")
    p.add_argument("--checkpoint-every", type=duration, default=None, metavar="DURATION",
                   help="also save checkpoint_latest.pt this often within an epoch (default 5m)")
    p.add_argument("--no-validation", action="store_true", help="skip the final full-resolution validation")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train the fold data-parallel on N processes of this machine (one per GPU; gloo on a CPU): "
                        "shorthand for `torchrun --standalone --nproc-per-node N -m autoseg train ...`; the plan's "
                        "batch is the global batch, dealt over the processes")
    common_options(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..usecases.train import train

    fold = args.fold
    if fold != "all" and not fold.isdigit():
        raise UsageError(f"--fold must be a fold number (0..4) or 'all', not '{fold}'")
    if args.nproc is not None:
        return _launch_torchrun(args)
    overrides = {"epochs": args.epochs, "iterations_per_epoch": args.iterations_per_epoch,
                 "validation_iterations_per_epoch": args.validation_iterations, "initial_lr": args.lr,
                 "recipe": args.recipe, "continue_for": args.continue_for,
                 "pretrained": None if args.pretrained is None else str(Path(args.pretrained).resolve()),
                 "batch_size": args.batch_size, "seed": args.seed,
                 "foreground_oversample_fraction": args.oversample_fraction, "device": args.device,
                 "precision": args.precision, "time_budget_s": args.time_budget,
                 "num_workers": args.num_workers, "checkpoint_every_s": args.checkpoint_every}
    for result in train(args.workdir, fold, configuration=args.configuration, overrides=overrides,
                        progress=not args.no_progress, validate=not args.no_validation,
                        report=lambda line: print(line, flush=True)):
        if result.summary is not None:
            from ..evaluation import format_table

            print(format_table(to_dict(result.summary)))
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    import subprocess

    from ..training.distributed import launched_by_torchrun
    from ..usecases.train import torchrun_command

    if args.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, not {args.nproc}")
    if launched_by_torchrun():
        raise UsageError("--nproc starts torchrun, but this process already runs under torchrun; leave --nproc out "
                         "(torchrun's --nproc-per-node sets the number of processes)")
    cmd = torchrun_command(list(args.argv), args.nproc)
    print("launching: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


# --------------------------------------------------------------------------- find-best

def _add_find_best(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("find-best", help="rank configurations and ensembles on cross-validation",
                       description="Scores every configuration that has all its folds trained, and every "
                                   "ensemble of them (averaged probabilities), on the merged cross-validation "
                                   "predictions; picks the winner on mean foreground Dice, then chooses "
                                   "postprocessing that makes no class worse. Writes results/selection.json.")
    p.add_argument("--workdir", required=True, help="work folder made by `autoseg plan`")
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="only these configurations (default: every trained one)")
    p.add_argument("--folds", nargs="+", type=int, default=None, help="only these folds (default: all)")
    p.add_argument("--overwrite", action="store_true", help="select again even if selection.json is current")
    common_options(p)
    p.set_defaults(func=_cmd_find_best)


def _cmd_find_best(args: argparse.Namespace) -> int:
    from ..usecases.find_best import find_best

    result = find_best(args.workdir, configurations=args.configurations, folds=args.folds,
                       progress=not args.no_progress, overwrite=args.overwrite, num_workers=args.num_workers)
    print(result.ranking)
    return 0


