"""Validation at the end of a fold: every held-out case predicted at full resolution and scored.

Predictions are written under ``validation/`` in the dataset's format with each case's original
geometry, probabilities as ``<case>_probabilities.npz`` (for ensembling), and ``summary.json`` with
Dice and IoU per case and class, their means, and seconds per case.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..schemas import CaseProperties, ConfigurationPlan, DatasetManifest, Plans, TrainingSettings, load_json
from ..workdir import Workdir
from .export import (logits_to_original_probabilities, probabilities_to_segmentation, save_probabilities,
                     write_prediction)
from .sliding_window import predict_sliding_window

log = logging.getLogger(__name__)


def predict_preprocessed_case(networks: torch.nn.Module | list[torch.nn.Module], data: np.ndarray,
                              properties: CaseProperties, config: ConfigurationPlan, *,
                              device: str = "cpu", precision: str = "fp32", step_size: float = 0.5,
                              mirror: bool = True, tile_batch_size: int = 4) -> np.ndarray:
    """Sliding-window logits (folds averaged) → probabilities (K, Z, Y, X) at the original geometry."""
    logits = predict_sliding_window(networks, data, config.patch_size, config.network.num_classes,
                                    step_size=step_size,
                                    mirror_axes=tuple(config.mirror_axes) if mirror else None,
                                    tile_batch_size=tile_batch_size, device=device, precision=precision)
    return logits_to_original_probabilities(logits, properties, config)


def validate_fold(wd: Workdir, plans: Plans, config: ConfigurationPlan, settings: TrainingSettings,
                  network: torch.nn.Module, val_ids: list[str], manifest: DatasetManifest, *,
                  progress: bool = True, save_probabilities_npz: bool = True,
                  precision: str | None = None) -> dict[str, Any]:
    """Predict every validation case, write it, score it against the original labels; returns the summary."""
    from tqdm import tqdm

    from ..data.image_io import read_label
    from ..evaluation import evaluate_case, summarize

    fold = settings.fold
    out_dir = wd.validation_dir(config.name, fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre = wd.preprocessed_dir(config.data_identifier)
    labels = {v: k for k, v in manifest.labels.items()}
    fg = sorted(v for v in labels if v != 0)
    cases = {c.case_id: c for c in manifest.cases}
    if hasattr(network, "set_deep_supervision"):
        network.set_deep_supervision(False)
    network.eval()
    per_case: dict[str, Any] = {}
    seconds: dict[str, float] = _previous_seconds(wd.validation_summary_json(config.name, fold))
    final_ckpt = wd.checkpoint(config.name, fold, "final")
    for cid in tqdm(val_ids, desc=f"validating {config.name} fold {fold}", disable=not progress, unit="case"):
        pred_path = out_dir / f"{cid}{manifest.file_ending}"
        prob_path = wd.validation_probabilities(config.name, fold, cid)
        props = load_json(CaseProperties, pre / f"{cid}.json")
        if not _current(pred_path, final_ckpt) or (save_probabilities_npz and not _current(prob_path, final_ckpt)):
            t0 = time.monotonic()
            data = np.load(pre / f"{cid}.npy", mmap_mode="r")
            probs = predict_preprocessed_case(network, np.asarray(data), props, config,
                                              device=settings.device,
                                              precision=precision or settings.precision)
            seg = probabilities_to_segmentation(probs)
            if save_probabilities_npz:
                save_probabilities(probs, prob_path, case_id=cid)
            write_prediction(seg, props, pred_path)
            seconds[cid] = round(time.monotonic() - t0, 3)
            del probs
        else:
            seg, _ = read_label(pred_path)
        ref, geom = read_label(cases[cid].label)
        per_case[cid] = evaluate_case(np.asarray(seg), np.asarray(ref).astype(np.int64), fg, geom.spacing_zyx)
    summary = summarize(per_case, fg, {v: labels[v] for v in fg})
    summary["configuration"] = config.name
    summary["fold"] = fold
    seconds = {k: v for k, v in seconds.items() if k in per_case}
    summary["seconds_per_case"] = seconds
    if seconds:
        summary["mean_seconds_per_case"] = float(np.mean(list(seconds.values())))
    atomic_write_json(wd.validation_summary_json(config.name, fold), summary)
    return summary


def _previous_seconds(summary_path: Path) -> dict[str, float]:
    """Timings of an earlier validation run, kept for the cases whose predictions are reused."""
    import json

    try:
        return dict(json.loads(summary_path.read_text()).get("seconds_per_case") or {})
    except (OSError, ValueError):
        return {}


def _current(path: Path, reference: Path) -> bool:
    """``path`` exists and is newer than ``reference`` (the checkpoint it was made from)."""
    if not path.exists():
        return False
    return not reference.exists() or path.stat().st_mtime >= reference.stat().st_mtime
