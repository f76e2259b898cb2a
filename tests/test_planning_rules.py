"""Known-answer tests of the pure planning helpers (spacing, topology, memory, data identifiers)."""
from __future__ import annotations

import pytest

from autoseg.planning.base import data_identifier, normalization_scheme_for
from autoseg.preprocessing.identity import preprocessing_hash
from autoseg.planning.memory import (conv_feature_map_size, estimate_gpu_memory_gb, estimate_training_ram_gb,
                                     estimated_seconds_per_iteration_cpu, gflop_per_iteration, num_parameters)
from autoseg.planning.spacing import (fullres_target_spacing, inverse_permutation, lowres_spacing_step,
                                      median_resampled_shape, resampled_shape, transpose_order)
from autoseg.planning.topology import (build_network_spec, features_per_stage, initial_patch_size, pad_to_divisible,
                                       pool_and_conv_props, shrink_patch_once)
from autoseg.schemas import ChannelNormalization, ResamplingSpec

# ----------------------------------------------------------------------------------- spacing


def test_median_spacing_when_isotropic():
    spacings = [(1.0, 1.0, 1.0), (1.2, 0.9, 0.9), (0.8, 1.1, 1.1)]
    shapes = [(100, 120, 120)] * 3
    value, d = fullres_target_spacing(spacings, shapes)
    assert value == pytest.approx([1.0, 1.0, 1.0])
    assert d.rule == "median_spacing" and d.subject == "target_spacing"
    assert "median" in d.reason and "not >" in d.reason


def test_anisotropy_rule_uses_10th_percentile():
    # z median 5.0 > 3 x 0.78 and 20 slices x 3 < 256 -> z = 10th percentile of [2, 3, 4, 5 x 7] = 2.9
    z = [2.0, 3.0, 4.0] + [5.0] * 7
    spacings = [(s, 0.78, 0.78) for s in z]
    shapes = [(20, 256, 256)] * 10
    value, d = fullres_target_spacing(spacings, shapes)
    assert value == pytest.approx([2.9, 0.78, 0.78])
    assert d.rule == "anisotropy_10th_percentile"
    assert "5 mm > 3 x 0.78 mm" in d.reason and "20 slices x 3 < 256" in d.reason and "2.9" in d.reason


def test_anisotropy_rule_never_goes_below_the_other_axes():
    z = [0.8, 0.9] + [4.0] * 8  # 10th percentile 0.89 < in-plane 1.0
    value, d = fullres_target_spacing([(s, 1.0, 1.0) for s in z], [(20, 200, 200)] * 10)
    assert value[0] == pytest.approx(1.0, abs=1e-4) and value[0] > 1.0
    assert "raised to the largest other spacing" in d.reason


def test_anisotropic_spacing_but_many_slices_keeps_median():
    value, d = fullres_target_spacing([(5.0, 0.78, 0.78)] * 4, [(100, 256, 256)] * 4)
    assert value == pytest.approx([5.0, 0.78, 0.78])
    assert d.rule == "median_spacing" and "100 slices x 3 >= 256" in d.reason


def test_2d_spacing_keeps_dummy_axis():
    value, d = fullres_target_spacing([(999.0, 0.5, 0.5), (999.0, 0.7, 0.7), (999.0, 0.6, 0.6)], [(1, 64, 64)] * 3,
                                      ndim=2)
    assert value == pytest.approx([999.0, 0.6, 0.6]) and d.rule == "median_spacing_2d"


def test_transpose_puts_coarsest_axis_first_and_is_stable_on_ties():
    fwd, d = transpose_order([0.78, 0.78, 3.0])
    assert fwd == [2, 0, 1] and inverse_permutation(fwd) == [1, 2, 0] and "x" in d.reason
    assert transpose_order([1.0, 1.0, 1.0])[0] == [0, 1, 2]
    assert transpose_order([0.5, 2.0, 2.0])[0] == [1, 0, 2]  # tie between y and x: the first wins
    fwd2d, d2d = transpose_order([999.0, 0.5, 0.5])
    assert fwd2d == [0, 1, 2] and d2d.rule == "dummy_axis_first"


