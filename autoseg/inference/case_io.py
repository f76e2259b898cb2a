"""Files of one predicted case: its channel files in, its output files out.

Input: one file per channel, in channel order, all on one grid -> ``(C, Z, Y, X)`` float32 and the
first file's :class:`~autoseg.schemas.Geometry`. A channel may also be a folder holding one DICOM
series (:mod:`autoseg.data.dicom_io`); the first channel's series is then returned with the image, for
the DICOM SEG. Output, next to ``out_path`` (the segmentation, ``<case><ending>``): optional
probabilities ``<case>.npz``, uncertainty ``<case>_uncertainty<ending>`` and DICOM SEG ``<case>.dcm``.
:func:`case_output_paths` names all four, so that a case that fails can have every one of them removed.
"""
from __future__ import annotations

from pathlib import Path
import logging
from collections.abc import Callable
from typing import Any, Sequence

import numpy as np

from ..data.dicom_io import DicomSeries
from ..errors import AutosegError
from ..schemas import CaseFiles, Geometry
from ..model.export import save_probabilities as _save_probabilities_npz
from .dicom_seg import dicom_seg_path

log = logging.getLogger(__name__)


def _split_ending(out_path: str | Path) -> tuple[Path, str, str]:
    from ..data.image_io import ending_of

    out_path = Path(out_path)
    ending = ending_of(out_path)
    return out_path.parent, out_path.name[: len(out_path.name) - len(ending)], ending


def probabilities_path(out_path: str | Path) -> Path:
    """Where the probabilities of the segmentation ``out_path`` go: ``<case>.npz``."""
    folder, case, _ = _split_ending(out_path)
    return folder / f"{case}.npz"


def uncertainty_path(out_path: str | Path) -> Path:
    """``<case>_uncertainty<ending>`` next to ``out_path``; PNG and BMP store 8-bit values only, so
    the float uncertainty of a PNG/BMP prediction is written as ``<case>_uncertainty.nii.gz``."""
    from ..data.image_io import EIGHT_BIT_ENDINGS

    folder, case, ending = _split_ending(out_path)
    return folder / f"{case}_uncertainty{'.nii.gz' if ending in EIGHT_BIT_ENDINGS else ending}"


def case_output_paths(out_path: str | Path) -> list[Path]:
    """Every file a prediction of ``out_path`` may write: segmentation, probabilities, uncertainty, DICOM SEG."""
    return [Path(out_path), probabilities_path(out_path), uncertainty_path(out_path), dicom_seg_path(out_path)]


def case_id_and_files(paths: Sequence[str | Path] | CaseFiles | str | Path,
                      out_path: str | Path) -> tuple[str, list[str]]:
    """(case id, channel files): a CaseFiles' own id, else the output's name without its ending."""
    if isinstance(paths, CaseFiles):
        return paths.case_id, [str(p) for p in paths.images]
    files = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    return probabilities_path(out_path).name[:-4], files


def nonfinite_voxels(array: np.ndarray) -> str | None:
    """None when every value of ``array`` is finite, else what is not, e.g. '12 NaN voxels' or
    '12 NaN and 3 infinite voxels' (z-score normalisation would turn the whole image into NaN)."""
    if np.isfinite(array).all():
        return None
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(np.isinf(array)))
    parts = ([f"{n_nan} NaN"] if n_nan else []) + ([f"{n_inf} infinite"] if n_inf else [])
    return f"{' and '.join(parts)} voxel{'s' if n_nan + n_inf != 1 else ''}"


def _same_grid(a: Geometry, b: Geometry) -> bool:
    """The dataset check's tolerances: spacing relative 1e-3; origin and direction 1e-3 mm + relative 1e-3."""
    return (a.size == b.size and np.allclose(a.spacing, b.spacing, rtol=1e-3)
            and np.allclose(a.origin, b.origin, atol=1e-3, rtol=1e-3)
            and np.allclose(a.direction, b.direction, atol=1e-3, rtol=1e-3))


def _read_channel(path: str) -> tuple[np.ndarray, Geometry, DicomSeries | None]:
    """One channel: an image file, or a folder holding one DICOM series."""
    if Path(path).is_dir():
        from ..data.dicom_io import read_dicom_series

        return read_dicom_series(path)
    from ..data.image_io import read_image

    arr, geom = read_image(path)
    return arr, geom, None


