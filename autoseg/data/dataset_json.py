"""Parse and check a raw dataset's ``dataset.json`` (nnU-Net v2 keys), collecting every problem.

Keys used: ``channel_names``, ``labels``, ``numTraining``, ``file_ending``; other keys are ignored.
Region-based labels and the ignore label are refused with a clear message (not supported yet).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import suggest_closest
from .image_io import SUPPORTED_ENDINGS


@dataclass
class DatasetJson:
    """The fields of dataset.json that autoseg uses; a field is None when it is missing or invalid."""

    raw: dict
    channel_names: dict[str, str] | None = None
    labels: dict[str, int] | None = None
    num_training: int | None = None
    file_ending: str | None = None


_REQUIRED = {"channel_names": 'an object {"0": "CT", "1": "T2", ...}',
             "labels": 'an object {"background": 0, "name": 1, ...}',
             "numTraining": "the number of training cases", "file_ending": 'e.g. ".nii.gz"'}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_labels(labels: object) -> tuple[dict[str, int] | None, list[str]]:
    where = "dataset.json 'labels'"
    if not isinstance(labels, dict) or not labels:
        return None, [f"{where} is {json.dumps(labels)}; expected {_REQUIRED['labels']}; fix it"]
    if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in labels.items()):
        return None, [f"{where} is in the nnU-Net v1 form {{\"0\": \"background\", ...}}; nnU-Net v2 maps "
                      f"names to integers: {{\"background\": 0, ...}}; swap keys and values"]
    problems = []
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            problems.append(f"{where} maps '{name}' to the list {json.dumps(v)} (region-based labels): "
                            f"region-based training is not supported yet; expected one integer per label; "
                            f"use plain integer labels (one value per structure)")
        elif not _is_int(v) or v < 0:
            problems.append(f"{where} maps '{name}' to {json.dumps(v)}; expected a non-negative integer; "
                            f"write it as a plain number without quotes")
        elif name.lower() == "ignore":
            problems.append(f"{where} has an 'ignore' label (value {v}, nnU-Net's sparse-annotation label): "
                            f"ignore labels are not supported yet; remove it or relabel those voxels")
    if problems:
        return None, problems
    values = list(labels.values())
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        problems.append(f"{where} uses the value(s) {dupes} for more than one name; expected unique values; "
                        f"give every label its own integer")
    if 0 not in values:
        problems.append(f"{where} has no label with value 0; expected the background to be 0 "
                        f"(\"background\": 0); add it")
    elif any(k.lower() == "background" and v != 0 for k, v in labels.items()):
        problems.append(f"{where} gives 'background' a value other than 0; expected \"background\": 0")
    elif not dupes and sorted(values) != list(range(len(values))):
        # the network has one output per label and the label value is the output index (as in nnU-Net)
        missing = sorted(set(range(max(values) + 1)) - set(values))
        problems.append(f"{where} uses the values {sorted(values)}, which skip {missing}; expected consecutive "
                        f"values 0..{len(values) - 1}; renumber the labels in dataset.json and in labelsTr")
    return (None if problems else dict(labels)), problems


def parse_dataset_json(path: Path) -> tuple[DatasetJson | None, list[str]]:
    """Read dataset.json; return its usable fields and every problem found in it."""
    expected = ", ".join(f"'{k}'" for k in _REQUIRED)
    if not path.is_file():
        return None, [f"dataset.json is missing; expected {path} with the keys {expected} (nnU-Net v2 "
                      f"format); create it"]
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        return None, [f"dataset.json is not valid JSON ({getattr(e, 'msg', e)}{where}); expected a JSON "
                      f"object with the keys {expected}; fix the syntax"]
    if not isinstance(raw, dict):
        return None, [f"dataset.json holds a JSON {type(raw).__name__}; expected an object with the keys "
                      f"{expected}; fix it"]
    dj, problems = DatasetJson(raw), []
    for key, desc in _REQUIRED.items():
        if key not in raw:
            hint = (" (nnU-Net v1's 'modality' is called 'channel_names' in v2: rename it)"
                    if key == "channel_names" and "modality" in raw else "")
            problems.append(f"dataset.json has no '{key}' key; expected {desc}{hint}; add it")
    cn = raw.get("channel_names")
    if "channel_names" in raw:
        ok = isinstance(cn, dict) and cn and all(k.isdigit() and isinstance(v, str) for k, v in cn.items())
        if ok and sorted(int(k) for k in cn) == list(range(len(cn))):
            dj.channel_names = {str(i): cn[k] for i, k in sorted((int(k), k) for k in cn)}
        else:
            problems.append(f"dataset.json 'channel_names' is {json.dumps(cn)}; expected "
                            f"{_REQUIRED['channel_names']} with keys \"0\" .. \"n-1\" and string values; "
                            f"fix it")
    if "labels" in raw:
        dj.labels, label_problems = _parse_labels(raw["labels"])
        problems += label_problems
    if "numTraining" in raw:
        if _is_int(raw["numTraining"]) and raw["numTraining"] >= 0:
            dj.num_training = raw["numTraining"]
        else:
            problems.append(f"dataset.json 'numTraining' is {json.dumps(raw['numTraining'])}; expected a "
                            f"non-negative integer; fix it")
    fe = raw.get("file_ending")
    if "file_ending" in raw:
        if isinstance(fe, str) and fe.lower() in SUPPORTED_ENDINGS:
            dj.file_ending = fe
        else:
            close = suggest_closest(str(fe), SUPPORTED_ENDINGS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"dataset.json 'file_ending' is {json.dumps(fe)}{hint}; expected one of "
                            f"{', '.join(SUPPORTED_ENDINGS)} with the leading dot; fix it or convert the "
                            f"files")
    return dj, problems
