"""Parse and check a raw dataset's ``dataset.json`` (nnU-Net v2 keys), collecting every problem.

Keys used: ``channel_names``, ``labels``, ``numTraining``, ``file_ending`` and, for region-based
labels, ``regions_class_order``; other keys are ignored. Region-based labels (a name mapped to a list
of label values) and the ignore label (``"ignore": N``) follow nnU-Net v2 (docs/dataset_format.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import suggest_closest
from .image_io import SUPPORTED_ENDINGS


@dataclass
class DatasetJson:
    """The fields of dataset.json that autoseg uses; a field is None when it is missing or invalid."""

    raw: dict
    channel_names: dict[str, str] | None = None
    labels: dict[str, int] | None = None  # every value a label file may hold, but the ignore label
    num_training: int | None = None
    file_ending: str | None = None
    regions: dict[str, list[int]] = field(default_factory=dict)  # region-based: name -> label values
    regions_class_order: list[int] = field(default_factory=list)
    ignore_label: int | None = None


_REQUIRED = {"channel_names": 'an object {"0": "CT", "1": "T2", ...}',
             "labels": 'an object {"background": 0, "name": 1, ...}',
             "numTraining": "the number of training cases", "file_ending": 'e.g. ".nii.gz"'}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_labels(labels: object, class_order: object = None) -> tuple[dict | None, list[str]]:
    """``({"labels", "regions", "regions_class_order", "ignore_label"}, problems)`` of dataset.json's
    ``labels`` (and ``regions_class_order``), with nnU-Net v2's meaning: a name mapped to a list of values
    is a region (region-based training), ``"ignore": N`` marks unannotated voxels (N the highest value)."""
    where = "dataset.json 'labels'"
    if not isinstance(labels, dict) or not labels:
        return None, [f"{where} is {json.dumps(labels)}; expected {_REQUIRED['labels']}; fix it"]
    if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in labels.items()):
        return None, [f"{where} is in the nnU-Net v1 form {{\"0\": \"background\", ...}}; nnU-Net v2 maps "
                      f"names to integers: {{\"background\": 0, ...}}; swap keys and values"]
    problems = []
    ignore = None
    entries: dict[str, list[int] | int] = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            if not v or not all(_is_int(x) and x > 0 for x in v):
                problems.append(f"{where} maps the region '{name}' to {json.dumps(v)}; expected a non-empty list of "
                                f"positive label values, e.g. [1, 2, 3]; fix it")
            else:
                entries[name] = [int(x) for x in v]
        elif not _is_int(v) or v < 0:
            problems.append(f"{where} maps '{name}' to {json.dumps(v)}; expected a non-negative integer; "
                            f"write it as a plain number without quotes")
        elif name.lower() == "ignore":
            ignore = int(v)
        else:
            entries[name] = int(v)
    if problems:
        return None, problems
    region_based = any(isinstance(v, list) for v in entries.values()) or class_order is not None
    if ignore is not None:
        plain_values = [x for v in entries.values() for x in (v if isinstance(v, list) else [v])]
        if ignore == 0 or ignore in plain_values or (plain_values and ignore < max(plain_values)):
            problems.append(f"{where} gives 'ignore' the value {ignore}; expected a value of its own above every "
                            f"other label (nnU-Net: the highest), e.g. {max(plain_values, default=0) + 1}; "
                            f"renumber it in dataset.json and in labelsTr")
    if region_based:
        problems += _check_regions(entries, class_order)
        if problems:
            return None, problems
        return _region_spec(entries, list(class_order), ignore), []
    values = list(entries.values())
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        problems.append(f"{where} uses the value(s) {dupes} for more than one name; expected unique values; "
                        f"give every label its own integer")
    if 0 not in values:
        problems.append(f"{where} has no label with value 0; expected the background to be 0 "
                        f"(\"background\": 0); add it")
    elif any(k.lower() == "background" and v != 0 for k, v in entries.items()):
        problems.append(f"{where} gives 'background' a value other than 0; expected \"background\": 0")
    elif not dupes and sorted(values) != list(range(len(values))):
        # the network has one output per label and the label value is the output index (as in nnU-Net)
        missing = sorted(set(range(max(values) + 1)) - set(values))
        problems.append(f"{where} uses the values {sorted(values)}, which skip {missing}; expected consecutive "
                        f"values 0..{len(values) - 1} (the ignore label apart); renumber the labels in "
                        f"dataset.json and in labelsTr")
    if problems:
        return None, problems
    return {"labels": dict(entries), "regions": {}, "regions_class_order": [], "ignore_label": ignore}, []


def _check_regions(entries: dict[str, list[int] | int], class_order: object) -> list[str]:
    where = "dataset.json"
    regions = {k: v for k, v in entries.items() if not (v == 0 or v == [0])}
    problems = []
    if [k for k, v in entries.items() if v == 0] != [k for k in entries if k.lower() == "background"] or \
            not any(v == 0 for v in entries.values()):
        problems.append(f"{where} 'labels' of a region-based dataset need \"background\": 0 and no other entry with "
                        f"value 0; fix it")
    if class_order is None:
        problems.append(f"{where} maps labels to regions (lists of values) but has no 'regions_class_order'; "
                        f"expected a list with one label value per region ({len(regions)} regions: "
                        f"{', '.join(regions)}), the value written where that region is predicted, e.g. "
                        f"{json.dumps([max(v) if isinstance(v, list) else v for v in regions.values()])}; add it")
    elif not isinstance(class_order, list) or not all(_is_int(x) and x > 0 for x in class_order):
        problems.append(f"{where} 'regions_class_order' is {json.dumps(class_order)}; expected a list of positive "
                        f"label values, one per region; fix it")
    elif len(class_order) != len(regions):
        problems.append(f"{where} 'regions_class_order' has {len(class_order)} entries but 'labels' has "
                        f"{len(regions)} regions ({', '.join(regions)}); expected one value per region, in the "
                        f"order of 'labels'; fix it")
    return problems


def _region_spec(entries: dict[str, list[int] | int], class_order: list[int], ignore: int | None) -> dict:
    """The spec of a region-based dataset: every value the label files may hold is named after the region
    that paints it (its regions_class_order value), else ``label_<v>``."""
    regions = {k: (list(v) if isinstance(v, list) else [int(v)]) for k, v in entries.items()
               if not (v == 0 or v == [0])}
    painted_by = {int(v): name for name, v in zip(regions, class_order)}
    values = sorted({x for v in regions.values() for x in v} | set(int(v) for v in class_order))
    labels = {"background": 0, **{painted_by.get(v, f"label_{v}"): v for v in values}}
    return {"labels": labels, "regions": regions, "regions_class_order": [int(v) for v in class_order],
            "ignore_label": ignore}


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
        spec, label_problems = _parse_labels(raw["labels"], raw.get("regions_class_order"))
        problems += label_problems
        if spec is not None:
            dj.labels, dj.regions = spec["labels"], spec["regions"]
            dj.regions_class_order, dj.ignore_label = spec["regions_class_order"], spec["ignore_label"]
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
