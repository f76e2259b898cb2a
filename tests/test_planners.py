"""Planners on hand-made fingerprints (no files): known answers, hardware sizing, explain, round trip."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from autoseg.planning.explain import explain_plans
from autoseg.planning.registry import available_planners, get_planner
from autoseg.planning.sampling import forced_foreground_count, patch_holds_median_image
from autoseg.errors import AutosegError
from autoseg.schemas import (CaseFingerprint, Fingerprint, HardwareBudget, IntensityStats, LabelStats, Plans,
                             from_dict, to_dict)


def make_fingerprint(spacings, shapes, *, channels=None, labels=None, ndim=3, relative_size=1.0,
                     component_voxels=500.0, absent=0, name="Dataset999_Test") -> Fingerprint:
    channels = channels or {"0": "MRI"}
    labels = labels or {"background": 0, "organ": 1}
    cases = [CaseFingerprint(f"case_{i:03d}", tuple(sp), tuple(sh), tuple(sh), relative_size,
                             {str(v): 1000 for v in labels.values() if v})
             for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    ids = [c.case_id for c in cases]
    stats = [LabelStats(v, k, {i: (0 if n < absent else 1000) for n, i in enumerate(ids)}, 100.0,
                        {i: 1 for i in ids}, 10, component_voxels, 5000, component_voxels, ids[:absent])
             for k, v in labels.items() if v]
    intensity = [IntensityStats(int(k), n, 40.0 + int(k), 90.0, 35.0, -1000.0, 3000.0, -950.0 + int(k), 1200.0, 5000)
                 for k, n in channels.items()]
    return Fingerprint(1, name, "hash", ndim, channels, labels, cases, intensity, stats, relative_size)


def gpu(gb: float) -> HardwareBudget:
    return HardwareBudget("cuda", "Test GPU", gb, gb, 8, 64.0, 48.0, False)


def cpu(gflops: float | None = 80.0, ram: float = 16.0) -> HardwareBudget:
    """A 2-core CPU machine with ``ram`` GB (the machine's RAM: what a plan is sized against)."""
    return HardwareBudget("cpu", None, None, None, 2, ram, ram, False, gflops)


def hippocampus(relative_size=1.0) -> Fingerprint:
    """Shaped like MSD Task04 Hippocampus: 260 cases of 36 x 50 x 35 voxels at 1 mm."""
    return make_fingerprint([(1.0, 1.0, 1.0)] * 260, [(36, 50, 35)] * 260,
                            labels={"background": 0, "anterior": 1, "posterior": 2}, relative_size=relative_size)


def anisotropic() -> Fingerprint:
    """Thick slices along x (the last array axis): 3.0-6.0 mm vs 0.78 mm in-plane, 24 slices."""
    xs = [3.0, 4.0] + [5.0] * 8
    return make_fingerprint([(0.78, 0.78, x) for x in xs], [(256, 256, 24)] * 10)


def large_ct() -> Fingerprint:
    return make_fingerprint([(1.0, 0.8, 0.8)] * 50, [(400, 512, 512)] * 50, channels={"0": "CT"})


def two_d() -> Fingerprint:
    return make_fingerprint([(999.0, 0.5, 0.5)] * 30, [(1, 512, 512)] * 30, ndim=2, channels={"0": "R", "1": "G"})


FINGERPRINTS = {"hippocampus": hippocampus, "anisotropic": anisotropic, "large_ct": large_ct, "2d": two_d}


def all_decisions(plans: Plans):
    yield from plans.decisions
    for cfg in plans.configurations.values():
        yield from cfg.decisions


def decision(decisions, subject):
    return next(d for d in decisions if d.subject == subject)


# ----------------------------------------------------------------------------------- nnU-Net rules


def test_nnunet_v2_reproduces_known_hippocampus_plan():
    # nnU-Net v2 plans Task04 Hippocampus as 2d [56, 40] batch 366, 3d_fullres [40, 56, 40] batch 9
    plans = get_planner("nnunet_v2").plan(hippocampus(), cpu(), time_budget_s=3600.0)
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    full, flat = plans.configurations["3d_fullres"], plans.configurations["2d"]
    assert full.patch_size == [40, 56, 40] and full.batch_size == 9
    assert full.network.features_per_stage == [32, 64, 128, 256]
    assert flat.patch_size == [56, 40] and flat.batch_size == 366
    assert full.data_identifier == flat.data_identifier  # same preprocessing, one folder
    assert plans.planner == "nnunet_v2"


def test_isotropic_mri_median_spacing_zscore_and_mask_rule_both_ways():
    plans = get_planner("default").plan(hippocampus(relative_size=1.0), gpu(8))
    full = plans.configurations["3d_fullres"]
    assert full.spacing_zyx_mm == pytest.approx([1.0, 1.0, 1.0]) and full.transpose_forward == [0, 1, 2]
    assert full.median_shape_zyx == [36, 50, 35]
    assert [n.scheme for n in full.normalization] == ["zscore"] and not full.normalization[0].use_mask
    masked = get_planner("default").plan(hippocampus(relative_size=0.5), gpu(8))
    assert masked.configurations["3d_fullres"].normalization[0].use_mask
    assert "50%" in decision(masked.decisions, "use_mask_for_norm[0]").reason
    assert full.mirror_axes == [0, 1, 2] and not full.dummy_2d_augmentation
    assert full.foreground_oversample_fraction == pytest.approx(0.33)


def test_anisotropic_rule_transpose_and_kernels():
    plans = get_planner("default").plan(anisotropic(), gpu(8))
    assert decision(plans.decisions, "target_spacing").rule == "anisotropy_10th_percentile"
    full = plans.configurations["3d_fullres"]
    assert full.spacing_zyx_mm == pytest.approx([0.78, 0.78, 3.9])  # 10th percentile of [3, 4, 5 x 8]
    assert full.transpose_forward == [2, 0, 1] and full.transpose_backward == [1, 2, 0]
    assert full.median_shape_zyx == [256, 256, 31]  # 24 slices x 5 mm / 3.9 mm
    kernels = full.network.kernel_sizes
    assert kernels[0] == [1, 3, 3]  # the low-resolution axis, now first, gets kernel 1 at the top
    assert kernels[-1] == [3, 3, 3]
    assert full.network.strides[1][0] == 1  # and is not pooled at the first stage
    flat = plans.configurations["2d"]
    assert flat.patch_size == [256, 256]  # the in-plane (y, x) axes after the transpose
    assert flat.network.dims == 2 and flat.transpose_forward == [2, 0, 1]


def test_2d_data_plans_only_2d_with_the_dummy_axis():
    for budget in (gpu(8), cpu()):
        plans = get_planner("default").plan(two_d(), budget)
        assert list(plans.configurations) == ["2d"]
        cfg = plans.configurations["2d"]
        assert cfg.spacing_zyx_mm[0] == 999.0 and cfg.transpose_forward == [0, 1, 2]
        assert cfg.median_shape_zyx == [1, 512, 512] and len(cfg.patch_size) == 2 and cfg.network.dims == 2
        assert cfg.network.in_channels == 2 and cfg.mirror_axes == [0, 1]
        assert decision(plans.decisions, "configuration[3d_fullres]").value is False


def test_ct_channel_uses_dataset_percentiles_mean_and_std():
    plans = get_planner("default").plan(large_ct(), gpu(8))
    norm = plans.configurations["3d_fullres"].normalization[0]
    assert norm.scheme == "ct" and not norm.use_mask
    assert (norm.clip_low, norm.clip_high, norm.mean, norm.std) == (-950.0, 1200.0, 40.0, 90.0)
    assert "-950" in decision(plans.decisions, "normalization[0]").reason


def test_mixed_ct_and_mri_channels():
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 5, [(64, 64, 64)] * 5, channels={"0": "CT", "1": "T2", "2": "noNorm"},
                          relative_size=0.6)
    plans = get_planner("default").plan(fp, gpu(8))
    norm = plans.configurations["3d_fullres"].normalization
    assert [n.scheme for n in norm] == ["ct", "zscore", "no_norm"]
    assert [n.use_mask for n in norm] == [False, True, False]  # only z-score uses the mask
    assert norm[0].clip_low == -950.0 and norm[1].clip_low is None
    assert plans.configurations["3d_fullres"].network.in_channels == 3


