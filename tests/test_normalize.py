"""Normalization schemes: numeric known answers, registry and errors."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.errors import AutosegError, UnknownNameError
from autoseg.preprocessing.normalize import (_SCHEMES, available_normalizations, normalize,
                                             register_normalization)
from autoseg.schemas import ChannelNormalization


def _spec(scheme, use_mask=False, channel=0, **kw):
    return ChannelNormalization(channel=channel, name=f"ch{channel}", scheme=scheme, use_mask=use_mask, **kw)


def test_builtin_schemes_are_registered():
    assert {"ct", "zscore", "no_norm", "rescale_0_1", "rgb_0_1"} <= set(available_normalizations())


def test_ct_clips_then_uses_dataset_statistics():
    data = np.array([-1000.0, 0.0, 50.0, 100.0, 3000.0], dtype=np.float32).reshape(1, 1, 1, 5)
    spec = _spec("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    out = normalize(data, [spec])
    np.testing.assert_allclose(out.ravel(), [(-100 - 50) / 25, -2.0, 0.0, 2.0, (200 - 50) / 25])
    assert data[0, 0, 0, 0] == -1000.0  # input untouched without inplace


def test_ct_without_statistics_is_a_clear_error():
    with pytest.raises(AutosegError, match="clip_low"):
        normalize(np.zeros((1, 1, 2, 2), np.float32), [_spec("ct")])


def test_zscore_over_all_voxels():
    data = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32).reshape(1, 1, 2, 2)
    out = normalize(data, [_spec("zscore")])
    expected = (np.array([1, 2, 3, 4]) - 2.5) / np.std([1, 2, 3, 4])
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)
    assert out.dtype == np.float32


def test_zscore_with_mask_uses_inside_statistics_and_zeroes_outside():
    data = np.array([10.0, 2.0, 4.0, 6.0], dtype=np.float32).reshape(1, 1, 2, 2)
    mask = np.array([False, True, True, True]).reshape(1, 2, 2)
    out = normalize(data, [_spec("zscore", use_mask=True)], mask)
    std = np.std([2, 4, 6])
    np.testing.assert_allclose(out.ravel(), [0.0, -2 / std, 0.0, 2 / std], rtol=1e-6, atol=1e-7)


def test_zscore_of_a_constant_image_does_not_divide_by_zero():
    out = normalize(np.full((1, 2, 2, 2), 7.0, np.float32), [_spec("zscore")])
    assert np.isfinite(out).all() and np.allclose(out, 0.0)


def test_no_norm_rescale_and_rgb_per_channel():
    data = np.stack([np.array([[[-3.0, 5.0]]]), np.array([[[2.0, 6.0]]]), np.array([[[0.0, 255.0]]])])
    specs = [_spec("no_norm", channel=0), _spec("rescale_0_1", channel=1), _spec("rgb_0_1", channel=2)]
    out = normalize(data.astype(np.float64), specs)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0].ravel(), [-3.0, 5.0])
    np.testing.assert_allclose(out[1].ravel(), [0.0, 1.0])
    np.testing.assert_allclose(out[2].ravel(), [0.0, 1.0])


def test_rgb_outside_8bit_range_is_an_error():
    with pytest.raises(AutosegError, match=r"\[0, 255\]"):
        normalize(np.array([[[[0.0, 300.0]]]], np.float32), [_spec("rgb_0_1")])


def test_inplace_overwrites_float32_input():
    data = np.array([[[[0.0, 255.0]]]], np.float32)
    out = normalize(data, [_spec("rgb_0_1")], inplace=True)
    assert out is data and data[0, 0, 0, 1] == pytest.approx(1.0)


def test_unknown_scheme_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'zscore'"):
        normalize(np.zeros((1, 1, 2, 2), np.float32), [_spec("zscor")])


def test_channel_count_mismatch_is_an_error():
    with pytest.raises(AutosegError, match="2 channel"):
        normalize(np.zeros((2, 1, 2, 2), np.float32), [_spec("zscore")])


def test_register_a_new_scheme():
    @register_normalization("times_two_test")
    def _double(volume, spec, mask):
        volume *= 2
        return volume

    try:
        out = normalize(np.ones((1, 1, 1, 3), np.float32), [_spec("times_two_test")])
        np.testing.assert_allclose(out, 2.0)
    finally:
        _SCHEMES.pop("times_two_test", None)
