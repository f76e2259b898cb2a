"""Files of one predicted case: its channel files in, its output files out.

Input: one file per channel, in channel order, all on one grid -> ``(C, Z, Y, X)`` float32 and the
first file's :class:`~autoseg.schemas.Geometry`. Output, next to ``out_path`` (the segmentation,
``<case><ending>``): optional probabilities ``<case>.npz`` and uncertainty
``<case>_uncertainty<ending>``. :func:`case_output_paths` names all three, so that a case that fails
can have every one of them removed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import AutosegError
from ..schemas import CaseFiles, Geometry
from ..model.export import save_probabilities as _save_probabilities_npz


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
    """Every file a prediction of ``out_path`` may write: segmentation, probabilities, uncertainty."""
    return [Path(out_path), probabilities_path(out_path), uncertainty_path(out_path)]


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


def read_case_image(case_id: str, files: Sequence[str], num_channels: int,
                    channel_names: Sequence[str]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files -> ``(C, Z, Y, X)`` float32 and the first file's geometry.

    Raises AutosegError naming the case and files when none is given, a file cannot be read or has
    NaN/infinite voxels, the grids differ, or the channel count is not ``num_channels``.
    """
    from ..data.image_io import read_image

    if not files:
        raise AutosegError(f"case {case_id}: no image file given; pass its channel files")
    arrays, geometry = [], None
    for path in files:
        arr, geom = read_image(path)
        bad = nonfinite_voxels(arr)
        if bad:
            raise AutosegError(f"case {case_id}: {path} has {bad}; fix or remove them (e.g. replace them by "
                               f"the background intensity): the image cannot be normalised with them")
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise AutosegError(f"case {case_id}: {path} has shape (Z, Y, X) {arr.shape[1:]} but {files[0]} "
                               f"has {arrays[0].shape[1:]}; every channel must be on the same grid")
        arrays.append(arr)
        geometry = geometry or geom
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    del arrays
    if image.shape[0] != num_channels:
        raise AutosegError(f"case {case_id}: found {image.shape[0]} channel(s) in {', '.join(files)}; the "
                           f"networks expect {num_channels} ({', '.join(channel_names)}); give one "
                           f"file per channel, named <case>_0000, <case>_0001, ...")
    assert geometry is not None
    return image.astype(np.float32, copy=False), geometry


def write_case_outputs(case_id: str, out_path: str | Path, geometry: Geometry, segmentation: np.ndarray,
                       probabilities: np.ndarray | None = None,
                       uncertainty: np.ndarray | None = None) -> dict[str, Any]:
    """Write probabilities (float16 ``.npz``) and uncertainty when given, then the segmentation, each
    atomically and with ``geometry``. A probabilities or uncertainty file of this case that is not
    written now (left by an earlier run) is removed: it would not belong to this segmentation.
    Returns ``{"case_id", "shape_zyx", "output", "probabilities", "uncertainty"}`` (paths as
    strings or None)."""
    from ..data.image_io import write_image, write_segmentation

    out_path = Path(out_path)
    info: dict[str, Any] = {"case_id": case_id, "shape_zyx": [int(s) for s in segmentation.shape],
                            "output": str(out_path), "probabilities": None, "uncertainty": None}
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
    write_segmentation(segmentation, geometry, out_path)
    return info