def test_an_rgb_named_channel_with_values_beyond_8_bits_is_refused_at_planning():
    # make_fingerprint's intensities range over [-1000, 3000]: not what 'rgb_to_0_1' (divide by 255) expects
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 5, [(64, 64, 64)] * 5, channels={"0": "rgb_to_0_1"})
    with pytest.raises(AutosegError, match=r"channel 0 'rgb_to_0_1'.*\[-1000, 3000\].*rescale_to_0_1"):
        get_planner("default").plan(fp, gpu(8))


# ----------------------------------------------------------------------------------- configurations


def test_labels_the_lowres_spacing_makes_invisible_are_warned_about():
    # large CT volumes and a CPU's small patch: the lowres search coarsens far (here ~12 x 6 x 6 mm)
    big = [(2.5, 0.7, 0.7)] * 6, [(200, 512, 512)] * 6
    small_objects = make_fingerprint(*big, component_voxels=60.0, channels={"0": "CT"})
    plans = get_planner("default").plan(small_objects, cpu(gflops=50), time_budget_s=1200.0)
    assert "3d_lowres" in plans.configurations
    lost = [w for w in plans.warnings if w.startswith("3d_lowres at")]
    assert len(lost) == 1 and "label(s) 1 (organ: ~60 -> ~0.2 voxels) below 8 voxels" in lost[0]
    large_objects = make_fingerprint(*big, component_voxels=5e6, channels={"0": "CT"})
    plans = get_planner("default").plan(large_objects, cpu(gflops=50), time_budget_s=1200.0)
    assert "3d_lowres" in plans.configurations and not any(w.startswith("3d_lowres at") for w in plans.warnings)


