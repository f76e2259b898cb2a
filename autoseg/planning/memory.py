"""Analytic cost estimates of a U-Net training step from its :class:`NetworkSpec`, patch and batch.

Nothing is measured here: these are the numbers a planner compares against a budget.

* ``conv_feature_map_size``: nnU-Net v2's VRAM proxy (``compute_conv_feature_map_size``): the number
  of conv output elements of one sample, encoder and decoder, with nnU-Net's reference constants.
* ``estimate_gpu_memory_gb``: that proxy scaled linearly from nnU-Net's 8 GB reference.
* ``estimate_training_ram_gb``: CPU RAM of a training step (activations kept for backward,
  weights, gradients and optimizer state, the torch runtime).
* ``gflop_per_iteration`` / ``estimated_seconds_per_iteration_cpu``: compute per training step.

Patch sizes are in the configuration's patch-axis order; memory in GB (2**30 bytes), compute in
GFLOP (1e9 floating-point operations, one multiply-add = 2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..schemas import NetworkSpec
from .topology import stage_shapes

# nnU-Net v2 ExperimentPlanner reference values (PlainConvUNet): a per-sample proxy of 560e6 at
# batch 2 (3D) or 85e6 at batch 12 (2D) fills an 8 GB GPU.
REFERENCE_PROXY_3D = 560_000_000
REFERENCE_PROXY_2D = 85_000_000
REFERENCE_BATCH_3D = 2
REFERENCE_BATCH_2D = 12
REFERENCE_MEMORY_GB = 8.0

_GB = 1024 ** 3
_FP32_BYTES = 4
#: Tensors PyTorch keeps per conv output for the backward pass (conv output, norm output,
#: activation output) in fp32: about 3x the forward feature maps.
ACTIVATION_MEMORY_FACTOR = 3.0
#: Weights, gradients, SGD momentum and one spare copy (e.g. the EMA / checkpoint state dict).
PARAMETER_COPIES = 4
#: Torch runtime, allocator slack and the data loader's batch in the main process.
TORCH_RUNTIME_OVERHEAD_GB = 0.6
#: Forward + backward ~ 3 x forward FLOPs (the backward computes input and weight gradients).
FORWARD_BACKWARD_FACTOR = 3.0
#: Non-convolution cost on CPU (instance norm, leaky ReLU, loss, deep supervision, optimizer step,
#: less efficient small-channel and transposed convs) as a multiplier on the pure conv time at the
#: measured conv throughput. Calibrated against measurements on the 2-core development machine
#: (fp32, torch CPU, full train steps of 16-feature 3D U-Nets at 32x40x28 and 40x56x40, batch 2:
#: 1.25-1.75 while other jobs shared the cores); to be refined by the lead with quiet-machine runs.
CPU_NON_CONV_OVERHEAD = 1.6


def _reference(dims: int) -> tuple[int, int]:
    return (REFERENCE_PROXY_3D, REFERENCE_BATCH_3D) if dims == 3 else (REFERENCE_PROXY_2D, REFERENCE_BATCH_2D)


def conv_feature_map_size(spec: NetworkSpec, patch_size: Sequence[int]) -> int:
    """nnU-Net's VRAM proxy for ONE sample: conv output elements over encoder and decoder.

    Encoder: every conv's output (channels x voxels). Decoder, per stage: its convs, the transposed
    conv's output and, as in nnU-Net's planner (which builds the net without deep supervision),
    the segmentation output only at full resolution.
    """
    shapes = stage_shapes(spec, patch_size)
    vox = [math.prod(s) for s in shapes]
    feats = spec.features_per_stage
    total = 0
    for s in range(len(shapes)):
        total += spec.n_conv_per_stage_encoder[s] * feats[s] * vox[s]
    for k in range(len(shapes) - 2, -1, -1):  # decoder stages, coarse to fine
        total += spec.n_conv_per_stage_decoder[k] * feats[k] * vox[k]  # conv blocks
        total += feats[k] * vox[k]  # transposed conv output
        if k == 0:
            total += spec.num_classes * vox[k]
    return int(total)


def reference_proxy_for_memory(dims: int, memory_gb: float) -> float:
    """The proxy (per sample, at the reference batch) that fills ``memory_gb`` by nnU-Net's scaling."""
    ref, _ = _reference(dims)
    return ref * float(memory_gb) / REFERENCE_MEMORY_GB


def estimate_gpu_memory_gb(proxy_per_sample: float, batch_size: int, dims: int) -> float:
    """GPU memory (GB) of training with ``batch_size`` samples whose proxy is ``proxy_per_sample``.

    Linear in batch and proxy: ``8 GB x proxy x batch / (reference proxy x reference batch)``, so a
    3D net with proxy 560e6 at batch 2 (or a 2D net with 85e6 at batch 12) is 8 GB.
    """
    ref, ref_bs = _reference(dims)
    return REFERENCE_MEMORY_GB * float(proxy_per_sample) * int(batch_size) / (ref * ref_bs)


