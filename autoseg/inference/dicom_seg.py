"""DICOM Segmentation (SEG) objects out: one per predicted DICOM case (``--output-format dicom-seg``).

Made with highdicom (``hd.seg.Segmentation``; ``pip install 'autoseg[dicom]'``): a BINARY
segmentation with one segment per foreground label of the model's dataset (``dataset_manifest.json``
``labels``; for region-based datasets the values painted back, named by ``labels``), referencing the
source series' SOP instances, in the source frames' geometry:

  * segment ``i`` (1-based) is the ``i``-th foreground label value in ascending order, so with the
    usual labels 0, 1, 2, ... segment number = label value; SegmentLabel is the label's name
    (cut to DICOM's 64 characters), SegmentAlgorithmType AUTOMATIC, the algorithm autoseg with its
    version, the model (dataset name, configurations and folds) in its parameters;
  * frame ``z`` of the label map ``(Z, Y, X)`` (the predictor's output in the series' own grid) is
    derived from :attr:`~autoseg.data.dicom_io.DicomSeries.files` ``[z]``: the reader sorted the slices
    by position, and the writer checks that every file still holds the SOP instance it held then.
    Empty frames are left out (highdicom's default).
  * the SEG is a new series (SeriesNumber = the source's + 1000), Manufacturer "autoseg",
    ManufacturerModelName = the dataset name, DeviceSerialNumber = the plans hash, SoftwareVersions =
    the autoseg version; patient, study and frame of reference come from the source images.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..data.dicom_io import DicomSeries
from ..errors import AutosegError
from ..version import __version__

log = logging.getLogger(__name__)

DICOM_SEG_ENDING = ".dcm"
_LO = 64  # DICOM LO (long string) maximum length: labels, descriptions, model names


@dataclass(frozen=True)
class SegModel:
    """What made the segmentation, recorded in the SEG (algorithm identification, equipment)."""

    dataset_name: str
    configurations: tuple[str, ...]
    folds: tuple[str, ...]
    plans_hash: str
    parameters: dict[str, str] = field(default_factory=dict)


def require_highdicom() -> None:
    """Raise AutosegError saying what to install when pydicom or highdicom is missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as e:
        raise AutosegError(f"--output-format dicom-seg needs pydicom and highdicom ({e}); install them with "
                           f"`pip install 'autoseg[dicom]'` (or `pip install pydicom highdicom`)") from None


def dicom_seg_path(out_path: str | Path) -> Path:
    """``<case>.dcm`` next to the segmentation ``<case><ending>``."""
    from ..data.image_io import ending_of

    out_path = Path(out_path)
    ending = ending_of(out_path)
    return out_path.parent / f"{out_path.name[: len(out_path.name) - len(ending)]}{DICOM_SEG_ENDING}"


def _source_datasets(series: DicomSeries) -> list:
    """The source images' headers in array order; refuses files that changed since they were read."""
    import pydicom

    datasets = []
    for z, (path, uid) in enumerate(zip(series.files, series.sop_instance_uids)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise AutosegError(f"{path}: cannot be read again to write the DICOM SEG ({e}); was the series "
                               f"folder {series.folder} changed while predicting? predict it again") from None
        if str(ds.get("SOPInstanceUID", "")) != uid:
            raise AutosegError(f"{path}: holds SOP instance {ds.get('SOPInstanceUID', '(none)')} but held {uid} when the "
                               f"series {series.folder} was read (slice {z}); the folder changed while predicting; "
                               f"predict it again")
        datasets.append(ds)
    return datasets


def _segment_numbers(segmentation: np.ndarray, label_names: Mapping[int, str],
                     where: str) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """(label map of segment numbers, [(segment number, label value, name)]) for every foreground label."""
    values = sorted(int(v) for v in label_names if int(v) != 0)
    if not values:
        raise AutosegError(f"{where}: the model's dataset has no foreground label; a DICOM SEG needs at least one segment")
    found = {int(v) for v in np.unique(segmentation)} - {0}
    unknown = sorted(found - set(values))
    if unknown:
        raise ValueError(f"{where}: segmentation holds values {unknown} that are not labels of the dataset {values}")
    lut = np.zeros(max(values) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    segments = []
    for number, value in enumerate(values, start=1):
        lut[value] = number
        segments.append((number, value, str(label_names[value])))
    return lut[segmentation], segments


def write_dicom_seg(segmentation: np.ndarray, series: DicomSeries, path: str | Path, *,
                    label_names: Mapping[int, str], model: SegModel) -> Path:
    """Write ``segmentation`` (Z, Y, X; label values, in ``series``' array order) as a DICOM SEG at ``path``
    (atomically). Returns ``path``. Raises AutosegError naming the series for a shape that is not the
    series' (slices, rows, columns) or source files that changed since they were read."""
    require_highdicom()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    segmentation = np.asarray(segmentation)
    sources = _source_datasets(series)
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if tuple(segmentation.shape) != shape:
        raise AutosegError(f"{series.folder}: the segmentation has shape (Z, Y, X) {tuple(segmentation.shape)} but the "
                           f"series has {shape[0]} slices of {shape[1]} x {shape[2]} (rows x columns); it cannot be "
                           f"written as a DICOM SEG of this series")
    numbers, segments = _segment_numbers(segmentation, label_names, series.folder)
    parameters = {"dataset": model.dataset_name, "configurations": ",".join(model.configurations),
                  "folds": ",".join(model.folds), "plans_hash": model.plans_hash, **model.parameters}
    algorithm = hd.AlgorithmIdentificationSequence(name="autoseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   parameters=parameters)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:_LO] or f"label {value}",
            segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, value, name in segments]
    source_number = sources[0].get("SeriesNumber")
    series_number = min(int(source_number) + 1000, 2**31 - 1) if source_number not in (None, "") else 1000
    description = f"autoseg {'+'.join(model.configurations)}"[:_LO]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=numbers, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="autoseg",
            manufacturer_model_name=(model.dataset_name or "autoseg")[:_LO], software_versions=__version__,
            device_serial_number=model.plans_hash or "unknown", series_description=description,
            content_label="AUTOSEG", content_description="autoseg prediction")
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # source headers highdicom cannot use
        raise AutosegError(f"{series.folder}: a DICOM SEG of series {series.series_instance_uid} could not be made "
                           f"({type(e).__name__}: {e}); the source images lack attributes a SEG must copy; the "
                           f"NIfTI output (--output-format auto) does not need them") from None
    atomic_write(path, lambda tmp: seg.save_as(tmp), suffix=DICOM_SEG_ENDING)
    return path