def test_large_image_gets_lowres_and_cascade_with_links():
    plans = get_planner("default").plan(large_ct(), gpu(8))
    assert set(plans.configurations) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    full, low = plans.configurations["3d_fullres"], plans.configurations["3d_lowres"]
    casc = plans.configurations["3d_cascade_fullres"]
    assert math.prod(full.patch_size) / math.prod(full.median_shape_zyx) < 0.25
    assert low.next_stage == "3d_cascade_fullres" and low.previous_stage is None
    assert casc.previous_stage == "3d_lowres" and casc.next_stage is None
    assert casc.network.in_channels == 1 + 1  # image channel + one foreground label
    assert casc.patch_size == full.patch_size and casc.data_identifier == full.data_identifier
    assert all(a > b for a, b in zip(low.spacing_zyx_mm, full.spacing_zyx_mm))
    assert low.data_identifier != full.data_identifier
    assert math.prod(low.patch_size) / math.prod(low.median_shape_zyx) >= 0.25 * 0.9  # median is rounded


def test_small_image_gets_no_lowres():
    plans = get_planner("default").plan(hippocampus(), gpu(8))
    assert "3d_lowres" not in plans.configurations and "3d_cascade_fullres" not in plans.configurations
    d = decision(plans.decisions, "configuration[3d_lowres]")
    assert d.value is False and "25%" in d.reason


# ----------------------------------------------------------------------------------- hardware sizing


@pytest.mark.parametrize("fp_name", sorted(FINGERPRINTS))
def test_more_gpu_memory_never_gives_less_patch_times_batch(fp_name):
    fp = FINGERPRINTS[fp_name]()
    small = get_planner("default").plan(fp, gpu(8))
    big = get_planner("default").plan(fp, gpu(24))
    for name, cfg in small.configurations.items():
        other = big.configurations.get(name, cfg)
        assert math.prod(other.patch_size) * other.batch_size >= math.prod(cfg.patch_size) * cfg.batch_size
    for plans, gb in ((small, 8), (big, 24)):
        for cfg in plans.configurations.values():
            assert cfg.estimated_memory_gb <= gb * 0.9 + 1e-6  # 10 % headroom
            assert cfg.network.features_per_stage[0] == 32


