"""predict_cases: folders and lists of new cases, per-case failures, formats, prediction_info.json."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoseg import __version__
from autoseg.cli import main
from autoseg.data.image_io import read_image, read_image_info, read_label, write_image
from autoseg.errors import AutosegError
from autoseg.model.export import load_probabilities
from autoseg.inference.partial import PREDICTION_INFO_JSON
from autoseg.inference.predict_cases import predict_cases
from autoseg.store import load_plans, plans_hash
from tests.synthetic import case_id, make_synthetic_dataset

TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]


def plan_and_train(ds: Path, wd: Path, configuration: str, folds: list[int]) -> None:
    assert main(["plan", str(ds), "--workdir", str(wd), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    for fold in folds:
        assert main(["train", "--workdir", str(wd), "-c", configuration, "--fold", str(fold), *TRAIN]) == 0


def same_geometry(out: Path, src: Path) -> None:
    a, b = read_image_info(out), read_image_info(src)
    assert a.size == b.size and a.ndim == b.ndim
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-6)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.fixture(scope="module")
def two_channel(tmp_path_factory) -> tuple[Path, Path]:
    """(work folder with 3d_fullres folds 0 and 1, dataset with 2 channels and 4 imagesTs cases)."""
    root = tmp_path_factory.mktemp("predict_cases")
    ds = make_synthetic_dataset(root / "Dataset021_Two", n_cases=6, shape=(12, 16, 16), n_channels=2,
                                spacing_zyx=(2.0, 1.0, 1.0), with_test_cases=4)
    plan_and_train(ds, root / "run", "3d_fullres", [0, 1])
    return root / "run", ds


def test_folder_of_cases_and_prediction_info(two_channel, tmp_path):
    wd, ds = two_channel
    out = tmp_path / "preds"
    info = predict_cases(wd, ds / "imagesTs", out, configurations=["3d_fullres"], folds=[0, 1],
                         save_probabilities=True, progress=False)
    cases = [case_id(i) for i in range(6, 10)]
    for cid in cases:
        seg, _ = read_label(out / f"{cid}.nii.gz")
        same_geometry(out / f"{cid}.nii.gz", ds / "imagesTs" / f"{cid}_0000.nii.gz")
        assert set(np.unique(seg).tolist()) <= {0, 1, 2}
        probs, _ = load_probabilities(out / f"{cid}.npz")
        assert probs.shape == (3, *seg.shape)
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-2)
    on_disk = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert on_disk == info
    assert info["autoseg_version"] == __version__
    assert info["configurations"] == ["3d_fullres"] and info["folds"] == [0, 1]
    assert info["plans_hash"] == plans_hash(load_plans(wd))
    assert info["checkpoint"] == "final" and info["step_size"] == 0.5 and info["mirroring"] is True
    assert info["postprocessing"] == [] and info["device"] == "cpu" and info["precision"] == {"3d_fullres": "fp32"}
    assert sorted(info["seconds_per_case"]) == cases and info["failed_cases"] == {}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PREDICTION_INFO_JSON] + [f"{c}.nii.gz" for c in cases] + [f"{c}.npz" for c in cases])


def test_failed_cases_are_named_and_the_others_written(two_channel, tmp_path):
    wd, ds = two_channel
    inputs = tmp_path / "in"
    shutil.copytree(ds / "imagesTs", inputs)
    ok, no_second, corrupt, no_first = (case_id(i) for i in range(6, 10))
    (inputs / f"{no_second}_0001.nii.gz").unlink()
    (inputs / f"{corrupt}_0000.nii.gz").write_bytes(b"not an image at all")
    (inputs / f"{no_first}_0000.nii.gz").unlink()
    out = tmp_path / "preds"
    out.mkdir()
    (out / f"{corrupt}.nii.gz").write_bytes(b"an old prediction")  # stale: must not look current
    with pytest.raises(AutosegError) as e:
        predict_cases(wd, inputs, out, configurations=["3d_fullres"], folds=[0], save_uncertainty=True,
                      progress=False)
    msg = str(e.value)
    assert "3 of 4 case(s) could not be predicted" in msg
    assert f"case {no_second}: found 1 channel(s) in {inputs / f'{no_second}_0000.nii.gz'}" in msg
    assert str(inputs / f"{corrupt}_0000.nii.gz") in msg and "cannot be read" in msg
    assert f"missing channel file(s) {inputs / f'{no_first}_0000.nii.gz'}" in msg
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PREDICTION_INFO_JSON, f"{ok}.nii.gz", f"{ok}_uncertainty.nii.gz"])
    same_geometry(out / f"{ok}.nii.gz", inputs / f"{ok}_0000.nii.gz")
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert sorted(info["failed_cases"]) == sorted([no_second, corrupt, no_first])
    assert info["predicted_cases"] == [ok]


def test_input_mistakes_fail_before_any_work(two_channel, tmp_path):
    wd, ds = two_channel
    with pytest.raises(AutosegError, match="2 channel files per case"):
        predict_cases(wd, [ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz"], tmp_path / "o", folds=[0],
                      configurations=["3d_fullres"], progress=False)
    with pytest.raises(AutosegError, match="is the input folder"):
        predict_cases(wd, ds / "imagesTs", ds / "imagesTs", configurations=["3d_fullres"], progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(AutosegError, match=r"no files ending in '\.nii\.gz' found.*\.txt"):
        predict_cases(wd, empty, tmp_path / "o", configurations=["3d_fullres"], progress=False)
    with pytest.raises(AutosegError, match="autoseg train --workdir .* -c 3d_fullres --fold 4"):
        predict_cases(wd, ds / "imagesTs", tmp_path / "o", configurations=["3d_fullres"], progress=False)
    assert not (tmp_path / "o").exists()


def test_png_2d_dataset_keeps_format(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset022_Png", ndim=2, n_cases=6, shape=(32, 32),
                                file_ending=".png", with_test_cases=2)
    plan_and_train(ds, tmp_path / "run", "2d", [0])
    out = tmp_path / "preds"
    info = predict_cases(tmp_path / "run", ds / "imagesTs", out, configurations=["2d"], folds=[0],
                         save_uncertainty=True, progress=False)
    assert info["failed_cases"] == {} and len(info["seconds_per_case"]) == 2
    for i in (6, 7):
        seg, geom = read_label(out / f"{case_id(i)}.png")
        assert geom.ndim == 2 and seg.shape == (1, 32, 32) and set(np.unique(seg).tolist()) <= {0, 1, 2}
        same_geometry(out / f"{case_id(i)}.png", ds / "imagesTs" / f"{case_id(i)}_0000.png")
        unc, unc_geom = read_image(out / f"{case_id(i)}_uncertainty.nii.gz")  # PNG cannot store floats
        assert unc_geom.ndim == 2 and unc.shape == (1, 1, 32, 32) and not unc.any()  # one member


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_3d_formats_keep_format_and_geometry(tmp_path, ending):
    ds = make_synthetic_dataset(tmp_path / "Dataset023_Fmt", n_cases=6, shape=(10, 16, 12),
                                spacing_zyx=(2.5, 0.8, 0.9), file_ending=ending, with_test_cases=2)
    plan_and_train(ds, tmp_path / "run", "3d_fullres", [0])
    files = [ds / "imagesTs" / f"{case_id(i)}_0000{ending}" for i in (6, 7)]
    out = tmp_path / "preds"
    # a list of single files (a single-channel dataset): "<case>_0000" gives the case id "<case>"
    info = predict_cases(tmp_path / "run", [str(f) for f in files], out, configurations=["3d_fullres"],
                         folds=[0], fast=True, progress=False)
    assert info["step_size"] == 0.75 and info["mirroring"] is False and info["fast"] is True
    for i, src in zip((6, 7), files):
        seg, _ = read_label(out / f"{case_id(i)}{ending}")
        assert seg.shape == (10, 16, 12) and set(np.unique(seg).tolist()) <= {0, 1, 2}
        same_geometry(out / f"{case_id(i)}{ending}", src)


def _old_outputs(out: Path, case: str) -> list[Path]:
    """An earlier run's segmentation, probabilities and uncertainty of ``case`` in ``out``."""
    paths = [out / f"{case}.nii.gz", out / f"{case}.npz", out / f"{case}_uncertainty.nii.gz"]
    for p in paths:
        p.write_bytes(b"from an earlier run")
    return paths


