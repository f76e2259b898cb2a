"""Hardware detection: overrides, cgroup limits, worker counts, durations. No GPU needed."""
from __future__ import annotations

import math

import pytest

from autoseg import hardware
from autoseg.errors import AutosegError
from autoseg.hardware import (cgroup_cpu_limit, cgroup_memory_gb, cpu_has_bf16, describe, detect_hardware,
                              format_duration, parse_duration, usable_cpu_cores,
                              worker_count)
from autoseg.schemas import HardwareBudget, from_dict, to_dict
from autoseg.training.speed_probe import measure_cpu_conv_gflops

GIB = 2**30


def _budget(**kw) -> HardwareBudget:
    base = dict(device="cpu", gpu_name=None, gpu_total_memory_gb=None, gpu_free_memory_gb=None, cpu_cores=8,
                ram_total_gb=16.0, ram_available_gb=10.0, cpu_bf16=False)
    base.update(kw)
    return HardwareBudget(**base)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_gpu_memory_override_plans_for_a_gpu_on_any_machine():
    hw = detect_hardware(gpu_memory_gb=8)
    assert hw.device == "cuda"
    assert hw.gpu_total_memory_gb == 8.0 and hw.gpu_free_memory_gb == 8.0
    assert hw.overrides == {"--gpu-memory-gb": "8"}
    assert hw.cpu_cores >= 1 and hw.ram_available_gb > 0
    assert hw.cpu_conv_gflops is None  # only measured when planning for the CPU
    assert from_dict(HardwareBudget, to_dict(hw)) == hw  # plain data, round-trips through JSON
    text = "\n".join(describe(hw))
    assert "8.0 GB" in text and "--gpu-memory-gb 8" in text


def test_cpu_device_override():
    hw = detect_hardware(device="CPU")
    assert hw.device == "cpu"
    assert hw.gpu_name is None and hw.gpu_total_memory_gb is None
    assert hw.overrides == {"--device": "cpu"}
    assert usable_cpu_cores() >= 1
    lines = describe(hw)
    assert lines[0].startswith(f"CPU only: {hw.cpu_cores} core")
    assert "no native bf16" in lines[0] or "native bf16" in lines[0]


@pytest.mark.parametrize("seconds", [0.0, -5.0, float("nan"), float("inf")])
def test_a_time_budget_must_be_a_positive_duration(seconds):
    from autoseg.planning.base import check_time_budget

    assert check_time_budget(5400) == 5400.0 and check_time_budget(None) is None
    with pytest.raises(AutosegError, match="positive duration"):
        check_time_budget(seconds)


@pytest.mark.parametrize("kwargs, words", [
    (dict(device="gpu"), "cuda"),
    (dict(device="cpu", gpu_memory_gb=8), "--device cpu"),
    (dict(gpu_memory_gb=-1), "positive"),
    (dict(gpu_memory_gb=float("nan")), "positive"),
])
def test_bad_requests_say_what_to_do(kwargs, words):
    with pytest.raises(AutosegError, match=words.replace("-", r"\-")):
        detect_hardware(**kwargs)


def test_cuda_without_a_gpu_points_to_gpu_memory_flag():
    if _cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AutosegError, match="gpu-memory-gb"):
        detect_hardware(device="cuda")


def test_measured_conv_throughput_is_positive_and_restores_threads():
    import torch

    before = torch.get_num_threads()
    gflops = measure_cpu_conv_gflops(1, max_seconds=0.1)
    assert math.isfinite(gflops) and 0.1 < gflops < 1e5
    assert torch.get_num_threads() == before


def test_cgroup_v2_cpu_and_memory(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(str(4 * GIB))
    (tmp_path / "memory.current").write_text(str(3 * GIB))
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {GIB}\nactive_file 5\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    assert usable_cpu_cores(tmp_path) == 1  # 1.5 cores of quota: one full core
    limit, available = cgroup_memory_gb(tmp_path)
    assert limit == pytest.approx(4.0) and available == pytest.approx(2.0)
    total, avail = hardware.ram_gb(tmp_path)
    assert total <= 4.0 and avail <= 2.0


def test_cgroup_unlimited_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_memory_gb(tmp_path) is None

    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(8 * GIB))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(2 * GIB))
    (v1 / "memory" / "memory.stat").write_text(f"inactive_file 7\ntotal_inactive_file {GIB}\n")
    assert cgroup_cpu_limit(v1) == pytest.approx(3.0)
    assert usable_cpu_cores(v1) <= 3
    limit, available = cgroup_memory_gb(v1)
    assert limit == pytest.approx(8.0) and available == pytest.approx(7.0)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1 "unlimited"
    assert cgroup_memory_gb(v1) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_cpu_bf16_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert cpu_has_bf16(info)
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_worker_count_bounds():
    hw = _budget(cpu_cores=8, ram_available_gb=10.0)
    assert worker_count(2.0, hw) == 4  # (10 - 2) / 2
    assert worker_count(2.0, hw, max_workers=3) == 3
    assert worker_count(0.5, hw) == 8  # capped by cores
    assert worker_count(100.0, hw) == 1  # never below one
    assert worker_count(1.0, _budget(ram_available_gb=1.0)) == 1  # less RAM than the reserve
    assert worker_count(1.0, hw, reserve_gb=0.0) == 8
    assert 1 <= worker_count(0.01) <= usable_cpu_cores()  # this machine
    with pytest.raises(ValueError):
        worker_count(0.0, hw)


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1h30m", 5400.0), ("45", 45.0), ("1.5h", 5400.0),
    (" 1h 30m 15s ", 5415.0), ("1d", 86400.0), ("30min", 1800.0), ("2.5", 2.5), ("10M", 600.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "h", "-5", "0", "0m", "30m1h", "1e999"])
def test_parse_duration_rejects_with_accepted_forms(text):
    with pytest.raises(AutosegError, match="1h30m"):
        parse_duration(text)


def test_format_duration_round_trips():
    for s in (45, 90, 1800, 5400, 5415, 90061):
        assert parse_duration(format_duration(s)) == s
    assert format_duration(5400) == "1h30m"
