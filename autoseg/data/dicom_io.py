"""DICOM image series in: one folder holding one series of single-frame slices -> ``(1, Z, Y, X)``.

Read with SimpleITK (GDCM), so reading needs no extra package; writing DICOM Segmentations
(``autoseg.inference.dicom_seg``) needs pydicom and highdicom (``pip install 'autoseg[dicom]'``).

Contract:
  * a series folder holds the files of exactly one series (GDCM series ids, i.e. one
    SeriesInstanceUID) of one modality: single-frame slices of one size, pixel spacing and
    orientation, evenly spaced along the slice normal. Anything else is refused with an
    AutosegError naming the folder, what was found and what to do (several series, mixed modalities,
    multi-frame files, a missing slice, uneven spacing, two slices at one position, gantry tilt).
  * the slices are sorted by their position along the normal (ImagePositionPatient projected on
    row x column of ImageOrientationPatient), ascending, never by file name or InstanceNumber;
    :attr:`DicomSeries.files` ``[z]`` is slice ``z`` of the returned array (array order, numpy
    ``(Z, Y, X)``: Y = DICOM rows, X = columns). The reader checks that SimpleITK put every slice
    where its header says (``TransformIndexToPhysicalPoint((0, 0, z))`` == its ImagePositionPatient).
  * intensities are the rescaled values (RescaleSlope/Intercept applied, e.g. Hounsfield units),
    float32; the :class:`~autoseg.schemas.Geometry` is the ITK one (x, y, z), like every other reader's.

A case may have several channels: ``<case>/0000/``, ``<case>/0001/``, ... each holding one series
(:func:`dicom_case_channels`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import AutosegError
from ..schemas import Geometry

log = logging.getLogger(__name__)

_CHANNEL_FOLDER = re.compile(r"^\d{4}$")
#: header tags read from every slice (SimpleITK's "gggg|eeee" keys)
_TAGS = {"position": "0020|0032", "orientation": "0020|0037", "pixel_spacing": "0028|0030",
         "modality": "0008|0060", "sop_uid": "0008|0018", "series_uid": "0020|000e", "frames": "0028|0008",
         "rows": "0028|0010", "columns": "0028|0011", "description": "0008|103e",
         "thickness": "0018|0050"}


@dataclass(frozen=True)
class DicomSeries:
    """One series as read: ``files[z]`` and ``sop_instance_uids[z]`` belong to slice ``z`` of the array."""

    folder: str
    series_instance_uid: str
    modality: str
    files: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    positions_mm: tuple[tuple[float, float, float], ...]  # ImagePositionPatient of each slice


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128) or ending in ``.dcm``."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _visible(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def holds_dicom_files(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds at least one DICOM file directly (not in a sub-folder)."""
    return any(e.is_file() and is_dicom_file(e.path) for e in _visible(Path(folder)))