def test_failed_cases_leave_no_older_outputs(two_channel, tmp_path):
    wd, ds = two_channel
    inputs = tmp_path / "in"
    shutil.copytree(ds / "imagesTs", inputs)
    ok, gap, unreadable, wrong_grid = (case_id(i) for i in range(6, 10))
    (inputs / f"{gap}_0000.nii.gz").unlink()  # a channel gap: not predicted at all
    (inputs / f"{unreadable}_0001.nii.gz").write_bytes(b"not an image")  # fails while it is read
    image, geom = read_image(inputs / f"{wrong_grid}_0001.nii.gz")
    write_image(image[:, :, :8], replace(geom, size=(16, 8, 12)), inputs / f"{wrong_grid}_0001.nii.gz")
    shutil.copy(inputs / f"{ok}_0000.nii.gz", inputs / "misnamed.nii.gz")  # not <case>_<cccc>
    out = tmp_path / "preds"
    out.mkdir()
    old = {c: _old_outputs(out, c) for c in (ok, gap, unreadable, wrong_grid, "misnamed")}
    with pytest.raises(AutosegError, match="4 of 5 case"):
        predict_cases(wd, inputs, out, configurations=["3d_fullres"], folds=[0], progress=False, num_workers=2)
    for c in (gap, unreadable, wrong_grid, "misnamed"):
        assert not any(p.exists() for p in old[c]), c
    seg, _ = read_label(out / f"{ok}.nii.gz")  # written again; its old probabilities and uncertainty are gone
    assert seg.shape == (12, 16, 16) and not old[ok][1].exists() and not old[ok][2].exists()
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert sorted(info["failed_cases"]) == sorted([gap, unreadable, wrong_grid, "misnamed"])
    assert "same grid" in info["failed_cases"][wrong_grid] and info["predicted_cases"] == [ok]