def test_resampled_shapes_and_lowres_step():
    assert resampled_shape([10, 100, 100], [5.0, 0.5, 0.5], [2.5, 1.0, 1.0]) == [20, 50, 50]
    assert resampled_shape([1, 64, 64], [999.0, 1.0, 1.0], [999.0, 2.0, 2.0]) == [1, 32, 32]
    med = median_resampled_shape([(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.0, 1.0)],
                                 [(10, 20, 30), (10, 20, 30), (30, 20, 30)], [1.0, 1.0, 1.0])
    assert med == [20.0, 20.0, 30.0]
    # in-plane axes are > 2x finer than z: only they are raised; then all axes together
    assert lowres_spacing_step([3.0, 1.0, 1.0]) == pytest.approx([3.0, 1.03, 1.03])
    assert lowres_spacing_step([1.0, 1.0, 1.5]) == pytest.approx([1.03, 1.03, 1.545])


# ----------------------------------------------------------------------------------- topology


def test_pool_and_conv_props_isotropic_known_answer():
    # nnU-Net's Hippocampus 3d_fullres: median 36 x 50 x 35 at 1 mm -> 3 poolings, patch 40 x 56 x 40
    kernels, strides, patch, div = pool_and_conv_props([1.0, 1.0, 1.0], [36, 50, 35])
    assert patch == [40, 56, 40] and div == [8, 8, 8]
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4


def test_pool_and_conv_props_anisotropic_known_answer():
    kernels, strides, patch, div = pool_and_conv_props([4.0, 1.0, 1.0], [16, 64, 64])
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert div == [4, 16, 16] and patch == [16, 64, 64]


def test_pad_initial_patch_and_shrink():
    assert pad_to_divisible([36, 50, 35], [8, 8, 8]) == [40, 56, 40]
    assert pad_to_divisible([32, 7], [16, 1]) == [32, 7]
    assert initial_patch_size([1.0, 1.0, 1.0], [500, 500, 500]) == [256, 256, 256]
    assert initial_patch_size([2.0, 1.0, 1.0], [500, 500, 500]) == [161, 323, 323]
    assert initial_patch_size([1.0, 1.0, 1.0], [36, 50, 35.5]) == [36, 50, 36]  # clipped (rounded up)
    assert initial_patch_size([1.0, 1.0], [5000, 100]) == [2048, 100]
    # the axis with the largest patch/median ratio (x: 64/64) shrinks; the step is recomputed for
    # 64 - 16 = 48 (3 poolings -> 8), so 56 is not skipped
    new, axis = shrink_patch_once([1.0, 1.0, 1.0], [64, 64, 64], [128, 128, 64], [16, 16, 16])
    assert axis == 2 and new == [64, 64, 56]
    # a floor on x sends the shrink to the next axis by ratio (ties: the last axis first)
    new, axis = shrink_patch_once([1.0, 1.0, 1.0], [64, 64, 64], [128, 128, 64], [16, 16, 16], floor=[1, 1, 64])
    assert axis == 1 and new == [64, 56, 64]
    assert shrink_patch_once([1.0], [4], [4], [1], floor=[4]) is None


def test_features_and_network_spec():
    assert features_per_stage(7, 32, 320) == [32, 64, 128, 256, 320, 320, 320]
    spec = build_network_spec(3, 2, 3, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], 16, 256)
    assert spec.features_per_stage == [16, 32, 64]
    assert spec.n_conv_per_stage_encoder == [2, 2, 2] and spec.n_conv_per_stage_decoder == [2, 2]
    assert spec.in_channels == 2 and spec.num_classes == 3 and spec.dims == 3


# ----------------------------------------------------------------------------------- memory and compute


def _tiny_spec():
    return build_network_spec(2, 1, 3, [[3, 3], [3, 3]], [[1, 1], [2, 2]], 4, 512)


def test_feature_map_proxy_known_answer():
    # encoder 2*4*64 + 2*8*16; decoder 2*4*64 convs + 4*64 transposed conv + 3*64 segmentation
    assert conv_feature_map_size(_tiny_spec(), [8, 8]) == 512 + 256 + 512 + 256 + 192


