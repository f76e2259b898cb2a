"""The peak GPU memory of real training steps of a configuration: the measurement behind
``autoseg plan --device cuda`` (``planning/measured.py`` searches patch and batch with it).

:func:`measure_peak_memory_gb` builds the configuration's network on the GPU, runs a few training steps
at its patch and batch (random input, random targets at every deep-supervision scale, the loss of its
labels, AdamW, which holds more optimizer state than SGD, at the training precision) and reads
``torch.cuda.max_memory_reserved`` (what the caching allocator holds, the number that runs out first),
in GB. Running out of memory gives ``inf``. Everything it allocated is freed before it returns.
Nothing here runs on a CPU: the GPU path is verified only by a run on a GPU (docs/benchmarks/gpu.md).
"""
from __future__ import annotations

import logging
import math

from ..schemas import ConfigurationPlan

log = logging.getLogger(__name__)

PROBE_STEPS = 3  # the first step allocates cuDNN workspaces and optimizer state; the peak is reached by the third


def measure_peak_memory_gb(config: ConfigurationPlan, *, device: str = "cuda", precision: str | None = None,
                           steps: int = PROBE_STEPS) -> float:
    """Peak GPU memory (GB) of ``steps`` training steps of ``config`` at its patch and batch; inf when out of memory."""
    import torch

    from ..model.network import build_network
    from .augmentation import deep_supervision_scales
    from .losses import DeepSupervisionLoss, deep_supervision_weights, make_loss
    from .precision import cuda_precision

    dev = torch.device(device)
    if precision is None:
        precision, _ = cuda_precision(torch.cuda.is_bf16_supported())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    spec = config.network
    net = opt = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        net = build_network(spec).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        n_out = len(spec.features_per_stage) - 1
        scales = deep_supervision_scales(spec.strides, n_out) if spec.deep_supervision else [[1.0] * spec.dims]
        loss_fn = make_loss(config.labels)
        if spec.deep_supervision:
            loss_fn = DeepSupervisionLoss(loss_fn, deep_supervision_weights(n_out))
        x = torch.randn(config.batch_size, spec.in_channels, *config.patch_size, device=dev)
        top = max(config.labels.allowed_values)
        targets = [torch.randint(0, top + 1, (config.batch_size, 1,
                                              *[max(1, round(p * s)) for p, s in zip(config.patch_size, sc)]),
                                 device=dev) for sc in scales]
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                out = net(x)
            out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
            loss = loss_fn(out, targets if spec.deep_supervision else targets[0])
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_reserved(dev) / 1024 ** 3
    except torch.cuda.OutOfMemoryError:
        log.info("dry run of %s at patch %s batch %d: out of GPU memory", config.name, config.patch_size,
                 config.batch_size)
        return math.inf
    finally:
        del net, opt
        torch.cuda.empty_cache()