def is_dicom_case(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a DICOM case: DICOM files directly in it (one channel), or channel
    sub-folders ``0000``, ``0001``, ... of which at least one holds DICOM files."""
    folder = Path(folder)
    if holds_dicom_files(folder):
        return True
    return any(e.is_dir() and _CHANNEL_FOLDER.match(e.name) and holds_dicom_files(e.path) for e in _visible(folder))


def dicom_case_channels(folder: str | os.PathLike) -> list[Path]:
    """The series folders of a DICOM case, in channel order: ``[folder]`` when the DICOM files lie in
    it, else its sub-folders ``0000``, ``0001``, ... (contiguous, each one a series).

    Raises AutosegError naming the folder when it mixes both layouts, has a gap in the channel
    folders or a channel folder without DICOM files."""
    folder = Path(folder)
    entries = _visible(folder)
    channels = {int(e.name): Path(e.path) for e in entries if e.is_dir() and _CHANNEL_FOLDER.match(e.name)}
    direct = any(e.is_file() and is_dicom_file(e.path) for e in entries)
    if direct and channels:
        raise AutosegError(f"{folder}: holds DICOM files and channel folders ({', '.join(f'{c:04d}' for c in sorted(channels))}); "
                           f"expected either one series (the files directly in the folder, one channel) or one series "
                           f"per channel in sub-folders 0000, 0001, ...; move the files into a channel folder")
    if direct:
        return [folder]
    if not channels:
        raise AutosegError(f"{folder}: holds no DICOM files; expected one DICOM series (its slice files) directly in "
                           f"the folder, or channel folders 0000, 0001, ... each holding one series")
    gaps = [f"{c:04d}" for c in range(max(channels) + 1) if c not in channels]
    if gaps:
        raise AutosegError(f"{folder}: channel folder(s) {', '.join(gaps)} missing; expected 0000 .. "
                           f"{max(channels):04d} without gaps, one DICOM series each; add them")
    empty = [str(p) for p in channels.values() if not holds_dicom_files(p)]
    if empty:
        raise AutosegError(f"{', '.join(empty)}: holds no DICOM files; every channel folder needs one DICOM series")
    return [channels[c] for c in sorted(channels)]


# --------------------------------------------------------------------------- headers

def _header(path: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise AutosegError(f"{path}: cannot be read as a DICOM image ({str(e).strip().splitlines()[-1][:200]}); "
                           f"remove it from the series folder or re-export the series") from None
    return {k: reader.GetMetaData(t).strip() for k, t in _TAGS.items() if reader.HasMetaDataKey(t)}


def _numbers(header: dict[str, str], key: str, count: int, path: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in header[key].split("\\")], dtype=float)
    except (KeyError, ValueError):
        values = np.zeros(0)
    if values.size != count or not np.isfinite(values).all():
        names = {"position": "ImagePositionPatient (0020,0032)", "orientation": "ImageOrientationPatient (0020,0037)",
                 "pixel_spacing": "PixelSpacing (0028,0030)"}
        raise AutosegError(f"{path}: {names[key]} is missing or not {count} numbers (found "
                           f"'{header.get(key, '')}'); autoseg places the slices in space with it; re-export the "
                           f"series with it (a secondary capture or screenshot cannot be segmented)")
    return values


def _series_ids(folder: Path) -> list[str]:
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as e:
        raise AutosegError(f"{folder}: could not be scanned for DICOM series ({str(e).strip()[:200]})") from None


def _describe_series(folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    head = _header(files[0]) if files else {}
    desc = f", \"{head['description']}\"" if head.get("description") else ""
    return f"{uid} ({head.get('modality', '?')}, {len(files)} file{'s' if len(files) != 1 else ''}{desc})"


def _series_files(folder: Path) -> tuple[str, list[str]]:
    """(series uid, its files) of the one series in ``folder``; refuses none or several."""
    if not folder.is_dir():
        raise AutosegError(f"{folder}: is not a folder; expected a folder holding one DICOM series")
    ids = _series_ids(folder)
    if not ids:
        raise AutosegError(f"{folder}: holds no DICOM image series that GDCM can read; expected the slice files of "
                           f"one series directly in this folder")
    if len(ids) > 1:
        found = "; ".join(_describe_series(folder, uid) for uid in ids)
        raise AutosegError(f"{folder}: holds {len(ids)} DICOM series: {found}. Expected exactly one series per case "
                           f"folder; split them: move each series into a folder of its own (separate cases: "
                           f"{folder.name}_a/, {folder.name}_b/, ...; the channels of one case, in the model's channel "
                           f"order: {folder.name}/0000/, {folder.name}/0001/, ...), and remove series that are "
                           f"not images to segment (localizers, reports, other segmentations)")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    return ids[0], files


def _check_same(folder: Path, files: list[str], values: list, what: str, close) -> None:
    for i in range(1, len(values)):
        if not close(values[i], values[0]):
            raise AutosegError(f"{folder}: the slices differ in {what}: {files[0]} has {_fmt(values[0])}, "
                               f"{files[i]} has {_fmt(values[i])}; expected one {what} for the whole series "
                               f"(a localizer or another acquisition may be mixed in); keep only the slices of "
                               f"one acquisition in this folder")


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):g}" for x in np.ravel(v)) + ")" if isinstance(v, np.ndarray) else str(v)


def _sorted_slices(folder: Path, files: list[str], headers: list[dict[str, str]]) -> list[int]:
    """Indices of ``files`` sorted along the slice normal; refuses uneven spacing, gaps, duplicates, tilt."""
    orientation = [_numbers(h, "orientation", 6, f) for h, f in zip(headers, files)]
    _check_same(folder, files, orientation, "orientation (ImageOrientationPatient)",
                lambda a, b: np.allclose(a, b, atol=1e-4))
    spacing = [_numbers(h, "pixel_spacing", 2, f) for h, f in zip(headers, files)]
    _check_same(folder, files, spacing, "pixel spacing (PixelSpacing)", lambda a, b: np.allclose(a, b, rtol=1e-3))
    sizes = [(h.get("rows"), h.get("columns")) for h in headers]
    _check_same(folder, files, sizes, "size (Rows, Columns)", lambda a, b: a == b)
    if len(files) < 2:
        raise AutosegError(f"{folder}: holds one slice ({files[0]}); expected a 3D series of 2 or more slices; "
                           f"convert a single 2D image to NIfTI or PNG and predict that file")
    positions = np.array([_numbers(h, "position", 3, f) for h, f in zip(headers, files)])
    normal = np.cross(orientation[0][:3], orientation[0][3:])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    steps = np.diff(along[order])
    for k, step in enumerate(steps):
        if step < 1e-3:
            a, b = files[order[k]], files[order[k + 1]]
            raise AutosegError(f"{folder}: {a} and {b} lie at the same position ({along[order[k]]:.3f} mm along the "
                               f"slice normal); the folder holds more than one image per position (time points, "
                               f"echoes, a duplicated export); keep one image per position (one series per folder)")
    typical = float(np.median(steps))
    tolerance = max(1e-3, 0.01 * typical)
    for k, step in enumerate(steps):
        if abs(step - typical) > tolerance:
            a, b = files[order[k]], files[order[k + 1]]
            ratio = step / typical
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.05:
                raise AutosegError(f"{folder}: {round(ratio) - 1} slice(s) missing between {a} and {b} (they are "
                                   f"{step:.3f} mm apart where the other slices are {typical:.3f} mm apart); export "
                                   f"the complete series")
            raise AutosegError(f"{folder}: the slices are not evenly spaced: {a} and {b} are {step:.3f} mm apart, "
                               f"the other slices {typical:.3f} mm ({len(files)} slices, spacings from "
                               f"{steps.min():.3f} to {steps.max():.3f} mm); autoseg needs one slice spacing per "
                               f"series; resample the series to even spacing (or split it into evenly spaced parts)")
    drift = positions[order] - positions[order[0]] - np.outer(along[order] - along[order[0]], normal)
    if float(np.abs(drift).max()) > 0.1 * float(spacing[0].min()):
        raise AutosegError(f"{folder}: the slices are shifted within their plane from one slice to the next (gantry "
                           f"tilt or a sheared acquisition: up to {float(np.abs(drift).max()):.2f} mm over the "
                           f"series); autoseg reads rectangular volumes only; resample the series onto an untilted "
                           f"grid first (e.g. with dcm2niix, which corrects gantry tilt, then predict the NIfTI)")
    return order


def scan_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """The one series of ``folder``, its files sorted along the slice normal (headers only, no pixels).

    Raises AutosegError naming the folder (and files) for: no series, several series, mixed
    modalities, multi-frame files, differing orientation/size/pixel spacing, one slice only,
    two slices at one position, a missing slice, uneven spacing, gantry tilt."""
    folder = Path(folder)
    uid, files = _series_files(folder)
    headers = [_header(f) for f in files]
    modalities: dict[str, list[str]] = {}
    for h, f in zip(headers, files):
        modalities.setdefault(h.get("modality", "") or "(none)", []).append(f)
    if len(modalities) > 1:
        found = ", ".join(f"{m} ({len(fs)} files, e.g. {fs[0]})" for m, fs in sorted(modalities.items()))
        raise AutosegError(f"{folder}: series {uid} mixes modalities: {found}; expected one modality per series; "
                           f"keep the files of one modality in this folder (put the others in a folder of their own)")
    multi = [f for h, f in zip(headers, files) if int(float(h.get("frames") or 1)) > 1]
    if multi:
        raise AutosegError(f"{folder}: {multi[0]} is a multi-frame (enhanced) DICOM image; autoseg reads series of "
                           f"single-frame slices; convert it to single-frame slices or to NIfTI (e.g. with dcm2niix) "
                           f"and predict that")
    order = _sorted_slices(folder, files, headers)
    return DicomSeries(folder=str(folder), series_instance_uid=uid, modality=next(iter(modalities)),
                       files=tuple(files[i] for i in order),
                       sop_instance_uids=tuple(headers[i].get("sop_uid", "") for i in order),
                       positions_mm=tuple(tuple(float(v) for v in _numbers(headers[i], "position", 3, files[i]))
                                          for i in order))


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, Geometry, DicomSeries]:
    """Read the one series of ``folder`` -> (float32 ``(1, Z, Y, X)`` rescaled intensities, Geometry in
    ITK order, the :class:`DicomSeries` whose ``files[z]`` is slice ``z``). See the module doc."""
    series = scan_dicom_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise AutosegError(f"{folder}: the DICOM series {series.series_instance_uid} could not be read "
                           f"({str(e).strip().splitlines()[-1][:200]}); a compressed transfer syntax GDCM cannot "
                           f"decode, or damaged files; re-export the series uncompressed") from None
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise AutosegError(f"{folder}: the series {series.series_instance_uid} has {img.GetNumberOfComponentsPerPixel()} "
                           f"values per pixel; expected greyscale slices (colour DICOM is not supported)")
    for z, path in enumerate(series.files):  # SimpleITK must have put slice z where its header says
        want = np.array(series.positions_mm[z])
        got = np.array(img.TransformIndexToPhysicalPoint((0, 0, z)))
        if not np.allclose(got, want, atol=1e-2 + 1e-4 * float(np.abs(want).max())):
            raise AutosegError(f"{path}: read as slice {z} at {_fmt(got)} mm but its ImagePositionPatient is "
                               f"{_fmt(want)}; the series cannot be placed consistently; please report this "
                               f"with the series' headers")
    arr = sitk.GetArrayFromImage(img)[None]
    geometry = Geometry(ndim=3, size=tuple(int(v) for v in img.GetSize()),
                        spacing=tuple(float(v) for v in img.GetSpacing()),
                        origin=tuple(float(v) for v in img.GetOrigin()),
                        direction=tuple(float(v) for v in img.GetDirection()), components=1)
    return np.ascontiguousarray(arr, dtype=np.float32), geometry, series


def estimate_series_geometry(folder: str | os.PathLike) -> Geometry | None:
    """A rough Geometry of the series in ``folder`` from one slice's header and the number of DICOM
    files (for memory estimates before reading); None when the folder holds no readable DICOM file."""
    files = [e.path for e in _visible(Path(folder)) if e.is_file() and is_dicom_file(e.path)]
    if not files:
        return None
    try:
        head = _header(files[0])
        rows, cols = int(head["rows"]), int(head["columns"])
        dy, dx = _numbers(head, "pixel_spacing", 2, files[0])
        dz = float(head.get("thickness") or 1.0)
    except (AutosegError, KeyError, ValueError):
        return None
    return Geometry(ndim=3, size=(cols, rows, len(files)), spacing=(float(dx), float(dy), dz if dz > 0 else 1.0),
                    origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel().tolist()), components=1)
