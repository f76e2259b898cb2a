"""Back to the original image: logits -> probabilities -> segmentation at the input's geometry.

The network predicts in the preprocessed space: cropped to the nonzero box, resampled to the
plan's spacing and transposed with ``plan.transpose_forward``. Export undoes these steps in reverse
order (transpose back, softmax, resample to the cropped original shape, paste into the full
shape), then takes the argmax and writes it with the input's own geometry.

Axis order: ``(K, Z, Y, X)`` probabilities and ``(Z, Y, X)`` segmentations, in the original
array order (see :mod:`autoseg.schemas`).
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import AutosegError
from ..schemas import CaseProperties, ConfigurationPlan, LabelSpec

log = logging.getLogger(__name__)



def logits_to_original_probabilities(logits: np.ndarray | torch.Tensor, properties: CaseProperties,
                                     plan: ConfigurationPlan) -> np.ndarray:
    """Logits in the preprocessed space -> float32 probabilities ``(K, Z, Y, X)`` at the original shape.

    Args:
        logits: ``(K, *s)`` where ``s`` is the preprocessed (transposed) spatial shape, i.e.
            ``properties.shape_after_resampling_zyx`` permuted by ``plan.transpose_forward``.
        properties: the case's sidecar (crop box, shapes and spacings before/after resampling).
        plan: the configuration the logits were predicted with (transpose, resampling orders).

    Returns:
        float32 probabilities of shape ``(K, *properties.shape_before_crop_zyx)``: softmax over the classes,
        or a sigmoid per region for a region-based plan; outside the crop box the background (class 0) has
        probability 1 and every other class (every region) 0.

    Memory (float32, K classes): one softmax copy at the preprocessed resolution (4K bytes per
    preprocessed voxel, freed before the paste), then at the original resolution the cropped
    resampled map and the full map (at most 2 x 4K bytes per original voxel, only 1 x when the
    crop box is the whole image), plus whatever ``resample_probabilities`` needs for one class.
    """
    x = torch.as_tensor(logits) if not isinstance(logits, torch.Tensor) else logits
    x = x.detach().to("cpu")
    where = f"case {properties.case_id}"
    backward = [int(a) for a in plan.transpose_backward]
    if x.ndim != len(backward) + 1:
        raise AutosegError(f"{where}: logits of shape {tuple(x.shape)} do not fit configuration "
                           f"'{plan.name}' (expected (K, *spatial) with {len(backward)} spatial axes); "
                           f"predict the case with that configuration's network")
    x = x.permute(0, *[a + 1 for a in backward])
    expected = tuple(int(s) for s in properties.shape_after_resampling_zyx)
    if tuple(x.shape[1:]) != expected:
        raise AutosegError(f"{where}: logits have spatial shape {tuple(x.shape[1:])} after transposing "
                           f"back, but the preprocessed case has {expected}; the logits do not belong "
                           f"to this case's preprocessed data (rerun preprocessing or prediction)")
    from ..data.labels import activation, background_probabilities

    spec = plan.labels
    probs = activation(x.float(), spec, dim=0).numpy()  # one new float32 copy (softmax, or sigmoid per region)
    num_classes = probs.shape[0]

    cropped_shape = tuple(int(s) for s in properties.shape_after_crop_zyx)
    if tuple(probs.shape[1:]) != cropped_shape:
        from ..preprocessing.resample import resample_probabilities

        res = plan.resampling
        probs = resample_probabilities(
            probs, cropped_shape,
            old_spacing=[float(s) for s in properties.spacing_after_zyx_mm],
            new_spacing=[float(s) for s in properties.spacing_before_zyx_mm],
            order=res.probabilities_order,
            separate_z_threshold=res.separate_z_anisotropy_threshold,
            low_res_axis_order=res.low_res_axis_order,
        )
        probs = np.asarray(probs, dtype=np.float32)
        if tuple(probs.shape) != (num_classes, *cropped_shape):
            raise AutosegError(f"{where}: resampling returned shape {tuple(probs.shape)}, expected "
                               f"{(num_classes, *cropped_shape)}")

    full_shape = tuple(int(s) for s in properties.shape_before_crop_zyx)
    bbox = [[int(lo), int(hi)] for lo, hi in properties.crop_bbox_zyx]
    if [hi - lo for lo, hi in bbox] != list(cropped_shape):
        raise AutosegError(f"{where}: crop box {bbox} does not match the cropped shape {cropped_shape} "
                           f"in its properties file; rerun preprocessing")
    if cropped_shape == full_shape:
        return np.ascontiguousarray(probs, dtype=np.float32)
    full = np.zeros((num_classes, *full_shape), dtype=np.float32)
    full += background_probabilities(spec, num_classes).reshape(-1, *[1] * len(full_shape))  # outside the box
    full[(slice(None), *(slice(lo, hi) for lo, hi in bbox))] = probs
    return full


def probabilities_to_segmentation(probs: np.ndarray | torch.Tensor, spec: LabelSpec | None = None) -> np.ndarray:
    """``(K, Z, Y, X)`` -> ``(Z, Y, X)`` label map: the argmax over classes (uint8 up to 256 classes, uint16 up to
    65536; logits work too), or for a region-based ``spec`` each region painted with its
    ``regions_class_order`` value where its probability exceeds 0.5 (``autoseg/data/labels.py``)."""
    from ..data.labels import to_segmentation

    return to_segmentation(probs, spec)


def write_prediction(seg: np.ndarray, properties: CaseProperties, out_path: str | os.PathLike) -> None:
    """Write ``seg`` ``(Z, Y, X)`` with the case's original geometry (spacing, origin, direction).

    The file format follows ``out_path``'s ending (same writer as the input's).
    """
    from ..data.image_io import write_segmentation

    expected = tuple(int(s) for s in properties.shape_before_crop_zyx)
    if tuple(seg.shape) != expected:
        raise AutosegError(f"case {properties.case_id}: segmentation has shape {tuple(seg.shape)} but the "
                           f"original image has {expected}; export it with "
                           f"logits_to_original_probabilities first ({out_path})")
    write_segmentation(seg, properties.geometry, out_path)


#: key of the 8-bit probabilities of :func:`save_probabilities` (``quantize=True``): value / 255
QUANTIZED_KEY = "probabilities_uint8"


def save_probabilities(probs: np.ndarray | torch.Tensor, path: str | os.PathLike,
                       case_id: str | None = None, *, quantize: bool = False) -> None:
    """Save ``probs`` ``(K, Z, Y, X)`` as a compressed ``.npz``, atomically.

    Keys: ``probabilities`` (float16) and ``case_id`` (a unicode scalar; the file name without
    ``.npz`` when not given). No pickles: ``np.load(path, allow_pickle=False)`` reads it.

    ``quantize``: store ``round(p * 255)`` as uint8 under :data:`QUANTIZED_KEY` instead (the validation's
    files, which find-best averages into ensembles; an error of at most 1/510 per value). The low bits of
    float16 probabilities are noise that zlib cannot compress: on a 14-class map of 60×256×256
    (``benchmarks/probability_files.py``, alone on a 2-core machine) the float16 file took 63 MB and 14.3 s
    to write, the uint8 one 0.1 MB and 0.8 s; the argmax changed at 7 of 3.9 million voxels.
    """
    arr = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    path = Path(path)
    if case_id is None:
        case_id = path.name[:-4] if path.name.endswith(".npz") else path.stem
    if quantize:
        stored = {QUANTIZED_KEY: np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)}
    else:
        stored = {"probabilities": arr.astype(np.float16)}

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a bare name
            np.savez_compressed(f, **stored, case_id=np.array(str(case_id)))
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _write, suffix=".npz")


def load_probabilities(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read a file written by :func:`save_probabilities` -> (float32 ``(K, Z, Y, X)``, case id); 8-bit
    files (``quantize=True``) are scaled back to [0, 1]."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if QUANTIZED_KEY in f.files:
                probs = f[QUANTIZED_KEY].astype(np.float32) / np.float32(255.0)
            else:
                probs = f["probabilities"].astype(np.float32)
            case_id = str(f["case_id"])
    except FileNotFoundError:
        raise AutosegError(f"probability file {path} does not exist; predict with probabilities "
                           f"saved (e.g. --save-probabilities) first") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise AutosegError(f"{path} is not a probability file written by autoseg ({e}); "
                           f"delete it and predict again") from None
    return probs, case_id
