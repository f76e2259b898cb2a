"""How fast this CPU trains U-Nets: a short measurement the planner sizes CPU plans with.

``autoseg.hardware`` only detects (cores, RAM, GPU); timing a network is training's business, so the
probe lives here and the plan use case hands its result to :func:`autoseg.hardware.detect_hardware`.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..hardware import CpuSpeed, cpu_has_bf16, cpu_model_name, usable_cpu_cores

logger = logging.getLogger(__name__)
T = TypeVar("T")


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

    from ..model.network import build_network
    from ..planning.memory import gflop_per_iteration
    from ..schemas import NetworkSpec
    from .losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights

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


# --------------------------------------------------------------------------- remembered per machine

#: Bump when the probe changes: older remembered figures are then measured again. Version 2: a figure
#: measured while other processes used the CPU is no longer remembered (version 1 could keep one that
#: was 3x too slow, and every later plan on the machine was sized for a slower CPU than it had).
SPEED_RECORD_VERSION = 2

#: Other processes using more than this share of the CPU during the probe make it a busy measurement.
BUSY_SHARE = 0.2


def _usable_cpu_ids() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: the whole machine
        return None


def cpu_busy_seconds(own_children: bool = False) -> tuple[float, float, int]:
    """(CPU seconds the CPUs this process may run on have spent busy, CPU seconds this process has used,
    how many such CPUs): two readings around a measurement tell how much of its CPUs others took
    meanwhile. Only this process's CPUs count: a training pinned to the other core of the machine
    does not slow a probe pinned to this one. With ``own_children`` this process's child processes
    (finished and waited for, or still running) count as its own."""
    import psutil

    per_cpu = psutil.cpu_times(percpu=True)
    ids = [i for i in (_usable_cpu_ids() or range(len(per_cpu))) if i < len(per_cpu)] or list(range(len(per_cpu)))
    busy = sum(getattr(per_cpu[i], name, 0.0) for i in ids
               for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    me = psutil.Process()
    own = me.cpu_times()
    mine = own.user + own.system
    if own_children:  # finished children (waited for) and the ones still running, e.g. data-loading workers
        mine += own.children_user + own.children_system
        for child in me.children(recursive=True):
            try:
                t = child.cpu_times()
                mine += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return float(busy), float(mine), len(ids)


def _others_share(before: tuple[float, float, int], after: tuple[float, float, int], wall: float) -> float:
    capacity = max(wall, 1e-6) * max(1, before[2])
    return min(1.0, max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / capacity))


def measure_share_of_others(fn: Callable[[], T], *, own_children: bool = True) -> tuple[T, float]:
    """``fn()``, and the share of this process's CPUs other processes used while it ran (0..1). With
    ``own_children`` the CPU time of this process's child processes (waited for by then) counts as its own."""
    t0, before = time.perf_counter(), cpu_busy_seconds(own_children)
    result = fn()
    return result, _others_share(before, cpu_busy_seconds(own_children), time.perf_counter() - t0)


def measure_cpu_speed_and_load(threads: int | None = None) -> tuple[CpuSpeed, float]:
    """:func:`measure_cpu_speed`, and the share of this process's CPUs other processes used meanwhile (0..1)."""
    # the probe runs in this process: anything else, this process's children included, slows it
    return measure_share_of_others(lambda: measure_cpu_speed(threads), own_children=False)


#: How long :func:`others_cpu_share_now` watches the CPUs before a remembered busy figure is measured again.
QUIET_CHECK_S = 1.0


def others_cpu_share_now(seconds: float | None = None) -> float:
    """The share of this process's CPUs other processes use over the next ``seconds`` (0..1)."""
    wait = QUIET_CHECK_S if seconds is None else seconds
    return measure_share_of_others(lambda: time.sleep(wait), own_children=False)[1]