def test_workers_overlap_io_with_identical_outputs(two_channel, tmp_path):
    wd, ds = two_channel
    outputs = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        info = predict_cases(wd, ds / "imagesTs", out, configurations=["3d_fullres"], folds=[0, 1], progress=False,
                             save_probabilities=True, save_uncertainty=True, num_workers=workers)
        assert info["num_workers"] == workers and len(info["predicted_cases"]) == 4
        outputs[workers] = {p.name: (read_label(p)[0] if p.name.endswith(".nii.gz") and "_uncertainty" not in p.name
                                     else read_image(p)[0] if p.name.endswith(".nii.gz") else load_probabilities(p)[0])
                            for p in out.iterdir() if p.name != PREDICTION_INFO_JSON}
    assert len(outputs[1]) == 12
    for workers in (2, 3):
        assert outputs[workers].keys() == outputs[1].keys()
        for name, arr in outputs[1].items():
            np.testing.assert_array_equal(outputs[workers][name], arr, err_msg=f"{name} with {workers} workers")


def test_cli_mirroring_and_step_size(two_channel, tmp_path, capsys):
    wd, ds = two_channel
    out = tmp_path / "preds"
    base = ["predict", "--workdir", str(wd), "-i", str(ds / "imagesTs"), "-o", str(out), "-c", "3d_fullres",
            "--folds", "0", "--no-progress", "--device", "cpu"]
    for bad in ("0", "1.5", "-0.2", "nan", "half"):
        with pytest.raises(SystemExit) as e:
            main([*base, "--step-size", bad])
        assert e.value.code == 2 and "0 < F <= 1" in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--no-mirroring", "--step-size", "0.8", "--num-workers", "1"]) == 0
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert info["mirroring"] is False and info["step_size"] == 0.8 and info["fast"] is False
    assert info["folds"] == [0] and info["num_workers"] == 1


