"""preprocess_arrays / class locations / preprocess_dataset on tiny hand-made data."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.preprocessing.dataset import estimate_case_memory_gb, preprocess_dataset
from autoseg.preprocessing.preprocess import preprocess_arrays, sample_class_locations, target_spacing_zyx
from autoseg.schemas import (SCHEMA_VERSION, CaseFiles, CaseProperties, ChannelNormalization,
                             ConfigurationPlan, DatasetManifest, NetworkSpec, ResamplingSpec, load_json)
from autoseg.workdir import Workdir


def make_plan(spacing=(2.0, 1.0, 1.0), transpose=(0, 1, 2), scheme="zscore", use_mask=False,
              channels=1, dims=3, identifier="test_3d") -> ConfigurationPlan:
    backward = [int(i) for i in np.argsort(transpose)]
    net = NetworkSpec(dims=dims, in_channels=channels, num_classes=3, features_per_stage=[4, 8],
                      kernel_sizes=[[3] * dims] * 2, strides=[[1] * dims, [2] * dims],
                      n_conv_per_stage_encoder=[1, 1], n_conv_per_stage_decoder=[1])
    return ConfigurationPlan(
        name="3d_fullres" if dims == 3 else "2d", data_identifier=identifier, dims=dims,
        spacing_zyx_mm=list(spacing), transpose_forward=list(transpose), transpose_backward=backward,
        median_shape_zyx=[8, 8, 8], patch_size=[8] * dims, batch_size=2,
        normalization=[ChannelNormalization(channel=c, name="MRI", scheme=scheme, use_mask=use_mask)
                       for c in range(channels)],
        resampling=ResamplingSpec(), network=net, foreground_oversample_fraction=0.33,
        mirror_axes=list(range(dims)), dummy_2d_augmentation=False, estimated_memory_gb=0.1,
        estimated_gflop_per_iteration=0.1)


def _image_with_zero_border():
    """(1, 6, 10, 12) image, nonzero only in [1:5, 2:8, 3:11]; labels 1 and 2 inside."""
    data = np.zeros((1, 6, 10, 12), dtype=np.float32)
    data[0, 1:5, 2:8, 3:11] = np.random.default_rng(0).uniform(1, 2, size=(4, 6, 8))
    seg = np.zeros((6, 10, 12), dtype=np.uint8)
    seg[2:4, 3:6, 4:7] = 1
    seg[1:3, 6:8, 8:11] = 2
    return data, seg


def test_preprocess_arrays_crops_resamples_and_transposes():
    data, seg = _image_with_zero_border()
    plan = make_plan(spacing=(2.0, 0.5, 1.0), transpose=(2, 0, 1), use_mask=True)
    case = preprocess_arrays(data, seg, (1.0, 1.0, 1.0), plan, case_id="c1")
    out, seg_out, props = case.data, case.seg, case.properties
    assert props.case_id == "c1" and props.shape_before_crop_zyx == [6, 10, 12]
    assert props.crop_bbox_zyx == [[1, 5], [2, 8], [3, 11]]
    assert props.shape_after_crop_zyx == [4, 6, 8]
    assert props.shape_after_resampling_zyx == [2, 12, 8]  # z halved, y doubled, x kept
    assert props.spacing_after_zyx_mm == [2.0, 0.5, 1.0] and props.geometry.shape_zyx == (6, 10, 12)
    assert out.shape == (1, 8, 2, 12) and out.dtype == np.float32  # (C, x, z, y)
    assert seg_out.shape == (1, 8, 2, 12) and seg_out.dtype == np.int16
    assert set(np.unique(seg_out)) <= {0, 1, 2}
    assert out.flags["C_CONTIGUOUS"]


def test_outside_the_body_becomes_minus_one_and_normalization_uses_the_mask():
    data = np.zeros((1, 4, 8, 8), dtype=np.float32)
    data[0, :, 2:6, 2:6] = np.arange(16, dtype=np.float32).reshape(4, 4) + 1  # the "body"
    data[0, :, 3, 3] = 0.0  # a hole inside the body: filled, so inside the mask
    data[0, 0, 0, 0] = data[0, 3, 7, 7] = 9.0  # two specks make the crop box the whole image
    seg = np.zeros((4, 8, 8), dtype=np.int16)
    seg[:, 2:4, 2:4] = 1
    plan = make_plan(spacing=(1.0, 1.0, 1.0), use_mask=True)
    case = preprocess_arrays(data, seg, (1.0, 1.0, 1.0), plan)
    out, seg_out = case.data, case.seg
    assert case.properties.crop_bbox_zyx == [[0, 4], [0, 8], [0, 8]]
    assert seg_out[0, 1, 0, 7] == -1 and seg_out[0, 1, 7, 0] == -1  # background outside the body
    assert seg_out[0, 1, 3, 3] == 1 and seg_out[0, 1, 5, 5] == 0  # hole and labels inside kept
    assert out[0, 1, 0, 7] == 0.0  # outside the mask is set to 0 by masked z-score
    inside = out[0][seg_out[0] >= 0]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4


def test_preprocess_arrays_without_seg_for_prediction():
    data, _ = _image_with_zero_border()
    case = preprocess_arrays(data, None, (1.0, 1.0, 1.0), make_plan(spacing=(1.0, 1.0, 1.0)))
    assert case.seg is None and case.data.shape == (1, 4, 6, 8)


def test_2d_image_keeps_its_dummy_axis():
    data = np.random.default_rng(0).uniform(1, 2, size=(3, 1, 10, 16)).astype(np.float32)
    plan = make_plan(spacing=(999.0, 2.0, 2.0), scheme="rgb_0_1", channels=3, dims=2)
    case = preprocess_arrays(data, None, (999.0, 1.0, 1.0), plan)
    assert case.data.shape == (3, 1, 5, 8)
    assert case.properties.spacing_after_zyx_mm == [999.0, 2.0, 2.0]


def test_target_spacing_of_a_2d_configuration_keeps_the_out_of_plane_axis():
    plan = make_plan(spacing=(0.5, 0.5), transpose=(0, 1, 2))
    assert target_spacing_zyx((3.0, 0.7, 0.7), plan) == [3.0, 0.5, 0.5]
    plan = make_plan(spacing=(0.5, 0.6), transpose=(2, 0, 1))
    assert target_spacing_zyx((1.0, 1.0, 4.0), plan) == [0.5, 0.6, 4.0]


def test_class_locations_are_inside_their_label_and_seeded():
    seg = np.zeros((1, 10, 12, 14), dtype=np.int16)
    seg[0, 2:5, 2:6, 3:9] = 1
    seg[0, 7, 8, 9] = 2
    locs = sample_class_locations(seg, [1, 2, 3], max_per_class=20)
    assert len(locs["1"]) == 20 and len(locs["2"]) == 1 and locs["3"] == []
    for label in ("1", "2"):
        for z, y, x in locs[label]:
            assert seg[0, z, y, x] == int(label)
    assert locs == sample_class_locations(seg, [1, 2, 3], max_per_class=20)
    # 1 % rule: 3000 voxels with max_per_class 10 -> ceil(30) samples
    big = np.ones((10, 15, 20), dtype=np.int8)
    assert len(sample_class_locations(big, [1], max_per_class=10)["1"]) == 30


# --------------------------------------------------------------------------- on disk

def _write_case(root: Path, case_id: str, seed: int) -> CaseFiles:
    rng = np.random.default_rng(seed)
    img = np.zeros((8, 10, 10), dtype=np.float32)
    img[1:7, 2:9, 1:9] = rng.uniform(10, 20, size=(6, 7, 8))
    seg = np.zeros((8, 10, 10), dtype=np.uint8)
    seg[2:5, 3:7, 3:6] = 1
    seg[5, 4:6, 6:8] = 2
    paths = []
    for arr, rel in ((img, f"imagesTr/{case_id}_0000.nii.gz"), (seg, f"labelsTr/{case_id}.nii.gz")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 2.0))  # ITK order (x, y, z)
        sitk.WriteImage(im, str(root / rel))
        paths.append(str(root / rel))
    return CaseFiles(case_id=case_id, images=(paths[0],), label=paths[1])


@pytest.fixture
def tiny_dataset(tmp_path):
    root = tmp_path / "Dataset999_Tiny"
    cases = tuple(_write_case(root, f"case_{i:03d}", i) for i in range(3))
    manifest = DatasetManifest(schema_version=SCHEMA_VERSION, root=str(root), name="Dataset999_Tiny",
                               channel_names={"0": "MRI"}, labels={"background": 0, "a": 1, "b": 2},
                               file_ending=".nii.gz", cases=cases)
    return manifest, Workdir(tmp_path / "run")


def test_preprocess_dataset_writes_then_skips_then_reprocesses_changed_cases(tiny_dataset):
    manifest, wd = tiny_dataset
    plan = make_plan(spacing=(2.0, 2.0, 1.0), transpose=(0, 2, 1))
    done = preprocess_dataset(manifest, plan, wd, num_workers=1, progress=False)
    assert done == ["case_000", "case_001", "case_002"]
    props = load_json(CaseProperties, wd.case_properties_json(plan.data_identifier, "case_001"))
    data = np.load(wd.case_data_npy(plan.data_identifier, "case_001"), mmap_mode="r")
    seg = np.load(wd.case_seg_npy(plan.data_identifier, "case_001"))
    assert props.shape_before_crop_zyx == [8, 10, 10] and props.crop_bbox_zyx == [[1, 7], [2, 9], [1, 9]]
    assert props.shape_after_resampling_zyx == [6, 4, 8] and props.spacing_before_zyx_mm == [2.0, 1.0, 1.0]
    assert data.dtype == np.float32 and data.shape == (1, 6, 8, 4)
    assert seg.dtype == np.int8 and seg.shape == (1, 6, 8, 4)
    for label, coords in props.class_locations.items():
        assert coords and all(seg[0, z, y, x] == int(label) for z, y, x in coords)
    assert props.geometry.spacing == (1.0, 1.0, 2.0)

    jsons = [wd.case_properties_json(plan.data_identifier, c.case_id) for c in manifest.cases]
    mtimes = [p.stat().st_mtime_ns for p in jsons]
    assert preprocess_dataset(manifest, plan, wd, num_workers=1, progress=False) == []
    assert [p.stat().st_mtime_ns for p in jsons] == mtimes

    later = time.time() + 5
    os.utime(manifest.cases[1].images[0], (later, later))  # "touch" one source file: same bytes, kept
    assert preprocess_dataset(manifest, plan, wd, num_workers=1, progress=False) == []
    assert [p.stat().st_mtime_ns for p in jsons] == mtimes
    Path(manifest.cases[1].images[0]).write_bytes(Path(manifest.cases[2].images[0]).read_bytes())  # new bytes
    assert preprocess_dataset(manifest, plan, wd, num_workers=1, progress=False) == ["case_001"]
    new = [p.stat().st_mtime_ns for p in jsons]
    assert new[0] == mtimes[0] and new[2] == mtimes[2] and new[1] != mtimes[1]

    other = make_plan(spacing=(2.0, 2.0, 1.0), transpose=(0, 2, 1), scheme="rescale_0_1")
    assert len(preprocess_dataset(manifest, other, wd, num_workers=1, progress=False)) == 3  # plan changed
    assert len(preprocess_dataset(manifest, other, wd, num_workers=1, progress=False, overwrite=True)) == 3


def test_a_broken_file_names_the_case_and_file(tiny_dataset):
    manifest, wd = tiny_dataset
    Path(manifest.cases[2].images[0]).write_bytes(b"not an image")
    with pytest.raises(AutosegError, match=r"case_002.*case_002_0000\.nii\.gz"):
        preprocess_dataset(manifest, make_plan(), wd, num_workers=1, progress=False)


def test_memory_estimate_grows_with_upsampling(tiny_dataset):
    manifest, _ = tiny_dataset
    coarse = estimate_case_memory_gb(manifest.cases, make_plan(spacing=(2.0, 1.0, 1.0)))
    fine = estimate_case_memory_gb(manifest.cases, make_plan(spacing=(0.5, 0.25, 0.25)))
    assert 0 < coarse < fine


def test_parallel_workers_give_the_same_result_and_report_failures(tiny_dataset, tmp_path):
    manifest, wd = tiny_dataset
    plan = make_plan(spacing=(2.0, 2.0, 1.0))
    assert len(preprocess_dataset(manifest, plan, wd, num_workers=2, progress=False)) == 3
    serial = Workdir(tmp_path / "serial")
    preprocess_dataset(manifest, plan, serial, num_workers=1, progress=False)
    for c in manifest.cases:
        a = np.load(wd.case_data_npy(plan.data_identifier, c.case_id))
        b = np.load(serial.case_data_npy(plan.data_identifier, c.case_id))
        np.testing.assert_array_equal(a, b)
    Path(manifest.cases[0].label).write_bytes(b"broken")
    with pytest.raises(AutosegError, match=r"case_000.*labelsTr"):
        preprocess_dataset(manifest, plan, wd, num_workers=2, progress=False)
