"""Validation at the end of a fold: every held-out case predicted at full resolution and scored.

Predictions are written under ``validation/`` in the dataset's format with each case's original
geometry, probabilities as ``<case>_probabilities.npz`` (for ensembling), and ``summary.json`` with
Dice and IoU per case and class, their means, and seconds per case.

Cascade: a 3d_lowres fold (``next_stage`` set, fold 0..k-1) also writes each held-out case's
segmentation on the next stage's preprocessed grid to ``predicted_next_stage/<case>_seg.npy``; a
3d_cascade_fullres fold appends those (one-hot, foreground labels) to each case's input.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_save_npy
from ..errors import AutosegError
from ..schemas import (SCHEMA_VERSION, CaseProperties, ConfigurationPlan, DatasetManifest, FoldSummary, Plans,
                       TrainingSettings, load_json)
from ..store import RunStore, file_hash, freshness
from ..workdir import Workdir
from ..model.cascade import append_previous_stage, next_stage_segmentation
from ..model.case_prediction import predict_preprocessed_case
from ..model.export import (probabilities_to_segmentation, save_probabilities,
                     write_prediction)

log = logging.getLogger(__name__)


def validate_fold(wd: Workdir, plans: Plans, config: ConfigurationPlan, settings: TrainingSettings,
                  network: torch.nn.Module, val_ids: list[str], manifest: DatasetManifest, *,
                  progress: bool = True, save_probabilities_npz: bool = True,
                  precision: str | None = None,
                  previous_stage_segs: Mapping[str, Path] | None = None,
                  mode: Mapping[str, Any] | None = None) -> FoldSummary:
    """Predict every validation case, write it, score it against the original labels; returns the summary.

    ``previous_stage_segs`` (required for a configuration with ``previous_stage``): case id -> the
    previous stage's ``<case>_seg.npy`` on this configuration's grid, appended one-hot to the input.
    With ``config.next_stage`` and a numbered fold, each case's segmentation is also written on the
    next stage's grid (see :func:`write_next_stage_segmentation`). ``mode``: how to predict (``mirror``,
    ``step_size``, ``reason``; a budgeted training's choice, ``training/budget.choose_final_validation``);
    None: thoroughly (every mirror axis, tile step 0.5). It is recorded in the summary.
    """
    from tqdm import tqdm

    from ..data.image_io import read_label
    from ..data.labels import scored_items
    from ..evaluation import evaluate_case, summarize

    fold = settings.fold
    mode = dict(mode or {"mirror": True, "step_size": 0.5,
                         "reason": f"final validation of {len(val_ids)} case(s) with every mirror axis, tile step "
                                   f"0.5 (no time budget: thorough)"})
    out_dir = wd.validation_dir(config.name, fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = wd.preprocessed_dir(config.data_identifier)
    spec = config.labels
    fg, names = scored_items(spec)  # foreground labels, or regions
    cases = {c.case_id: c for c in manifest.cases}
    if hasattr(network, "set_deep_supervision"):
        network.set_deep_supervision(False)
    network.eval()
    per_case: dict[str, Any] = {}
    final_ckpt = wd.checkpoint(config.name, fold, "final")
    ckpt_hash = file_hash(final_ckpt) if final_ckpt.exists() else ""
    store = RunStore(wd)
    summary_path = wd.validation_summary_json(config.name, fold)
    previous = store.fold_summary(config.name, fold)
    # predictions on disk are reused only when the summary says they were made by this very network
    reuse = bool(ckpt_hash) and freshness(summary_path, None if previous is None or not previous.checkpoint_hash
                                          else {"checkpoint_hash": previous.checkpoint_hash},
                                          {"checkpoint_hash": ckpt_hash}).current
    seconds: dict[str, float] = dict(previous.seconds_per_case) if reuse else {}
    if config.previous_stage and previous_stage_segs is None:
        raise AutosegError(f"{config.name} predicts from the {config.previous_stage} segmentations, but none "
                           f"were given for validating fold {fold}; validate it through `autoseg train`.")
    next_cfg = plans.configuration(config.next_stage) if config.next_stage and str(fold).isdigit() else None
    for cid in tqdm(val_ids, desc=f"validating {config.name} fold {fold}", disable=not progress, unit="case"):
        pred_path = out_dir / f"{cid}{manifest.file_ending}"
        prob_path = wd.validation_probabilities(config.name, fold, cid)
        props = load_json(CaseProperties, pre / f"{cid}.json")
        reused = reuse and pred_path.exists() and (not save_probabilities_npz or prob_path.exists())
        if not reused:
            t0 = time.monotonic()
            data = np.asarray(np.load(pre / f"{cid}.npy", mmap_mode="r"))
            if config.previous_stage:
                data = _with_previous_stage(data, previous_stage_segs, cid, config)
            probs = predict_preprocessed_case(network, data, props, config,
                                              device=settings.device,
                                              precision=precision or settings.precision,
                                              mirror=bool(mode.get("mirror", True)),
                                              step_size=float(mode.get("step_size", 0.5)))
            seg = probabilities_to_segmentation(probs, spec)
            if save_probabilities_npz:
                save_probabilities(probs, prob_path, case_id=cid, quantize=True)  # for find-best's ensembles
            write_prediction(seg, props, pred_path)
            seconds[cid] = round(time.monotonic() - t0, 3)
            del probs
        else:
            seg, _ = read_label(pred_path)
        if next_cfg is not None:
            next_path = wd.lowres_predictions_dir(config.name, fold) / f"{cid}_seg.npy"
            if not (reused and next_path.exists()):
                write_next_stage_segmentation(wd, next_cfg, cid, np.asarray(seg), next_path)
        ref, geom = read_label(cases[cid].label)
        per_case[cid] = evaluate_case(np.asarray(seg), np.asarray(ref).astype(np.int64), fg, geom.spacing_zyx,
                                      ignore_label=spec.ignore_label)
    metrics = json.loads(json.dumps(summarize(per_case, fg, names), default=float))
    seconds = {k: v for k, v in seconds.items() if k in per_case}
    summary = FoldSummary(schema_version=SCHEMA_VERSION, configuration=config.name, fold=str(fold),
                          checkpoint_hash=ckpt_hash, seconds_per_case=seconds, validation_mode=mode,
                          mean_seconds_per_case=float(np.mean(list(seconds.values()))) if seconds else None,
                          **{k: metrics[k] for k in ("num_cases", "labels", "per_class", "foreground_mean",
                                                     "per_case")})
    store.save(summary, summary_path)
    return summary


def write_next_stage_segmentation(wd: Workdir, next_config: ConfigurationPlan, case_id: str, seg: np.ndarray,
                                  out_path: Path) -> None:
    """``seg`` (Z, Y, X) at the case's original geometry -> the next stage's preprocessed grid, saved
    atomically as ``out_path`` (int8, or int16 for labels > 127; shape (1, *S) like ``<case>_seg.npy``).

    Uses the case's properties in the next stage's preprocessed folder (crop box, resampled shape,
    spacings) and the same label resampling as preprocessing.
    """
    props_path = wd.case_properties_json(next_config.data_identifier, case_id)
    if not props_path.exists():
        raise AutosegError(f"case {case_id}: {props_path} does not exist, so its prediction cannot be put on the "
                           f"{next_config.name} grid; run `autoseg plan DATASET --workdir {wd.root}` (it "
                           f"preprocesses every configuration) and then this training command again.")
    out = next_stage_segmentation(seg, load_json(CaseProperties, props_path), next_config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(out_path, out)


def _with_previous_stage(data: np.ndarray, segs: Mapping[str, Path], case_id: str,
                         config: ConfigurationPlan) -> np.ndarray:
    """``data`` (C, *S) with the previous stage's one-hot foreground maps appended: (C + L, *S)."""
    path = segs.get(case_id)
    if path is None or not Path(path).is_file():
        raise AutosegError(f"case {case_id}: the {config.previous_stage} segmentation {path} is missing; "
                           f"re-run the {config.previous_stage} fold that validates this case "
                           f"(`autoseg train --workdir RUN -c {config.previous_stage} --fold K`).")
    prev = np.load(path)
    if prev.shape[1:] != data.shape[1:]:
        raise AutosegError(f"case {case_id}: {path} has shape {prev.shape}, expected (1, "
                           f"{', '.join(map(str, data.shape[1:]))}); delete it and re-run the "
                           f"{config.previous_stage} fold that validates this case to write it again.")
    return append_previous_stage(data, prev[0], config)
