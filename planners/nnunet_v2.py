"""nnU-Net v2's default plan (ExperimentPlanner, 8 GB GPU target, 32 base features), whatever the hardware.

The baseline for comparisons: every step is the default planner's except the sizing, which always
plans for nnU-Net's fixed 8 GB target with its own batch rounding (to the nearest integer), as
``nnUNetv2_plan_and_preprocess`` does without ``-gpu_memory_target``.
"""
from __future__ import annotations

from autoseg.planning.base import Sizing, SizingRequest
from autoseg.schemas import Decision, Fingerprint, HardwareBudget

from .default import DefaultPlanner

#: nnU-Net v2's default ``gpu_memory_target_in_gb``.
NNUNET_GPU_MEMORY_TARGET_GB = 8.0


class NnUNetV2Planner(DefaultPlanner):
    """nnU-Net v2's plan for an 8 GB GPU, independent of the machine: the comparison baseline."""

    name = "nnunet_v2"
    fit_to_measured_gpu_memory = False  # the baseline stays nnU-Net's plan: no dry run corrects it on a GPU
    description = ("nnU-Net v2's default plan (8 GB GPU target, 32 base features, batch rounded like nnU-Net) "
                   "whatever the hardware: the baseline for comparisons")

    def size_configuration(self, request: SizingRequest, fingerprint: Fingerprint,
                           budget: HardwareBudget) -> Sizing:
        """Always nnU-Net's fixed 8 GB proxy target, no headroom, 32 base features."""
        on = "a CPU" if budget.device == "cpu" else f"a {budget.gpu_total_memory_gb or '?'} GB GPU"
        why = Decision("device", "cuda", "nnunet_fixed_8gb_target",
                       f"nnU-Net v2 baseline: sized for its fixed {NNUNET_GPU_MEMORY_TARGET_GB:g} GB GPU target "
                       f"whatever the hardware (this machine has {on}); training elsewhere than on such a GPU may "
                       f"be slow or run out of memory.",
                       {"gpu_memory_target_gb": NNUNET_GPU_MEMORY_TARGET_GB, "device_planned_on": budget.device})
        return self.size_for_gpu(request, NNUNET_GPU_MEMORY_TARGET_GB, why, round_batch_up=True)