def test_cli_parts_together_write_exactly_what_one_run_writes(two_channel, tmp_path):
    wd, ds = two_channel
    base = ["predict", "--workdir", str(wd), "-i", str(ds / "imagesTs"), "-c", "3d_fullres", "--folds", "0",
            "--no-progress", "--device", "cpu", "--num-workers", "1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*base, "-o", str(whole)]) == 0
    for k in (0, 1):
        assert main([*base, "-o", str(parts), "--num-parts", "2", "--part-id", str(k)]) == 0
    segs = sorted(p.name for p in whole.glob("*.nii.gz"))
    assert len(segs) == 4 and sorted(p.name for p in parts.glob("*.nii.gz")) == segs
    for name in segs:
        a, b = read_label(whole / name)[0], read_label(parts / name)[0]
        assert np.array_equal(a, b), name
    infos = [json.loads((parts / f"prediction_info.part-{k}-of-2.json").read_text()) for k in (0, 1)]
    assert [i["predicted_cases"] for i in infos] == [[case_id(6), case_id(8)], [case_id(7), case_id(9)]]
    assert not (parts / PREDICTION_INFO_JSON).exists()
    assert main([*base, "-o", str(parts), "--num-parts", "2", "--part-id", "2"]) == 1  # K must be < N


def test_cli_continue_skips_only_cases_of_the_same_model(two_channel, tmp_path, caplog):
    import logging

    wd, ds = two_channel
    out = tmp_path / "out"
    base = ["predict", "--workdir", str(wd), "-i", str(ds / "imagesTs"), "-o", str(out), "-c", "3d_fullres",
            "--no-progress", "--device", "cpu", "--num-workers", "1"]
    assert main([*base, "--folds", "0", "--num-parts", "2", "--part-id", "0"]) == 0  # "interrupted" half-way
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert len(first) == 2
    with caplog.at_level(logging.INFO):
        assert main([*base, "--folds", "0", "--continue"]) == 0
    assert "2 case(s) already predicted by this model are kept, 2 to predict" in caplog.text
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert sorted(info["kept_from_before"]) == sorted(n.removesuffix(".nii.gz") for n in first)
    assert len(info["predicted_cases"]) == 4
    assert all((out / n).stat().st_mtime_ns == t for n, t in first.items())  # not written again
    # another model (fold 1 instead of fold 0): nothing is kept, whatever the file names say
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([*base, "--folds", "1", "--continue"]) == 0
    assert "was made by another model (folds differ)" in caplog.text
    assert json.loads((out / PREDICTION_INFO_JSON).read_text())["kept_from_before"] == []


def test_cli_checkpoint_best_is_used_and_recorded(two_channel, tmp_path):
    wd, ds = two_channel
    out = tmp_path / "best"
    assert main(["predict", "--workdir", str(wd), "-i", str(ds / "imagesTs"), "-o", str(out), "-c", "3d_fullres",
                 "--folds", "0", "--checkpoint", "best", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / PREDICTION_INFO_JSON).read_text())["checkpoint"] == "best"
    with pytest.raises(SystemExit) as e:
        main(["predict", "--workdir", str(wd), "-i", str(ds / "imagesTs"), "-o", str(out), "--checkpoint", "latest"])
    assert e.value.code == 2


def test_a_folder_that_mixes_formats_fails_those_cases_clearly(two_channel, tmp_path, capsys):
    wd, ds = two_channel
    inputs = tmp_path / "in"
    shutil.copytree(ds / "imagesTs", inputs)
    for channel in (0, 1):  # one case in NRRD instead of the dataset's NIfTI
        src = inputs / f"{case_id(7)}_{channel:04d}.nii.gz"
        image, geometry = read_image(src)
        write_image(image, geometry, inputs / f"{case_id(7)}_{channel:04d}.nrrd")
        src.unlink()
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", "--workdir", str(wd), "-i", str(inputs), "-o", str(out), "-c", "3d_fullres",
                 "--folds", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"case {case_id(7)}: {inputs / (case_id(7) + '_0000.nrrd')} is a '.nrrd' file, but this model's dataset " \
           f"uses '.nii.gz' and a folder is read in that format only; convert the case's files to .nii.gz" in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{case_id(i)}.nii.gz" for i in (6, 8, 9)]
