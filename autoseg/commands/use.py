"""`autoseg predict`, `autoseg export`, `autoseg evaluate` and `autoseg report`: the subcommands that use
or show a model."""
from __future__ import annotations

import argparse

from .common import common_options

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
    common_options(p)
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
    from ..usecases.predict import predict

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
    common_options(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from ..usecases.export import export_model

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
    common_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..usecases.evaluate import evaluate, parse_label_items

    items = parse_label_items(args.labels) if args.labels else None
    result = evaluate(args.pred, args.ref, labels=items, dataset_json=args.dataset_json,
                      ignore_label=args.ignore_label,
                      file_ending=args.file_ending, surface=args.surface, tolerance_mm=args.tolerance_mm,
                      output=args.output, num_workers=args.num_workers, progress=not args.no_progress)
    print(result.table)
    print(f"written: {result.output}")
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
    from ..usecases.report import write_report

    result = write_report(args.workdir, args.output, progress=not args.no_progress)
    print(f"report written: {result.path} ({result.n_images} picture(s), {result.seconds:.1f} s)")
    if result.missing:
        print("not there yet:")
        for what, command in result.missing:
            print(f"  - {what}\n      {command}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0