def test_gflop_known_answer():
    flops = (2 * 9 * 1 * 4 * 64 + 2 * 9 * 4 * 4 * 64 + 2 * 9 * 4 * 8 * 16 + 2 * 9 * 8 * 8 * 16  # encoder
             + 2 * 4 * 8 * 4 * 16 + 2 * 9 * 8 * 4 * 64 + 2 * 9 * 4 * 4 * 64 + 2 * 4 * 3 * 64)  # decoder
    assert gflop_per_iteration(_tiny_spec(), [8, 8], 2) == pytest.approx(flops * 3 * 2 / 1e9)
    double = 2 * gflop_per_iteration(_tiny_spec(), [8, 8], 2)
    assert gflop_per_iteration(_tiny_spec(), [8, 8], 4) == pytest.approx(double)


def test_parameters_memory_and_time():
    # convs: 1*4*9+4, 4*4*9+4, 4*8*9+8, 8*8*9+8; norms 2*(4+4+8+8); transposed 8*4*4+4; decoder
    # convs 8*4*9+4, 4*4*9+4, norms 2*(4+4); seg head 4*3+3
    expected = (40 + 148 + 296 + 584 + 48) + 132 + (292 + 148 + 16) + 15
    assert num_parameters(_tiny_spec()) == expected
    assert estimate_gpu_memory_gb(560e6, 2, 3) == pytest.approx(8.0)
    assert estimate_gpu_memory_gb(85e6, 12, 2) == pytest.approx(8.0)
    assert estimate_gpu_memory_gb(280e6, 2, 3) == pytest.approx(4.0)
    small = estimate_training_ram_gb(_tiny_spec(), [8, 8], 2)
    assert estimate_training_ram_gb(_tiny_spec(), [64, 64], 2) > small > 0
    assert estimated_seconds_per_iteration_cpu(100.0, 50.0) == pytest.approx(3.2)
    with pytest.raises(ValueError):
        estimated_seconds_per_iteration_cpu(1.0, 0.0)


# ----------------------------------------------------------------------------------- identifiers and mapping


def test_data_identifier_is_readable_and_content_derived():
    norm = [ChannelNormalization(0, "MRI", "zscore", True)]
    a = data_identifier([1.0, 0.79, 0.79], [0, 1, 2], norm, ResamplingSpec())
    assert a.startswith("s1.00x0.79x0.79_") and len(a.split("_")[-1]) == 8
    assert a == data_identifier([1.0, 0.79, 0.79], [0, 1, 2], norm, ResamplingSpec())
    assert a != data_identifier([1.0, 0.79, 0.79], [0, 1, 2], [ChannelNormalization(0, "MRI", "zscore", False)],
                                ResamplingSpec())
    assert a != data_identifier([1.0, 0.79, 0.79], [0, 2, 1], norm, ResamplingSpec())
    assert a != data_identifier([1.0, 0.79, 0.79], [0, 1, 2], norm, ResamplingSpec(image_order=1))


def test_preprocessing_hash_ignores_training_fields():
    from dataclasses import replace

    from autoseg.schemas import ConfigurationPlan

    norm = [ChannelNormalization(0, "CT", "ct", False, -100.0, 300.0, 50.0, 80.0)]
    plan = ConfigurationPlan(name="3d_fullres", data_identifier="x", dims=3, spacing_zyx_mm=[1.0, 1.0, 1.0],
                             transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], median_shape_zyx=[8, 8, 8],
                             patch_size=[8, 8, 8], batch_size=2, normalization=norm, resampling=ResamplingSpec(),
                             network=_tiny_spec(), foreground_oversample_fraction=0.33, mirror_axes=[0, 1, 2],
                             dummy_2d_augmentation=False, estimated_memory_gb=1.0, estimated_gflop_per_iteration=1.0)
    h = preprocessing_hash(plan)
    assert h == preprocessing_hash(replace(plan, batch_size=7, patch_size=[16, 16, 16]))
    assert h != preprocessing_hash(replace(plan, spacing_zyx_mm=[2.0, 1.0, 1.0]))


@pytest.mark.parametrize("name, scheme", [("CT", "ct"), ("ct", "ct"), ("noNorm", "no_norm"), ("nonorm", "no_norm"),
                                          ("rescale_to_0_1", "rescale_0_1"), ("rgb_to_0_1", "rgb_0_1"),
                                          ("T2", "zscore"), ("MRI", "zscore"), ("zscore", "zscore")])
def test_channel_name_mapping(name, scheme):
    assert normalization_scheme_for(name) == scheme
