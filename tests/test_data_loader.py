"""PatchDataLoader: shapes, foreground oversampling, padding, determinism, missing files (tiny arrays)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from autoseg.atomic import atomic_save_npy
from autoseg.errors import AutosegError
from autoseg.schemas import SCHEMA_VERSION, CaseProperties, Geometry, save_json
from autoseg.training.data_loader import PatchDataLoader, case_file_paths, forced_foreground_count


def write_case(folder, case_id, shape=(16, 24, 24), channels=1, label_box=None, seed=0):
    """Write one preprocessed case; ``label_box`` = (z0, z1, y0, y1, x0, x1) of label 1 (else label-free)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(channels, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int8)
    seg[0, :, :2, :] = -1  # a strip "outside the body"
    locs: dict[str, list[list[int]]] = {"1": []}
    if label_box is not None:
        z0, z1, y0, y1, x0, x1 = label_box
        seg[0, z0:z1, y0:y1, x0:x1] = 1
        locs["1"] = np.argwhere(seg[0] == 1).tolist()
    data_p, seg_p, json_p = case_file_paths(folder, case_id)
    atomic_save_npy(data_p, data)
    atomic_save_npy(seg_p, seg)
    geom = Geometry(ndim=3, size=tuple(reversed(shape)), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    save_json(CaseProperties(
        schema_version=SCHEMA_VERSION, case_id=case_id, geometry=geom, file_ending=".nii.gz",
        shape_before_crop_zyx=list(shape), crop_bbox_zyx=[[0, s] for s in shape],
        shape_after_crop_zyx=list(shape), spacing_before_zyx_mm=[1.0] * 3, spacing_after_zyx_mm=[1.0] * 3,
        shape_after_resampling_zyx=list(shape), class_locations=locs, preprocessing_hash="x",
        source_hash="y"), json_p)
    return data, seg


@pytest.fixture
def cases(tmp_path):
    ids = ["case_a", "case_b", "case_c"]
    for i, c in enumerate(ids):
        # a 2x2x2 label in a corner: random 8x8x8 crops of 16x24x24 mostly miss it
        write_case(tmp_path, c, label_box=(12, 14, 20, 22, 1 + i, 3 + i), seed=i)
    return tmp_path, ids


def test_forced_foreground_count_follows_nnunet_rule():
    assert forced_foreground_count(2, 0.33) == 1
    assert forced_foreground_count(1, 0.33) == 0
    assert forced_foreground_count(12, 0.33) == 4
    assert forced_foreground_count(2, 0.0) == 0
    assert forced_foreground_count(3, 1.0) == 3


def test_3d_batch_shapes_and_types(cases):
    folder, ids = cases
    loader = PatchDataLoader(folder, ids, (8, 16, 16), (12, 20, 20), batch_size=3, dims=3, seed=1)
    batch = next(loader)
    assert batch["data"].shape == (3, 1, 12, 20, 20) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (3, 1, 12, 20, 20) and batch["seg"].dtype == np.int16
    assert len(batch["keys"]) == 3 and set(batch["keys"]) <= set(ids)


def test_2d_patches_from_3d_data(cases):
    folder, ids = cases
    loader = PatchDataLoader(folder, ids, (16, 16), (22, 22), batch_size=4, dims=2, seed=1)
    batch = next(loader)
    assert batch["data"].shape == (4, 1, 22, 22)
    assert batch["seg"].shape == (4, 1, 22, 22)


@pytest.mark.parametrize("dims", [3, 2])
def test_forced_samples_contain_foreground_in_final_crop(cases, dims):
    folder, ids = cases
    patch, init = ((8, 8, 8), (10, 10, 10)) if dims == 3 else ((8, 8), (10, 10))
    loader = PatchDataLoader(folder, ids, patch, init, batch_size=3, oversample_fraction=0.33,
                             dims=dims, seed=3)
    n_fg = n_total = 0
    for _ in range(8):
        seg = next(loader)["seg"][:, 0]
        lo = [(i - p) // 2 for i, p in zip(init, patch)]
        centre = seg[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(lo, patch))]
        has_fg = (centre > 0).reshape(len(seg), -1).any(axis=1)
        assert has_fg[-1], "the forced (last) sample must contain foreground in its final crop"
        n_fg += int(has_fg.sum())
        n_total += len(has_fg)
    assert n_fg / n_total >= 1 / 3


def test_no_oversampling_rarely_hits_small_label(cases):
    folder, ids = cases
    loader = PatchDataLoader(folder, ids, (8, 8, 8), (8, 8, 8), batch_size=4, oversample_fraction=0.0,
                             dims=3, seed=5)
    hits = sum(int((next(loader)["seg"] > 0).reshape(4, -1).any(axis=1).sum()) for _ in range(6))
    assert hits < 24  # random crops do miss a 2x2x2 label: the forced test above is not trivially true


def test_image_smaller_than_patch_is_padded(tmp_path):
    data, seg = write_case(tmp_path, "small", shape=(4, 6, 6), label_box=(1, 3, 3, 5, 3, 5))
    loader = PatchDataLoader(tmp_path, ["small"], (8, 8, 8), (8, 8, 8), batch_size=2, dims=3, seed=0,
                             oversample_fraction=0.0)
    batch = next(loader)
    # random crops: the image fits in one place only: centred, with data 0 and seg -1 around it
    want_data = np.zeros((1, 8, 8, 8), np.float32)
    want_data[:, 2:6, 1:7, 1:7] = data
    want_seg = np.full((1, 8, 8, 8), -1, np.int16)
    want_seg[:, 2:6, 1:7, 1:7] = seg
    for i in range(2):
        np.testing.assert_array_equal(batch["data"][i], want_data)
        np.testing.assert_array_equal(batch["seg"][i], want_seg)
    # a forced crop is centred on a label voxel; what lies outside the image is padded all the same
    forced = PatchDataLoader(tmp_path, ["small"], (8, 8, 8), (8, 8, 8), batch_size=2, dims=3, seed=0)
    b = next(forced)
    assert (b["seg"][1] == 1).sum() == 8  # the whole 2x2x2 label is in the crop
    assert (b["seg"][1] == -1).sum() >= 8 ** 3 - 4 * 6 * 6
    assert (b["data"][1] != 0).sum() < 4 * 6 * 6 + 1  # only image voxels are nonzero


def test_same_seed_same_batches_and_different_seed_differs(cases):
    folder, ids = cases

    def batches(seed):
        loader = PatchDataLoader(folder, ids, (8, 8, 8), (10, 10, 10), batch_size=2, dims=3, seed=seed)
        return [next(loader) for _ in range(3)]

    a, b, c = batches(7), batches(7), batches(8)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        np.testing.assert_array_equal(x["data"], y["data"])
        np.testing.assert_array_equal(x["seg"], y["seg"])
    assert any(not np.array_equal(x["data"], z["data"]) for x, z in zip(a, c))


def test_worker_streams_differ_and_pickle_drops_open_arrays(cases):
    folder, ids = cases
    loader = PatchDataLoader(folder, ids, (8, 8, 8), (10, 10, 10), batch_size=2, dims=3, seed=7)
    first = next(loader)
    assert loader._arrays  # memory maps are open in this process now
    clone = pickle.loads(pickle.dumps(loader))
    assert not clone._arrays
    clone.set_thread_id(1)
    assert not np.array_equal(next(clone)["data"], first["data"])


def test_finite_loader_visits_every_case_once(cases):
    folder, ids = cases
    loader = PatchDataLoader(folder, ids, (8, 8, 8), (8, 8, 8), batch_size=2, dims=3, seed=0, infinite=False)
    keys = [k for batch in loader for k in batch["keys"]]
    assert keys == ids
    assert next(loader)["keys"] == ids[:2]  # starts over after StopIteration


def test_missing_case_files_raise_clear_error(cases):
    folder, ids = cases
    (folder / "case_b_seg.npy").unlink()
    with pytest.raises(AutosegError, match=r"case_b_seg\.npy.*autoseg plan"):
        PatchDataLoader(folder, ids, (8, 8, 8), (8, 8, 8), batch_size=2)
    with pytest.raises(AutosegError, match="case_zzz.npy"):
        PatchDataLoader(folder, ["case_a", "case_zzz"], (8, 8, 8), (8, 8, 8), batch_size=2)


def test_bad_patch_arguments_raise(cases):
    folder, ids = cases
    with pytest.raises(AutosegError, match="initial_patch_size"):
        PatchDataLoader(folder, ids, (8, 8, 8), (6, 8, 8), batch_size=2)
    with pytest.raises(AutosegError, match="2 positive numbers"):
        PatchDataLoader(folder, ids, (8, 8, 8), (8, 8, 8), batch_size=2, dims=2)
