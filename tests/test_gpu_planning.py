"""GPU-true planning and training logic, tested on the CPU with injected measurements (issue 12): patch and
batch fitted to a measured peak memory (shrink, grow, headroom, --gpu-memory-gb, out of memory), the
precision choice on CUDA, and the loader's waiting share. The GPU path itself is verified only by
benchmarks/gpu_check.py on a GPU."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autoseg.planning.measured import GPU_MEMORY_HEADROOM, MAX_PROBES, fit_to_measured_memory
from autoseg.planning.memory import conv_feature_map_size
from autoseg.training.precision import cuda_precision
from autoseg.usecases.plan import plan_dataset
from tests.synthetic import make_synthetic_dataset


def fake_gpu(fixed_gb: float = 0.8, bytes_per_element: float = 6.0, oom_above_gb: float | None = None):
    """A made-up GPU: peak = fixed + batch x feature-map elements x bytes (what the proxy counts), and 'out of
    memory' (inf) above ``oom_above_gb``. Records every call."""
    calls = []

    def measure(cfg) -> float:
        peak = fixed_gb + cfg.batch_size * conv_feature_map_size(cfg.network, cfg.patch_size) * bytes_per_element / 2**30
        calls.append((list(cfg.patch_size), cfg.batch_size))
        return math.inf if oom_above_gb is not None and peak > oom_above_gb else peak

    measure.calls = calls
    return measure


