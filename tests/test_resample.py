"""Resampling: shapes, separate-z decisions, known answers on constant / ramp images and labels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autoseg.preprocessing.resample import (_resample_along_axis, compute_new_shape, resample_data,
                                            resample_probabilities, resample_segmentation,
                                            separate_z_axis)


def test_compute_new_shape_rounds_and_keeps_at_least_one():
    assert compute_new_shape([10, 20, 30], [2.0, 1.0, 1.0], [1.0, 1.0, 2.0]) == [20, 20, 15]
    assert compute_new_shape([3, 7, 7], [1.0, 1.0, 1.0], [10.0, 3.0, 1.5]) == [1, 2, 5]  # 0.3 -> min 1


def test_compute_new_shape_never_resamples_the_2d_dummy_axis():
    assert compute_new_shape([1, 100, 50], [999.0, 0.5, 0.5], [1.0, 1.0, 0.25]) == [1, 50, 100]
    assert compute_new_shape([1, 100, 50], [999.0, 0.5, 0.5], [999.0, 0.5, 0.5]) == [1, 100, 50]


def test_separate_z_decisions():
    assert separate_z_axis([1.0, 1.0, 1.0], [1.5, 1.5, 1.5]) is None  # isotropic both
    assert separate_z_axis([5.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == 0  # anisotropic source
    assert separate_z_axis([1.0, 1.0, 4.0], [1.0, 1.0, 1.0]) == 2
    assert separate_z_axis([1.0, 1.0, 1.0], [1.0, 3.5, 1.0]) == 1  # target-only anisotropy
    assert separate_z_axis([0.24, 1.25, 1.25], [1.0, 1.0, 1.0]) is None  # low-res axis not unique
    assert separate_z_axis([2.9, 1.0, 1.0], [1.0, 1.0, 1.0]) is None  # below the threshold
    assert separate_z_axis([5.0, 1.0, 1.0], [1.0, 1.0, 1.0], threshold=6.0) is None


@pytest.mark.parametrize("old,new", [([1.0, 1.0, 1.0], [0.7, 1.3, 0.8]),  # plain 3D
                                     ([5.0, 1.0, 1.0], [2.0, 0.8, 0.8])])  # separate z
def test_constant_image_stays_constant(old, new):
    data = np.full((2, 6, 9, 8), 3.5, dtype=np.float32)
    data[1] = -2.0
    shape = compute_new_shape(data.shape[1:], old, new)
    out = resample_data(data, shape, old, new)
    assert out.dtype == np.float32 and list(out.shape[1:]) == shape
    np.testing.assert_allclose(out[0], 3.5, atol=1e-5)
    np.testing.assert_allclose(out[1], -2.0, atol=1e-5)


def test_linear_ramp_is_reproduced_inside_the_volume():
    # x ramp, x-spacing 1 mm -> 0.5 mm: output sample i lies at input x = (i + 0.5) / 2 - 0.5
    x = np.arange(40, dtype=np.float32)
    data = np.broadcast_to(x, (1, 3, 4, 40)).copy()
    expected = (np.arange(80) + 0.5) / 2 - 0.5
    lin = resample_data(data, [3, 4, 80], [1.0, 1.0, 1.0], [1.0, 1.0, 0.5], order=1)
    np.testing.assert_allclose(lin[0, 1, 2, 1:79], expected[1:79], atol=1e-4)  # exact off the clamped edge
    cubic = resample_data(data, [3, 4, 80], [1.0, 1.0, 1.0], [1.0, 1.0, 0.5], order=3)
    np.testing.assert_allclose(cubic[0, 1, 2, 20:60], expected[20:60], atol=1e-3)  # edge effect decays


def test_separate_z_uses_nearest_along_the_low_res_axis():
    data = np.zeros((1, 3, 4, 4), dtype=np.float32)
    data[0, 0], data[0, 1], data[0, 2] = 1.0, 5.0, 9.0
    out = resample_data(data, [6, 4, 4], [6.0, 1.0, 1.0], [3.0, 1.0, 1.0])
    # nearest along z: every output slice equals one input slice value, nothing in between
    assert set(np.unique(out).round(5)) == {1.0, 5.0, 9.0}
    np.testing.assert_allclose(out[0, :, 0, 0], [1, 1, 5, 5, 9, 9], atol=1e-5)


def test_axis_resampling_matches_map_coordinates():
    rng = np.random.default_rng(0)
    vol = rng.random((5, 3, 4)).astype(np.float32)
    for order in (0, 1):
        ours = _resample_along_axis(vol, 0, 8, order)
        scale = 5 / 8
        zz, yy, xx = np.mgrid[:8, :3, :4].astype(float)
        ref = ndimage.map_coordinates(vol, [scale * (zz + 0.5) - 0.5, yy, xx], order=order, mode="nearest")
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_unchanged_shape_is_a_no_op():
    data = np.random.default_rng(1).random((1, 4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(resample_data(data, [4, 5, 6], [1, 1, 1], [1, 1, 1]), data)
    seg = np.zeros((4, 5, 6), dtype=np.int16)
    assert resample_segmentation(seg, [4, 5, 6], [1, 1, 1], [1, 1, 1]) is seg


def _sphere(shape, radius, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius ** 2


def test_segmentation_keeps_label_values_and_volume():
    seg = np.full((20, 20, 20), -1, dtype=np.int16)
    seg[2:18, 2:18, 2:18] = 0
    seg[_sphere((20, 20, 20), 7.0)] = 1
    seg[_sphere((20, 20, 20), 3.0)] = 2
    up = resample_segmentation(seg, [30, 30, 30], [1.0] * 3, [2 / 3] * 3)
    assert up.dtype == seg.dtype
    assert set(np.unique(up)) <= {-1, 0, 1, 2}
    down = resample_segmentation(up, [20, 20, 20], [2 / 3] * 3, [1.0] * 3)
    assert set(np.unique(down)) == {-1, 0, 1, 2}
    v0 = np.count_nonzero(seg >= 1)
    assert abs(np.count_nonzero(up >= 1) * (2 / 3) ** 3 - v0) / v0 < 0.05
    assert abs(np.count_nonzero(down >= 1) - v0) / v0 < 0.05


def test_segmentation_with_separate_z_and_ties_go_to_lower_label():
    seg = np.zeros((4, 6, 6), dtype=np.uint8)
    seg[:, :, 3:] = 3
    out = resample_segmentation(seg, [8, 12, 12], [4.0, 1.0, 1.0], [2.0, 0.5, 0.5])
    assert out.dtype == np.uint8 and out.shape == (8, 12, 12)
    assert set(np.unique(out)) == {0, 3}
    # the label border sits exactly between input columns 2 and 3 -> output columns 5 | 6
    np.testing.assert_array_equal(out[0, 0], [0] * 6 + [3] * 6)
    # an exact tie (both indicators 0.5) goes to the lower label
    tie = resample_segmentation(np.array([[[0, 5]]], dtype=np.int16), [1, 1, 1], [1, 1, 1], [1, 1, 2])
    assert tie[0, 0, 0] == 0


def test_probabilities_are_resampled_class_by_class():
    probs = np.zeros((2, 4, 4, 4), dtype=np.float32)
    probs[0, :, :, :2] = 1.0
    probs[1] = 1.0 - probs[0]
    out = resample_probabilities(probs, [8, 8, 8], [1.0] * 3, [0.5] * 3)
    assert out.shape == (2, 8, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)  # linear interpolation keeps the sum
    assert out[0, 0, 0, 0] == pytest.approx(1.0) and out[1, 0, 0, 7] == pytest.approx(1.0)
