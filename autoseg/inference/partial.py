"""Predicting a folder in parts and continuing an interrupted prediction (`autoseg predict --num-parts N
--part-id K`, `--continue`).

* Parts: the cases, sorted by case id, are dealt out round-robin (part K gets cases K, K+N, K+2N, ...),
  so N processes or machines share a folder without coordination. Each part writes its own
  ``prediction_info.part-K-of-N.json``; the segmentations are exactly those one run would write.
* Continue: a case is skipped when its segmentation exists and a prediction_info file in the output
  folder lists it as predicted by the same model (work folder or model zip content, backend,
  configurations, folds, checkpoint, plans, selection, postprocessing, tile step, mirroring). The file name alone never decides.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import AutosegError

log = logging.getLogger(__name__)

PREDICTION_INFO_JSON = "prediction_info.json"
#: what makes two predictions of a case the same: prediction_info.json's fields that name the model
MODEL_FIELDS = ("workdir", "model_id", "backend", "configurations", "previous_stages", "folds", "checkpoint",
                "step_size", "mirroring", "postprocessing", "plans_hash", "selection_hash")
#: what a prediction_info.json of an older autoseg, which did not record the field, was made with
_DEFAULTS = {"backend": "torch"}

T = TypeVar("T")


def check_parts(num_parts: int, part_id: int) -> None:
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise AutosegError(f"--num-parts {num_parts} --part-id {part_id}: expected N >= 1 and 0 <= K < N (part ids "
                           f"count from 0, e.g. --num-parts 2 --part-id 0 and --num-parts 2 --part-id 1)")


def part_of(jobs: Sequence[T], case_id: Any, num_parts: int, part_id: int) -> list[T]:
    """Part ``part_id`` of ``jobs`` (sorted by ``case_id(job)``, dealt out round-robin)."""
    check_parts(num_parts, part_id)
    ordered = sorted(jobs, key=case_id)
    return ordered[part_id::num_parts]


def info_name(num_parts: int, part_id: int) -> str:
    return PREDICTION_INFO_JSON if num_parts == 1 else f"prediction_info.part-{part_id}-of-{num_parts}.json"


def model_signature(info: Mapping[str, Any]) -> dict[str, Any]:
    return {k: info.get(k, _DEFAULTS.get(k)) for k in MODEL_FIELDS}


def predicted_before(output_dir: Path, signature: Mapping[str, Any]) -> tuple[set[str], list[str]]:
    """(case ids some prediction_info*.json in ``output_dir`` lists as predicted by the model ``signature``,
    the reasons other info files did not count)."""
    done: set[str] = set()
    ignored: list[str] = []
    for path in sorted(output_dir.glob("prediction_info*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ignored.append(f"{path.name} is unreadable")
            continue
        other = model_signature(info)
        if other != dict(signature):
            changed = sorted(k for k in MODEL_FIELDS if other.get(k) != signature.get(k))
            ignored.append(f"{path.name} was made by another model ({', '.join(changed)} differ)")
            continue
        done.update(info.get("predicted_cases") or [])
    return done, ignored
