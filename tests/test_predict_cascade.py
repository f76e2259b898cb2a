"""Prediction of new images with the cascade: 3d_lowres predicted first, fed to 3d_cascade_fullres."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import autoseg.inference.predictor as predictor_module
from autoseg.cli import main
from autoseg.data.image_io import read_image, read_image_info, read_label
from autoseg.errors import AutosegError
from autoseg.inference.partial import PREDICTION_INFO_JSON
from autoseg.inference.predictor import Predictor
from autoseg.training.validation import _with_previous_stage
from autoseg.store import load_manifest, load_plans
from autoseg.schemas import Splits, load_json
from autoseg.workdir import Workdir
from tests.conftest import CASCADE_DATASET, FAST_TRAIN
from tests.synthetic import case_id


@pytest.fixture(scope="module")
def cascade_run(lowres_run: Path) -> Path:
    """lowres_run with 3d_cascade_fullres folds 0 and 1 trained (a few iterations)."""
    for fold in (0, 1):
        assert main(["train", "--workdir", str(lowres_run), "-c", "3d_cascade_fullres", "--fold", str(fold),
                     *FAST_TRAIN, "--no-validation"]) == 0
    return lowres_run


def test_predict_new_cases_with_the_cascade(cascade_run: Path, tmp_path: Path, capsys) -> None:
    images = cascade_run.parent / CASCADE_DATASET / "imagesTs"
    out = tmp_path / "preds"
    assert main(["predict", "--workdir", str(cascade_run), "-i", str(images), "-o", str(out),
                 "-c", "3d_cascade_fullres", "--folds", "0", "1", "--no-progress", "--device", "cpu"]) == 0
    assert "with 3d_cascade_fullres (folds [0, 1])" in capsys.readouterr().out
    for i in (5, 6):
        src = images / f"{case_id(i)}_0000.nii.gz"
        seg, geom = read_label(out / f"{case_id(i)}.nii.gz")
        ref = read_image_info(src)
        assert seg.shape == (12, 16, 16) and geom.size == ref.size and set(np.unique(seg).tolist()) <= {0, 1, 2}
        np.testing.assert_allclose(geom.spacing, ref.spacing, rtol=1e-6)
        np.testing.assert_allclose(geom.origin, ref.origin, atol=1e-6)
        np.testing.assert_allclose(geom.direction, ref.direction, atol=1e-6)
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert info["configurations"] == ["3d_cascade_fullres"] and info["folds"] == [0, 1]
    assert info["previous_stages"] == {"3d_cascade_fullres": "3d_lowres"}
    assert set(info["precision"]) == {"3d_lowres", "3d_cascade_fullres"}


def test_cascade_gets_the_input_validation_gives_it(cascade_run: Path, monkeypatch) -> None:
    # a training case held out by lowres fold k: the Predictor (fold k) must feed the cascade network
    # exactly what validation feeds it (the lowres fold's held-out prediction on the fullres grid)
    wd = Workdir(cascade_run)
    plans = load_plans(cascade_run)
    cfg = plans.configuration("3d_cascade_fullres")
    k = 1
    cid = load_json(Splits, wd.splits_json).folds[k].val[0]
    case = next(c for c in load_manifest(cascade_run).cases if c.case_id == cid)
    image, geom = read_image(case.images[0])
    fed = []

    def recording(*args, **kwargs):
        fed.append(cascade_input(*args, **kwargs))
        return fed[-1]

    cascade_input = predictor_module.cascade_input
    monkeypatch.setattr(predictor_module, "cascade_input", recording)
    predictor = Predictor(cascade_run, configurations=["3d_cascade_fullres"], folds=[k], device="cpu")
    assert predictor.stages == ["3d_lowres", "3d_cascade_fullres"] and predictor.num_members == 1
    predictor.predict_array(image, geom, case_id=cid)

    validation_input = _with_previous_stage(np.load(wd.case_data_npy(cfg.data_identifier, cid)),
                                            {cid: wd.lowres_predictions_dir("3d_lowres", k) / f"{cid}_seg.npy"},
                                            cid, cfg)
    assert len(fed) == 1 and fed[0].shape == validation_input.shape == (3, *validation_input.shape[1:])
    np.testing.assert_array_equal(fed[0], validation_input)


def test_lowres_in_an_ensemble_with_the_cascade_is_predicted_once(cascade_run: Path, monkeypatch) -> None:
    image, geom = read_image(cascade_run.parent / CASCADE_DATASET / "imagesTs" / f"{case_id(5)}_0000.nii.gz")
    alone = {c: Predictor(cascade_run, configurations=[c], folds=[0], device="cpu").predict_array(
        image, geom, return_probabilities=True).probabilities for c in ("3d_lowres", "3d_cascade_fullres")}
    calls = []
    original = predictor_module.predict_preprocessed_case

    def counting(networks, data, properties, config, **kwargs):
        calls.append(config.name)
        return original(networks, data, properties, config, **kwargs)

    monkeypatch.setattr(predictor_module, "predict_preprocessed_case", counting)
    both = Predictor(cascade_run, configurations=["3d_cascade_fullres", "3d_lowres"], folds=[0], device="cpu")
    assert both.stages == ["3d_lowres", "3d_cascade_fullres"] and both.num_members == 2
    res = both.predict_array(image, geom, return_probabilities=True)
    assert calls == ["3d_lowres", "3d_cascade_fullres"]
    np.testing.assert_allclose(res.probabilities, (alone["3d_lowres"] + alone["3d_cascade_fullres"]) / 2,
                               atol=1e-5)


def test_missing_previous_stage_folds_name_the_training_command(cascade_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(cascade_run, run, ignore=shutil.ignore_patterns("preprocessed"))
    Workdir(run).checkpoint("3d_lowres", 1, "final").unlink()
    with pytest.raises(AutosegError) as e:
        Predictor(run, configurations=["3d_cascade_fullres"], folds=[0, 1], device="cpu")
    msg = str(e.value)
    assert "3d_lowres fold 1 (the input of 3d_cascade_fullres)" in msg
    assert f"autoseg train --workdir {run} -c 3d_lowres --fold 1" in msg and "--fold 0" not in msg
