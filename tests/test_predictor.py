"""Predictor: networks of a trained work folder applied to new images (arrays and files)."""
from __future__ import annotations

import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.data.image_io import read_image, read_image_info, read_label, write_image
from autoseg.errors import AutosegError, StaleArtifactError
from autoseg.model.export import load_probabilities
from autoseg.inference.checks import resolve_precision as _resolve_precision
from autoseg.inference.predictor import Predictor
from autoseg.inference.uncertainty import MemberStore
from autoseg.store import load_plans, plans_hash
from autoseg.schemas import SCHEMA_VERSION, Geometry, PostprocessingStep, Selection, save_json
from autoseg.workdir import Workdir
from tests.synthetic import case_id, make_synthetic_dataset

LABELS = {0, 1, 2}
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]


def train(wd: Path, configuration: str, fold: int) -> None:
    assert main(["train", "--workdir", str(wd), "-c", configuration, "--fold", str(fold), *TRAIN]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(work folder with 3d_fullres folds 0-4 and 2d fold 0 trained, dataset with 2 imagesTs cases)."""
    root = tmp_path_factory.mktemp("predictor")
    ds = make_synthetic_dataset(root / "Dataset020_Pred", n_cases=6, shape=(12, 16, 16),
                                spacing_zyx=(1.5, 1.0, 1.0), with_test_cases=2)
    wd = root / "run"
    assert main(["plan", str(ds), "--workdir", str(wd), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    for fold in range(5):
        train(wd, "3d_fullres", fold)
    train(wd, "2d", 0)
    return wd, ds


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor(run[0], configurations=["3d_fullres"], folds=[0, 1], device="cpu")


def _same_geometry(a: Geometry, b: Geometry) -> None:
    assert a.size == b.size
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-6)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_predict_file_keeps_geometry_and_labels(run, predictor, tmp_path):
    _, ds = run
    src = ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz"
    info = predictor.predict_file([str(src)], tmp_path / f"{case_id(6)}.nii.gz")
    seg, geom = read_label(tmp_path / f"{case_id(6)}.nii.gz")
    _same_geometry(geom, read_image_info(src))
    assert set(np.unique(seg).tolist()) <= LABELS
    assert info["case_id"] == case_id(6) and info["shape_zyx"] == [12, 16, 16] and info["seconds"] > 0
    assert predictor.step_size == 0.5 and predictor.mirror
    every_fold = Predictor(run[0], configurations=["3d_fullres"], device="cpu")  # folds of splits.json
    assert every_fold.folds == [0, 1, 2, 3, 4] and every_fold.num_members == 5

    # another spacing (resampled to the plan and back) and a rotated direction: the output keeps them
    image, _ = read_image(src)
    image = image[:, :10, :14, :12]
    rotated = Geometry(ndim=3, size=(12, 14, 10), spacing=(0.7, 1.3, 2.2), origin=(-4.0, 7.5, 100.0),
                       direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    write_image(image, rotated, tmp_path / "odd_0000.nrrd")
    predictor.predict_file([tmp_path / "odd_0000.nrrd"], tmp_path / "odd.nrrd")
    seg, geom = read_label(tmp_path / "odd.nrrd")
    assert seg.shape == (10, 14, 12)
    _same_geometry(geom, rotated)


def test_predict_array_matches_predict_file(run, predictor, tmp_path):
    _, ds = run
    src = ds / "imagesTs" / f"{case_id(7)}_0000.nii.gz"
    predictor.predict_file([src], tmp_path / "out.nii.gz")
    from_file, _ = read_label(tmp_path / "out.nii.gz")
    image, geom = read_image(src)
    res = predictor.predict_array(image, geom)
    assert res.segmentation.dtype == np.uint8 and res.probabilities is None and res.uncertainty is None
    np.testing.assert_array_equal(res.segmentation, from_file)
    by_spacing = predictor.predict_array(image, geom.spacing_zyx)
    np.testing.assert_array_equal(by_spacing.segmentation, from_file)


def test_probabilities_and_uncertainty(run, predictor, tmp_path):
    _, ds = run
    src = ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz"
    image, geom = read_image(src)
    plain = predictor.predict_array(image, geom)
    res = predictor.predict_array(image, geom, return_probabilities=True, return_uncertainty=True)
    assert res.probabilities.shape == (3, 12, 16, 16) and res.probabilities.dtype == np.float32
    np.testing.assert_allclose(res.probabilities.sum(axis=0), 1.0, atol=1e-5)
    # the members are computed separately, but the ensemble is the same as without uncertainty
    assert np.mean(res.segmentation == plain.segmentation) > 0.999
    unc = res.uncertainty
    assert unc.shape == (12, 16, 16) and unc.dtype == np.float32
    assert unc.min() >= 0.0 and unc.max() <= 1.0 and unc.max() > 0.0  # two different networks disagree

    info = predictor.predict_file([src], tmp_path / "c.nii.gz", save_probabilities=True, save_uncertainty=True)
    probs, cid = load_probabilities(tmp_path / "c.npz")
    assert cid == "c" and info["probabilities"] == str(tmp_path / "c.npz")
    assert probs.shape == (3, 12, 16, 16)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-2)
    seg, _ = read_label(tmp_path / "c.nii.gz")
    assert np.mean(np.argmax(probs, axis=0) == seg) > 0.99  # float16 storage may flip exact ties
    unc_file, unc_geom = read_image(tmp_path / "c_uncertainty.nii.gz")
    _same_geometry(unc_geom, geom)
    np.testing.assert_allclose(unc_file[0], res.uncertainty, atol=1e-6)


def test_fast_mode(run, tmp_path):
    wd, ds = run
    fast = Predictor(wd, configurations=["3d_fullres"], fast=True, device="cpu")
    assert fast.folds == [0] and fast.step_size == 0.75 and not fast.mirror and fast.num_members == 1
    image, geom = read_image(ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz")
    res = fast.predict_array(image, geom, return_uncertainty=True)
    assert res.segmentation.shape == (12, 16, 16) and set(np.unique(res.segmentation).tolist()) <= LABELS
    assert not res.uncertainty.any()  # a single member agrees with itself
    chosen = Predictor(wd, configurations=["3d_fullres"], folds=[1, 2], fast=True, device="cpu")
    assert chosen.folds == [1, 2] and chosen.num_members == 2


def test_2d_configuration_on_3d_data_and_ensemble(run):
    wd, ds = run
    ens = Predictor(wd, configurations=["2d", "3d_fullres"], folds=[0], device="cpu")
    assert ens.num_members == 2
    image, geom = read_image(ds / "imagesTs" / f"{case_id(7)}_0000.nii.gz")
    res = ens.predict_array(image, geom, return_probabilities=True, return_uncertainty=True)
    assert res.segmentation.shape == (12, 16, 16)
    np.testing.assert_allclose(res.probabilities.sum(axis=0), 1.0, atol=1e-5)
    only_2d = Predictor(wd, configurations=["2d"], folds=[0], device="cpu").predict_array(
        image, geom, return_probabilities=True)
    only_3d = Predictor(wd, configurations=["3d_fullres"], folds=[0], device="cpu").predict_array(
        image, geom, return_probabilities=True)
    np.testing.assert_allclose(res.probabilities, (only_2d.probabilities + only_3d.probabilities) / 2, atol=1e-5)
    assert 0.0 < res.uncertainty.max() <= 1.0


def test_missing_checkpoints_list_the_commands(run):
    wd, _ = run
    with pytest.raises(AutosegError) as e:
        Predictor(wd, configurations=["2d", "3d_fullres"], device="cpu")
    msg = str(e.value)
    for fold in (1, 2, 3, 4):
        assert f"autoseg train --workdir {wd} -c 2d --fold {fold}" in msg
    assert "-c 2d --fold 0" not in msg and "3d_fullres --fold" not in msg
    assert "predict with the folds that exist: add `--folds 0`" in msg  # what can be done right now
    with pytest.raises(AutosegError, match="unknown configuration '3d_fulres'; did you mean '3d_fullres'"):
        Predictor(wd, configurations=["3d_fulres"], device="cpu")


def test_selection_gives_configurations_folds_and_postprocessing(run, monkeypatch):
    wd, ds = run
    work = Workdir(wd)
    with pytest.raises(AutosegError, match=f"autoseg find-best --workdir {wd}"):
        Predictor(wd, device="cpu")
    steps = [PostprocessingStep(kind="largest_component_foreground", reason="test")]
    selection = Selection(schema_version=SCHEMA_VERSION, plans_hash=plans_hash(load_plans(wd)), folds=[0, 1],
                          candidates=[], winner="3d_fullres", winner_configurations=["3d_fullres"],
                          postprocessing=steps, foreground_dice_before_postprocessing=0.5,
                          foreground_dice_after_postprocessing=0.6, dice_per_class_after_postprocessing={})
    calls = []

    def fake_postprocessing(seg, given):
        calls.append(list(given))
        return np.zeros_like(seg)

    monkeypatch.setitem(sys.modules, "autoseg.inference.postprocess",
                        types.SimpleNamespace(apply_postprocessing=fake_postprocessing))
    try:
        save_json(selection, work.selection_json)
        chosen = Predictor(wd, device="cpu")
        assert chosen.configurations == ["3d_fullres"] and chosen.folds == [0, 1]
        assert chosen.postprocessing == steps and chosen.selection_winner == "3d_fullres"
        image, geom = read_image(ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz")
        assert not chosen.predict_array(image, geom).segmentation.any()  # the steps were applied
        assert calls == [steps]
        assert Predictor(wd, device="cpu", fast=True).folds == [0]
        assert Predictor(wd, configurations=["2d"], folds=[0], device="cpu").postprocessing == []
        assert Predictor(wd, device="cpu", postprocessing=False).postprocessing == []

        save_json(Selection(**{**selection.__dict__, "plans_hash": "0123456789abcdef"}), work.selection_json)
        with pytest.raises(StaleArtifactError, match="find-best"):
            Predictor(wd, device="cpu")
    finally:
        work.selection_json.unlink(missing_ok=True)


def test_bad_inputs_give_clear_errors(predictor):
    with pytest.raises(AutosegError, match="2 channel"):
        predictor.predict_array(np.zeros((2, 12, 16, 16), np.float32), (1.5, 1.0, 1.0))
    with pytest.raises(AutosegError, match=r"\(C, Z, Y, X\)"):
        predictor.predict_array(np.zeros((12, 16, 16), np.float32), (1.5, 1.0, 1.0))
    geom = Geometry(ndim=3, size=(8, 8, 8), spacing=(1.0, 1.0, 1.0), origin=(0.0,) * 3,
                    direction=tuple(np.eye(3).ravel()))
    with pytest.raises(AutosegError, match="does not match its geometry"):
        predictor.predict_array(np.zeros((1, 12, 16, 16), np.float32), geom)
    with pytest.raises(AutosegError, match="does not exist"):
        predictor.predict_file(["/nonexistent/case_0000.nii.gz"], "/tmp/never_written.nii.gz")
    assert not Path("/tmp/never_written.nii.gz").exists()


def test_checkpoint_that_does_not_fit_the_plans(run, tmp_path):
    wd, _ = run
    copy = tmp_path / "run"
    shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("preprocessed"))
    shutil.copy(Workdir(copy).checkpoint("2d", 0, "final"), Workdir(copy).checkpoint("3d_fullres", 0, "final"))
    with pytest.raises(AutosegError, match="does not fit the '3d_fullres' network"):
        Predictor(copy, configurations=["3d_fullres"], folds=[0], device="cpu")


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _resolve_precision("auto", cpu, ["bf16", "bf16"]) == "bf16"
    assert _resolve_precision("auto", cpu, ["bf16", "fp32"]) == "fp32"
    assert _resolve_precision("auto", cpu, ["fp16"]) == "fp32"
    assert _resolve_precision("auto", cpu, [None]) == "fp32"
    assert _resolve_precision("auto", cuda, ["bf16"]) == "fp16"
    assert _resolve_precision("bf16", cpu, ["fp32"]) == "bf16"
    with pytest.raises(AutosegError, match="needs a CUDA device"):
        _resolve_precision("fp16", cpu, ["fp32"])
    with pytest.raises(AutosegError, match="unknown"):
        _resolve_precision("int8", cpu, ["fp32"])


def test_member_disagreement_known_answer():
    store = MemberStore(2, (2, 1, 2, 2))
    try:
        a = np.zeros((2, 1, 2, 2), np.float32)
        a[0] = 1.0
        b = a.copy()
        b[:, 0, 0, 0] = [0.0, 1.0]  # the members disagree completely on one voxel
        store.add(a)
        store.add(b)
        mean = (a + b) / 2
        unc = store.uncertainty(mean)
    finally:
        store.close()
    expected = np.zeros((1, 2, 2), np.float32)
    expected[0, 0, 0] = 0.5  # each member is at total-variation distance 0.5 from the mean
    np.testing.assert_allclose(unc, expected, atol=1e-6)


def test_selection_postprocessing_is_applied(run):
    postprocess = pytest.importorskip("autoseg.inference.postprocess")
    from scipy import ndimage

    wd, ds = run
    work = Workdir(wd)
    steps = [PostprocessingStep(kind="largest_component_foreground")]
    selection = Selection(schema_version=SCHEMA_VERSION, plans_hash=plans_hash(load_plans(wd)), folds=[0],
                          candidates=[], winner="3d_fullres", winner_configurations=["3d_fullres"],
                          postprocessing=steps, foreground_dice_before_postprocessing=0.5,
                          foreground_dice_after_postprocessing=0.6, dice_per_class_after_postprocessing={})
    image, geom = read_image(ds / "imagesTs" / f"{case_id(7)}_0000.nii.gz")
    try:
        save_json(selection, work.selection_json)
        seg = Predictor(wd, device="cpu").predict_array(image, geom).segmentation
        raw = Predictor(wd, device="cpu", postprocessing=False).predict_array(image, geom).segmentation
    finally:
        work.selection_json.unlink(missing_ok=True)
    np.testing.assert_array_equal(seg, postprocess.apply_postprocessing(raw, steps))
    assert ndimage.label(seg > 0, structure=np.ones((3, 3, 3)))[1] <= 1  # full connectivity
    assert ndimage.label(raw > 0, structure=np.ones((3, 3, 3)))[1] > 1  # so the step did something


def test_folds_trained_with_other_plans_are_refused(run, tmp_path):
    wd, _ = run
    copy = tmp_path / "run"
    shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("preprocessed"))
    plans = load_plans(copy)
    full = plans.configuration("3d_fullres")
    # re-planned: another batch size does not change the weights' shapes, so the checkpoints would load
    save_json(replace(plans, configurations={**plans.configurations, "3d_fullres": replace(full, batch_size=5)}),
              Workdir(copy).plans_json)
    with pytest.raises(StaleArtifactError) as e:
        Predictor(copy, configurations=["3d_fullres"], folds=[0, 1], device="cpu")
    msg = str(e.value)
    for fold in (0, 1):
        assert f"3d_fullres fold {fold}: {Workdir(copy).train_settings_json('3d_fullres', fold)}" in msg
        assert f"rm -r {Workdir(copy).fold_dir('3d_fullres', fold)} && autoseg train --workdir {copy} " \
               f"-c 3d_fullres --fold {fold}" in msg
    assert "2d fold" not in msg
    assert Predictor(copy, configurations=["2d"], folds=[0], device="cpu").folds == [0]  # its plan is unchanged