def speed_cache_dir() -> Path:
    """Where autoseg remembers machine measurements: $AUTOSEG_CACHE_DIR, else $XDG_CACHE_HOME/autoseg,
    else ~/.cache/autoseg."""
    if os.environ.get("AUTOSEG_CACHE_DIR"):
        return Path(os.environ["AUTOSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoseg"


def cpu_class() -> dict[str, Any]:
    """What the CPU speed depends on, and nothing momentary: the CPU model, the cores this process may
    use, native bf16, torch's version and the probe's version."""
    import torch

    return {"cpu_model": cpu_model_name(), "cores": usable_cpu_cores(), "bf16": cpu_has_bf16(),
            "torch": torch.__version__.split("+")[0], "probe": SPEED_RECORD_VERSION}


def _remembered(path: Path, key: dict[str, Any]) -> tuple[CpuSpeed, str, bool] | None:
    """(speed, where it comes from, whether it was measured on a busy machine) for this CPU class, or None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("cpu_class") != key:
            return None
        s = saved["speed"]
        busy = float(saved.get("others_cpu_share", 0.0)) > BUSY_SHARE
        where = (f"measured on {saved.get('measured', '?')}"
                 + (f" while other processes used {100 * float(saved['others_cpu_share']):.0f}% of the CPU"
                    if busy else "")
                 + f" and remembered in {path} for this CPU class (`autoseg plan --remeasure-cpu` measures again)")
        return (CpuSpeed(conv_gflops=s.get("conv_gflops"), unet_gflops=dict(s["unet_gflops"]),
                         unet_precision=dict(s["unet_precision"]), source=where), where, busy)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _faster(a: CpuSpeed, b: CpuSpeed) -> bool:
    """``a`` trains U-Nets faster than ``b`` (the sum over 2D and 3D)."""
    return sum(a.unet_gflops.values()) > sum(b.unet_gflops.values())


def cpu_speed_for_planning(*, remeasure: bool = False) -> tuple[CpuSpeed, str]:
    """This CPU's training throughput for the planner, measured once per CPU class and remembered.

    A measurement varies by a few percent from run to run, and the CPU plan is sized from it: measured
    afresh each time, ``autoseg plan --overwrite`` on the same data would produce different plans and
    make trained folds look stale. So the figure is kept in ``speed_cache_dir()/cpu_speed.json`` under
    its :func:`cpu_class` and reused while the class is the same (``remeasure``: measure again).

    A measurement taken while other processes use more than :data:`BUSY_SHARE` of the probe's CPUs
    runs several times slower (3x was seen on a 2-core machine), and a slow figure sizes every later
    plan for a slower CPU than the real one. Such a figure is remembered as *busy*: later plans reuse it
    while the machine is still busy (so plans stay the same on a machine that is never quiet, e.g. a
    shared node), and measure again as soon as they find it quiet (:func:`others_cpu_share_now`); a quiet
    measurement replaces it and is kept. A quiet figure is never replaced by a busy one; between two
    busy ones the faster is kept. Returns (speed, a sentence saying where the figure came from). A
    cache that cannot be read or written only costs a measurement.
    """
    from ..atomic import atomic_write_text

    path = speed_cache_dir() / "cpu_speed.json"
    key = cpu_class()
    remembered = _remembered(path, key)
    if remembered is not None and not remeasure:
        if not remembered[2] or others_cpu_share_now() > BUSY_SHARE:
            return remembered[0], remembered[1]
    speed, others = measure_cpu_speed_and_load()
    busy = others > BUSY_SHARE
    load = f"other processes used {100 * others:.0f}% of the CPU while it was measured, which slows the probe"
    if busy and remembered is not None and (not remembered[2] or not _faster(speed, remembered[0])):
        logger.warning("CPU speed measured again, but %s; keeping the figure remembered in %s", load, path)
        return remembered[0], remembered[1] + f"; a new measurement did not replace it: {load}"
    record = {"cpu_class": key, "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "others_cpu_share": round(others, 3),
              "speed": {"conv_gflops": speed.conv_gflops, "unet_gflops": speed.unet_gflops,
                        "unet_precision": speed.unet_precision}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        kept = f"remembered in {path} for this CPU class"
    except OSError as e:
        logger.debug("cannot remember the CPU speed in %s: %s", path, e)
        kept = f"not remembered: {path} is not writable, so the next plan measures again"
    if not busy:
        where = f"measured now and {kept}" if kept.startswith("remembered") else f"measured now ({kept})"
        return replace(speed, source=where), where
    where = (f"measured now on a busy machine ({load}), so the plan may be sized for a slower CPU than this one; "
             f"{kept}{' until a plan finds the machine quiet and measures again' if kept.startswith('remembered') else ''}"
             f" (or plan again with `--remeasure-cpu` when the machine is quiet)")
    logger.warning("CPU speed %s", where)
    return replace(speed, source=where), where
