"""The subcommands of the `autoseg` command line that run a use case: each one an argument parser
(``_add_*``) and a handler (``_cmd_*``) that calls one use case from :mod:`autoseg.usecases` and prints
its result. :mod:`autoseg.cli` builds the parser from :data:`ADDERS` and runs the handler.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import AutosegError, UsageError
from .schemas import to_dict

log = logging.getLogger("autoseg")


def _duration(text: str) -> float:
    from .hardware import parse_duration

    try:
        return parse_duration(text)
    except AutosegError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a TTY)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="worker processes (default: derived from CPU cores and free RAM)")


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
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
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
    _common(p)
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planning.registry import available_planners

    if args.list_planners:
        for name, desc in sorted(available_planners().items()):
            print(f"{name:12s} {desc}")
        return 0
    if not args.dataset or not args.workdir:
        raise UsageError("autoseg plan needs a DATASET folder and --workdir RUN, e.g. "
                           "`autoseg plan data/Dataset102_Hippocampus --workdir runs/hippo`")
    from .usecases.plan import plan_dataset

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
                   help="default auto: fp16 autocast on CUDA; on a CPU with native bf16 the faster of "
                        "fp32 and bf16, measured on the real network; else fp32")
    p.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                   help="wall-clock budget for this training, e.g. 20m: the epoch count is sized from the "
                        "measured iteration time so that training and final validation end inside it")
    p.add_argument("--continue-for", type=_duration, default=None, metavar="DURATION",
                   help="continue a finished training for this much more time, e.g. 30m: a new phase from its final "
                        "weights with a fresh schedule, recorded as the next phase in training_log.jsonl and "
                        "progress.png (the earlier final checkpoint is kept as checkpoint_final.phaseN.pt)")
    p.add_argument("--checkpoint-every", type=_duration, default=None, metavar="DURATION",
                   help="also save checkpoint_latest.pt this often within an epoch (default 5m)")
    p.add_argument("--no-validation", action="store_true", help="skip the final full-resolution validation")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train the fold data-parallel on N processes of this machine (one per GPU; gloo on a CPU): "
                        "shorthand for `torchrun --standalone --nproc-per-node N -m autoseg train ...`; the plan's "
                        "batch is the global batch, dealt over the processes")
    _common(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .usecases.train import train

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
            from .evaluation import format_table

            print(format_table(to_dict(result.summary)))
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    import subprocess

    from .training.distributed import launched_by_torchrun
    from .usecases.train import torchrun_command

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
    _common(p)
    p.set_defaults(func=_cmd_find_best)


def _cmd_find_best(args: argparse.Namespace) -> int:
    from .usecases.find_best import find_best

    result = find_best(args.workdir, configurations=args.configurations, folds=args.folds,
                       progress=not args.no_progress, overwrite=args.overwrite, num_workers=args.num_workers)
    print(result.ranking)
    return 0


# --------------------------------------------------------------------------- predict

def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment new images with the selected configuration(s)",
                       description="Segments every case in INPUT (a folder in imagesTs layout and/or of DICOM "
                                   "series folders, one DICOM series folder, or files) and writes each with its "
                                   "input's geometry and format (NIfTI for DICOM series). Without -c it uses "
                                   "results/selection.json (running find-best first when it is missing), or the "
                                   "selection inside a model exported with `autoseg export` (--model).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="work folder with trained folds")
    source.add_argument("--model", metavar="MODEL_ZIP",
                        help="a model exported with `autoseg export` (read in memory, checked before use: unsafe "
                             "or damaged zips are refused)")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="what runs the networks: torch (CPU or CUDA) or onnxruntime (CPU, fp32; the model zip's ONNX "
                        "networks, else the torch networks exported to ONNX in memory); default auto: onnxruntime for "
                        "networks that run on the CPU in fp32 when onnx and onnxruntime are installed (faster, "
                        "docs/benchmarks/onnx_speed.md), else torch. The same sliding window, pre- and postprocessing "
                        "either way")
    p.add_argument("-i", "--input", required=True, nargs="+",
                   help="folder of <case>_<cccc><ext> files and/or of case folders holding one DICOM series each "
                        "(or channel folders 0000/, 0001/, ...); one DICOM series folder; or files / case folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="use these configurations (probabilities averaged) instead of the selection")
    p.add_argument("--folds", nargs="+", default=None, help="folds to use (default: the selection's, or all)")
    p.add_argument("--fast", action="store_true",
                   help="no mirroring, tile step 0.75 and only the first fold unless --folds is given")
    p.add_argument("--no-mirroring", action="store_true",
                   help="no mirror test-time augmentation (1 network pass per tile instead of up to 8); "
                        "everything else as without it")
    p.add_argument("--step-size", type=_step_size, default=None, metavar="F",
                   help="sliding-window step as a fraction of the patch, 0 < F <= 1 (default 0.5, "
                        "0.75 with --fast); larger is faster, with fewer overlapping tiles")
    p.add_argument("--output-format", choices=["auto", "dicom-seg"], default="auto",
                   help="auto (default): each segmentation in its input's format, .nii.gz for DICOM series; "
                        "dicom-seg: also a DICOM Segmentation <case>.dcm per case, referencing its series "
                        "(DICOM inputs only; needs pip install 'autoseg[dicom]')")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz probabilities")
    p.add_argument("--save-uncertainty", action="store_true",
                   help="also write a per-voxel map of disagreement between the ensemble members")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--checkpoint", choices=["final", "best"], default=None,
                   help="the networks' weights: final (end of training, default) or best (best EMA pseudo-Dice); "
                        "a model zip holds the kind it was exported with")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip cases whose segmentation in OUTPUT was written by this same model (checked in its "
                        "prediction_info*.json, not by file name)")
    p.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="split the cases (sorted by id, dealt out round-robin) into N parts for N processes or "
                        "machines; with --part-id")
    p.add_argument("--part-id", type=int, default=0, metavar="K", help="which part this process predicts, 0..N-1")
    _common(p)
    p.set_defaults(func=_cmd_predict)


def _step_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"'{text}' is not a step size; expected a fraction of the patch "
                                         f"with 0 < F <= 1, e.g. 0.5 (the default) or 0.75 (faster)")
    return value


def _cmd_predict(args: argparse.Namespace) -> int:
    from .usecases.predict import predict

    folds = None if args.folds is None else [f if f == "all" else int(f) for f in args.folds]
    result = predict(args.workdir, args.input, args.output, model=args.model, backend=args.backend,
                     configurations=args.configurations, folds=folds,
                     fast=args.fast, step_size=args.step_size, mirror=False if args.no_mirroring else None,
                     save_probabilities=args.save_probabilities, save_uncertainty=args.save_uncertainty,
                     device=args.device, progress=not args.no_progress, num_workers=args.num_workers,
                     checkpoint=args.checkpoint, num_parts=args.num_parts, part_id=args.part_id, resume=args.resume,
                     output_format=args.output_format)
    if result.find_best is not None:
        print(result.find_best.ranking)
    print(f"predicted {len(result.predicted_cases)} case(s) into {args.output} with "
          f"{', '.join(result.configurations)} (folds {result.folds}); details in {result.info_path}")
    return 0


# --------------------------------------------------------------------------- export

def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the selected model as one zip that predicts anywhere (--model)",
                       description="Writes exactly what prediction needs into one zip: the selected configurations "
                                   "(and their previous stages) from plans.json, selection.json (winner, folds, "
                                   "postprocessing), the dataset's labels, channels and file ending, and each fold's "
                                   "weights as safetensors (tensors only); with --onnx also each network as ONNX. "
                                   "No case ids, no images, no local paths. Predict with `autoseg predict --model "
                                   "ZIP -i IN -o OUT`. Runs find-best first when there is no selection.")
    p.add_argument("--workdir", required=True, help="work folder with trained folds")
    p.add_argument("-o", "--output", required=True, metavar="MODEL_ZIP", help="the zip to write, e.g. model.zip")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final",
                   help="the weights to export: final (end of training, default) or best (best EMA pseudo-Dice)")
    p.add_argument("--onnx", action="store_true",
                   help="also write each network as ONNX (opset 17, dynamic batch and spatial axes), for "
                        "`autoseg predict --backend onnxruntime` and for other runtimes")
    _common(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .usecases.export import export_model

    result = export_model(args.workdir, args.output, checkpoint=args.checkpoint, onnx=args.onnx,
                          progress=not args.no_progress, num_workers=args.num_workers)
    if result.find_best is not None:
        print(result.find_best.ranking)
    print(f"exported {'+'.join(result.configurations)} (folds {', '.join(result.folds)}, {result.checkpoint} "
          f"weights{', with ONNX' if result.onnx else ''}) to {result.output} ({result.total_bytes / 1e6:.1f} MB); "
          f"predict with `autoseg predict --model {args.output} -i IN -o OUT`")
    return 0


# --------------------------------------------------------------------------- evaluate

def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, IoU, HD95 and surface Dice of predictions against references",
                       description="Compares every prediction PRED/<case><ext> with REF/<case><ext> per case and "
                                   "class (distances in mm from the images' spacing). Cases where both are "
                                   "empty are reported as such. Prints a table and writes JSON.")
    p.add_argument("--pred", required=True, help="folder of predicted label files")
    p.add_argument("--ref", required=True, help="folder of reference label files (e.g. labelsTr)")
    p.add_argument("-l", "--labels", nargs="+", default=None, metavar="LABEL_OR_REGION",
                   help="what to score, nnU-Net style: labels (1 2 3) or regions given as the labels they cover "
                        "(1,2,3 2,3 3); default: dataset.json's labels or regions (--dataset-json), else every value "
                        "found")
    p.add_argument("-il", "--ignore-label", type=int, default=None, metavar="N",
                   help="reference voxels with this value count for nothing (default: dataset.json's 'ignore')")
    p.add_argument("--dataset-json", default=None, help="dataset.json for label names and file ending")
    p.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: from --dataset-json or "
                   "the files in --pred)")
    p.add_argument("--surface", action="store_true", help="also HD95 and surface Dice (slower)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance (default 1 mm)")
    p.add_argument("-o", "--output", default=None, help="summary JSON (default: PRED/summary.json)")
    _common(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .usecases.evaluate import evaluate

    from .usecases.evaluate import parse_label_items

    items = parse_label_items(args.labels) if args.labels else None
    result = evaluate(args.pred, args.ref, labels=items, dataset_json=args.dataset_json,
                      ignore_label=args.ignore_label,
                      file_ending=args.file_ending, surface=args.surface, tolerance_mm=args.tolerance_mm,
                      output=args.output, num_workers=args.num_workers, progress=not args.no_progress)
    print(result.table)
    print(f"written: {result.output}")
    return 0


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
    p.add_argument("--time-budget", type=_duration, required=True, metavar="DURATION",
                   help="wall-clock budget of the whole run, e.g. 2h, 45m")
    p.add_argument("--predict", nargs=2, default=None, metavar=("IN", "OUT"),
                   help="also segment the cases in folder IN into OUT with the selection")
    p.add_argument("--planner", default="default", help="registered planner name (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="plan and train for this device")
    _common(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from .usecases.run import run

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
    p.add_argument("--time-budget", type=_duration, default=600.0, metavar="DURATION",
                   help="wall-clock budget of the whole demo, e.g. 10m (default 10m); the trainings share what "
                        "the other stages leave")
    _common(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .usecases.demo import run_demo

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


# --------------------------------------------------------------------------- report

def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the run as one self-contained HTML page",
                       description="Writes one HTML file (pictures embedded, nothing loaded from elsewhere, "
                                   "works offline): the plan with every decision's reason, each training's "
                                   "curves, the cross-validation ranking and postprocessing, per-class Dice "
                                   "per fold, and the best, median and worst validation case per configuration. "
                                   "A partial run gives a partial report naming what is missing and the "
                                   "command that makes it.")
    p.add_argument("--workdir", required=True, help="work folder of a run (made by `autoseg plan`)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="the HTML file to write (default: RUN/report.html)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a TTY)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .usecases.report import write_report

    result = write_report(args.workdir, args.output, progress=not args.no_progress)
    print(f"report written: {result.path} ({result.n_images} picture(s), {result.seconds:.1f} s)")
    if result.missing:
        print("not there yet:")
        for what, command in result.missing:
            print(f"  - {what}\n      {command}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plan, _add_train, _add_find_best, _add_predict,
                                                                _add_export, _add_evaluate, _add_run, _add_demo,
                                                                _add_report]
