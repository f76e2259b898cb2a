"""Sliding-window inference: Gaussian map, tile placement, exact reproduction with pointwise models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.model.sliding_window import (
    gaussian_importance_map,
    predict_sliding_window,
    tile_starts,
)


def _pointwise(in_ch: int, out_ch: int, dims: int, seed: int = 0) -> torch.nn.Module:
    """A fixed 1x1(x1) conv: translation- and mirror-equivariant, so tiling must not change it."""
    torch.manual_seed(seed)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(in_ch, out_ch, 1)
    return conv


def _full(model: torch.nn.Module, data: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(data)[None])[0]


class _DeepSupervision(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return [y, y[:, :, ::2, ::2]]


class _XRamp(torch.nn.Module):
    """Adds a ramp along the last axis: NOT translation-equivariant, NOT mirror-equivariant."""

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        return torch.cat([x[:, :1] + ramp, -x[:, :1] - ramp], dim=1)


# ----------------------------------------------------------------------------- gaussian map

@pytest.mark.parametrize("patch", [(9, 9, 9), (8, 12, 6), (16, 10)])
def test_gaussian_max_centre_symmetry(patch):
    g = gaussian_importance_map(patch)
    assert g.dtype == np.float32 and g.shape == tuple(patch)
    assert g.max() == pytest.approx(10.0, rel=1e-6)
    assert g.min() > 0
    for axis in range(len(patch)):
        np.testing.assert_allclose(g, np.flip(g, axis), rtol=1e-6)
    if all(p % 2 for p in patch):  # odd sizes: the peak is exactly on the centre voxel
        assert np.unravel_index(np.argmax(g), g.shape) == tuple(p // 2 for p in patch)
    # sigma = patch / 8: one sigma from the centre along axis 0 the value drops to exp(-1/2)
    n = 17
    g1 = gaussian_importance_map((n,))
    sigma = n / 8
    expected = 10 * np.exp(-0.5 * ((np.arange(n) - 8) / sigma) ** 2)
    np.testing.assert_allclose(g1, expected, rtol=1e-5)


def test_gaussian_custom_scaling():
    assert gaussian_importance_map((5, 5), value_scaling=1.0).max() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- tile starts

@pytest.mark.parametrize("image,patch,step", [(100, 32, 0.5), (64, 64, 0.5), (65, 64, 0.5),
                                              (20, 8, 1.0), (37, 10, 0.25), (10, 16, 0.5)])
def test_tile_starts_cover_and_respect_step(image, patch, step):
    (starts,) = tile_starts([image], [patch], step)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if image >= patch:
        assert starts[-1] == image - patch  # last tile ends exactly at the border
        covered = np.zeros(image, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()
    else:
        assert starts == [0]
    gaps = np.diff(starts)
    assert (gaps <= step * patch + 1).all()  # evenly spread, then rounded to voxels
    assert (gaps >= np.floor((image - patch) / max(len(starts) - 1, 1))).all()


def test_tile_starts_known_values():
    # nnU-Net: image 100, patch 32, step 16 -> ceil(68/16)+1 = 6 steps spread over 0..68
    assert tile_starts([100, 32], [32, 32], 0.5) == [[0, 14, 27, 41, 54, 68], [0]]


def test_tile_starts_rejects_bad_step():
    with pytest.raises(AutosegError, match="step size"):
        tile_starts([10], [4], 0.0)


# ----------------------------------------------------------------------------- predictions

@pytest.mark.parametrize("shape", [(5, 6, 7), (8, 8, 8), (13, 17, 11)])  # <, =, > patch (8,8,8)
@pytest.mark.parametrize("mirror", [None, (0, 1, 2)])
def test_3d_reproduces_full_image(shape, mirror):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, *shape)).astype(np.float32)
    model = _pointwise(2, 3, 3)
    out = predict_sliding_window(model, data, (8, 8, 8), 3, mirror_axes=mirror, tile_batch_size=3)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, *shape)
    torch.testing.assert_close(out, _full(model, data), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 9), (12, 12), (30, 21)])
@pytest.mark.parametrize("mirror", [None, (0, 1)])
def test_2d_reproduces_full_image(shape, mirror):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, *shape)).astype(np.float32)
    model = _pointwise(1, 2, 2)
    out = predict_sliding_window(model, torch.from_numpy(data), (12, 12), 2, mirror_axes=mirror)
    assert tuple(out.shape) == (2, *shape)
    torch.testing.assert_close(out, _full(model, data), rtol=1e-5, atol=1e-5)


def test_2d_patch_on_3d_volume_is_slicewise():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1, 4, 10, 13)).astype(np.float32)
    model = _pointwise(1, 3, 2)
    out = predict_sliding_window(model, data, (8, 8), 3, mirror_axes=(0, 1, 2), tile_batch_size=5)
    assert tuple(out.shape) == (3, 4, 10, 13)
    with torch.no_grad():
        expected = torch.stack([model(torch.from_numpy(data[:, z])[None])[0] for z in range(4)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_translation_dependent_model_is_blended_not_copied():
    """A model whose output depends on the tile position shows the Gaussian blending at work."""
    data = np.zeros((1, 1, 20), np.float32)
    out = predict_sliding_window(_XRamp(), data, (1, 8), 2, mirror_axes=None)
    # tile-local ramp values lie in [0, 7]; blended values too, and the border voxels come
    # from the first / last tile alone
    assert out[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert out[0, 0, -1] == pytest.approx(7.0, abs=1e-5)
    assert float(out[0].min()) >= 0 and float(out[0].max()) <= 7 + 1e-5


def test_mirroring_averages_all_flips():
    """For a non-mirror-equivariant model, TTA along x averages ramp and flipped ramp -> constant."""
    data = np.zeros((1, 1, 8), np.float32)
    out = predict_sliding_window(_XRamp(), data, (1, 8), 2, mirror_axes=(1,))
    torch.testing.assert_close(out[0, 0], torch.full((8,), 3.5))


def test_fold_averaging_and_deep_supervision_output():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1, 6, 6, 6)).astype(np.float32)
    m1, m2 = _pointwise(1, 2, 3, seed=1), _pointwise(1, 2, 3, seed=2)
    out = predict_sliding_window([m1, _DeepSupervision(m2)], data, (4, 4, 4), 2, mirror_axes=None)
    expected = (_full(m1, data) + _full(m2, data)) / 2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bf16_on_cpu_is_close():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(1, 6, 6)).astype(np.float32)
    model = _pointwise(1, 2, 2)
    out = predict_sliding_window(model, data, (4, 4), 2, precision="bf16", mirror_axes=None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _full(model, data), rtol=5e-2, atol=5e-2)


def test_bad_inputs_give_clear_errors():
    model = _pointwise(1, 2, 3)
    data = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(AutosegError, match="fp16 needs a CUDA"):
        predict_sliding_window(model, data, (4, 4, 4), 2, precision="fp16")
    with pytest.raises(AutosegError, match="did you mean 'bf16'"):
        predict_sliding_window(model, data, (4, 4, 4), 2, precision="bf1")
    with pytest.raises(AutosegError, match="num_classes"):
        predict_sliding_window(model, data, (4, 4, 4), 5)
    with pytest.raises(AutosegError, match="does not match"):
        predict_sliding_window(model, np.zeros((1, 4, 4), np.float32), (4, 4, 4), 2)
    with pytest.raises(AutosegError, match="no model"):
        predict_sliding_window([], data, (4, 4, 4), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(1, 9, 10, 11)).astype(np.float32)
    model = _pointwise(1, 2, 3)
    cpu = predict_sliding_window(model, data, (8, 8, 8), 2)
    for on_dev in (False, True):
        gpu = predict_sliding_window(model, data, (8, 8, 8), 2, device="cuda", accumulate_on_device=on_dev)
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_read_only_memmap_input(tmp_path, recwarn):
    rng = np.random.default_rng(6)
    data = rng.normal(size=(1, 5, 6, 7)).astype(np.float32)
    np.save(tmp_path / "case.npy", data)
    mm = np.load(tmp_path / "case.npy", mmap_mode="r")
    model = _pointwise(1, 2, 3)
    out = predict_sliding_window(model, mm, (4, 4, 4), 2, mirror_axes=None)
    torch.testing.assert_close(out, _full(model, data), rtol=1e-5, atol=1e-5)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
