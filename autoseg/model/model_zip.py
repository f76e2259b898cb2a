"""The exported model (``autoseg export`` → ``model.zip``): its members, its manifest, and writing it.

A model zip holds exactly what prediction needs, and nothing of the training data::

    autoseg_model.json                       ModelManifest: format and versions, networks, sliding-window
                                             settings, and the SHA-256 and size of every other member
    plans.json                               Plans: the selected configurations and their previous stages only
                                             (no dataset-level decisions, warnings or machine record)
    selection.json                           Selection: winner, folds, postprocessing (plans_hash of this plans.json)
    dataset.json                             ModelDataset: labels, channels, file ending (no case ids, no paths)
    weights/<configuration>/fold_<k>.safetensors   the network's state dict as tensors only (never a pickle)
    onnx/<configuration>/fold_<k>.onnx       (``--onnx``) the same network as ONNX: input ``tiles``
                                             (B, C, *spatial) float32, output ``logits`` (B, K, *spatial)

Member names are fixed by this module (:func:`weights_member`, :func:`onnx_member`); the reader
(:mod:`.model_zip_reader`) refuses any other name. Every member is written with a fixed timestamp,
so exporting the same run twice gives the same members.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..schemas import to_dict

FORMAT = "autoseg-model"
#: bumped when a reader of the previous version could not predict correctly from a new zip
FORMAT_VERSION = 1
MANIFEST_JSON = "autoseg_model.json"
PLANS_JSON = "plans.json"
SELECTION_JSON = "selection.json"
DATASET_JSON = "dataset.json"
ONNX_INPUT, ONNX_OUTPUT = "tiles", "logits"
#: what the reader accepts besides the manifest: JSON members, weights and ONNX networks
MEMBER_PATTERN = re.compile(r"^(plans\.json|selection\.json|dataset\.json|"
                            r"weights/[A-Za-z0-9_]+/fold_(\d+|all)\.safetensors|"
                            r"onnx/[A-Za-z0-9_]+/fold_(\d+|all)\.onnx)$")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: members carry no time of the export


def weights_member(configuration: str, fold: int | str) -> str:
    return f"weights/{configuration}/fold_{fold}.safetensors"


def onnx_member(configuration: str, fold: int | str) -> str:
    return f"onnx/{configuration}/fold_{fold}.onnx"


@dataclass(frozen=True)
class ModelDataset:
    """What prediction needs to know of the dataset (``dataset.json`` of a model zip): no case, no path.

    ``files_per_case``: image files per case (1 for single-channel datasets and one RGB file per case,
    else one file per channel); ``ndim``: 2 when the training images were 2D."""

    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    files_per_case: int
    ndim: int
    regions: dict[str, list[int]] = field(default_factory=dict)
    regions_class_order: list[int] = field(default_factory=list)
    ignore_label: int | None = None


@dataclass(frozen=True)
class ModelNetwork:
    """One trained network of a model zip: its members and the precision it was trained in (which
    ``precision="auto"`` uses on a CPU, as for a work folder)."""

    configuration: str
    fold: str
    weights: str
    onnx: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class MemberRecord:
    sha256: str  # full hex digest of the member's bytes
    bytes: int


@dataclass(frozen=True)
class ModelManifest:
    """``autoseg_model.json``: the first member a reader checks (format, then versions, then hashes).

    ``configurations``: the selection's winner (ensembled); ``stages``: every configuration held, previous
    stages (cascade inputs) first; ``folds``: the folds held for each stage; ``inference``: per
    configuration the sliding-window contract a user of the ONNX files needs (patch, step, Gaussian
    sigma, mirror axes, input/output names and shapes, how the outputs become a segmentation)."""

    format: str
    format_version: int
    autoseg_version: str
    torch_version: str
    checkpoint: str
    dataset_name: str
    configurations: list[str]
    stages: list[str]
    folds: list[str]
    plans_hash: str  # of the plans.json in the zip (its selection.json records the same)
    source_plans_hash: str  # of the work folder's plans.json the networks were trained with
    networks: list[ModelNetwork]
    members: dict[str, MemberRecord]
    onnx_opset: int | None = None
    inference: dict[str, Any] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any) -> bytes:
    """Plain data or a dataclass as sorted, indented JSON (UTF-8): the same object gives the same bytes."""
    return (json.dumps(to_dict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_model_zip(path: str | os.PathLike, manifest: ModelManifest, members: dict[str, bytes]) -> Path:
    """Write ``members`` and ``manifest`` (whose ``members`` must describe them) to ``path`` atomically.

    JSON members are deflated; weights and ONNX files are stored as they are (float tensors barely
    compress, and a stored member is read without a decompressor)."""
    path = Path(path)
    bad = sorted(n for n in members if not MEMBER_PATTERN.match(n))
    if bad:
        raise ValueError(f"model zip member names {bad} are not allowed by MEMBER_PATTERN")
    described = {n: MemberRecord(sha256_hex(b), len(b)) for n, b in members.items()}
    if described != manifest.members:
        raise ValueError("the manifest's member records do not describe the members given")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w") as archive:
            for name, data in [(MANIFEST_JSON, json_bytes(manifest)), *sorted(members.items())]:
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
                info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
                archive.writestr(info, data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    atomic_write(path, write, suffix=".zip")
    return path