def test_plans_depend_on_the_hardware_class_not_on_momentary_free_memory():
    """Issue 16 item 8: free GPU memory and free RAM change from minute to minute; the plan must not."""
    from autoseg.store import plans_hash

    fp = large_ct()
    idle = HardwareBudget("cuda", "GPU", 24.0, 23.5, 8, 64.0, 60.0, False)
    busy = HardwareBudget("cuda", "GPU", 24.0, 6.0, 8, 64.0, 11.0, False)
    assert plans_hash(get_planner("default").plan(fp, idle)) == plans_hash(get_planner("default").plan(fp, busy))
    quiet_cpu, busy_cpu = cpu(), replace(cpu(), ram_available_gb=1.5)
    assert (plans_hash(get_planner("default").plan(fp, quiet_cpu, time_budget_s=600))
            == plans_hash(get_planner("default").plan(fp, busy_cpu, time_budget_s=600)))
    # what the class is made of still counts: a smaller GPU gives a smaller plan
    small = HardwareBudget("cuda", "GPU", 6.0, 6.0, 8, 64.0, 60.0, False)
    small_plans = get_planner("default").plan(fp, small)
    assert all(cfg.estimated_memory_gb <= 6.0 * 0.9 + 1e-6 for cfg in small_plans.configurations.values())
    assert plans_hash(small_plans) != plans_hash(get_planner("default").plan(fp, idle))


@pytest.mark.parametrize("fp_name", ["hippocampus", "large_ct", "anisotropic"])
def test_cpu_larger_time_budget_gives_more_work_or_iterations(fp_name):
    fp = FINGERPRINTS[fp_name]()
    short = get_planner("default").plan(fp, cpu(), time_budget_s=600)
    long = get_planner("default").plan(fp, cpu(), time_budget_s=6 * 3600)
    for name, cfg in short.configurations.items():
        if name not in long.configurations:
            continue
        other = long.configurations[name]
        it_short = decision(cfg.decisions, "training_iterations").value
        it_long = decision(other.decisions, "training_iterations").value
        assert other.estimated_gflop_per_iteration >= cfg.estimated_gflop_per_iteration or it_long >= it_short
        assert other.network.features_per_stage[0] == 16  # CPU width, recorded with its reason
        assert "width^2" in decision(other.decisions, "features_per_stage").reason


def test_cpu_plan_reaches_minimum_iterations_and_records_estimates():
    plans = get_planner("default").plan(hippocampus(), cpu(gflops=60), time_budget_s=1800)
    for cfg in plans.configurations.values():
        assert decision(cfg.decisions, "training_iterations").value >= 250
        assert cfg.estimated_gflop_per_iteration > 0 and 0 < cfg.estimated_memory_gb < 16 * 0.75
        assert decision(cfg.decisions, "device").value == "cpu"
        assert "s per iteration" in decision(cfg.decisions, "compute").reason
    assert not any("iterations fit" in w for w in plans.warnings)


def test_cpu_defaults_are_said_and_tiny_budget_warns():
    plans = get_planner("default").plan(large_ct(), cpu(gflops=None), time_budget_s=None)
    reason = decision(plans.configurations["3d_fullres"].decisions, "device").reason
    assert "20 minutes assumed" in reason and "50 GFLOP/s assumed" in reason
    tiny = get_planner("default").plan(large_ct(), cpu(gflops=5), time_budget_s=20)
    assert any("--time-budget" in w for w in tiny.warnings)


def test_cpu_ram_limit_shrinks_the_patch():
    roomy = get_planner("default").plan(large_ct(), cpu(gflops=1000, ram=64.0), time_budget_s=10 ** 7)
    tight = get_planner("default").plan(large_ct(), cpu(gflops=1000, ram=2.0), time_budget_s=10 ** 7)
    a, b = roomy.configurations["3d_fullres"], tight.configurations["3d_fullres"]
    assert math.prod(b.patch_size) * b.batch_size < math.prod(a.patch_size) * a.batch_size
    assert b.estimated_memory_gb <= 2.0 * 0.75


# ----------------------------------------------------------------------------------- warnings and explain


