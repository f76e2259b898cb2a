"""Hardware detection: the only module that asks about the GPU, the CPU or the RAM.

Nothing happens at import time; torch is imported lazily inside the functions that need it.
:func:`detect_hardware` returns a plain :class:`~autoseg.schemas.HardwareBudget` that planners
receive as an argument, so a plan can be made for hardware other than this machine's
(``gpu_memory_gb=8`` plans for an 8 GB GPU on a CPU-only runner).

Units: memory in GB meaning 2**30 bytes (what GPU vendors and ``nvidia-smi`` call GB/GiB),
times in seconds, convolution throughput in GFLOP/s (1e9 floating-point operations per second).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AutosegError, unknown_name_error
from .schemas import HardwareBudget

logger = logging.getLogger(__name__)

GB = float(2**30)


@dataclass(frozen=True)
class CpuSpeed:
    """Measured training throughput of this CPU (``autoseg.training.speed_probe.measure_cpu_speed``)."""

    conv_gflops: float | None = None  # one fp32 3D convolution, forward + backward
    unet_gflops: dict[str, float] = field(default_factory=dict)  # {"2d": GFLOP/s, "3d": GFLOP/s}, best precision
    unet_precision: dict[str, str] = field(default_factory=dict)  # {"2d": "fp32"|"bf16", ...}
    source: str = ""  # where the figure comes from (measured now, or remembered for this CPU class)
KNOWN_DEVICES = ("cpu", "cuda")
# A cgroup memory limit at or above this is "no limit" (cgroup v1 reports ~2**63 when unlimited).
_NO_LIMIT_BYTES = 2**60

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_CPUINFO = Path("/proc/cpuinfo")


# --------------------------------------------------------------------------- CPU and RAM

def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def cgroup_cpu_limit(cgroup_root: Path = _CGROUP_ROOT) -> float | None:
    """CPU quota of this process' cgroup in cores (e.g. 1.5), or None when there is no quota.

    Reads cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), else cgroup v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (quota -1 = none).
    """
    v2 = _read_text(cgroup_root / "cpu.max")
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota_s = _read_text(cgroup_root / "cpu" / "cpu.cfs_quota_us")
    period_s = _read_text(cgroup_root / "cpu" / "cpu.cfs_period_us")
    if quota_s is None or period_s is None:
        return None
    try:
        quota, period = float(quota_s), float(period_s)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpu_cores(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """CPU cores this process may use: its affinity set, capped by a cgroup CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        # A quota of 1.5 cores lets 1 thread run flat out; rounding up would oversubscribe.
        cores = min(cores, max(1, int(math.floor(quota))))
    return max(1, cores)


def cgroup_memory_gb(cgroup_root: Path = _CGROUP_ROOT) -> tuple[float, float] | None:
    """(limit, available) in GB of this process' memory cgroup, or None when it has no limit.

    available = limit - (usage - inactive page cache), since inactive file cache is reclaimable.
    Reads cgroup v2 ``memory.max`` / ``memory.current`` / ``memory.stat``, else the v1 files under
    ``memory/``.
    """
    v2_limit = _read_text(cgroup_root / "memory.max")
    if v2_limit is not None:
        limit_s, usage_s = v2_limit, _read_text(cgroup_root / "memory.current")
        stat_s, inactive_keys = _read_text(cgroup_root / "memory.stat"), ("inactive_file",)
    else:
        limit_s = _read_text(cgroup_root / "memory" / "memory.limit_in_bytes")
        usage_s = _read_text(cgroup_root / "memory" / "memory.usage_in_bytes")
        stat_s = _read_text(cgroup_root / "memory" / "memory.stat")
        inactive_keys = ("total_inactive_file", "inactive_file")
    if not limit_s or limit_s == "max":
        return None
    try:
        limit = int(limit_s)
    except ValueError:
        return None
    if limit <= 0 or limit >= _NO_LIMIT_BYTES:
        return None
    usage = 0
    if usage_s:
        try:
            usage = int(usage_s)
        except ValueError:
            usage = 0
    inactive = 0
    if stat_s:
        stats = dict(line.split(maxsplit=1) for line in stat_s.splitlines() if len(line.split()) == 2)
        for key in inactive_keys:
            if key in stats and stats[key].isdigit():
                inactive = int(stats[key])
                break
    available = max(0, limit - max(0, usage - inactive))
    return limit / GB, available / GB


def ram_gb(cgroup_root: Path = _CGROUP_ROOT) -> tuple[float, float]:
    """(total, available) RAM in GB for this process: psutil's numbers, capped by a cgroup limit."""
    import psutil

    vm = psutil.virtual_memory()
    total, available = vm.total / GB, vm.available / GB
    cg = cgroup_memory_gb(cgroup_root)
    if cg is not None:
        total, available = min(total, cg[0]), min(available, cg[1])
    return total, available


