"""Patch and batch fitted to the GPU memory a real training step measures (``autoseg plan --device cuda``).

The planner's first guess comes from nnU-Net's memory proxy (a count of feature-map elements scaled
linearly from an 8 GB reference). On a real GPU that guess can be far off either way (mixed precision,
cuDNN workspaces, a 140 GB card the reference never saw). :func:`fit_to_measured_memory` corrects it with
a dry run: ``measure(config)`` trains a few steps of the configuration's real network at its patch and batch
(forward + backward with deep supervision, at the training precision; ``training/memory_probe.py``) and
returns the peak GPU memory in GB (``inf`` when it ran out of memory). Nothing here imports torch, so the
search is tested on the CPU with an injected measurement.

The search, per configuration (nnU-Net's priorities: the largest patch first, then the batch):

1. **Patch**: start from the plan's patch, or from the largest patch the plan's rules allow (nnU-Net's
   initial patch: 256^3 voxels shaped by 1/spacing, clipped to the median image) when the proxy had shrunk
   it; shrink one axis at a time (nnU-Net's rule) until the minimum batch fits the target.
2. **Batch**: peak memory is close to linear in the batch (``fixed + per_sample x batch``); two
   measurements give the line, the largest batch under the target follows, capped by nnU-Net's rule that a
   batch holds at most 5 % of the dataset's voxels. That batch is measured; when it does not fit (the line
   was optimistic, or it ran out of memory) the batch is bisected between the largest batch measured to fit
   and the smallest measured not to. At most ``MAX_PROBES`` measurements per configuration.
3. What the memory bought is said in the Decision: the measured peak against the proxy's estimate, and
   on a large GPU whether the dataset cap or the median image size left memory unused.

The target is the usable memory x headroom (``--gpu-memory-gb`` plans for a smaller GPU than the one present:
the measurement is the same on any GPU, only the target changes).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..schemas import ConfigurationPlan, Decision
from .memory import gflop_per_iteration
from .topology import build_network_spec, initial_patch_size, pool_and_conv_props, shrink_patch_once

MAX_PROBES = 12  # measurements per configuration at most (each trains a few steps)
GPU_MEMORY_HEADROOM = 0.9  # share of the GPU's memory a plan may fill (CUDA context, fragmentation)
MIN_BATCH_SIZE = 2


@dataclass(frozen=True)
class MeasuredFit:
    config: ConfigurationPlan
    measured_gb: float  # the final patch and batch, measured
    probes: list[tuple[list[int], int, float]]  # (patch, batch, peak GB) in the order measured
    decision: Decision
    warnings: list[str]


def _permute(values: Sequence[float], order: Sequence[int]) -> list[float]:
    return [float(values[i]) for i in order]


def _with_patch(config: ConfigurationPlan, patch: list[int], spacing: list[float]) -> ConfigurationPlan:
    """``config`` at another patch: the topology rebuilt for it with the same features (base and cap)."""
    kernels, strides, padded, _ = pool_and_conv_props(spacing, patch)
    net = config.network
    base, cap = net.features_per_stage[0], max(net.features_per_stage)
    new_net = build_network_spec(config.dims, net.in_channels, net.num_classes, kernels, strides, base, cap,
                                 convs_per_stage=net.n_conv_per_stage_encoder[0],
                                 deep_supervision=net.deep_supervision)
    new_net = replace(new_net, norm=net.norm, nonlin=net.nonlin, negative_slope=net.negative_slope)
    return replace(config, patch_size=[int(p) for p in padded], network=new_net)


def _spacing_and_median(config: ConfigurationPlan) -> tuple[list[float], list[float], float]:
    """The configuration's spacing and median shape in patch-axis (transposed) order, and the voxels of the
    median 3D image (nnU-Net's dataset size per case, also for 2d)."""
    spacing = _permute(config.spacing_zyx_mm, config.transpose_forward)
    median = _permute(config.median_shape_zyx, config.transpose_forward)
    voxels = math.prod(median)
    if config.dims == 2:
        spacing, median = spacing[1:], median[1:]
    return spacing, median, voxels


def fit_to_measured_memory(config: ConfigurationPlan, measure: Callable[[ConfigurationPlan], float],
                           target_gb: float, *, num_cases: int, proxy_estimate_gb: float | None = None,
                           max_dataset_fraction: float = 0.05, min_batch: int = MIN_BATCH_SIZE) -> MeasuredFit:
    """The configuration with the largest patch, then batch, whose measured peak stays under ``target_gb``."""
    spacing, median, case_voxels = _spacing_and_median(config)
    probes: list[tuple[list[int], int, float]] = []
    warnings: list[str] = []

    def peak(cfg: ConfigurationPlan) -> float:
        value = float(measure(cfg))
        probes.append((list(cfg.patch_size), int(cfg.batch_size), value))
        return value

    def budget_left() -> bool:
        return len(probes) < MAX_PROBES

    # 1. the patch: from the plan's rules' largest when the proxy shrank it, down until the minimum batch fits
    largest = initial_patch_size(spacing, median)
    start = largest if math.prod(largest) > math.prod(config.patch_size) else list(config.patch_size)
    cfg = replace(config, batch_size=min_batch)
    if start != list(config.patch_size):
        cfg = _with_patch(cfg, start, spacing)
    m_min = peak(cfg)
    while m_min > target_gb and budget_left():
        _, _, _, div = pool_and_conv_props(spacing, cfg.patch_size)
        step = shrink_patch_once(spacing, cfg.patch_size, median, div)
        if step is None:
            warnings.append(f"{config.name}: even the smallest patch {cfg.patch_size} at batch {min_batch} measured "
                            f"{m_min:.1f} GB > the target {target_gb:.1f} GB; training will run out of GPU memory "
                            f"(plan for a larger GPU or fewer channels)")
            break
        cfg = _with_patch(cfg, step[0], spacing)
        m_min = peak(cfg)
    if m_min > target_gb and not warnings:
        warnings.append(f"{config.name}: after {len(probes)} dry runs the patch {cfg.patch_size} at batch {min_batch} "
                        f"still measures {m_min:.1f} GB > the target {target_gb:.1f} GB; training may run out of GPU "
                        f"memory (plan for a larger GPU)")

    # 2. the batch: a line through two measurements, capped by the dataset rule; then bisection between the
    #    largest batch measured to fit and the smallest measured not to, when the line was optimistic
    dataset_voxels = case_voxels * max(1, num_cases)
    cap = max(min_batch, round(dataset_voxels * max_dataset_fraction / math.prod(cfg.patch_size)))
    fits: dict[int, float] = {min_batch: m_min}  # batch -> measured peak, under the target
    fails: set[int] = set()  # batches measured over the target (or out of memory)

    def try_batch(b: int) -> float:
        m = peak(replace(cfg, batch_size=b))
        if m <= target_gb:
            fits[b] = m
        else:
            fails.add(b)
        return m

    per_sample = fixed = None
    guess = min_batch
    if m_min <= target_gb and cap > min_batch and budget_left():
        probe_batch = min(cap, 2 * min_batch)
        m_probe = try_batch(probe_batch)
        if probe_batch in fits:
            per_sample = max((m_probe - m_min) / (probe_batch - min_batch), 1e-6)
            fixed = m_min - per_sample * min_batch
            guess = int(max(min_batch, min(cap, math.floor((target_gb - fixed) / per_sample))))
    if guess not in fits and guess not in fails and budget_left():
        try_batch(guess)
    while budget_left():
        lo, hi = max(fits), min((b for b in fails if b > max(fits)), default=None)
        if hi is None or hi - lo <= 1:
            break
        try_batch((lo + hi) // 2)
    batch = max(fits)
    cfg = replace(cfg, batch_size=batch)
    measured = fits[batch]

    cfg = replace(cfg, estimated_memory_gb=round(measured, 3),
                  estimated_gflop_per_iteration=float(gflop_per_iteration(cfg.network, cfg.patch_size,
                                                                          cfg.batch_size)))
    proxy = f"; the proxy estimated {proxy_estimate_gb:.1f} GB for the first guess" if proxy_estimate_gb else ""
    spare = target_gb - measured
    if cfg.batch_size >= cap and spare > 0.1 * target_gb:
        bought = (f" {spare:.1f} GB stay unused: the batch is capped at {cap} ({max_dataset_fraction:.0%} of the "
                  f"dataset's voxels per batch, nnU-Net's rule against overfitting small datasets) and the patch "
                  f"already spans {'the median image' if list(cfg.patch_size) == [int(math.ceil(m)) for m in median] else 'the largest box the rules allow'}.")
    elif per_sample is not None:
        bought = f" Memory per extra sample {per_sample:.2f} GB, fixed part {fixed:.2f} GB."
    else:
        bought = ""
    decision = Decision(
        "measured_memory", round(measured, 3), "gpu_dry_run",
        f"measured on this GPU: patch {'x'.join(map(str, cfg.patch_size))} batch {cfg.batch_size} peaks at "
        f"{measured:.2f} GB (target {target_gb:.1f} GB) after {len(probes)} dry run(s) of real training steps"
        f"{proxy}.{bought}",
        {"probes": [{"patch": p, "batch": b, "peak_gb": round(v, 3) if math.isfinite(v) else None}
                    for p, b, v in probes], "target_gb": target_gb, "batch_cap": cap})
    cfg = replace(cfg, decisions=[*cfg.decisions, decision])
    return MeasuredFit(cfg, measured, probes, decision, warnings)
