"""Reading an exported model zip (``autoseg predict --model model.zip``) without trusting it.

The zip is read into memory, never unpacked to disk, and checked in this order before any network is
built (each failure is a :class:`ModelZipError`: one line naming the zip and the member, and what to do):

1. every entry: a relative name of the form :data:`~.model_zip.MEMBER_PATTERN` allows (no ``..``, no
   absolute or Windows path, no folder entry), not a duplicate, a regular file (no symbolic link or
   other special file in the entry's external attributes), not encrypted, stored or deflated, and a
   declared size within :class:`Limits` (one member and all together: a zip bomb is refused before
   a byte is inflated);
2. ``autoseg_model.json``: its ``format`` and then its ``format_version`` (a zip of an incompatible
   autoseg is refused with the version that wrote it) before anything else of it is read;
3. the members present are exactly those the manifest lists; each is read with a cap (never more
   bytes than declared, nor than the limit) and must have the SHA-256 the manifest records;
4. the JSON members parse into their schemas; weights load with safetensors, which holds tensors
   only and never unpickles (a pickle in place of weights is refused as not a safetensors file), and
   must fit the network of plans.json (names, shapes, finite values); ONNX members may not point to
   external data files; the dataset's file ending (which names the output files) must be a supported one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AutosegError, SchemaError
from ..schemas import Plans, Selection, from_dict
from ..store import plans_hash
from ..version import __version__
from .model_zip import (DATASET_JSON, FORMAT, FORMAT_VERSION, MANIFEST_JSON, MEMBER_PATTERN, PLANS_JSON,
                        SELECTION_JSON, ModelDataset, ModelManifest, ModelNetwork)

log = logging.getLogger(__name__)

_UNTRUSTED = "do not use this file; ask whoever sent it for a model exported with `autoseg export`"


class ModelZipError(AutosegError):
    """A model zip that is refused: ``path`` and ``member`` (None: the zip as a whole) are named in the message."""

    def __init__(self, path: Path, member: str | None, reason: str, advice: str = _UNTRUSTED):
        self.path, self.member, self.reason = Path(path), member, reason
        where = f"model {self.path}" + (f": member {member!r}" if member is not None else "")
        super().__init__(f"{where} {reason}; {advice}".replace("\n", " "))


@dataclass(frozen=True)
class Limits:
    """Sizes a model zip may declare and inflate to (bytes). A 3D nnU-Net network's fp32 weights are
    about 120 MB, its ONNX file as much."""

    member_bytes: int = 2 * 1024 ** 3
    json_bytes: int = 64 * 1024 ** 2
    total_bytes: int = 16 * 1024 ** 3
    members: int = 1000


def _name_problem(name: str) -> str | None:
    """Why ``name`` can never be a member of a model zip (None: its form is fine)."""
    if not name or "\x00" in name:
        return "has an empty name or a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash (a Windows path)"
    if ".." in name.split("/"):
        return "points outside the archive (a '..' component)"
    if name.endswith("/"):
        return "is a folder entry, which autoseg never writes"
    if name != MANIFEST_JSON and not MEMBER_PATTERN.match(name):
        return "is not a member autoseg writes (manifest, plans.json, selection.json, dataset.json, " \
               "weights/<configuration>/fold_<k>.safetensors, onnx/<configuration>/fold_<k>.onnx)" + (
                   "; weights must be .safetensors: autoseg never unpickles a model file"
                   if name.endswith((".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")) else "")
    return None


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG):
        return "is not a regular file (a device, pipe or folder)"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"uses compression method {info.compress_type}; autoseg writes stored or deflated members only"
    return None


class ModelZip:
    """A model zip, checked (module doc) and held in memory. Open with :func:`open_model_zip`."""

    def __init__(self, path: Path, manifest: ModelManifest, members: dict[str, bytes], model_id: str):
        self.path, self.manifest, self._members, self.model_id = path, manifest, members, model_id
        self.plans: Plans = self._json(PLANS_JSON, Plans)
        self.selection: Selection = self._json(SELECTION_JSON, Selection)
        self.dataset: ModelDataset = self._json(DATASET_JSON, ModelDataset)
        self._check_consistent()

    def _json(self, name: str, cls: type) -> Any:
        try:
            return from_dict(cls, json.loads(self._members[name].decode("utf-8")), f"{self.path}:{name}")
        except (ValueError, SchemaError) as e:
            raise ModelZipError(self.path, name, f"cannot be read ({str(e).splitlines()[0]})") from None

    def _check_consistent(self) -> None:
        from ..data.image_io import SUPPORTED_ENDINGS

        m, d = self.manifest, self.dataset
        # the file ending names the output files: anything but a known ending (e.g. '/../x') could write elsewhere
        if d.file_ending not in SUPPORTED_ENDINGS or d.files_per_case < 1 or d.ndim not in (2, 3):
            raise ModelZipError(self.path, DATASET_JSON, f"has file ending {d.file_ending!r}, {d.files_per_case} "
                                                         f"file(s) per case and ndim {d.ndim}; expected one of "
                                                         f"{', '.join(SUPPORTED_ENDINGS)}, at least 1 and 2 or 3")
        if self.selection.plans_hash != plans_hash(self.plans):
            raise ModelZipError(self.path, SELECTION_JSON, "was made for other plans than the zip's plans.json")
        for name in m.stages:
            if name not in self.plans.configurations:
                raise ModelZipError(self.path, PLANS_JSON, f"lacks configuration {name!r}, which the manifest lists")
        held = {(n.configuration, n.fold) for n in m.networks}
        missing = [f"{c} fold {f}" for c in m.stages for f in m.folds if (c, f) not in held]
        if missing:
            raise ModelZipError(self.path, MANIFEST_JSON, f"lists no network for {', '.join(missing)}")
        for net in m.networks:
            for member in (net.weights, net.onnx):
                if member is not None and member not in self._members:
                    raise ModelZipError(self.path, MANIFEST_JSON, f"names member {member!r}, which is not in the zip")

    # ---------------------------------------------------------------- networks
    def network(self, configuration: str, fold: int | str) -> ModelNetwork | None:
        for net in self.manifest.networks:
            if net.configuration == configuration and net.fold == str(fold):
                return net
        return None

    def weights(self, configuration: str, fold: int | str, network: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The state dict of (configuration, fold), checked against ``network`` (names, shapes, finite)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        from .checkpoint import CheckpointError, check_fits_network

        net = self.network(configuration, fold)
        if net is None:
            raise AutosegError(f"model {self.path} holds no network for {configuration} fold {fold}")
        try:
            state = load(self._members[net.weights])
        except (SafetensorError, ValueError, TypeError, RuntimeError) as e:
            raise ModelZipError(self.path, net.weights, f"is not a safetensors file ({str(e).splitlines()[0]}); "
                                                        f"it was not loaded (autoseg never unpickles weights)") from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ModelZipError(self.path, net.weights, f"has NaN or infinite weights ({', '.join(bad[:3])})")
        try:
            check_fits_network(f"{self.path}:{net.weights}", {"model": state}, network)
        except CheckpointError as e:
            raise ModelZipError(self.path, net.weights, f"does not fit the {configuration!r} network of the zip's "
                                                        f"plans.json: it {e.reason}") from None
        return state

    def onnx(self, configuration: str, fold: int | str) -> bytes | None:
        """The ONNX network of (configuration, fold), or None when the zip was exported without ``--onnx``."""
        net = self.network(configuration, fold)
        if net is None or net.onnx is None:
            return None
        data = self._members[net.onnx]
        try:
            import onnx
            from onnx.external_data_helper import _get_all_tensors, uses_external_data
        except ImportError:  # onnxruntime alone: it refuses external data it cannot find beside a byte string
            return data
        try:
            model = onnx.load_model_from_string(data)
        except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
            raise ModelZipError(self.path, net.onnx, f"is not an ONNX model ({type(e).__name__})") from None
        if any(uses_external_data(t) for t in _get_all_tensors(model)):
            raise ModelZipError(self.path, net.onnx, "refers to external data files outside the zip")
        return data


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    """The member's bytes; never more than it declares nor than ``limit`` (a lying header is refused)."""
    chunks, total = [], 0
    try:
        with archive.open(info) as f:
            while block := f.read(1 << 20):
                total += len(block)
                if total > info.file_size or total > limit:
                    raise ModelZipError(path, info.filename, f"inflates to more bytes than it declares "
                                                             f"({info.file_size}) or than the limit ({limit})")
                chunks.append(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise ModelZipError(path, info.filename, f"is damaged ({type(e).__name__}: {e})",
                            "copy the zip again from its source, or export it again") from None
    if total != info.file_size:
        raise ModelZipError(path, info.filename, f"has {total} bytes but declares {info.file_size}")
    return b"".join(chunks)


def _read_manifest(archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path: Path,
                   limits: Limits) -> tuple[ModelManifest, str]:
    if MANIFEST_JSON not in infos:
        raise ModelZipError(path, None, f"has no {MANIFEST_JSON}, so it is not a model exported by autoseg",
                            "export the model with `autoseg export --workdir RUN -o model.zip`")
    raw = _read_capped(archive, infos[MANIFEST_JSON], limits.json_bytes, path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise ModelZipError(path, MANIFEST_JSON, f"is not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelZipError(path, MANIFEST_JSON, f"does not describe an autoseg model (format {FORMAT!r} expected)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelZipError(path, MANIFEST_JSON,
                            f"has model format version {version!r} (written by autoseg "
                            f"{data.get('autoseg_version', '?')}), but this autoseg {__version__} reads format "
                            f"{FORMAT_VERSION} only",
                            "install the autoseg version that exported it, or export the model again with this one")
    try:
        manifest = from_dict(ModelManifest, data, f"{path}:{MANIFEST_JSON}")
    except SchemaError as e:
        raise ModelZipError(path, MANIFEST_JSON, f"cannot be read ({e})") from None
    return manifest, hashlib.sha256(raw).hexdigest()[:16]


def open_model_zip(path: str | Path, limits: Limits = Limits()) -> ModelZip:
    """Check and read the model zip at ``path`` (module doc); raises :class:`ModelZipError` when refused."""
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"model {path} does not exist or is not a file; pass the zip that `autoseg export` wrote")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelZipError(path, None, f"is not a readable zip archive ({e})",
                            "copy it again from its source, or export it again") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.members:
            raise ModelZipError(path, None, f"has {len(entries)} members (at most {limits.members} expected)")
        infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in entries:
            problem = _name_problem(info.filename) or _entry_problem(info)
            if problem is None and info.filename in infos:
                problem = "appears more than once"
            limit = limits.json_bytes if info.filename.endswith(".json") else limits.member_bytes
            if problem is None and info.file_size > limit:
                problem = f"declares {info.file_size} bytes, more than the limit of {limit}"
            if problem is not None:
                raise ModelZipError(path, info.filename, problem)
            total += info.file_size
            if total > limits.total_bytes:
                raise ModelZipError(path, info.filename, f"brings the declared size to {total} bytes, more than "
                                                         f"the limit of {limits.total_bytes}")
            infos[info.filename] = info
        manifest, model_id = _read_manifest(archive, infos, path, limits)
        listed = set(manifest.members)
        for name in sorted(set(infos) - listed - {MANIFEST_JSON}):
            raise ModelZipError(path, name, "is not listed in the manifest")
        for name in sorted(listed - set(infos)):
            raise ModelZipError(path, name, "is listed in the manifest but missing from the zip")
        members: dict[str, bytes] = {}
        for name in sorted(listed):
            data = _read_capped(archive, infos[name], limits.member_bytes, path)
            record = manifest.members[name]
            if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
                raise ModelZipError(path, name, "does not have the SHA-256 the manifest records (changed after "
                                                "export)")
            members[name] = data
    model = ModelZip(path, manifest, members, model_id)
    log.info("model %s: %s, folds %s, exported by autoseg %s (torch %s)", path, "+".join(manifest.configurations),
             manifest.folds, manifest.autoseg_version, manifest.torch_version)
    return model