def test_label_warnings():
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 10, [(64, 64, 64)] * 10, component_voxels=20.0, absent=3)
    warnings = get_planner("default").plan(fp, gpu(8)).warnings
    assert any("absent in 3 of 10 cases" in w for w in warnings)
    assert any("tiny objects" in w and "foreground_oversampling[3d_fullres]" in w for w in warnings)
    assert not any("consider raising" in w for w in warnings)  # measured not to help: no longer advised
    assert not get_planner("default").plan(hippocampus(), gpu(8)).warnings
    never = make_fingerprint([(1.0, 1.0, 1.0)] * 10, [(64, 64, 64)] * 10, absent=10)
    warnings = get_planner("default").plan(never, gpu(8)).warnings
    assert any("absent in every training case" in w and "can never learn it" in w for w in warnings)
    assert not any("less often" in w for w in warnings)


def test_every_configuration_explains_its_foreground_sampling():
    small = make_fingerprint([(1.0, 1.0, 1.0)] * 10, [(64, 64, 64)] * 10, component_voxels=20.0)
    plans = get_planner("default").plan(small, cpu(gflops=200), time_budget_s=600.0)
    for name, cfg in plans.configurations.items():
        d = decision(plans.decisions, f"foreground_oversampling[{name}]")
        assert d.value == cfg.foreground_oversample_fraction
        # the count the data loader will force (nnU-Net's rounding, at least 1 from batch 2 on)
        assert d.inputs["forced_samples"] == forced_foreground_count(cfg.batch_size, cfg.foreground_oversample_fraction)
        assert f"{d.inputs['forced_samples']} of {cfg.batch_size} samples" in d.reason
        assert d.inputs["tiny_object_labels"] == [1] and "tiny objects" in d.reason and "0.8226" in d.reason
    big = get_planner("default").plan(hippocampus(), gpu(8))
    d = decision(big.decisions, "foreground_oversampling[3d_fullres]")
    assert d.inputs["tiny_object_labels"] == [] and "tiny objects" not in d.reason


def test_a_patch_that_holds_the_whole_image_is_said_to():
    plans = get_planner("default").plan(hippocampus(), gpu(8))
    cfg = plans.configurations["3d_fullres"]
    whole = replace(cfg, median_shape_zyx=[1, 1, 1])
    part = replace(cfg, median_shape_zyx=[p + 1 for p in cfg.patch_size])
    assert patch_holds_median_image(whole) and not patch_holds_median_image(part)
    # a 2D patch sees the whole image only when the image is one slice (else the slice still matters)
    flat = replace(plans.configurations["2d"], median_shape_zyx=[1, 8, 8], transpose_forward=[0, 1, 2])
    assert patch_holds_median_image(flat)
    assert not patch_holds_median_image(replace(flat, median_shape_zyx=[500, 8, 8]))


def test_explain_lists_hardware_decisions_summaries_and_warnings():
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 10, [(64, 64, 64)] * 10, component_voxels=20.0, absent=3)
    plans = get_planner("default").plan(fp, cpu(), time_budget_s=3600.0)
    text = "\n".join(explain_plans(plans))
    assert "Hardware planned for: CPU only, 2 cores" in text
    assert "Configuration 3d_fullres (3D):" in text and "GFLOP per iteration" in text
    assert "target_spacing [median_spacing]" in text and "Warnings (" in text
    assert "Warnings: none" in "\n".join(explain_plans(get_planner("default").plan(hippocampus(), gpu(8))))


# ----------------------------------------------------------------------------------- every planner


@pytest.mark.parametrize("planner_name", sorted(available_planners()))
@pytest.mark.parametrize("fp_name", sorted(FINGERPRINTS))
def test_every_registered_planner_plans_and_round_trips(planner_name, fp_name):
    fp = FINGERPRINTS[fp_name]()
    for budget in (gpu(8), cpu()):
        plans = get_planner(planner_name).plan(fp, budget)
        assert plans.planner == planner_name and plans.configurations
        data = json.loads(json.dumps(to_dict(plans)))
        again = from_dict(Plans, data, where="plans.json")
        assert to_dict(again) == data
        assert again.configurations.keys() == plans.configurations.keys()
        for d in all_decisions(plans):
            assert d.reason.strip() and d.rule.strip() and d.subject.strip()
        for cfg in plans.configurations.values():
            assert cfg.batch_size >= 2 and len(cfg.patch_size) == cfg.dims
            assert all(p % (2 ** sum(st[a] == 2 for st in cfg.network.strides)) == 0
                       for a, p in enumerate(cfg.patch_size))
