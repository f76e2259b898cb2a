"""Readable report of a :class:`Plans`: the hardware planned for, every decision with its reason,
a compact summary per configuration, and the warnings (``autoseg plan --explain``,
``plans_explained.txt``)."""
from __future__ import annotations

from collections.abc import Sequence

from ..schemas import ConfigurationPlan, Decision, Plans


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _hardware_lines(plans: Plans) -> list[str]:
    hw = plans.hardware
    if hw.device == "cuda":
        name = hw.gpu_name or "CUDA GPU"
        lines = [f"Hardware planned for: {name}, {hw.gpu_total_memory_gb or 0:.1f} GB total; "
                 f"{hw.cpu_cores} CPU cores, {hw.ram_total_gb:.1f} GB RAM (plans use the machine's totals, "
                 f"never what happens to be free)"]
    else:
        if hw.cpu_unet_gflops:
            gflops = ", ".join(f"{k} U-Net training {v:.0f} GFLOP/s ({hw.cpu_unet_precision.get(k, 'fp32')})"
                               for k, v in sorted(hw.cpu_unet_gflops.items()))
        else:
            gflops = "not measured" if hw.cpu_conv_gflops is None else f"{hw.cpu_conv_gflops:.0f} GFLOP/s"
        bf16 = ", native bf16" if hw.cpu_bf16 else ""
        lines = [f"Hardware planned for: CPU only, {hw.cpu_cores} cores{bf16}, throughput {gflops}, "
                 f"{hw.ram_total_gb:.1f} GB RAM (plans use the machine's total, never what happens to be free)"]
        if hw.cpu_speed_source:
            lines.append(f"CPU throughput {hw.cpu_speed_source}")
    if plans.time_budget_s is None:
        budget = "none (trainings run their epochs)"
    else:
        budget = _duration(plans.time_budget_s) + ("" if plans.time_budget_given else
                                                   " (no --time-budget given: the CPU plan's default, which "
                                                   "`autoseg train` uses too)")
    lines.append(f"Time budget per training: {budget}")
    if hw.overrides:
        lines.append("Overridden by the user: " + ", ".join(f"{k}={v}" for k, v in sorted(hw.overrides.items())))
    return lines


def _decision_lines(decisions: Sequence[Decision], indent: str) -> list[str]:
    return [f"{indent}- {d.subject} [{d.rule}]: {d.reason}" for d in decisions]


def _summary(cfg: ConfigurationPlan, device: str) -> list[str]:
    net = cfg.network
    pools = [sum(1 for st in net.strides if st[a] != 1) for a in range(net.dims)]
    memory = "GPU memory" if device == "cuda" else "training RAM"
    links = []
    if cfg.previous_stage:
        links.append(f"previous stage {cfg.previous_stage}")
    if cfg.next_stage:
        links.append(f"next stage {cfg.next_stage}")
    lines = [
        f"    spacing {' x '.join(f'{s:.3g}' for s in cfg.spacing_zyx_mm)} mm (z, y, x), transpose "
        f"{cfg.transpose_forward}, median image {' x '.join(map(str, cfg.median_shape_zyx))} voxels (z, y, x)",
        f"    patch {' x '.join(map(str, cfg.patch_size))}, batch {cfg.batch_size}, {len(net.strides)} stages, "
        f"features {net.features_per_stage}, poolings per axis {pools}, input channels {net.in_channels}, "
        f"classes {net.num_classes}",
        f"    estimated {memory} {cfg.estimated_memory_gb:.2f} GB, {cfg.estimated_gflop_per_iteration:.1f} GFLOP per "
        f"iteration; preprocessed data in '{cfg.data_identifier}'",
    ]
    if links:
        lines.append("    cascade: " + ", ".join(links))
    return lines


def explain_plans(plans: Plans) -> list[str]:
    """One readable line per fact: header, hardware, dataset-level decisions, each configuration
    (summary, then its decisions), then the warnings."""
    lines = [f"Plans for {plans.dataset_name} by planner '{plans.planner}' (autoseg {plans.autoseg_version})"]
    lines += _hardware_lines(plans)
    lines.append("")
    lines.append("Dataset-level decisions:")
    lines += _decision_lines(plans.decisions, "  ")
    for name, cfg in plans.configurations.items():
        lines.append("")
        lines.append(f"Configuration {name} ({cfg.dims}D):")
        lines += _summary(cfg, plans.hardware.device)
        lines += _decision_lines(cfg.decisions, "    ")
    lines.append("")
    if plans.warnings:
        lines.append(f"Warnings ({len(plans.warnings)}):")
        lines += [f"  ! {w}" for w in plans.warnings]
    else:
        lines.append("Warnings: none")
    return lines
