"""3d_lowres -> 3d_cascade_fullres: next-stage segmentations, cascade inputs, training and validation (tiny)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import ball

from autoseg.atomic import atomic_save_npy, atomic_write_json
from autoseg.cli import main
from autoseg.data.image_io import read_label
from autoseg.errors import AutosegError
from autoseg.store import load_manifest, load_plans
from autoseg.preprocessing.preprocess import segmentation_to_preprocessed_grid
from autoseg.schemas import CaseProperties, Splits, load_json
from autoseg.training.augmentation import (deep_supervision_scales, initial_patch_size, rotation_ranges,
                                           training_transforms, validation_transforms)
from autoseg.training.batch_iterator import make_batch_iterator
from autoseg.model.cascade import one_hot_foreground
from autoseg.training.cascade import CascadeInputTransform, binary_morphology, remove_random_component
from autoseg.model.checkpoint import load_checkpoint
from autoseg.training.data_loader import PatchDataLoader, case_file_paths
from autoseg.workdir import Workdir

FAST = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
        "--num-workers", "0", "--no-progress"]


# --------------------------------------------------------------------------- a trained 3d_lowres
# (the `lowres_run` fixture is in conftest.py: prediction's cascade tests use the same run)


def test_lowres_folds_write_segmentations_on_the_next_stage_grid(lowres_run: Path) -> None:
    wd = Workdir(lowres_run)
    plans = load_plans(lowres_run)
    full = plans.configuration("3d_cascade_fullres")
    low = plans.configuration("3d_lowres")
    assert full.data_identifier != low.data_identifier
    splits = load_json(Splits, wd.splits_json)
    manifest = load_manifest(lowres_run)
    for k, fold in enumerate(splits.folds):
        for cid in fold.val:
            path = wd.lowres_predictions_dir("3d_lowres", k) / f"{cid}_seg.npy"
            seg = np.load(path)
            stored = np.load(wd.case_seg_npy(full.data_identifier, cid))
            assert seg.dtype == np.int8 and seg.shape == stored.shape  # (1, *fullres grid)
            assert set(np.unique(seg)) <= {0, 1, 2}
            # it is the exported lowres prediction, put on the fullres grid
            pred, _ = read_label(wd.validation_dir("3d_lowres", k) / f"{cid}{manifest.file_ending}")
            props = load_json(CaseProperties, wd.case_properties_json(full.data_identifier, cid))
            np.testing.assert_array_equal(seg, segmentation_to_preprocessed_grid(np.asarray(pred), props, full))
        others = [c for f in splits.folds if f is not fold for c in f.val]
        assert not any((wd.lowres_predictions_dir("3d_lowres", k) / f"{c}_seg.npy").exists() for c in others)


def test_segmentation_to_preprocessed_grid_matches_preprocessing(lowres_run: Path) -> None:
    # the reference labels go through the same crop / resample / transpose as preprocessing did
    wd = Workdir(lowres_run)
    low = load_plans(lowres_run).configuration("3d_lowres")
    case = load_manifest(lowres_run).cases[0]
    ref, _ = read_label(case.label)
    props = load_json(CaseProperties, wd.case_properties_json(low.data_identifier, case.case_id))
    got = segmentation_to_preprocessed_grid(np.asarray(ref), props, low)
    stored = np.load(wd.case_seg_npy(low.data_identifier, case.case_id)).astype(np.int16)
    assert got.shape == stored.shape and list(got.shape[1:]) != list(ref.shape)  # really resampled
    np.testing.assert_array_equal(got[stored >= 0], stored[stored >= 0])


def test_cascade_trains_on_lowres_predictions_and_validates(lowres_run: Path) -> None:
    wd = Workdir(lowres_run)
    assert main(["train", "--workdir", str(lowres_run), "-c", "3d_cascade_fullres", "--fold", "0", *FAST]) == 0
    cfg = load_plans(lowres_run).configuration("3d_cascade_fullres")
    summary = json.loads(wd.validation_summary_json("3d_cascade_fullres", 0).read_text())
    splits = load_json(Splits, wd.splits_json)
    assert set(summary["per_case"]) == set(splits.folds[0].val)
    model = load_checkpoint(wd.checkpoint("3d_cascade_fullres", 0, "final"))["model"]
    first_conv = next(v for v in model.values() if isinstance(v, torch.Tensor) and v.ndim == 5)
    assert cfg.network.in_channels == 3 and first_conv.shape[1] == cfg.network.in_channels


def test_missing_previous_stage_file_names_it_and_the_command(lowres_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(lowres_run, run)
    wd = Workdir(run)
    splits = load_json(Splits, wd.splits_json)
    k = 3
    cid = splits.folds[k].val[0]
    missing = wd.lowres_predictions_dir("3d_lowres", k) / f"{cid}_seg.npy"
    missing.unlink()
    assert main(["train", "--workdir", str(run), "-c", "3d_cascade_fullres", "--fold", "0", *FAST]) == 1
    err = capsys.readouterr().err
    assert missing.name in err and f"autoseg train --workdir {run} -c 3d_lowres --fold {k}" in err
    assert [f"--fold {j}" in err for j in range(5)] == [j == k for j in range(5)]
    # the named command (a trained fold: no training, only its final validation) writes it again
    assert main(["train", "--workdir", str(run), "-c", "3d_lowres", "--fold", str(k), *FAST]) == 0
    assert missing.is_file()


# --------------------------------------------------------------------------- transform and loader

def test_binary_morphology_equals_ball_operators() -> None:
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((12, 14, 14)) > 0.55)
    mask[4:9, 4:10, 3:11] = True
    for r in (1, 2):
        b = ball(r).astype(bool)
        np.testing.assert_array_equal(binary_morphology(mask, "dilation", r), ndimage.binary_dilation(mask, b))
        np.testing.assert_array_equal(binary_morphology(mask, "erosion", r), ndimage.binary_erosion(mask, b))
    b = ball(2).astype(bool)
    opened = binary_morphology(mask, "opening", 2)
    np.testing.assert_array_equal(opened, ndimage.binary_opening(mask, b))
    np.testing.assert_array_equal(binary_morphology(mask, "closing", 2), ndimage.binary_closing(mask, b))
    assert 0 < opened.sum() < mask.sum() and not binary_morphology(np.zeros((4, 4, 4), bool), "dilation", 3).any()


def test_remove_random_component_spares_large_components() -> None:
    seg = np.zeros((10, 10, 10), np.int16)
    seg[:6, :6, :6] = 1  # 216 voxels = 21.6 % of the patch: never removed
    seg[8:, 8:, 8:] = 1  # 8 voxels
    seg[0:2, 8:, 0:2] = 2
    np.random.seed(0)
    out = remove_random_component(seg, [1, 2])
    assert (out[:6, :6, :6] == 1).all() and not (out[8:, 8:, 8:] == 1).any() and not (out == 2).any()


def test_cascade_transform_appends_one_hot_and_drops_the_seg_channel() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 1, 8, 12, 12)).astype(np.float32)
    target = rng.integers(0, 3, size=(3, 1, 8, 12, 12)).astype(np.float32)
    prev = np.zeros((3, 1, 8, 12, 12), np.float32)
    prev[:, 0, 2:6, 3:9, 3:9] = 1
    prev[:, 0, 3:5, 4:6, 6:8] = 2
    prev[:, 0, 7, 0, 0] = 2  # a small second component of label 2
    batch = {"data": data.copy(), "seg": np.concatenate([target, prev], axis=1)}
    out = CascadeInputTransform([1, 2], p_morphology=0.0, p_remove_component=0.0)(**batch)
    assert out["data"].shape == (3, 3, 8, 12, 12) and out["seg"].shape == (3, 1, 8, 12, 12)
    np.testing.assert_array_equal(out["data"][:, :1], data)
    np.testing.assert_array_equal(out["seg"], target)
    np.testing.assert_array_equal(out["data"][:, 1:], np.stack([one_hot_foreground(p[0], [1, 2]) for p in prev]))
    np.random.seed(3)
    batch = {"data": data.copy(), "seg": np.concatenate([target, prev], axis=1)}
    aug = CascadeInputTransform([1, 2], p_morphology=1.0, p_remove_component=1.0)(**batch)
    onehot = aug["data"][:, 1:]
    assert set(np.unique(onehot)) <= {0.0, 1.0} and onehot.sum(axis=1).max() <= 1
    assert not np.array_equal(onehot, out["data"][:, 1:])  # the augmentations changed the masks


def test_loader_and_pipeline_feed_previous_stage_channels(tmp_path: Path) -> None:
    shape, patch = (10, 14, 14), [8, 16, 16]
    seg = np.zeros((1, *shape), np.int8)
    seg[0, 2:7, 3:10, 3:10] = 1
    seg[0, 4:6, 5:8, 5:8] = 2
    ids, prev_paths = [], {}
    for i in range(2):
        data_p, seg_p, json_p = case_file_paths(tmp_path, f"c{i}")
        atomic_save_npy(data_p, np.random.default_rng(i).normal(size=(1, *shape)).astype(np.float32))
        atomic_save_npy(seg_p, seg)
        atomic_write_json(json_p, {"class_locations": {"1": np.argwhere(seg[0] == 1).tolist()}})
        prev_paths[f"c{i}"] = tmp_path / f"prev_c{i}.npy"
        atomic_save_npy(prev_paths[f"c{i}"], seg)  # a perfect previous stage
        ids.append(f"c{i}")
    loader = PatchDataLoader(tmp_path, ids, patch, patch, batch_size=2, seed=0, previous_stage_segs=prev_paths)
    raw = next(loader)
    assert raw["seg"].shape == (2, 2, *patch) and (raw["seg"] == -1).any()  # padded alike
    np.testing.assert_array_equal(raw["seg"][:, 0], raw["seg"][:, 1])
    ds = deep_supervision_scales([[1, 1, 1], [2, 2, 2]], 2)
    with make_batch_iterator(loader, validation_transforms(ds, [1, 2]), 0, seed=0) as it:
        batch = next(it)
    assert tuple(batch["data"].shape) == (2, 3, *patch) and [s.shape[1] for s in batch["seg"]] == [1, 1]
    np.testing.assert_array_equal(batch["data"][:, 1].numpy(), (batch["seg"][0][:, 0] == 1).numpy())
    rot = rotation_ranges(patch, 3, False)
    train_loader = PatchDataLoader(tmp_path, ids, patch, initial_patch_size(patch, rot), 2, seed=0,
                                   previous_stage_segs=prev_paths)
    tr = training_transforms(patch, 3, False, [0, 1, 2], ds, rot, cascade_labels=[1, 2])
    with make_batch_iterator(train_loader, tr, 0, seed=0) as it:
        batch = next(it)
    assert tuple(batch["data"].shape) == (2, 3, *patch)
    assert set(torch.unique(batch["data"][:, 1:]).tolist()) <= {0.0, 1.0}
    del prev_paths["c1"]
    with pytest.raises(AutosegError, match="previous stage"):
        PatchDataLoader(tmp_path, ids, patch, patch, batch_size=2, previous_stage_segs=prev_paths)
