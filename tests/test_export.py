"""Export back to the original geometry: transpose, softmax, (resample), paste, argmax, files."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.model.export import (
    load_probabilities,
    logits_to_original_probabilities,
    probabilities_to_segmentation,
    save_probabilities,
    write_prediction,
)
from autoseg.schemas import (
    SCHEMA_VERSION,
    CaseProperties,
    ConfigurationPlan,
    Geometry,
    NetworkSpec,
    ResamplingSpec,
)

FULL = (6, 9, 10)  # original (Z, Y, X)
BBOX = [[1, 5], [2, 8], [3, 10]]  # crop box -> cropped shape (4, 6, 7)
CROPPED = (4, 6, 7)
TRANSPOSE_FORWARD = [2, 0, 1]  # preprocessed axes = (X, Z, Y)
TRANSPOSE_BACKWARD = [1, 2, 0]


def _plan(transpose_forward=TRANSPOSE_FORWARD, transpose_backward=TRANSPOSE_BACKWARD) -> ConfigurationPlan:
    net = NetworkSpec(dims=3, in_channels=1, num_classes=3, features_per_stage=[4, 8],
                      kernel_sizes=[[3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [2, 2, 2]],
                      n_conv_per_stage_encoder=[1, 1], n_conv_per_stage_decoder=[1],
                      deep_supervision=False)
    return ConfigurationPlan(
        name="3d_fullres", data_identifier="test_3d", dims=3, spacing_zyx_mm=[2.0, 1.0, 1.0],
        transpose_forward=list(transpose_forward), transpose_backward=list(transpose_backward),
        median_shape_zyx=list(CROPPED), patch_size=[8, 8, 8], batch_size=2, normalization=[],
        resampling=ResamplingSpec(), network=net, foreground_oversample_fraction=0.33,
        mirror_axes=[0, 1, 2], dummy_2d_augmentation=False, estimated_memory_gb=0.1,
        estimated_gflop_per_iteration=0.1)


def _props(shape_after_resampling=CROPPED, spacing_after=(2.0, 1.0, 1.0)) -> CaseProperties:
    geom = Geometry(ndim=3, size=tuple(reversed(FULL)), spacing=(1.0, 1.0, 2.0),
                    origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    return CaseProperties(
        schema_version=SCHEMA_VERSION, case_id="case_001", geometry=geom, file_ending=".nii.gz",
        shape_before_crop_zyx=list(FULL), crop_bbox_zyx=[list(b) for b in BBOX],
        shape_after_crop_zyx=list(CROPPED), spacing_before_zyx_mm=[2.0, 1.0, 1.0],
        spacing_after_zyx_mm=list(spacing_after), shape_after_resampling_zyx=list(shape_after_resampling),
        class_locations={}, preprocessing_hash="x", source_hash="y")


def _labels_cropped() -> np.ndarray:
    lab = np.zeros(CROPPED, np.int64)
    lab[1:3, 1:4, 2:6] = 1
    lab[0, 0, 0] = 2
    lab[3, 5, 6] = 2
    return lab


def _logits_in_preprocessed_space(lab: np.ndarray, k: int = 3) -> torch.Tensor:
    onehot = np.stack([lab == c for c in range(k)]).astype(np.float32) * 8.0 - 4.0  # strong logits
    return torch.from_numpy(onehot).permute(0, *[a + 1 for a in TRANSPOSE_FORWARD]).contiguous()


def test_roundtrip_crop_and_transpose():
    lab = _labels_cropped()
    logits = _logits_in_preprocessed_space(lab)
    assert tuple(logits.shape[1:]) == (7, 4, 6)  # (X, Z, Y): really transposed
    probs = logits_to_original_probabilities(logits, _props(), _plan())
    assert probs.dtype == np.float32 and probs.shape == (3, *FULL)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-6)
    seg = probabilities_to_segmentation(probs)
    expected = np.zeros(FULL, np.int64)
    expected[1:5, 2:8, 3:10] = lab
    np.testing.assert_array_equal(seg, expected)
    outside = np.ones(FULL, bool)
    outside[1:5, 2:8, 3:10] = False
    assert (probs[0][outside] == 1.0).all() and (probs[1:][:, outside] == 0.0).all()


def test_numpy_logits_and_no_crop():
    lab = _labels_cropped()
    props = _props()
    props = CaseProperties(**{**props.__dict__, "shape_before_crop_zyx": list(CROPPED),
                              "crop_bbox_zyx": [[0, 4], [0, 6], [0, 7]]})
    probs = logits_to_original_probabilities(_logits_in_preprocessed_space(lab).numpy(), props, _plan())
    assert probs.shape == (3, *CROPPED)
    np.testing.assert_array_equal(probabilities_to_segmentation(probs), lab)


def test_shape_mismatch_is_a_clear_error():
    logits = torch.zeros((3, 4, 6, 7))  # not transposed: wrong for this plan
    with pytest.raises(AutosegError, match="case_001.*do not belong"):
        logits_to_original_probabilities(logits, _props(), _plan())
    with pytest.raises(AutosegError, match="spatial axes"):
        logits_to_original_probabilities(torch.zeros((3, 4, 6)), _props(), _plan())


@pytest.mark.skipif(importlib.util.find_spec("autoseg.preprocessing.resample") is None,
                    reason="autoseg.preprocessing.resample not written yet")
def test_resampled_logits_come_back_at_original_shape():
    # preprocessed at half the z resolution: (2, 6, 7) -> original cropped (4, 6, 7)
    lab = np.zeros((2, 6, 7), np.int64)
    lab[:, 1:5, 1:6] = 1
    onehot = np.stack([lab == c for c in range(3)]).astype(np.float32) * 8 - 4
    props = _props(shape_after_resampling=(2, 6, 7), spacing_after=(4.0, 1.0, 1.0))
    plan = _plan([0, 1, 2], [0, 1, 2])
    probs = logits_to_original_probabilities(torch.from_numpy(onehot), props, plan)
    assert probs.shape == (3, *FULL)
    seg = probabilities_to_segmentation(probs)
    assert (seg[1:5, 3:7, 4:9] == 1).all()  # the interior of the object survives resampling
    assert seg[0].max() == 0 and seg[:, :2].max() == 0


def test_argmax_dtype_and_torch_input():
    p = torch.zeros((3, 2, 2, 2))
    p[2, 1, 1, 1] = 1
    seg = probabilities_to_segmentation(p)
    assert seg.dtype == np.uint8 and seg[1, 1, 1] == 2 and seg.sum() == 2
    assert probabilities_to_segmentation(np.zeros((300, 1, 1, 2), np.float16)).dtype == np.uint16


def test_save_and_load_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=(2, 3, 4)).transpose(3, 0, 1, 2).astype(np.float32)
    path = tmp_path / "case_007.npz"
    save_probabilities(probs, path)
    with np.load(path, allow_pickle=False) as f:
        assert f["probabilities"].dtype == np.float16
        assert str(f["case_id"]) == "case_007"
    loaded, case_id = load_probabilities(path)
    assert case_id == "case_007" and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, probs, atol=1e-3)
    save_probabilities(torch.from_numpy(probs), tmp_path / "other.npz", case_id="abc")
    assert load_probabilities(tmp_path / "other.npz")[1] == "abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_007.npz", "other.npz"]  # no temp left


def test_quantized_probabilities_are_small_and_read_back_within_half_a_step(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.zeros((8, 32, 32), np.int64)
    labels[2:6, 4:20, 4:20], labels[1:3, 20:30, 10:30] = 1, 2
    logits = 12.0 * np.eye(4, dtype=np.float32)[labels].transpose(3, 0, 1, 2)  # a trained network: confident
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)  # with noisy low bits
    probs = np.exp(logits) / np.exp(logits).sum(0)
    save_probabilities(probs, tmp_path / "half.npz")
    save_probabilities(probs, tmp_path / "q.npz", quantize=True)
    with np.load(tmp_path / "q.npz", allow_pickle=False) as f:
        assert "probabilities" not in f.files and f["probabilities_uint8"].dtype == np.uint8
    loaded, case_id = load_probabilities(tmp_path / "q.npz")
    assert case_id == "q" and loaded.dtype == np.float32 and loaded.shape == probs.shape
    assert np.abs(loaded - probs).max() <= 0.5 / 255 + 1e-6
    assert (tmp_path / "q.npz").stat().st_size * 5 < (tmp_path / "half.npz").stat().st_size


def test_load_probabilities_errors(tmp_path):
    with pytest.raises(AutosegError, match="does not exist"):
        load_probabilities(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(AutosegError, match="not a probability file"):
        load_probabilities(bad)


def test_write_prediction_rejects_wrong_shape(tmp_path):
    with pytest.raises(AutosegError, match=r"case_001.*\(4, 6, 7\).*\(6, 9, 10\)"):
        write_prediction(np.zeros(CROPPED, np.uint8), _props(), tmp_path / "case_001.nii.gz")


@pytest.mark.skipif(importlib.util.find_spec("autoseg.data.image_io") is None,
                    reason="autoseg.data.image_io not written yet")
def test_write_prediction_keeps_geometry(tmp_path):
    import SimpleITK as sitk

    seg = np.zeros(FULL, np.uint8)
    seg[2:4, 3:5, 4:6] = 2
    out = tmp_path / "case_001.nii.gz"
    write_prediction(seg, _props(), out)
    img = sitk.ReadImage(str(out))
    assert img.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), seg)
