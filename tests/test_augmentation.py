"""Augmentation sizes, deep-supervision scales, the full pipeline and the batch iterator (tiny arrays)."""
from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest
import torch

from autoseg.atomic import atomic_save_npy, atomic_write_json
from autoseg.errors import AutosegError
from autoseg.training.batch_iterator import make_batch_iterator
from autoseg.training.augmentation import (deep_supervision_scales, initial_patch_size,
                                           rotation_ranges, training_transforms, validation_transforms)
from autoseg.training.data_loader import PatchDataLoader, case_file_paths

K = 3  # labels 0, 1, 2


def write_cases(folder, n=2, shape=(16, 24, 24)):
    """Preprocessed cases with labels 1 and 2 and a -1 strip; a minimal properties json."""
    ids = []
    for i in range(n):
        rng = np.random.default_rng(i)
        seg = np.zeros((1, *shape), np.int8)
        seg[0, :, :2] = -1
        seg[0, 4:10, 6:14, 6:14] = 1
        seg[0, 10:13, 14:18, 10:16] = 2
        data_p, seg_p, json_p = case_file_paths(folder, f"c{i}")
        atomic_save_npy(data_p, rng.normal(size=(2, *shape)).astype(np.float32))
        atomic_save_npy(seg_p, seg)
        atomic_write_json(json_p, {"class_locations": {
            str(k): np.argwhere(seg[0] == k)[::5].tolist() for k in (1, 2)}})
        ids.append(f"c{i}")
    return ids


# --------------------------------------------------------------------------- sizes

def test_rotation_ranges_follow_nnunet():
    r3 = rotation_ranges([32, 32, 32], 3, False)
    assert all(math.isclose(r3[k][1], math.radians(30)) for k in ("angle_x", "angle_y", "angle_z"))
    assert math.isclose(rotation_ranges([64, 64], 2, False)["angle_x"][1], math.pi)
    assert math.isclose(rotation_ranges([32, 64], 2, False)["angle_x"][1], math.radians(15))
    dummy = rotation_ranges([8, 64, 64], 3, True)
    assert math.isclose(dummy["angle_x"][1], math.pi) and dummy["angle_y"] == (0.0, 0.0) == dummy["angle_z"]


def test_initial_patch_size():
    no_rot = {"angle_x": (0.0, 0.0), "angle_y": (0.0, 0.0), "angle_z": (0.0, 0.0)}
    assert initial_patch_size([20, 32, 48], no_rot, (1.0, 1.0)) == [20, 32, 48]
    assert initial_patch_size([32, 48], no_rot, (1.0, 1.0)) == [32, 48]
    for patch, dims, dummy in (([20, 32, 48], 3, False), ([64, 64], 2, False), ([4, 64, 64], 3, True)):
        init = initial_patch_size(patch, rotation_ranges(patch, dims, dummy))
        assert len(init) == len(patch) and all(i >= p for i, p in zip(init, patch))
    # 2D square at +-180 degrees: the 45-degree diagonal, then the 0.7 down-scaling
    want = math.ceil(64 * 2 ** 0.5 / 0.7)
    assert initial_patch_size([64, 64], rotation_ranges([64, 64], 2, False)) == [want, want]
    # dummy 2D keeps axis 0
    assert initial_patch_size([4, 64, 64], rotation_ranges([4, 64, 64], 3, True))[0] == 4


