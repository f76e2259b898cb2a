"""Which cases an ``autoseg predict -i ...`` input names, and the ending of each case's segmentation.

* a folder in nnU-Net's ``imagesTs`` layout: ``<case>_<cccc><file_ending>``, one file per channel
  (output ``<case><file_ending>``);
* in the same folder, DICOM cases: every sub-folder that holds one DICOM series (one channel), or
  channel folders ``0000``, ``0001``, ... each holding one series; case id = the sub-folder's name
  (output ``<case>.nii.gz``);
* a folder that holds DICOM files itself: that one series is the case (id = the folder's name); so is
  a folder given alone whose sub-folders are exactly ``0000`` .. ``C-1`` holding DICOM series, for a
  model of C >= 2 channels;
* a list of files and/or folders: one case per file (single-channel datasets, or one RGB file;
  a trailing ``_0000`` is not part of the id; output in the file's own ending) or per DICOM case folder.

Problems that concern one case (a gap in its channels, a misnamed file, a folder mixing layouts)
become that case's failure; the other cases are still predicted.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data.dicom_io import dicom_case_channels, holds_dicom_files, is_dicom_case
from ..errors import AutosegError
from ..schemas import CaseFiles


@dataclass(frozen=True)
class InputLayout:
    """What finding cases needs to know of a model's images (a DatasetManifest has the same attributes)."""

    file_ending: str
    num_channels: int
    files_per_case: int


log = logging.getLogger(__name__)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_CHANNEL_FOLDER = re.compile(r"^\d{4}$")
#: the segmentation of a DICOM case is written as NIfTI (with the series' geometry)
DICOM_OUTPUT_ENDING = ".nii.gz"