def _modality_warning(case_id: str, series: DicomSeries, channel: int, channel_names: Sequence[str]) -> str | None:
    """A warning when the series' Modality and the model's channel name disagree about CT."""
    name = channel_names[channel] if channel < len(channel_names) else ""
    if (name.strip().upper() == "CT") != (series.modality.upper() == "CT"):
        return (f"case {case_id}: channel {channel} of the model is '{name}' but the DICOM series in {series.folder} is "
                f"{series.modality}; check that the right series was given (CT intensities are normalised as "
                f"Hounsfield units)")
    return None


def read_case_image(case_id: str, files: Sequence[str], num_channels: int,
                    channel_names: Sequence[str]) -> tuple[np.ndarray, Geometry, DicomSeries | None]:
    """Read the channel files -> ``(C, Z, Y, X)`` float32, the first file's geometry, and the first
    channel's DICOM series when the channels are DICOM series folders (else None).

    Raises AutosegError naming the case and files when none is given, a file cannot be read or has
    NaN/infinite voxels, the grids differ (DICOM series: also in spacing, origin or direction), or the
    channel count is not ``num_channels``.
    """
    if not files:
        raise AutosegError(f"case {case_id}: no image file given; pass its channel files")
    arrays, geometry, series = [], None, None
    for channel, path in enumerate(files):
        arr, geom, dicom = _read_channel(path)
        bad = nonfinite_voxels(arr)
        if bad:
            raise AutosegError(f"case {case_id}: {path} has {bad}; fix or remove them (e.g. replace them by "
                               f"the background intensity): the image cannot be normalised with them")
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise AutosegError(f"case {case_id}: {path} has shape (Z, Y, X) {arr.shape[1:]} but {files[0]} "
                               f"has {arrays[0].shape[1:]}; every channel must be on the same grid")
        if dicom is not None:
            if geometry is not None and not _same_grid(geom, geometry):
                raise AutosegError(f"case {case_id}: the DICOM series in {path} lies on another grid than the one in "
                                   f"{files[0]} (spacing {geom.spacing} vs {geometry.spacing}, origin {geom.origin} vs "
                                   f"{geometry.origin}); every channel must be on the same grid; resample the series "
                                   f"onto the first channel's grid")
            warning = _modality_warning(case_id, dicom, channel, channel_names)
            if warning:
                log.warning("%s", warning)
        arrays.append(arr)
        geometry = geometry or geom
        series = series if channel else dicom
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    del arrays
    if image.shape[0] != num_channels:
        layout = (f"one DICOM series per channel, in folders {Path(files[0]).name if len(files) > 1 else '<case>'}/0000/, "
                  f"0001/, ..." if series is not None else "one file per channel, named <case>_0000, <case>_0001, ...")
        raise AutosegError(f"case {case_id}: found {image.shape[0]} channel(s) in {', '.join(files)}; the "
                           f"networks expect {num_channels} ({', '.join(channel_names)}); give {layout}")
    assert geometry is not None
    return image.astype(np.float32, copy=False), geometry, series


def write_case_outputs(case_id: str, out_path: str | Path, geometry: Geometry, segmentation: np.ndarray,
                       probabilities: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                       dicom_seg: Callable[[np.ndarray, Path], Any] | None = None) -> dict[str, Any]:
    """Write probabilities (float16 ``.npz``), uncertainty and the DICOM SEG (``dicom_seg(segmentation,
    path)`` writes ``<case>.dcm``) when given, then the segmentation, each atomically and with
    ``geometry``. A probabilities, uncertainty or DICOM SEG file of this case that is not written now
    (left by an earlier run) is removed: it would not belong to this segmentation.
    Returns ``{"case_id", "shape_zyx", "output", "probabilities", "uncertainty", "dicom_seg"}`` (paths
    as strings or None)."""
    from ..data.image_io import write_image, write_segmentation

    out_path = Path(out_path)
    info: dict[str, Any] = {"case_id": case_id, "shape_zyx": [int(s) for s in segmentation.shape],
                            "output": str(out_path), "probabilities": None, "uncertainty": None, "dicom_seg": None}
    npz, unc = probabilities_path(out_path), uncertainty_path(out_path)
    if probabilities is not None:
        _save_probabilities_npz(probabilities, npz, case_id=case_id)
        info["probabilities"] = str(npz)
    else:
        npz.unlink(missing_ok=True)
    if uncertainty is not None:
        write_image(uncertainty[None], geometry, unc)
        info["uncertainty"] = str(unc)
    else:
        unc.unlink(missing_ok=True)
    seg_dcm = dicom_seg_path(out_path)
    if dicom_seg is not None:
        dicom_seg(segmentation, seg_dcm)
        info["dicom_seg"] = str(seg_dcm)
    else:
        seg_dcm.unlink(missing_ok=True)
    write_segmentation(segmentation, geometry, out_path)
    return info