def _conv_params(cin: int, cout: int, kernel: Sequence[int]) -> int:
    return cin * cout * math.prod(kernel) + cout  # weights + bias


def num_parameters(spec: NetworkSpec) -> int:
    """Trainable parameters: convs (+bias), instance-norm affine, transposed convs, 1x1 seg heads."""
    feats, n = spec.features_per_stage, len(spec.strides)
    total = 0
    cin = spec.in_channels
    for s in range(n):
        for c in range(spec.n_conv_per_stage_encoder[s]):
            total += _conv_params(cin if c == 0 else feats[s], feats[s], spec.kernel_sizes[s]) + 2 * feats[s]
        cin = feats[s]
    for k in range(n - 2, -1, -1):
        total += _conv_params(feats[k + 1], feats[k], spec.strides[k + 1])
        for c in range(spec.n_conv_per_stage_decoder[k]):
            total += _conv_params(2 * feats[k] if c == 0 else feats[k], feats[k], spec.kernel_sizes[k]) + 2 * feats[k]
        if spec.deep_supervision or k == 0:
            total += _conv_params(feats[k], spec.num_classes, [1] * spec.dims)
    return int(total)


def gflop_per_iteration(spec: NetworkSpec, patch_size: Sequence[int], batch_size: int) -> float:
    """GFLOP of one training iteration (forward + backward, whole batch).

    Convolutions (2 x kernel volume x C_in x C_out per output voxel), transposed convolutions
    (2 x stride volume x C_in x C_out per input voxel) and the 1x1 segmentation heads (all decoder
    stages with deep supervision); the forward count is multiplied by 3 for forward + backward
    and by the batch size. Norms and activations are left to :data:`CPU_NON_CONV_OVERHEAD`.
    """
    shapes = stage_shapes(spec, patch_size)
    vox = [math.prod(s) for s in shapes]
    feats, n = spec.features_per_stage, len(shapes)
    flops = 0.0
    cin = spec.in_channels
    for s in range(n):
        k = math.prod(spec.kernel_sizes[s])
        for c in range(spec.n_conv_per_stage_encoder[s]):
            flops += 2.0 * k * (cin if c == 0 else feats[s]) * feats[s] * vox[s]
        cin = feats[s]
    for d in range(n - 2, -1, -1):
        flops += 2.0 * math.prod(spec.strides[d + 1]) * feats[d + 1] * feats[d] * vox[d + 1]
        k = math.prod(spec.kernel_sizes[d])
        for c in range(spec.n_conv_per_stage_decoder[d]):
            flops += 2.0 * k * (2 * feats[d] if c == 0 else feats[d]) * feats[d] * vox[d]
        if spec.deep_supervision or d == 0:
            flops += 2.0 * feats[d] * spec.num_classes * vox[d]
    return flops * FORWARD_BACKWARD_FACTOR * int(batch_size) / 1e9


def estimate_training_ram_gb(spec: NetworkSpec, patch_size: Sequence[int], batch_size: int) -> float:
    """CPU RAM (GB) of a training step: fp32 activations x :data:`ACTIVATION_MEMORY_FACTOR` for the
    backward pass, parameters x :data:`PARAMETER_COPIES`, the input batch and the torch runtime."""
    proxy = conv_feature_map_size(spec, patch_size)
    activations = proxy * int(batch_size) * _FP32_BYTES * ACTIVATION_MEMORY_FACTOR
    params = num_parameters(spec) * _FP32_BYTES * PARAMETER_COPIES
    batch = math.prod(int(p) for p in patch_size) * int(batch_size) * (spec.in_channels + 1) * _FP32_BYTES
    return (activations + params + batch) / _GB + TORCH_RUNTIME_OVERHEAD_GB


def estimated_seconds_per_iteration_cpu(gflop: float, cpu_gflops: float,
                                        overhead: float = CPU_NON_CONV_OVERHEAD) -> float:
    """Seconds per training iteration on CPU: conv GFLOP / throughput x ``overhead``.

    With a raw convolution throughput use the default :data:`CPU_NON_CONV_OVERHEAD`; with the
    effective throughput measured on whole U-Net training steps (HardwareBudget.cpu_unet_gflops,
    which already includes norms, activations, loss and optimizer) use ``overhead=1.0``.
    """
    if not cpu_gflops > 0:
        raise ValueError(f"the CPU throughput must be > 0 GFLOP/s, found {cpu_gflops}")
    return float(gflop) / float(cpu_gflops) * float(overhead)
