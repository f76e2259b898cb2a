"""Use case `autoseg evaluate`: Dice, IoU (and optionally HD95, surface Dice) of a folder of predictions
against a folder of references, per case and class; written as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class EvaluateResult:
    summary: dict[str, Any]  # autoseg.evaluation.summarize's result (+ surface settings)
    table: str  # for people
    output: Path  # where the summary JSON was written
    labels: list[int]


def _ending(name: str) -> str:
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def evaluate(pred: str | Path, ref: str | Path, *, labels: list[int] | None = None,
             dataset_json: str | Path | None = None, file_ending: str | None = None, surface: bool = False,
             tolerance_mm: float = 1.0, output: str | Path | None = None, num_workers: int | None = None,
             progress: bool = True) -> EvaluateResult:
    """Labels: given, else dataset.json's foreground labels, else every value > 0 found in ``ref``.
    File ending: given, else dataset.json's, else the one ending of the files in ``pred``."""
    from ..atomic import atomic_write_json, read_json
    from ..evaluation import evaluate_folders, format_table

    names: dict[int, str] = {}
    ending = file_ending
    if dataset_json:
        dj = read_json(dataset_json)
        names = {int(v): k for k, v in dj.get("labels", {}).items() if isinstance(v, int) and v != 0}
        ending = ending or dj.get("file_ending")
    if ending is None:
        endings = sorted({_ending(p.name) for p in Path(pred).iterdir() if p.is_file()
                          and not p.name.endswith((".json", ".npz"))})
        if len(endings) != 1:
            raise UsageError(f"cannot tell the file ending of {pred} (found {endings or 'no files'}); "
                             f"give --file-ending or --dataset-json")
        ending = endings[0]
    chosen = labels or sorted(names) or _labels_found(Path(ref), ending)
    summary = evaluate_folders(pred, ref, chosen, ending, num_workers=num_workers or 1, surface_metrics=surface,
                               tolerance_mm=tolerance_mm, progress=progress, label_names=names or None)
    out = Path(output) if output else Path(pred) / "summary.json"
    summary = json.loads(json.dumps(summary, default=float))
    atomic_write_json(out, summary)
    return EvaluateResult(summary=summary, table=format_table(summary), output=out, labels=list(chosen))


def _labels_found(ref: Path, ending: str) -> list[int]:
    """Every label value > 0 in the reference files (no dataset.json and no --labels)."""
    import numpy as np

    from ..data.image_io import read_label

    found: set[int] = set()
    for p in ref.glob(f"*{ending}"):
        found |= {int(v) for v in np.unique(read_label(p)[0])}
    return sorted(v for v in found if v > 0)