@dataclass
class CaseInputs:
    """``jobs``: (case, ending of its segmentation); ``failed``: case id -> message, for cases found but not
    predictable; ``endings``: case id -> ending, for every case (the failed ones' outputs are removed);
    ``dicom``: the ids of the DICOM cases (failed ones included)."""

    jobs: list[tuple[CaseFiles, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    endings: dict[str, str] = field(default_factory=dict)
    dicom: set[str] = field(default_factory=set)


def is_dicom_job(case: CaseFiles) -> bool:
    """True when the case's channels are DICOM series folders."""
    return bool(case.images) and Path(case.images[0]).is_dir()


def _group_files(folder: Path, file_ending: str, out: CaseInputs) -> set[str]:
    """``<case>_<cccc><ending>`` files of ``folder`` -> cases with contiguous channels in ``out``; returns the
    other endings seen. A case whose channel numbers have a gap, a file with the right ending that is not
    named ``<case>_<cccc>``, or a ``<case>_<cccc>`` image in another supported format (a folder that mixes
    formats) becomes a problem of that case."""
    from ..data.image_io import SUPPORTED_ENDINGS, ending_of

    grouped: dict[str, dict[int, str]] = {}
    other_endings: set[str] = set()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not entry.name.endswith(file_ending):
            ending = ending_of(entry.name)
            m = _CHANNEL_FILE.match(entry.name[: -len(ending)] if ending else entry.name)
            if ending in SUPPORTED_ENDINGS and m is not None:  # an image of this folder, in another format
                out.failed.setdefault(m["case"], (
                    f"case {m['case']}: {folder / entry.name} is a '{ending}' file, but this model's dataset uses "
                    f"'{file_ending}' and a folder is read in that format only; convert the case's files to "
                    f"{file_ending}"))
                out.endings.setdefault(m["case"], file_ending)
                continue
            other_endings.add(Path(entry.name).suffix or entry.name)
            continue
        stem = entry.name[: -len(file_ending)]
        m = _CHANNEL_FILE.match(stem)
        if m is None:
            out.failed[stem] = (f"{folder / entry.name} is not named <case>_<cccc>{file_ending} (case id, "
                                f"underscore, 4-digit channel index); rename it, e.g. to {stem}_0000{file_ending}")
            out.endings[stem] = file_ending
            continue
        grouped.setdefault(m["case"], {})[int(m["channel"])] = str(folder / entry.name)
    for case_id in sorted(grouped):
        out.endings[case_id] = file_ending
        if case_id in out.failed:  # e.g. one of its channels in another format: the case fails as a whole
            continue
        files = grouped[case_id]
        gaps = [i for i in range(max(files) + 1) if i not in files]
        if gaps:
            names = ", ".join(str(folder / f"{case_id}_{i:04d}{file_ending}") for i in gaps)
            out.failed[case_id] = (f"case {case_id}: missing channel file(s) {names}; expected "
                                   f"{case_id}_0000{file_ending} .. {case_id}_{max(files):04d}{file_ending} "
                                   f"without gaps; add them")
            continue
        out.jobs.append((CaseFiles(case_id, tuple(files[i] for i in sorted(files))), file_ending))
    return other_endings


def _add_dicom_case(folder: Path, out: CaseInputs, *, channels: list[Path] | None = None) -> None:
    case_id = folder.name
    if case_id in out.endings:
        out.failed[case_id] = (f"case {case_id}: both image files and the DICOM folder {folder} are named "
                               f"'{case_id}'; rename one of them")
        out.jobs = [j for j in out.jobs if j[0].case_id != case_id]
        return
    out.endings[case_id] = DICOM_OUTPUT_ENDING
    out.dicom.add(case_id)
    try:
        channels = channels if channels is not None else dicom_case_channels(folder)
    except AutosegError as e:
        out.failed[case_id] = f"case {case_id}: {e}"
        return
    out.jobs.append((CaseFiles(case_id, tuple(str(p) for p in channels)), DICOM_OUTPUT_ENDING))


def _is_one_multichannel_case(folder: Path, num_channels: int) -> bool:
    """A folder given alone whose sub-folders are exactly 0000 .. C-1, each holding DICOM files (C >= 2)."""
    if num_channels < 2:
        return False
    subs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and _CHANNEL_FOLDER.match(e.name))
    return (subs == [f"{c:04d}" for c in range(num_channels)]
            and all(holds_dicom_files(folder / s) for s in subs))


def _folder(folder: Path, manifest: InputLayout, output_dir: Path) -> CaseInputs:
    out = CaseInputs()
    if holds_dicom_files(folder):  # the folder is one series: one case
        _add_dicom_case(folder, out)
        return out
    if _is_one_multichannel_case(folder, manifest.num_channels):
        _add_dicom_case(folder, out, channels=[folder / f"{c:04d}" for c in range(manifest.num_channels)])
        return out
    other_endings = _group_files(folder, manifest.file_ending, out)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if (entry.is_dir() and not entry.name.startswith(".") and Path(entry.path).resolve() != output_dir
                and is_dicom_case(entry.path)):  # the output folder may hold DICOM SEGs of an earlier run
            _add_dicom_case(Path(entry.path), out)
    if other_endings:
        log.warning("%s: ignoring files not ending in the dataset's file ending '%s' (found %s)", folder,
                    manifest.file_ending, ", ".join(sorted(other_endings)))
    if not out.jobs and not out.failed:
        raise AutosegError(f"{folder}: no files ending in '{manifest.file_ending}' found, and no sub-folder holding a "
                           f"DICOM series; expected images named <case>_0000{manifest.file_ending} (nnU-Net imagesTs "
                           f"layout) or one sub-folder per case holding one DICOM series"
                           + (f"; found files ending in {', '.join(sorted(other_endings))}" if other_endings else ""))
    out.jobs.sort(key=lambda j: j[0].case_id)
    return out


def _paths(paths: Sequence[str | Path], manifest: InputLayout) -> CaseInputs:
    """One case per file (a trailing ``_0000`` is not part of the id) or per DICOM case folder."""
    from ..data.image_io import ending_of

    out, seen = CaseInputs(), {}
    files = [Path(p) for p in paths if not Path(p).is_dir()]
    if files and manifest.files_per_case > 1:
        raise AutosegError(f"this dataset has {manifest.files_per_case} channel files per case, so "
                           f"single files cannot be predicted; put the cases in a folder as "
                           f"<case>_0000{manifest.file_ending}, <case>_0001{manifest.file_ending}, ... "
                           f"and pass the folder (-i)")
    missing = [str(f) for f in files if not f.exists()]
    if missing and len(missing) == len(paths):
        raise AutosegError(f"input {', '.join(missing[:5])} does not exist; pass a folder of "
                           f"<case>_0000{manifest.file_ending} images, DICOM series folders or existing image files")
    for p in paths:
        path = Path(p).resolve()
        if path.is_dir():
            case_id = path.name
        else:
            ending = ending_of(path)
            stem = path.name[: len(path.name) - len(ending)] if ending else path.name
            m = _CHANNEL_FILE.match(stem)
            case_id = m["case"] if m and m["channel"] == "0000" else stem
        if case_id in seen:
            raise AutosegError(f"{path} and {seen[case_id]} would both be written as case '{case_id}'; "
                               f"rename one of them")
        seen[case_id] = path
        if path.is_dir():
            _add_dicom_case(path, out)
        else:
            out.jobs.append((CaseFiles(case_id, (str(path),)), ending))
            out.endings[case_id] = ending
    return out


def find_cases(inputs: str | Path | Sequence[str | Path], manifest: InputLayout, output_dir: Path) -> CaseInputs:
    """The cases of ``inputs`` (module doc), for a model whose images are ``manifest.file_ending`` files,
    ``manifest.files_per_case`` per case (``num_channels`` channels): a DatasetManifest, or an
    :class:`InputLayout` made from a model source. Raises AutosegError when the output folder is the input
    folder, nothing is given, a folder holds no case, or two inputs map to one case id."""
    if isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
        folder = Path(inputs).resolve()
        if folder == output_dir:
            raise AutosegError(f"the output folder {output_dir} is the input folder; predictions would be "
                               f"mixed with the images; choose another output folder (-o)")
        return _folder(folder, manifest, output_dir)
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not paths:
        raise AutosegError("no input given; pass a folder of <case>_0000 images, DICOM series folders or image files")
    for p in paths:
        if Path(p).is_dir() and Path(p).resolve() == output_dir:
            raise AutosegError(f"the output folder {output_dir} is an input folder; choose another output folder (-o)")
    return _paths(paths, manifest)
