"""Sliding-window prediction with Gaussian tile weighting and mirror test-time augmentation.

nnU-Net's scheme: the image is padded to at least the patch size, covered by tiles whose starts are
spread evenly with a step of at most ``step_size x patch``, every tile is predicted (optionally
averaged over all mirror combinations of the allowed axes and over several models), weighted by a
Gaussian importance map and accumulated; the weighted sum divided by the summed weights gives the
logits of every voxel.

Axis order: ``data`` is ``(C, *spatial)`` in the order the network was trained on (the preprocessed,
transposed order); a 3D volume is ``(C, Z, Y, X)``. Logits come back as ``(K, *spatial)`` float32
on the CPU. ``mirror_axes`` are 0-based axes of the PATCH (spatial axes, not counting channels).

A network is anything that maps a batch of tiles ``(B, C, *patch)`` to logits ``(B, K, *patch)``
(:data:`TileNetwork`): a torch module, or an ONNX Runtime session wrapped by
:class:`autoseg.model.onnx_backend.OnnxTileNetwork`. Tiling, weighting and mirroring are the same for both.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import AutosegError, unknown_name_error

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
#: a network as the sliding window sees it: a batch of tiles (B, C, *patch) -> logits (B, K, *patch)
#: (or a list whose element 0 is that, as a torch network with deep supervision left on returns)
TileNetwork = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                            value_scaling: float = 10.0) -> np.ndarray:
    """Gaussian tile weights of shape ``patch_size``, float32, maximum ``value_scaling``.

    sigma = ``patch * sigma_scale`` per axis. The peak sits at the exact patch centre
    ((n - 1) / 2) so the map is symmetric under flipping, which keeps mirror TTA and the weighting
    consistent (nnU-Net puts the peak on voxel n // 2). Zeros (underflow for extreme sizes) are
    replaced by the smallest nonzero value so every voxel gets some weight.
    """
    if not patch_size or any(int(p) < 1 for p in patch_size):
        raise ValueError(f"patch_size must be positive integers, got {tuple(patch_size)}")
    weights = np.ones((), dtype=np.float64)
    for n in patch_size:
        n = int(n)
        sigma = max(n * sigma_scale, 1e-6)
        coords = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        profile = np.exp(-0.5 * (coords / sigma) ** 2)
        weights = np.multiply.outer(weights, profile)
    weights = weights / weights.max() * value_scaling
    weights = weights.astype(np.float32)
    zero = weights == 0
    if zero.any():
        weights[zero] = weights[~zero].min()
    return weights


def tile_starts(image_size: Sequence[int], patch_size: Sequence[int],
                step_size: float = 0.5) -> list[list[int]]:
    """Start index of every tile, per axis (nnU-Net's ``compute_steps_for_sliding_window``).

    Per axis, the number of tiles is the smallest that keeps the distance between neighbouring
    starts at most ``step_size * patch``; the starts are then spread evenly from 0 to
    ``image - patch`` and rounded to whole voxels (so a gap may exceed the target by one voxel).
    An axis no larger than the patch gets the single start 0 (the caller pads).
    """
    if len(image_size) != len(patch_size):
        raise ValueError(f"image_size {tuple(image_size)} and patch_size {tuple(patch_size)} "
                         f"have different lengths")
    if not 0 < step_size <= 1:
        raise AutosegError(f"sliding-window step size must be in (0, 1] (a fraction of the patch), "
                           f"found {step_size}; use e.g. 0.5 (default) or 1.0 (fastest)")
    starts: list[list[int]] = []
    for image, patch in zip(image_size, patch_size):
        image, patch = int(image), int(patch)
        if image <= patch:
            starts.append([0])
            continue
        target_step = patch * step_size
        num_steps = int(np.ceil((image - patch) / target_step)) + 1
        actual_step = (image - patch) / (num_steps - 1)
        starts.append([int(round(actual_step * i)) for i in range(num_steps)])
    return starts


def _autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` on ``device``; fp32 means no autocast."""
    if precision not in PRECISIONS:
        raise unknown_name_error("precision", precision, PRECISIONS)
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise AutosegError(f"precision fp16 needs a CUDA device, found device '{device}'; "
                           f"use bf16 or fp32 on {device.type}")
    if device.type not in ("cpu", "cuda"):
        raise AutosegError(f"precision {precision} is supported on cpu and cuda only, found device "
                           f"'{device}'; use fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _mirror_combinations(mirror_axes: Sequence[int] | None, patch_ndim: int,
                         offset: int) -> list[tuple[int, ...]]:
    """All subsets of the mirror axes as tensor dims of a batch (offset = 2 for (B, K, ...))."""
    if not mirror_axes:
        return [()]
    axes = sorted({int(a) for a in mirror_axes})
    bad = [a for a in axes if a < 0]
    if bad:
        raise AutosegError(f"mirror axes must be 0-based patch axes, found {bad}")
    dropped = [a for a in axes if a >= patch_ndim]
    if dropped:  # the default (0, 1, 2) with a 2D patch: axis 2 does not exist
        log.debug("ignoring mirror axes %s for a %dD patch", dropped, patch_ndim)
    axes = [a + offset for a in axes if a < patch_ndim]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _forward(models: list[TileNetwork], batch: torch.Tensor,
             flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Mean logits over models and mirror combinations for a (B, C, *patch) batch, float32."""
    total: torch.Tensor | None = None
    for model in models:
        for axes in flips:
            x = torch.flip(batch, axes) if axes else batch
            out = model(x)
            if isinstance(out, (list, tuple)):  # deep supervision left on: full resolution first
                out = out[0]
            out = out.float()
            if axes:
                out = torch.flip(out, axes)
            total = out if total is None else total + out
    assert total is not None  # models is non-empty (checked by the caller)
    return total / (len(models) * len(flips))


def _pad_amounts(spatial: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) constant padding per axis so every axis is at least the patch size."""
    pads = []
    for s, p in zip(spatial, patch):
        diff = max(int(p) - int(s), 0)
        pads.append((diff // 2, diff - diff // 2))
    return pads


def _tiles(starts: list[list[int]], patch: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + int(p)) for c, p in zip(corner, patch))


def _as_model_list(models: TileNetwork | Sequence[TileNetwork]) -> list[TileNetwork]:
    out = [models] if callable(models) else list(models)
    if not out:
        raise AutosegError("no model given for sliding-window prediction; pass at least one "
                           "trained network (one per fold)")
    return out


def predict_sliding_window(
    models: TileNetwork | Sequence[TileNetwork],
    data: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    step_size: float = 0.5,
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    tile_batch_size: int = 4,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    accumulate_on_device: bool = False,
) -> torch.Tensor:
    """Predict logits for a whole image with Gaussian-weighted sliding windows.

    Args:
        models: one network or several (folds); their logits are averaged. Each maps
            ``(B, C, *patch)`` to ``(B, K, *patch)`` logits (or a list whose element 0 is that).
            Torch modules are put in eval mode and moved to ``device``; other callables
            (:data:`TileNetwork`, e.g. an ONNX Runtime session) get the batch on ``device``.
        data: ``(C, *spatial)`` image in the network's axis order. With a 2D ``patch_size`` and
            ``(C, Z, Y, X)`` data, every slice along axis 0 is predicted as a 2D image.
        patch_size: the network's patch, one entry per spatial axis of the network (2 or 3).
        num_classes: K, the number of output channels.
        step_size: tile step as a fraction of the patch (0.5 = nnU-Net default, 1.0 = no overlap).
        mirror_axes: patch axes mirrored for test-time augmentation (all 2^n combinations
            averaged); ``None`` or ``()`` disables TTA. Axes beyond the patch's are ignored.
        tile_batch_size: tiles per forward pass.
        device: where the network runs ("cpu", "cuda", ...).
        precision: "fp32", "bf16" (cpu, cuda) or "fp16" (cuda only): autocast for the forward pass.
        progress: show a tqdm bar over tile batches.
        accumulate_on_device: keep the image and the float32 accumulators on ``device`` (faster on
            a GPU when they fit); falls back to the CPU when that allocation runs out of memory.

    Returns:
        float32 logits ``(K, *spatial)`` on the CPU, same spatial shape as ``data``.

    Memory: the accumulators are ``(K + 1) x 4`` bytes per (padded) voxel, plus one tile batch.
    """
    model_list = _as_model_list(models)
    device = torch.device(device)
    patch = [int(p) for p in patch_size]
    if isinstance(data, np.ndarray):
        # a read-only memmap (np.load(..., mmap_mode="r")) is copied: torch cannot wrap it
        arr = data if data.flags.writeable else np.array(data, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        x = data.detach().to("cpu", torch.float32)
    slicewise = len(patch) == 2 and x.ndim == 4
    if x.ndim != len(patch) + 1 and not slicewise:
        raise AutosegError(f"sliding window: image of shape {tuple(x.shape)} (channels first) does not "
                           f"match a {len(patch)}D patch {tuple(patch)}; expected (C, *spatial) with "
                           f"{len(patch)} spatial axes (or (C, Z, Y, X) for a 2D patch)")
    # a 2D patch on a 3D volume is a (1, py, px) tile whose singleton axis the network never sees
    tile = [1, *patch] if slicewise else patch
    flips = _mirror_combinations(mirror_axes, len(patch), offset=2)  # on the (B, C, *patch) batch
    autocast = _autocast(device, precision)
    for m in model_list:
        if isinstance(m, torch.nn.Module):
            m.eval()
            m.to(device)

    spatial = tuple(x.shape[1:])
    pads = _pad_amounts(spatial, tile)
    if any(b or a for b, a in pads):
        flat = [v for b, a in reversed(pads) for v in (b, a)]  # F.pad wants the last axis first
        x = torch.nn.functional.pad(x, flat, mode="constant", value=0.0)
    padded = tuple(x.shape[1:])
    starts = tile_starts(padded, tile, step_size)
    if slicewise:
        starts[0] = list(range(padded[0]))  # every slice once, no overlap along the slice axis

    acc_device = torch.device("cpu")
    if accumulate_on_device and device.type != "cpu":
        try:
            x = x.to(device)
            logits = torch.zeros((num_classes, *padded), dtype=torch.float32, device=device)
            weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
            acc_device = device
        except torch.cuda.OutOfMemoryError:
            log.warning("image does not fit on %s for accumulation; accumulating on the CPU", device)
            x = x.to("cpu")
            torch.cuda.empty_cache()
    if acc_device.type == "cpu":
        logits = torch.zeros((num_classes, *padded), dtype=torch.float32)
        weight_sum = torch.zeros(padded, dtype=torch.float32)
    gauss = torch.from_numpy(gaussian_importance_map(patch)).to(acc_device)
    if slicewise:
        gauss = gauss[None]
    gauss_dev = gauss.to(device)

    tiles = list(_tiles(starts, tile))
    batches = [tiles[i:i + max(1, int(tile_batch_size))]
               for i in range(0, len(tiles), max(1, int(tile_batch_size)))]
    log.debug("sliding window: %d tiles of %s over %s in %d batches, %d TTA passes, %d model(s)",
              len(tiles), tile, padded, len(batches), len(flips), len(model_list))
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="sliding window", unit="batch", leave=False)

    with torch.inference_mode(), autocast:
        for batch_slices in iterator:
            batch = torch.stack([x[(slice(None), *sl)] for sl in batch_slices]).to(device)
            if slicewise:
                batch = batch[:, :, 0]  # (B, C, 1, py, px) -> (B, C, py, px)
            out = _forward(model_list, batch, flips)
            if out.shape[1] != num_classes or tuple(out.shape[2:]) != tuple(patch):
                raise AutosegError(f"the network returned logits of shape {tuple(out.shape)} for a "
                                   f"batch of shape {tuple(batch.shape)}; expected (B, {num_classes}, "
                                   f"*{tuple(patch)}): check num_classes and the patch size in the plan")
            if slicewise:
                out = out[:, :, None]
            out = (out * gauss_dev).to(acc_device)
            for i, sl in enumerate(batch_slices):
                logits[(slice(None), *sl)] += out[i]
                weight_sum[sl] += gauss

    logits /= weight_sum  # every voxel is covered by at least one tile, weights are > 0
    crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial))
    result = logits[(slice(None), *crop)]
    if result.device.type != "cpu":
        result = result.cpu()
    return result.contiguous()
