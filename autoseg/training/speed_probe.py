"""How fast this CPU trains U-Nets: a short measurement the planner sizes CPU plans with.

``autoseg.hardware`` only detects (cores, RAM, GPU); timing a network is training's business, so the
probe lives here and the plan use case hands its result to :func:`autoseg.hardware.detect_hardware`.
"""
from __future__ import annotations

import statistics
import time

from ..hardware import CpuSpeed, cpu_has_bf16, usable_cpu_cores


def measure_cpu_speed(threads: int | None = None) -> CpuSpeed:
    """Both probes below with ``threads`` torch threads (default: the usable cores); a few seconds."""
    threads = threads or usable_cpu_cores()
    conv = round(measure_cpu_conv_gflops(threads), 2)
    rates, precisions = measure_cpu_unet_gflops(threads, bf16=cpu_has_bf16())
    return CpuSpeed(conv_gflops=conv, unet_gflops=rates, unet_precision=precisions)


def measure_cpu_conv_gflops(threads: int, *, max_seconds: float = 2.5) -> float:
    """Measured fp32 3D-convolution throughput of this CPU in GFLOP/s (forward + backward).

    Times a conv (batch 2, 16 -> 16 channels, 32^3 voxels, kernel 3, padding 1) with ``threads``
    torch threads: one warm-up, then up to 3 timed repetitions within ``max_seconds``. FLOPs are
    analytic: 2 * 3^3 * 16 * 16 * voxels per forward, times 3 for forward + backward (input and
    weight gradients). torch's thread count is restored afterwards.
    """
    import torch

    batch, cin, cout, size, k = 2, 16, 16, 32, 3
    flop = 3 * 2.0 * k**3 * cin * cout * batch * size**3
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        gen = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv3d(cin, cout, k, padding=1, bias=False)
        x = torch.randn(batch, cin, size, size, size, generator=gen, requires_grad=True)

        def step() -> float:
            t0 = time.perf_counter()
            conv.zero_grad(set_to_none=True)
            x.grad = None
            conv(x).sum().backward()
            return time.perf_counter() - t0

        start = time.perf_counter()
        warm = step()
        times: list[float] = []
        # Stop early on a slow machine so detection never takes much more than max_seconds.
        while len(times) < 3 and (not times or time.perf_counter() - start + warm < max_seconds):
            times.append(step())
    finally:
        torch.set_num_threads(old_threads)
    seconds = statistics.median(times)
    return flop / max(seconds, 1e-9) / 1e9


# Reference networks for the U-Net probe: small plans of the kind a CPU planner produces.
_PROBE_SPECS = {
    "3d": dict(dims=3, features=[16, 32, 64, 128], patch=[40, 48, 40], batch=2),
    "2d": dict(dims=2, features=[16, 32, 64, 128, 256], patch=[160, 160], batch=4),
}


def measure_cpu_unet_gflops(threads: int, *, bf16: bool, repetitions: int = 2
                            ) -> tuple[dict[str, float], dict[str, str]]:
    """Effective GFLOP/s of whole U-Net training steps (forward, Dice+CE, backward, SGD) on this CPU.

    A single convolution is a poor predictor here: oneDNN's speed depends strongly on the shape
    (19 to 110 GFLOP/s for nearly the same work on one 2-core EPYC), and norms, activations, loss
    and optimizer add time. So a small reference U-Net per dimensionality is timed with autoseg's
    own network and loss (best of ``repetitions`` steps after a warm-up), in fp32 and, when the CPU
    has native bf16, in bf16, and the analytic conv FLOPs of the step (the planner's own estimate)
    are divided by the best time. Returns ({"2d": GFLOP/s, "3d": GFLOP/s}, {"2d": precision, ...}).
    """
    import torch

    from ..planning.memory import gflop_per_iteration
    from ..schemas import NetworkSpec
    from .losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
    from ..model.network import build_network

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    rates: dict[str, float] = {}
    precisions: dict[str, str] = {}
    try:
        for key, p in _PROBE_SPECS.items():
            n = len(p["features"])
            spec = NetworkSpec(dims=p["dims"], in_channels=1, num_classes=3, features_per_stage=p["features"],
                               kernel_sizes=[[3] * p["dims"]] * n,
                               strides=[[1] * p["dims"]] + [[2] * p["dims"]] * (n - 1),
                               n_conv_per_stage_encoder=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
            torch.manual_seed(0)
            net = build_network(spec)
            opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
            loss = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(n - 1))
            x = torch.randn(p["batch"], 1, *p["patch"])
            targets = [torch.randint(0, 3, (p["batch"], 1, *o.shape[2:])) for o in net(x)]
            flop = gflop_per_iteration(spec, p["patch"], p["batch"])
            for precision in (["fp32", "bf16"] if bf16 else ["fp32"]):
                def step() -> float:
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        out = net(x)
                    loss([o.float() for o in out], targets).backward()
                    opt.step()
                    return time.perf_counter() - t0

                step()
                best = min(step() for _ in range(max(1, repetitions)))
                rate = flop / max(best, 1e-9)
                if rate > rates.get(key, 0.0):
                    rates[key], precisions[key] = round(rate, 1), precision
    finally:
        torch.set_num_threads(old_threads)
    return rates, precisions
