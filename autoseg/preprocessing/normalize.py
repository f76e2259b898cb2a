"""Intensity normalization schemes, chosen per channel by the short name stored in plans.json.

Built-in schemes (nnU-Net v2 semantics):

* ``"ct"``: clip to the dataset's foreground [clip_low, clip_high] (0.5 / 99.5 percentiles), then
  ``(x - mean) / max(std, 1e-8)`` with the dataset's foreground mean and std (same for every case);
* ``"zscore"``: per case and channel, ``(x - mean) / max(std, 1e-8)``; with ``use_mask`` the
  statistics come from the voxels inside the mask only and voxels outside are set to 0;
* ``"no_norm"``: unchanged (cast to float32);
* ``"rescale_0_1"``: per case min-max to [0, 1];
* ``"rgb_0_1"``: divide by 255 (8-bit colour or grey images).

More schemes are added with :func:`register_normalization`; a scheme is a function
``(volume (Z, Y, X) float32, spec: ChannelNormalization, mask (Z, Y, X) bool | None) -> float32``
that may work in place on ``volume``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import AutosegError, unknown_name_error
from ..schemas import ChannelNormalization

logger = logging.getLogger(__name__)

NormalizationFn = Callable[[np.ndarray, ChannelNormalization, "np.ndarray | None"], np.ndarray]

_SCHEMES: dict[str, NormalizationFn] = {}

_EPS = 1e-8


def register_normalization(name: str) -> Callable[[NormalizationFn], NormalizationFn]:
    """Decorator: register ``fn`` as the normalization scheme called ``name`` (as written in plans)."""

    def deco(fn: NormalizationFn) -> NormalizationFn:
        if name in _SCHEMES and _SCHEMES[name] is not fn:
            logger.warning("normalization scheme '%s' is registered again; the new one replaces it", name)
        _SCHEMES[name] = fn
        return fn

    return deco


def available_normalizations() -> list[str]:
    """Names of every registered normalization scheme, sorted."""
    return sorted(_SCHEMES)


def get_normalization(name: str) -> NormalizationFn:
    """The scheme registered as ``name``; an unknown name raises an error with "did you mean"."""
    if name not in _SCHEMES:
        raise unknown_name_error("normalization scheme", name, _SCHEMES,
                                 hint="Fix the 'scheme' in plans.json or register it with "
                                      "@register_normalization.")
    return _SCHEMES[name]


@register_normalization("ct")
def _ct(volume: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    missing = [k for k in ("clip_low", "clip_high", "mean", "std") if getattr(spec, k) is None]
    if missing:
        raise AutosegError(f"normalization of channel {spec.channel} ('{spec.name}') uses scheme 'ct' "
                           f"but the plan has no {', '.join(missing)}; expected the dataset's "
                           f"foreground intensity statistics there. Rerun `autoseg plan --overwrite`.")
    np.clip(volume, spec.clip_low, spec.clip_high, out=volume)
    volume -= np.float32(spec.mean)
    volume /= np.float32(max(float(spec.std), _EPS))
    return volume


@register_normalization("zscore")
def _zscore(volume: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    if spec.use_mask and mask is not None:
        if not mask.any():
            volume[...] = 0
            return volume
        values = volume[mask].astype(np.float64)
        mean, std = values.mean(), values.std()
        volume -= np.float32(mean)
        volume /= np.float32(max(std, _EPS))
        volume[~mask] = 0
        return volume
    mean = float(volume.mean(dtype=np.float64))
    std = float(volume.std(dtype=np.float64))
    volume -= np.float32(mean)
    volume /= np.float32(max(std, _EPS))
    return volume


@register_normalization("no_norm")
def _no_norm(volume: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    return volume


@register_normalization("rescale_0_1")
def _rescale_0_1(volume: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    volume -= volume.min()
    volume /= np.float32(max(float(volume.max()), _EPS))
    return volume


@register_normalization("rgb_0_1")
def _rgb_0_1(volume: np.ndarray, spec: ChannelNormalization, mask: np.ndarray | None) -> np.ndarray:
    lo, hi = float(volume.min()), float(volume.max())
    if lo < 0 or hi > 255:
        raise AutosegError(f"channel {spec.channel} ('{spec.name}') uses scheme 'rgb_0_1', which expects "
                           f"8-bit values in [0, 255], but found values in [{lo:g}, {hi:g}]; rename the "
                           f"channel in dataset.json 'channel_names' ('rescale_to_0_1', or any plain name for "
                           f"z-score) and rerun `autoseg plan --overwrite`.")
    volume /= np.float32(255.0)
    return volume


def normalize(data: np.ndarray, normalization: Sequence[ChannelNormalization],
              mask: np.ndarray | None = None, *, inplace: bool = False) -> np.ndarray:
    """Normalize every channel of ``data`` (C, Z, Y, X) with its scheme; returns float32 (C, Z, Y, X).

    ``normalization`` has one entry per channel (``entry.channel`` indexes ``data``). ``mask``
    (Z, Y, X) bool marks the voxels inside the body (used by schemes with ``use_mask``); None means
    every voxel. With ``inplace=True`` a float32 ``data`` is overwritten and returned; otherwise a
    new array is returned and ``data`` is left as it was.
    """
    if data.ndim != 4:
        raise ValueError(f"normalize expects (C, Z, Y, X) data, got shape {data.shape}")
    channels = sorted(n.channel for n in normalization)
    if channels != list(range(data.shape[0])):
        raise AutosegError(f"the plan normalizes channels {channels} but the image has "
                           f"{data.shape[0]} channel(s) (expected entries for channels "
                           f"{list(range(data.shape[0]))}); the dataset's channels do not match "
                           f"plans.json: rerun `autoseg plan --overwrite`.")
    if mask is not None and mask.shape != data.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {data.shape[1:]}")
    fns = [(spec, get_normalization(spec.scheme)) for spec in normalization]  # fail before any work
    if inplace and data.dtype == np.float32:
        out = data
    else:
        out = data.astype(np.float32, copy=True)
    for spec, fn in fns:
        out[spec.channel] = fn(out[spec.channel], spec, mask)
    return out
