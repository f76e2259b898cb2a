"""What ``autoseg predict`` checks before any work: the precision and checkpoints of the model, and
what each case must be for the trained networks.

A case check raises :class:`~autoseg.errors.AutosegError` naming the case (a per-case failure: the
other cases are still predicted) and says what to do; see docs/what_can_go_wrong.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import AutosegError
from ..preprocessing.resample import is_dummy_spacing
from ..schemas import Geometry, Plans
from ..store import RunStore
from .case_io import nonfinite_voxels

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(requested: str, device: torch.device, recorded: list[str | None]) -> str:
    """``auto``: fp16 on CUDA; elsewhere the precision the checkpoints were trained with (fp32 if
    they disagree, record none, or record fp16, which needs CUDA)."""
    if requested not in PRECISIONS:
        raise AutosegError(f"precision '{requested}' is unknown; expected one of {', '.join(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise AutosegError(f"precision fp16 needs a CUDA device, found device '{device}'; use bf16 or fp32")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and len(set(recorded)) == 1 and recorded[0] in ("fp32", "bf16"):
        return str(recorded[0])
    return "fp32"


def unusable_checkpoint(e: Exception, configuration: str, fold: int | str, workdir: Path, which: str) -> str:
    """What to say about a checkpoint that failed verification (a CheckpointError ``e``)."""
    path, reason = getattr(e, "path", ""), getattr(e, "reason", str(e))
    train = f"autoseg train --workdir {workdir} -c {configuration} --fold {fold}"
    if which == "final":
        todo = (f"remake it with `{train}` (it moves the bad file aside and trains the fold again), or predict "
                f"with the other folds (--folds)")
    else:
        todo = (f"predict with --checkpoint final, or delete {Path(path).parent} and train the fold again "
                f"with `{train}`")
    if "another network" in reason:
        return (f"checkpoint {path} does not fit the '{configuration}' network in plans.json (fold {fold}): it "
                f"{reason}; plans.json changed after training, or the file comes from another run: {todo}")
    return f"checkpoint {path} of {configuration} fold {fold} cannot be used: it {reason}; {todo}"


def check_image_array(case_id: str, image: np.ndarray, num_channels: int, channel_names: Sequence[str], *,
                      finite_checked: bool) -> np.ndarray:
    """``image`` as float32 (C, Z, Y, X) with ``num_channels`` channels and only finite values
    (``finite_checked``: the files were checked one by one when read, see ``case_io.read_case_image``)."""
    if image.ndim != 4:
        raise AutosegError(f"case {case_id}: image has shape {image.shape}; expected (C, Z, Y, X) "
                           f"(a 2D image is (C, 1, Y, X))")
    if image.shape[0] != num_channels:
        raise AutosegError(f"case {case_id}: image has {image.shape[0]} channel(s), the networks expect "
                           f"{num_channels} ({', '.join(channel_names)}); pass every channel")
    if not finite_checked:
        bad = nonfinite_voxels(image)
        if bad:
            raise AutosegError(f"case {case_id}: the image has {bad}; fix or remove them (e.g. replace "
                               f"them by the background intensity): it cannot be normalised with them")
    return image.astype(np.float32, copy=False)


def trained_image_ndim(plans: Plans, store: RunStore) -> int:
    """2 when the networks were trained on 2D images: every configuration has the 2D dummy spacing on
    axis 0 (the planner keeps it), or the dataset manifest says so; else 3."""
    if all(is_dummy_spacing(c.spacing_zyx_mm[0]) for c in plans.configurations.values()):
        return 2
    if store.wd.manifest_json.is_file():
        try:
            return 2 if store.manifest().ndim == 2 else 3
        except AutosegError:
            pass
    return 3


def check_dimensionality(case_id: str, g: Geometry, source: str, trained_ndim: int, stages: Sequence[str],
                         dataset_name: str) -> None:
    """A 2D image for networks trained on 3D images, or a volume (more than one slice) for networks
    trained on 2D images, is refused. A single slice with a real spacing (a 3D file of one slice, an
    array given with a (z, y, x) spacing) passes for a 2D image."""
    if trained_ndim == 3:
        image_ndim = 2 if g.ndim == 2 or (g.shape_zyx[0] == 1 and is_dummy_spacing(g.spacing_zyx[0])) else 3
    else:
        image_ndim = 2 if g.shape_zyx[0] == 1 else 3
    if image_ndim == trained_ndim:
        return
    nets = f"the networks ({', '.join(stages)}) were trained on {trained_ndim}D images"
    if image_ndim == 2:
        found = f"{source} is a 2D image (size {g.size})"
        todo = "predict 3D images (volumes) with this work folder, or train one on 2D images"
    else:
        found = f"{source} is a 3D image ({g.shape_zyx[0]} slices, size {g.size})"
        todo = "predict 2D images (one file per slice) with this work folder, or train one on 3D images"
    raise AutosegError(f"case {case_id}: {found}, but {nets} (dataset {dataset_name}); {todo}")


#: A case whose spacing differs from the networks' by more than this factor on an axis gets a warning:
#: usually a header in other units (m or µm instead of mm), rarely a real resolution that far away.
SPACING_WARNING_FACTOR = 20.0


def check_spacing(case_id: str, source: str, geometry: Geometry, target_spacing_zyx: Sequence[float],
                  image_ndim: int) -> str | None:
    """Raise AutosegError when the case's spacing is not a positive finite number of mm on every axis
    (the image could not be resampled); return a warning when an axis is more than
    ``SPACING_WARNING_FACTOR`` times finer or coarser than the spacing the networks were trained at."""
    spacing = geometry.spacing_zyx
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise AutosegError(f"case {case_id}: {source} has spacing (z, y, x) {tuple(spacing)} mm; every spacing must "
                           f"be a positive number of mm; fix the file's header (e.g. SimpleITK SetSpacing)")
    axes = range(len(spacing))
    if image_ndim == 2 or is_dummy_spacing(spacing[0]) or is_dummy_spacing(target_spacing_zyx[0]):
        axes = range(1, len(spacing))  # a 2D image has no real z spacing
    far = [(a, spacing[a] / target_spacing_zyx[a]) for a in axes
           if max(spacing[a] / target_spacing_zyx[a], target_spacing_zyx[a] / spacing[a]) > SPACING_WARNING_FACTOR]
    if not far:
        return None
    names = "zyx"
    detail = ", ".join(f"{names[a]} {spacing[a]:g} mm vs {target_spacing_zyx[a]:g} mm ({r:.3g}x)" for a, r in far)
    return (f"case {case_id}: {source} has a spacing far from the one the networks were trained at ({detail}); "
            f"it is resampled, but check the header: spacing stored in other units (m, µm) gives a wrong result")
