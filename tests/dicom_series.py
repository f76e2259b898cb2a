"""Tiny synthetic DICOM series for tests, written with pydicom (nothing is downloaded).

``write_dicom_series(folder, volume, ...)`` writes one single-frame CT (or MR) image per slice of
``volume`` (Z, Y, X), slice ``k`` at ``origin + k * slice_spacing * normal``, with proper UIDs,
ImagePositionPatient/Orientation, PixelSpacing, SliceThickness and RescaleSlope/Intercept. File
names are shuffled (never in slice order) and InstanceNumber may run against the positions, so a
reader that sorts by name or instance number gets the slices wrong.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass(frozen=True)
class WrittenSeries:
    folder: Path
    series_uid: str
    sop_uids: tuple[str, ...]  # in slice order (k = 0 .. Z-1)
    files: tuple[Path, ...]  # in slice order
    positions: tuple[tuple[float, float, float], ...]  # ImagePositionPatient per slice, in slice order


def write_dicom_series(folder: str | Path, volume: np.ndarray, *, spacing_zyx: Sequence[float] = (2.0, 0.9, 0.7),
                       origin_xyz: Sequence[float] = (12.5, -30.0, 4.0),
                       row_direction: Sequence[float] = (1.0, 0.0, 0.0),
                       column_direction: Sequence[float] = (0.0, 1.0, 0.0), modality: str = "CT",
                       slope: float = 1.0, intercept: float = -1024.0, series_uid: str | None = None,
                       study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                       slice_positions: Sequence[float] | None = None, modalities: Sequence[str] | None = None,
                       reverse_instance_numbers: bool = False, seed: int = 0, series_number: int = 3,
                       prefix: str = "img") -> WrittenSeries:
    """Write ``volume`` (Z, Y, X; rescaled values, e.g. HU) as a DICOM series into ``folder``.

    ``slice_positions``: distance of each slice along the normal in mm (default ``k * spacing_zyx[0]``),
    e.g. to leave a gap. ``modalities``: one Modality per slice (mixed series). Stored values are uint16
    ``round((value - intercept) / slope)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    nz, ny, nx = volume.shape
    row, col = np.asarray(row_direction, float), np.asarray(column_direction, float)
    normal = np.cross(row, col)
    along = [k * float(spacing_zyx[0]) for k in range(nz)] if slice_positions is None else list(slice_positions)
    names = np.random.default_rng(seed).permutation(nz)
    sop_uids, files, positions = [], [], []
    for k in range(nz):
        modality_k = modalities[k] if modalities is not None else modality
        sop_class = MRImageStorage if modality_k == "MR" else CTImageStorage
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Case", "SYN001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = (
            "20240101", "120000", "A0001", "", "1")
        ds.SeriesNumber, ds.SeriesDescription = series_number, f"synthetic {modality_k}"
        ds.Modality, ds.Manufacturer = modality_k, "autoseg tests"
        ds.InstanceNumber = nz - k if reverse_instance_numbers else k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        position = np.asarray(origin_xyz, float) + along[k] * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.PixelSpacing = [float(spacing_zyx[1]), float(spacing_zyx[2])]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = float(spacing_zyx[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if modality_k == "CT":
            ds.RescaleType = "HU"
        stored = np.clip(np.rint((volume[k] - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        path = folder / f"{prefix}_{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop_uids.append(sop)
        files.append(path)
        positions.append(tuple(float(v) for v in ds.ImagePositionPatient))
    return WrittenSeries(folder, series_uid, tuple(sop_uids), tuple(files), tuple(positions))


def stored_values(volume: np.ndarray, slope: float = 1.0, intercept: float = -1024.0) -> np.ndarray:
    """The rescaled values a reader should return for ``volume`` written with ``slope``/``intercept``."""
    stored = np.clip(np.rint((volume - intercept) / slope), 0, 65535)
    return (stored * slope + intercept).astype(np.float32)


def read_header(path: str | Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
