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
    labels: list[int | list[int]]  # label values, or regions (the label values each covers)


def _ending(name: str) -> str:
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def parse_label_items(values: list[str]) -> list[int | list[int]]:
    """nnU-Net's ``-l`` style: ``1 2 3`` are labels, ``1,2,3 2,3 3`` regions (the labels each covers)."""
    items: list[int | list[int]] = []
    for v in values:
        parts = [p for p in str(v).replace("(", "").replace(")", "").split(",") if p.strip()]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if not nums or any(n < 0 for n in nums):
            raise UsageError(f"--labels entry {v!r} is neither a label value (e.g. 2) nor a region (label values "
                             f"joined by commas, e.g. 1,2,3)")
        items.append(nums[0] if len(nums) == 1 and "," not in str(v) else nums)
    return items


def evaluate(pred: str | Path, ref: str | Path, *, labels: list[int | list[int]] | None = None,
             dataset_json: str | Path | None = None, file_ending: str | None = None, surface: bool = False,
             tolerance_mm: float = 1.0, output: str | Path | None = None, num_workers: int | None = None,
             progress: bool = True, ignore_label: int | None = None) -> EvaluateResult:
    """Labels: given (values or regions), else dataset.json's foreground labels or regions, else every value
    > 0 found in ``ref``. The ignore label: given, else dataset.json's; its voxels count for nothing.
    File ending: given, else dataset.json's, else the one ending of the files in ``pred``."""
    from ..atomic import atomic_write_json, read_json
    from ..evaluation import evaluate_folders, format_table, uncertainty_companions

    names: dict[str, str] = {}
    from_json: list[int | list[int]] = []
    ending = file_ending
    if dataset_json:
        from ..data.dataset_json import _parse_labels
        from ..data.labels import scored_items
        from ..schemas import LabelSpec

        dj = read_json(dataset_json)
        spec, problems = _parse_labels(dj.get("labels"), dj.get("regions_class_order"))
        if spec is None:
            raise UsageError(f"{dataset_json}: " + "; ".join(problems))
        label_spec = LabelSpec(**spec)
        from_json, names = scored_items(label_spec)
        ignore_label = ignore_label if ignore_label is not None else label_spec.ignore_label
        ending = ending or dj.get("file_ending")
    if ending is None:
        files = [p.name for p in Path(pred).iterdir() if p.is_file()]
        companions = uncertainty_companions(files)
        endings = sorted({_ending(n) for n in files if not n.endswith((".json", ".npz")) and n not in companions})
        if len(endings) != 1:
            raise UsageError(f"cannot tell the file ending of {pred} (found {endings or 'no files'}); "
                             f"give --file-ending or --dataset-json")
        ending = endings[0]
    chosen = labels or from_json or [v for v in _labels_found(Path(ref), ending) if v != ignore_label]
    summary = evaluate_folders(pred, ref, chosen, ending, num_workers=num_workers or 1, surface_metrics=surface,
                               tolerance_mm=tolerance_mm, progress=progress, label_names=names or None,
                               ignore_label=ignore_label)
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