@pytest.fixture(scope="module")
def planned_cuda(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    ds = make_synthetic_dataset(root / "Dataset065_Gpu", n_cases=8, shape=(32, 64, 64), spacing_zyx=(2.0, 1.0, 1.0))
    gpu = fake_gpu()
    result = plan_dataset(ds, root / "run", device="cuda", gpu_memory_gb=8, progress=False, num_workers=1,
                          measure_cpu=False, measure_memory=gpu)
    return result.plans, gpu, ds, root


def test_the_dry_run_keeps_every_configuration_under_the_target_with_headroom(planned_cuda):
    plans, gpu, _, _ = planned_cuda
    target = 8 * GPU_MEMORY_HEADROOM
    assert gpu.calls, "no dry run was made"
    for cfg in plans.configurations.values():
        d = [x for x in cfg.decisions if x.subject == "measured_memory"]
        if cfg.previous_stage:
            continue
        assert d and d[0].rule == "gpu_dry_run"
        assert cfg.estimated_memory_gb <= target  # the measured figure of the final patch and batch
        assert cfg.estimated_memory_gb == pytest.approx(gpu(cfg), abs=1e-3)
        assert len(d[0].inputs["probes"]) <= MAX_PROBES


def test_a_small_gpu_shrinks_the_patch_and_a_large_one_grows_the_batch_to_the_dataset_cap(planned_cuda):
    plans, _, _, _ = planned_cuda
    cfg = plans.configuration("3d_fullres")
    small = fit_to_measured_memory(cfg, fake_gpu(), 0.95, num_cases=8)
    assert math.prod(small.config.patch_size) < math.prod(cfg.patch_size) or small.config.batch_size < cfg.batch_size
    assert small.measured_gb <= 0.95 and small.config.batch_size == 2
    big = fit_to_measured_memory(cfg, fake_gpu(), 140 * GPU_MEMORY_HEADROOM, num_cases=8)
    cap = big.decision.inputs["batch_cap"]
    assert big.config.batch_size == cap >= 2 and big.measured_gb <= 140 * GPU_MEMORY_HEADROOM
    assert "stay unused" in big.decision.reason and "5%" in big.decision.reason  # what the extra memory bought
    many = fit_to_measured_memory(cfg, fake_gpu(), 140 * GPU_MEMORY_HEADROOM, num_cases=2000)
    assert many.config.batch_size > cap  # a large dataset lets the batch use the memory


def test_out_of_memory_and_an_optimistic_line_end_under_the_target(planned_cuda):
    plans, _, _, _ = planned_cuda
    cfg = replace(plans.configuration("3d_fullres"))
    gpu = fake_gpu(oom_above_gb=3.0)
    fit = fit_to_measured_memory(cfg, gpu, 6.0, num_cases=4000)  # the line says 6 GB fit; beyond 3 GB it is OOM
    assert fit.measured_gb <= 3.0 and math.isfinite(fit.measured_gb)
    assert len(fit.probes) <= MAX_PROBES


def test_a_cpu_plan_is_never_dry_run_and_cuda_without_a_gpu_says_so(tmp_path, planned_cuda):
    _, _, ds, root = planned_cuda
    cpu = plan_dataset(ds, tmp_path / "cpu", device="cpu", progress=False, num_workers=1, measure_cpu=False,
                       cpu_gflops=100, measure_memory=lambda cfg: pytest.fail("measured on a CPU plan"))
    assert not any(d.subject == "measured_memory" for c in cpu.plans.configurations.values() for d in c.decisions)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU message is not shown")
    proxy_only = plan_dataset(ds, tmp_path / "proxy", device="cuda", gpu_memory_gb=8, progress=False, num_workers=1,
                              measure_cpu=False)
    assert [d.rule for d in proxy_only.plans.decisions if d.subject == "measured_memory"] == ["no_gpu_here"]


def test_precision_on_cuda_is_bf16_where_supported_else_fp16_with_a_scaler():
    assert cuda_precision(True)[0] == "bf16" and "no gradient scaler" in cuda_precision(True)[1]
    assert cuda_precision(False)[0] == "fp16" and "scaler" in cuda_precision(False)[1]


def test_the_loader_is_sized_from_the_cores_and_ram_present_and_pins_memory_on_cuda(planned_cuda, monkeypatch):
    import autoseg.hardware as hardware
    from autoseg.usecases.train import _augmentation_worker_gb, default_training_settings

    plans, _, _, _ = planned_cuda
    cfg = plans.configuration("3d_fullres")
    monkeypatch.setattr(hardware, "usable_cpu_cores", lambda: 16)
    monkeypatch.setattr(hardware, "available_ram_gb", lambda: 128.0)
    big = default_training_settings(plans, cfg, "0", device="cuda")
    assert big["num_workers"] == 12 and big["precision"] == "auto"  # nnU-Net's cap of 12; cores - 1 = 15
    per_worker = _augmentation_worker_gb(cfg)
    monkeypatch.setattr(hardware, "available_ram_gb", lambda: 2.0 + 3.5 * per_worker)
    assert default_training_settings(plans, cfg, "0", device="cuda")["num_workers"] == 3  # what the RAM holds
    monkeypatch.setattr(hardware, "usable_cpu_cores", lambda: 2)
    assert default_training_settings(plans, cfg, "0", device="cpu")["num_workers"] == 0  # cores for the network
    from autoseg.schemas import TrainingSettings, from_dict
    from autoseg.training import batch_iterator

    seen = {}
    monkeypatch.setattr(batch_iterator, "make_batch_iterator",
                        lambda loader, transforms, n, seed, pin_memory=False: seen.setdefault(len(seen), pin_memory))
    settings = from_dict(TrainingSettings, {**big, "device": "cuda", "num_workers": 0})
    from autoseg.store import RunStore
    from autoseg.training.splits import fold_cases

    store = RunStore(planned_cuda[3] / "run")
    train_ids, val_ids = fold_cases(store.splits(), "0")
    batch_iterator.make_training_iterators(store.wd.preprocessed_dir(cfg.data_identifier), cfg, settings, train_ids,
                                           val_ids, [[1.0, 1.0, 1.0]], 0)
    assert seen == {0: True, 1: False}  # training batches pinned for non-blocking copies; validation in-process


def test_channels_last_is_kept_only_when_it_measures_at_least_3_percent_faster():
    from autoseg.training.gpu_kernels import choose_memory_format

    assert choose_memory_format({"contiguous": 0.100, "channels_last": 0.080})[0] is True
    use, reason = choose_memory_format({"contiguous": 0.100, "channels_last": 0.099})
    assert use is False and "does not save 3 %" in reason and "0.0990 s/step" in reason


def test_the_nnunet_v2_baseline_is_never_dry_run(tmp_path, planned_cuda):
    """The baseline planner reproduces nnU-Net's plan for its fixed 8 GB target on any machine: no dry run on
    the GPU that is here corrects it (the default planner's is, above)."""
    _, _, ds, _ = planned_cuda
    result = plan_dataset(ds, tmp_path / "nn", device="cuda", gpu_memory_gb=140, planner="nnunet_v2", progress=False,
                          num_workers=1, measure_cpu=False,
                          measure_memory=lambda cfg: pytest.fail("the nnunet_v2 baseline was dry-run"))
    assert not any(d.subject == "measured_memory" for d in result.plans.decisions)
    for cfg in result.plans.configurations.values():
        assert not any(d.subject == "measured_memory" for d in cfg.decisions)
        assert next(d for d in cfg.decisions if d.subject == "device").rule == "nnunet_fixed_8gb_target"
