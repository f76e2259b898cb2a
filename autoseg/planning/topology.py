"""Pure U-Net topology rules (nnU-Net v2's ``get_pool_and_conv_props`` and friends).

All spacings, patch sizes and shapes are in the configuration's (transposed) patch-axis order:
three numbers for a 3D network, two for a 2D one. Spacings in mm, sizes in voxels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..schemas import NetworkSpec

#: Smallest edge length of a feature map in the bottleneck (nnU-Net: 4).
MIN_FEATURE_MAP_SIZE = 4
#: nnU-Net's initial patch volumes before clipping and shrinking: 256^3 (3D) and 2048^2 (2D) voxels.
INITIAL_PATCH_EDGE_3D = 256
INITIAL_PATCH_EDGE_2D = 2048
#: Convolutions per encoder and decoder stage.
CONVS_PER_STAGE = 2


def pad_to_divisible(shape: Sequence[int], divisible_by: Sequence[int]) -> list[int]:
    """Round every entry of ``shape`` up to the next multiple of ``divisible_by`` (unchanged if divisible)."""
    return [int(math.ceil(int(s) / int(d)) * int(d)) if int(s) > 0 else int(d)
            for s, d in zip(shape, divisible_by)]


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int],
                        min_feature_map_size: int = MIN_FEATURE_MAP_SIZE, max_numpool: int = 999
                        ) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
    """Spacing-aware pooling and kernel sizes for a U-Net on ``patch_size``.

    Returns ``(kernel_sizes, strides, patch_size_adjusted, shape_must_be_divisible_by)``:
    one kernel and one stride per stage (stage 0 has stride 1, the bottleneck kernel is 3 on every
    axis), the patch padded up to a multiple of ``2 ** pools`` per axis, and those multiples.

    Rules (nnU-Net v2): an axis is pooled while its current size is >= 2 x ``min_feature_map_size``
    and its current spacing is < 2 x the smallest current spacing among such axes (a lone axis
    needs 3 x ``min_feature_map_size``); its kernel becomes 3 (from 1) once its spacing is within
    2 x the smallest current spacing and stays 3.
    """
    dim = len(spacing)
    if len(patch_size) != dim:
        raise ValueError(f"spacing {list(spacing)} and patch size {list(patch_size)} differ in length")
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [a for a in range(dim) if cur_size[a] >= 2 * min_feature_map_size]
        if not valid:
            break
        min_valid_spacing = min(cur_spacing[a] for a in valid)
        valid = [a for a in valid if cur_spacing[a] / min_valid_spacing < 2 and num_pool[a] < max_numpool]
        if not valid or (len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map_size):
            break
        smallest = min(cur_spacing)
        for a in range(dim):
            if kernel[a] != 3 and cur_spacing[a] / smallest < 2:
                kernel[a] = 3
        stride = [1] * dim
        for a in valid:
            stride[a] = 2
            num_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # the bottleneck always uses 3 x 3 (x 3)
    divisible = [2 ** n for n in num_pool]
    return kernels, strides, pad_to_divisible(patch_size, divisible), divisible


def num_pools(strides: Sequence[Sequence[int]]) -> int:
    """Number of downsampling stages (stages after the first)."""
    return max(0, len(strides) - 1)


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    """nnU-Net's starting patch: aspect ratio 1/spacing, volume 256^3 (3D) or 2048^2 (2D) voxels,
    clipped to the median image shape (rounded up to whole voxels)."""
    dim = len(spacing)
    edge = INITIAL_PATCH_EDGE_3D if dim == 3 else INITIAL_PATCH_EDGE_2D
    inv = [1.0 / float(s) for s in spacing]
    scale = (edge ** dim / math.prod(inv)) ** (1.0 / dim)
    patch = [int(round(v * scale)) for v in inv]
    return [max(1, min(p, int(math.ceil(float(m))))) for p, m in zip(patch, median_shape)]


def shrink_patch_once(spacing: Sequence[float], patch_size: Sequence[int], median_shape: Sequence[float],
                      divisible_by: Sequence[int], min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
                      floor: Sequence[int] | None = None) -> tuple[list[int], int] | None:
    """Shrink one patch axis by one divisibility step (nnU-Net v2's rule); None if no axis can shrink.

    The axis with the largest patch / median-shape ratio is reduced (the last one on ties); the
    step is recomputed for the smaller size so no valid size is skipped. With ``floor`` an axis is
    not taken below ``floor[axis]``: the next axis by ratio is tried instead. Returns the new
    (not yet padded) patch and the reduced axis.
    """
    ratios = [float(p) / max(float(m), 1e-6) for p, m in zip(patch_size, median_shape)]
    order = sorted(range(len(ratios)), key=lambda a: (ratios[a], a), reverse=True)
    for axis in order:
        trial = [int(p) for p in patch_size]
        trial[axis] -= int(divisible_by[axis])
        *_, step = pool_and_conv_props(spacing, [max(t, 1) for t in trial], min_feature_map_size)
        new = [int(p) for p in patch_size]
        new[axis] -= int(step[axis])
        if new[axis] < 1 or (floor is not None and new[axis] < int(floor[axis])):
            continue
        return new, axis
    return None


def features_per_stage(num_stages: int, base_features: int, max_features: int) -> list[int]:
    """``base_features * 2 ** stage``, capped at ``max_features``."""
    return [min(int(max_features), int(base_features) * 2 ** s) for s in range(num_stages)]


def build_network_spec(dims: int, in_channels: int, num_classes: int, kernel_sizes: Sequence[Sequence[int]],
                       strides: Sequence[Sequence[int]], base_features: int, max_features: int,
                       convs_per_stage: int = CONVS_PER_STAGE, deep_supervision: bool = True) -> NetworkSpec:
    """A plain-number U-Net (nnU-Net's PlainConvUNet): one stage per stride entry, features doubling
    from ``base_features`` up to ``max_features``, ``convs_per_stage`` convs per encoder and decoder stage,
    instance norm and leaky ReLU. ``num_classes`` includes the background."""
    n = len(strides)
    if len(kernel_sizes) != n:
        raise ValueError(f"{len(kernel_sizes)} kernel sizes for {n} stages")
    return NetworkSpec(
        dims=int(dims), in_channels=int(in_channels), num_classes=int(num_classes),
        features_per_stage=features_per_stage(n, base_features, max_features),
        kernel_sizes=[[int(k) for k in ks] for ks in kernel_sizes],
        strides=[[int(s) for s in st] for st in strides],
        n_conv_per_stage_encoder=[int(convs_per_stage)] * n,
        n_conv_per_stage_decoder=[int(convs_per_stage)] * (n - 1),
        deep_supervision=deep_supervision,
    )


def stage_shapes(spec: NetworkSpec, patch_size: Sequence[int]) -> list[list[int]]:
    """Feature-map shape of every stage for an input ``patch_size`` (integer division by the strides)."""
    shapes = []
    cur = [int(p) for p in patch_size]
    for st in spec.strides:
        cur = [c // int(s) for c, s in zip(cur, st)]
        shapes.append(list(cur))
    return shapes