def available_ram_gb(cgroup_root: Path = _CGROUP_ROOT) -> float:
    """RAM in GB this process can still use (psutil available, capped by the cgroup limit)."""
    return ram_gb(cgroup_root)[1]


def cpu_model_name(cpuinfo: Path = _CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo (else platform.processor()), or "unknown"."""
    text = _read_text(cpuinfo) or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[-1].strip() or "unknown"
    import platform

    return platform.processor() or platform.machine() or "unknown"


def cpu_has_bf16(cpuinfo: Path = _CPUINFO) -> bool:
    """True when /proc/cpuinfo lists native bf16 (``avx512_bf16`` or ``amx_bf16``); False if unknown."""
    text = _read_text(cpuinfo)
    if not text:
        return False
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


# --------------------------------------------------------------------------- detection

def _validate_device(device: str) -> str:
    d = device.strip().lower()
    if d not in KNOWN_DEVICES:
        raise unknown_name_error("device", device, KNOWN_DEVICES,
                                 hint="Give --device cpu or --device cuda (the first visible GPU).")
    return d


def resolve_device(device: str | None, gpu_memory_gb: float | None = None) -> str:
    """"cpu" or "cuda": what :func:`detect_hardware` will plan for with these flags (nothing measured)."""
    if gpu_memory_gb is not None:
        return "cuda"
    if device is not None:
        return _validate_device(device)
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except (ImportError, RuntimeError):
        return "cpu"


def detect_hardware(*, device: str | None = None, gpu_memory_gb: float | None = None,
                    cpu_speed: "CpuSpeed | None" = None,
                    cpu_gflops: float | None = None) -> HardwareBudget:
    """Detect what this machine offers (or what the user says to plan for) as a HardwareBudget.

    device: None detects ("cuda" when torch sees a GPU, else "cpu"); "cpu"/"cuda" forces it.
    gpu_memory_gb: plan for a GPU with this much memory (GB = 2**30 bytes); implies "cuda" and
        works on machines without a GPU. Recorded in ``overrides`` like ``device``.
    cpu_speed: this CPU's measured training throughput (``autoseg.training.speed_probe``), used when
        the device is "cpu"; detection itself measures nothing. ``cpu_gflops`` (the user's figure) wins.
    """
    overrides: dict[str, str] = {}
    if device is not None:
        device = _validate_device(device)
        overrides["--device"] = device
    if gpu_memory_gb is not None:
        if not (isinstance(gpu_memory_gb, (int, float)) and math.isfinite(gpu_memory_gb)
                and gpu_memory_gb > 0):
            raise AutosegError(f"--gpu-memory-gb must be a positive number of GB, found {gpu_memory_gb!r}; "
                               f"give e.g. --gpu-memory-gb 8 to plan for an 8 GB GPU")
        if device == "cpu":
            raise AutosegError("--gpu-memory-gb plans for a GPU but --device cpu was also given; "
                               "drop one of the two flags")
        overrides["--gpu-memory-gb"] = f"{float(gpu_memory_gb):g}"

    cuda_ok, gpu_name, gpu_total, gpu_free = False, None, None, None
    if device != "cpu":
        try:
            import torch

            cuda_ok = bool(torch.cuda.is_available())
            if cuda_ok:
                gpu_name = str(torch.cuda.get_device_name(0))
                free_b, total_b = torch.cuda.mem_get_info(0)
                gpu_total, gpu_free = total_b / GB, free_b / GB
        except ImportError:
            logger.warning("torch is not importable; planning for the CPU only")
        except RuntimeError as e:  # a broken driver: say so, and go on as CPU-only
            logger.warning("CUDA is installed but unusable (%s); planning for the CPU only", e)
            cuda_ok, gpu_name, gpu_total, gpu_free = False, None, None, None

    if gpu_memory_gb is not None:
        resolved = "cuda"
        gpu_total = gpu_free = float(gpu_memory_gb)
    elif device == "cuda" and not cuda_ok:
        raise AutosegError("--device cuda was given but no usable CUDA GPU is visible on this machine "
                           "(torch.cuda.is_available() is False); give --gpu-memory-gb N to plan for a "
                           "GPU of N GB anyway, or use --device cpu")
    else:
        resolved = device or ("cuda" if cuda_ok else "cpu")
        if resolved == "cpu":
            gpu_name = gpu_total = gpu_free = None

    cores = usable_cpu_cores()
    ram_total, ram_available = ram_gb()
    gflops = None
    unet_rates: dict[str, float] = {}
    unet_precisions: dict[str, str] = {}
    if cpu_gflops is not None:  # the user states the training throughput: nothing is measured
        if not cpu_gflops > 0:
            raise AutosegError(f"--cpu-gflops must be a positive number of GFLOP/s, not {cpu_gflops}")
        unet_rates = {"2d": float(cpu_gflops), "3d": float(cpu_gflops)}
        unet_precisions = {"2d": "given", "3d": "given"}
        overrides["--cpu-gflops"] = f"{cpu_gflops:g}"
    elif resolved == "cpu" and cpu_speed is not None:
        gflops = cpu_speed.conv_gflops
        unet_rates, unet_precisions = dict(cpu_speed.unet_gflops), dict(cpu_speed.unet_precision)
    budget = HardwareBudget(
        device=resolved, gpu_name=gpu_name,
        gpu_total_memory_gb=None if gpu_total is None else round(gpu_total, 3),
        gpu_free_memory_gb=None if gpu_free is None else round(gpu_free, 3),
        cpu_cores=cores, ram_total_gb=round(ram_total, 3), ram_available_gb=round(ram_available, 3),
        cpu_bf16=cpu_has_bf16(),
        cpu_conv_gflops=gflops, cpu_unet_gflops=unet_rates, cpu_unet_precision=unet_precisions,
        cpu_speed_source=cpu_speed.source if (resolved == "cpu" and cpu_speed is not None and cpu_gflops is None)
        else "", overrides=overrides,
    )
    logger.debug("detected hardware: %s", budget)
    return budget


def worker_count(per_worker_gb: float, hw: HardwareBudget | None = None, max_workers: int | None = None,
                 reserve_gb: float = 2.0) -> int:
    """How many worker processes fit: min(cores, floor((available RAM - reserve_gb) / per_worker_gb),
    max_workers), at least 1. Uses ``hw``'s numbers when given, else asks this machine."""
    if not per_worker_gb > 0:
        raise ValueError(f"per_worker_gb must be > 0, got {per_worker_gb!r}")
    cores = hw.cpu_cores if hw is not None else usable_cpu_cores()
    ram = hw.ram_available_gb if hw is not None else available_ram_gb()
    by_ram = int(math.floor(max(0.0, ram - reserve_gb) / per_worker_gb))
    n = min(cores, by_ram)
    if max_workers is not None:
        n = min(n, max_workers)
    n = max(1, n)
    logger.debug("worker_count: %d (cores %d, %.1f GB available, %.2f GB per worker, reserve %.1f GB)",
                 n, cores, ram, per_worker_gb, reserve_gb)
    return n


# --------------------------------------------------------------------------- text

def format_duration(seconds: float) -> str:
    """Seconds -> compact text accepted by :func:`parse_duration`, e.g. 5400 -> "1h30m"."""
    total = int(round(seconds))
    if total <= 0:
        return f"{seconds:g}s"
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v]
    return "".join(parts)


def describe(hw: HardwareBudget) -> list[str]:
    """Human-readable lines about a HardwareBudget, for logs and ``plans_explained.txt``."""
    lines: list[str] = []
    bf16 = "native bf16" if hw.cpu_bf16 else "no native bf16"
    cpu = f"{hw.cpu_cores} core{'s' if hw.cpu_cores != 1 else ''}, " \
          f"{hw.ram_available_gb:.1f} GB of {hw.ram_total_gb:.1f} GB RAM available"
    if hw.cpu_conv_gflops is not None:
        cpu += f", conv throughput {hw.cpu_conv_gflops:.0f} GFLOP/s"
    cpu += f", {bf16}"
    if hw.device == "cuda":
        planned = "--gpu-memory-gb" in hw.overrides
        gpu = f"GPU: {hw.gpu_name}" if hw.gpu_name else "GPU (planned for; none on this machine)"
        if hw.gpu_total_memory_gb is not None:
            gpu += f"{',' if hw.gpu_name else ':'} {hw.gpu_total_memory_gb:.1f} GB total"
        if hw.gpu_free_memory_gb is not None and not planned:
            gpu += f", {hw.gpu_free_memory_gb:.1f} GB free"
        if planned:
            gpu += f" (planned for --gpu-memory-gb {hw.overrides['--gpu-memory-gb']})"
        lines.append(gpu)
        lines.append(f"CPU: {cpu}")
    else:
        lines.append(f"CPU only: {cpu}")
    if hw.overrides:
        lines.append("Overrides: " + ", ".join(f"{k} {v}" for k, v in hw.overrides.items()))
    return lines


_DURATION_RE = re.compile(
    r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Parse a duration into seconds: "90s", "30m", "2h", "1h30m", "1.5h", "1d2h", or a plain number
    (seconds, e.g. "45"). Raises AutosegError listing the accepted forms; the result is > 0."""
    raw = str(text)
    s = raw.strip().lower().replace(" ", "")
    seconds: float | None = None
    try:
        seconds = float(s)
    except ValueError:
        m = _DURATION_RE.match(s)
        if s and m and any(m.group(u) for u in _UNIT_S):
            seconds = sum(float(m.group(u)) * f for u, f in _UNIT_S.items() if m.group(u))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise AutosegError(f"cannot read the duration {raw!r}; expected a positive duration such as "
                           f"'90s', '30m', '2h', '1h30m', '1.5h', '1d' or a plain number of seconds ('45')")
    return seconds