def test_deep_supervision_scales():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert deep_supervision_scales(strides, 3) == [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    assert deep_supervision_scales(strides, 4)[-1] == [0.25, 0.125, 0.125]
    assert deep_supervision_scales([[1, 1], [2, 2]], 1) == [[1.0, 1.0]]
    with pytest.raises(AutosegError):
        deep_supervision_scales(strides, 5)


# --------------------------------------------------------------------------- pipelines

@pytest.mark.parametrize("dims,dummy,patch",
                         [(3, False, [8, 16, 16]), (3, True, [4, 16, 16]), (2, False, [16, 16])])
def test_training_pipeline_shapes_and_labels(tmp_path, dims, dummy, patch):
    ids = write_cases(tmp_path)
    rot = rotation_ranges(patch, dims, dummy)
    init = initial_patch_size(patch, rot)
    loader = PatchDataLoader(tmp_path, ids, patch, init, batch_size=2, dims=dims, seed=0)
    strides = [[1] * dims, [2] * dims, [2] * dims] if not dummy else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    ds = deep_supervision_scales(strides, 3)
    tr = training_transforms(patch, dims, dummy, list(range(dims)), ds, rot)
    with make_batch_iterator(loader, tr, num_workers=0, seed=1) as it:
        for _ in range(2):
            batch = next(it)
            assert isinstance(batch["data"], torch.Tensor) and batch["data"].dtype == torch.float32
            assert tuple(batch["data"].shape) == (2, 2, *patch)
            assert isinstance(batch["seg"], list) and len(batch["seg"]) == 3
            for seg, scale in zip(batch["seg"], ds):
                assert tuple(seg.shape) == (2, 1, *[round(p * s) for p, s in zip(patch, scale)])
                assert set(torch.unique(seg).tolist()) <= set(range(K))


def test_light_pipeline_drops_low_resolution_simulation():
    rot = rotation_ranges([8, 16, 16], 3, False)
    full = training_transforms([8, 16, 16], 3, False, [0, 1, 2], None, rot)
    light = training_transforms([8, 16, 16], 3, False, [0, 1, 2], None, rot, light=True)
    names = lambda c: [type(t).__name__ for t in c.transforms]  # noqa: E731
    assert "SimulateLowResolutionTransform" in names(full)
    assert "SimulateLowResolutionTransform" not in names(light)
    assert len(names(light)) == len(names(full)) - 1


def test_validation_pipeline_removes_outside_label(tmp_path):
    ids = write_cases(tmp_path, shape=(6, 10, 10))  # smaller than the patch: -1 padding everywhere around
    loader = PatchDataLoader(tmp_path, ids, [8, 16, 16], [8, 16, 16], batch_size=2, dims=3, seed=0)
    assert (next(loader)["seg"] == -1).any()
    with make_batch_iterator(loader, validation_transforms([[1, 1, 1]]), 0, seed=0) as it:
        seg = next(it)["seg"]
    assert isinstance(seg, torch.Tensor) and tuple(seg.shape) == (2, 1, 8, 16, 16)
    assert seg.min() >= 0 and seg.max() <= K - 1


def test_in_process_iterator_is_deterministic(tmp_path):
    ids = write_cases(tmp_path)
    patch = [8, 16, 16]
    rot = rotation_ranges(patch, 3, False)

    def first_batches(seed):
        loader = PatchDataLoader(tmp_path, ids, patch, initial_patch_size(patch, rot), 2, dims=3, seed=seed)
        with make_batch_iterator(loader, training_transforms(patch, 3, False, [0, 1, 2], None, rot), 0,
                                 seed=seed) as it:
            return [next(it)["data"] for _ in range(3)]

    state = np.random.get_state()[1].copy()
    a, b = first_batches(4), first_batches(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global numpy state untouched


# --------------------------------------------------------------------------- worker processes

def test_one_worker_yields_batches_and_shuts_down(tmp_path):
    ids = write_cases(tmp_path)
    loader = PatchDataLoader(tmp_path, ids, [8, 16, 16], [8, 16, 16], batch_size=2, dims=3, seed=0)
    it = make_batch_iterator(loader, validation_transforms(None), num_workers=1, seed=0, timeout_s=30)
    batches = [next(it) for _ in range(3)]
    assert all(isinstance(b["data"], torch.Tensor) and tuple(b["data"].shape) == (2, 2, 8, 16, 16)
               for b in batches)
    procs = list(it._augmenter._processes)
    assert procs and procs[0].is_alive()
    it.close()
    assert not procs[0].is_alive()
    with pytest.raises(AutosegError, match="closed"):
        next(it)


class _Raises:
    def __call__(self, **batch):
        raise ValueError("boom in augmentation")


class _Hangs:
    def __call__(self, **batch):
        time.sleep(4)
        return batch


class _Killed:
    def __call__(self, **batch):
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does


# batchgenerators' own result thread also reports the dead worker (as a thread exception)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_killed_worker_becomes_autoseg_error(tmp_path):
    ids = write_cases(tmp_path)
    loader = PatchDataLoader(tmp_path, ids, [8, 16, 16], [8, 16, 16], batch_size=2, dims=3, seed=0)
    t0 = time.monotonic()
    with make_batch_iterator(loader, _Killed(), num_workers=1, seed=0, timeout_s=20) as it:
        with pytest.raises(AutosegError, match="worker died.*SIGKILL.*out-of-memory"):
            next(it)
    assert time.monotonic() - t0 < 10


def test_worker_that_raises_becomes_autoseg_error(tmp_path):
    ids = write_cases(tmp_path)
    loader = PatchDataLoader(tmp_path, ids, [8, 16, 16], [8, 16, 16], batch_size=2, dims=3, seed=0)
    t0 = time.monotonic()
    with make_batch_iterator(loader, _Raises(), num_workers=1, seed=0, timeout_s=20) as it:
        with pytest.raises(AutosegError, match="worker failed: ValueError: boom.*--num-workers 0"):
            next(it)
    assert time.monotonic() - t0 < 10


def test_worker_without_a_batch_times_out(tmp_path):
    ids = write_cases(tmp_path)
    loader = PatchDataLoader(tmp_path, ids, [8, 16, 16], [8, 16, 16], batch_size=2, dims=3, seed=0)
    t0 = time.monotonic()
    with make_batch_iterator(loader, _Hangs(), num_workers=1, seed=0, timeout_s=0.5) as it:
        with pytest.raises(AutosegError, match="within 0 s|within 1 s|out-of-memory"):
            next(it)
    assert time.monotonic() - t0 < 4
