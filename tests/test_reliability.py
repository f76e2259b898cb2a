"""What can go wrong, and what the user sees (docs/what_can_go_wrong.md): bad input images, damaged
checkpoints, training that starts over, read-only and full disks, a writer that fails silently."""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import autoseg.atomic
import autoseg.data.image_io as image_io
from autoseg.cli import main
from autoseg.data.image_io import read_image, write_image, write_segmentation
from autoseg.errors import AutosegError
from autoseg.model.checkpoint import (CheckpointError, checkpoint_path, load_checkpoint, load_resume_checkpoint,
                                      save_checkpoint)
from autoseg.schemas import Geometry
from autoseg.workdir import Workdir
from tests.synthetic import case_id, make_synthetic_dataset

TRAIN = ["--epochs", "2", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]
PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
IDENTITY_2D, IDENTITY_3D = (1.0, 0.0, 0.0, 1.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _train(wd: Path, configuration: str, fold: int, *extra: str) -> int:
    return main(["train", "--workdir", str(wd), "-c", configuration, "--fold", str(fold), *TRAIN, *extra])


def _predict(wd: Path, inputs: Path, out: Path, configuration: str, *extra: str) -> int:
    return main(["predict", "--workdir", str(wd), "-i", str(inputs), "-o", str(out), "-c", configuration,
                 "--folds", "0", "--fast", "--no-progress", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> tuple[Path, Path]:
    """(work folder with 3d_fullres fold 0 trained, its 3D dataset with 2 imagesTs cases)."""
    root = tmp_path_factory.mktemp("reliability3d")
    ds = make_synthetic_dataset(root / "Dataset030_Rel3d", n_cases=6, shape=(12, 16, 16), with_test_cases=2)
    assert main(["plan", str(ds), "--workdir", str(root / "run"), *PLAN]) == 0
    assert _train(root / "run", "3d_fullres", 0) == 0
    return root / "run", ds


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, Path]:
    """(work folder with 2d fold 0 trained, its 2D NIfTI dataset with 1 imagesTs case)."""
    root = tmp_path_factory.mktemp("reliability2d")
    ds = make_synthetic_dataset(root / "Dataset031_Rel2d", ndim=2, n_cases=6, shape=(32, 32), with_test_cases=1)
    assert main(["plan", str(ds), "--workdir", str(root / "run"), *PLAN]) == 0
    assert _train(root / "run", "2d", 0) == 0
    return root / "run", ds


# --------------------------------------------------------------------------- 1. NaN/Inf voxels

def test_nan_voxels_fail_their_case_and_the_others_are_predicted(run3d, tmp_path, capsys):
    wd, ds = run3d
    inputs = tmp_path / "in"
    shutil.copytree(ds / "imagesTs", inputs)
    good, bad = case_id(6), case_id(7)
    bad_file = inputs / f"{bad}_0000.nii.gz"
    image, geometry = read_image(bad_file)
    image.reshape(-1)[:12] = np.nan
    write_image(image, geometry, bad_file)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{bad}.nii.gz").write_bytes(b"an older prediction")  # must not stay as if it were current
    capsys.readouterr()
    assert _predict(wd, inputs, out, "3d_fullres") == 1
    err = capsys.readouterr().err
    assert f"case {bad}: {bad_file} has 12 NaN voxels; fix or remove them" in err
    assert "1 of 2 case(s) could not be predicted" in err and "Traceback" not in err
    assert (out / f"{good}.nii.gz").is_file() and not (out / f"{bad}.nii.gz").exists()
    info = json.loads((out / "prediction_info.json").read_text())
    assert info["predicted_cases"] == [good] and list(info["failed_cases"]) == [bad]

    from autoseg import Predictor  # the Python API refuses the array too

    image[0, 0, 0, 12:15] = np.inf
    with pytest.raises(AutosegError, match="case array: the image has 12 NaN and 3 infinite voxels; fix or remove"):
        Predictor(wd, configurations=["3d_fullres"], folds=[0], device="cpu").predict_array(image, geometry)


# --------------------------------------------------------------------------- 2. dimensionality, channels

def _inputs_with(ds: Path, tmp_path: Path, name: str, shape: tuple[int, ...], geometry: Geometry) -> tuple[Path, Path]:
    """An input folder holding test case 6 and a random image NAME_0000.nii.gz of ``shape`` with ``geometry``."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ds / "imagesTs" / f"{case_id(6)}_0000.nii.gz", inputs)
    path = inputs / f"{name}_0000.nii.gz"
    write_image(np.random.default_rng(0).random(shape, np.float32) * 100, geometry, path)
    return inputs, path


def test_2d_image_given_to_a_3d_model_is_refused(run3d, tmp_path, capsys):
    wd, ds = run3d
    inputs, flat = _inputs_with(ds, tmp_path, "flat", (1, 1, 16, 16),
                                Geometry(ndim=2, size=(16, 16), spacing=(1.0, 1.0), origin=(0.0, 0.0),
                                         direction=IDENTITY_2D))
    out = tmp_path / "out"
    assert _predict(wd, inputs, out, "3d_fullres") == 1
    err = capsys.readouterr().err
    assert f"case flat: {flat} is a 2D image (size (16, 16))" in err
    assert "were trained on 3D images" in err and "Dataset030_Rel3d" in err
    assert (out / f"{case_id(6)}.nii.gz").is_file() and not (out / "flat.nii.gz").exists()


def test_spacing_in_other_units_is_warned_and_nonsense_spacing_refused(run3d, tmp_path, capsys, caplog):
    from autoseg.inference.checks import check_spacing

    wd, ds = run3d
    inputs = tmp_path / "in"
    inputs.mkdir()
    metres = inputs / "metres_0000.nii.gz"  # the header says metres' numbers in a mm field
    write_image(np.random.default_rng(0).random((1, 12, 16, 16), np.float32) * 100,
                Geometry(ndim=3, size=(16, 16, 12), spacing=(0.001, 0.001, 0.001), origin=(0.0, 0.0, 0.0),
                         direction=IDENTITY_3D), metres)
    with caplog.at_level(logging.WARNING):
        assert _predict(wd, inputs, tmp_path / "out", "3d_fullres") == 0  # predicted, with a warning
    assert any("case metres" in r.getMessage() and "other units" in r.getMessage() for r in caplog.records)
    geometry = Geometry(ndim=3, size=(4, 4, 4), spacing=(1.0, 0.0, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=IDENTITY_3D)
    with pytest.raises(AutosegError, match=r"case zero: f.nii.gz has spacing .* positive number of mm"):
        check_spacing("zero", "f.nii.gz", geometry, [1.0, 1.0, 1.0], 3)
    assert check_spacing("fine", "f.nii.gz", dataclasses.replace(geometry, spacing=(1.0, 1.0, 1.0)),
                         [1.0, 1.0, 1.0], 3) is None


def test_3d_image_given_to_a_2d_model_is_refused(run2d, tmp_path, capsys):
    wd, ds = run2d
    inputs, volume = _inputs_with(ds, tmp_path, "volume", (1, 4, 32, 32),
                                  Geometry(ndim=3, size=(32, 32, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                                           direction=IDENTITY_3D))
    out = tmp_path / "out"
    assert _predict(wd, inputs, out, "2d") == 1
    err = capsys.readouterr().err
    assert f"case volume: {volume} is a 3D image (4 slices" in err and "were trained on 2D images" in err
    assert (out / f"{case_id(6)}.nii.gz").is_file() and not (out / "volume.nii.gz").exists()


def test_wrong_channel_count_fails_its_case(run3d, tmp_path, capsys):
    wd, ds = run3d
    inputs = tmp_path / "in"
    shutil.copytree(ds / "imagesTs", inputs)
    extra = case_id(7)
    shutil.copy(inputs / f"{extra}_0000.nii.gz", inputs / f"{extra}_0001.nii.gz")
    out = tmp_path / "out"
    assert _predict(wd, inputs, out, "3d_fullres") == 1
    err = capsys.readouterr().err
    assert f"case {extra}: found 2 channel(s)" in err and "the networks expect 1" in err
    assert (out / f"{case_id(6)}.nii.gz").is_file() and not (out / f"{extra}.nii.gz").exists()


# --------------------------------------------------------------------------- 3. checkpoints

def _flip_tensor_bytes(path: Path) -> None:
    """Invert 4 bytes in the middle of the largest tensor stored in a torch.save zip (stored, not compressed)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(where)
        data = f.read(4)
        f.seek(where)
        f.write(bytes(b ^ 0xFF for b in data))


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "damaged bytes":
        _flip_tensor_bytes(path)
    elif how == "another network":
        save_checkpoint(path, model=torch.nn.Conv3d(1, 2, 3), optimizer=None, scheduler=None, state={"epoch": 1})
    elif how == "NaN weights":
        ckpt = torch.load(path, weights_only=True)
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][name].fill_(float("nan"))
        torch.save(ckpt, path)
    else:
        raise ValueError(how)


DAMAGE = {"truncated": "corrupt or truncated", "damaged bytes": "fails the zip CRC check",
          "another network": "holds the weights of another network", "NaN weights": "NaN or infinite weights"}


def _small_checkpoint(path: Path) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.InstanceNorm2d(4, affine=True))
    save_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None,
                    state={"epoch": 3})
    return model


@pytest.mark.parametrize("how", list(DAMAGE))
def test_load_checkpoint_verifies_before_use(tmp_path, how):
    path = checkpoint_path(tmp_path / "fold_0", "final")
    model = _small_checkpoint(path)
    load_checkpoint(path, network=model)  # intact: passes
    _damage(path, how)
    with pytest.raises(CheckpointError, match=DAMAGE[how]) as e:
        load_checkpoint(path, network=model)
    assert e.value.path == path and str(path) in str(e.value)


def test_checkpoint_of_another_network_names_the_difference(tmp_path):
    path = tmp_path / "checkpoint_final.pt"
    _small_checkpoint(path)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.InstanceNorm2d(8, affine=True))
    with pytest.raises(CheckpointError, match=r"another shape \(e\.g\. 0\.weight: saved \(4, 1, 3, 3\), "
                                              r"network \(8, 1, 3, 3\)\)"):
        load_checkpoint(path, network=other)


def test_bad_checkpoint_is_moved_aside_on_resume(tmp_path, caplog):
    fold = tmp_path / "fold_0"
    latest, final = checkpoint_path(fold, "latest"), checkpoint_path(fold, "final")
    model = _small_checkpoint(latest)
    _small_checkpoint(final)
    _flip_tensor_bytes(final)
    with caplog.at_level(logging.WARNING):
        found = load_resume_checkpoint(fold, network=model, set_aside_bad=True, stamp="20260101-000000")
    assert found is not None and found[0] == latest  # the previous good checkpoint
    assert not final.exists() and (fold / "checkpoint_final.pt.corrupt-20260101-000000").is_file()
    assert any("checkpoint_final.pt.corrupt-20260101-000000" in r.getMessage() for r in caplog.records)


def _log_epochs(path: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("fold,how", list(enumerate(DAMAGE, start=1)))
def test_train_again_after_a_bad_final_checkpoint_starts_over_with_a_fresh_log(run2d, fold, how, caplog):
    """Items 3 and 4: the bad checkpoint_final.pt is moved aside (the fold is not "finished"), training
    starts over (no checkpoint_latest.pt is left after a finished run), and the old training_log.jsonl and
    progress.png are moved aside with it: the new log has epochs 1, 2 (not 1, 2, 1, 2)."""
    wd = Workdir(run2d[0])
    assert _train(wd.root, "2d", fold) == 0
    final, log_path = wd.checkpoint("2d", fold, "final"), wd.training_log_jsonl("2d", fold)
    assert _log_epochs(log_path) == [1, 2]
    _damage(final, how)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _train(wd.root, "2d", fold) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert not any("already finished" in m for m in messages)
    fold_dir = wd.fold_dir("2d", fold)
    corrupt = sorted(fold_dir.glob("checkpoint_final.pt.corrupt-*"))
    assert len(corrupt) == 1 and any(corrupt[0].name in m and DAMAGE[how] in m for m in messages)
    load_checkpoint(final)  # a new, good one
    assert _log_epochs(log_path) == [1, 2]  # a fresh log: epochs 1, 2, not 1, 2, 1, 2
    old_logs = sorted(fold_dir.glob("training_log.jsonl.old-*"))
    assert len(old_logs) == 1 and _log_epochs(old_logs[0]) == [1, 2]
    assert len(sorted(fold_dir.glob("progress.png.old-*"))) == 1 and wd.progress_png("2d", fold).is_file()
    assert old_logs[0].name.split(".old-")[1] == corrupt[0].name.split(".corrupt-")[1]  # set aside together


def test_train_falls_back_to_the_previous_good_checkpoint(run3d, caplog):
    wd = Workdir(run3d[0])
    assert _train(wd.root, "3d_fullres", 1) == 0
    final, latest = wd.checkpoint("3d_fullres", 1, "final"), wd.checkpoint("3d_fullres", 1, "latest")
    shutil.copy(final, latest)  # as if the run had been stopped after its last epoch, before the final save
    _damage(final, "truncated")
    with caplog.at_level(logging.INFO):
        assert _train(wd.root, "3d_fullres", 1) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("resumed from checkpoint_latest.pt at epoch 2" in m for m in messages)
    assert len(list(wd.fold_dir("3d_fullres", 1).glob("checkpoint_final.pt.corrupt-*"))) == 1
    assert not list(wd.fold_dir("3d_fullres", 1).glob("*.old-*"))  # resumed: the log is kept
    assert _log_epochs(wd.training_log_jsonl("3d_fullres", 1)) == [1, 2]
    assert load_checkpoint(final)["state"]["epoch"] == 2 and not latest.exists()


def test_isolated_training_verifies_the_final_checkpoint(run2d, tmp_path, monkeypatch, caplog):
    """The parent of a training child loads checkpoint_final.pt: an unusable one is moved aside and the
    fold trained again once, then it is an error."""
    import autoseg.training.isolation as isolation
    from autoseg.store import RunStore
    from autoseg.schemas import TrainingSettings, load_json
    from autoseg.training.splits import fold_cases
    from autoseg.training.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(run2d[0], run)
    store = RunStore(run)
    wd, config = store.wd, store.plans().configuration("2d")
    settings = load_json(TrainingSettings, wd.train_settings_json("2d", 0))
    trainer = Trainer(wd, config, settings, *fold_cases(store.splits(), 0), progress=False)
    final = wd.checkpoint("2d", 0, "final")
    children: list[int] = []

    def child(trainer, where, bad_times):
        children.append(1)
        trainer.save("final")
        if len(children) <= bad_times:
            _damage(final, "damaged bytes")
        return trainer.state

    monkeypatch.setattr(isolation, "_fit_in_child", lambda t, w: child(t, w, 1))
    with caplog.at_level(logging.WARNING):
        isolation.run_training_guarded(trainer, isolate=True)
    assert len(children) == 2 and load_checkpoint(final)
    assert any("is trained again" in r.getMessage() for r in caplog.records)
    children.clear()
    monkeypatch.setattr(isolation, "_fit_in_child", lambda t, w: child(t, w, 2))
    with pytest.raises(AutosegError, match="finished twice, but each time its checkpoint_final.pt could not"):
        isolation.run_training_guarded(trainer, isolate=True)
    assert len(list(final.parent.glob("checkpoint_final.pt.corrupt-*"))) >= 3


@pytest.mark.parametrize("how", list(DAMAGE))
def test_predict_with_a_bad_checkpoint_names_it_and_the_train_command(run3d, tmp_path, capsys, how):
    wd, ds = run3d
    run = tmp_path / "run"
    shutil.copytree(wd, run, ignore=shutil.ignore_patterns("preprocessed"))
    final = Workdir(run).checkpoint("3d_fullres", 0, "final")
    _damage(final, how)
    assert _predict(run, ds / "imagesTs", tmp_path / "out", "3d_fullres") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if how == "another network":
        assert f"checkpoint {final} does not fit the '3d_fullres' network in plans.json (fold 0): it" in err
    else:
        assert f"checkpoint {final} of 3d_fullres fold 0 cannot be used: it" in err
    assert DAMAGE[how] in err
    assert f"`autoseg train --workdir {run} -c 3d_fullres --fold 0`" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5. read-only and full disks

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write()/fsync() raise: no file name


def test_full_disk_is_one_line_from_plan_train_and_predict(run2d, tmp_path, capsys, monkeypatch, caplog):
    wd, ds = run2d
    monkeypatch.setattr(os, "fsync", _no_space)  # every atomic JSON/checkpoint write fsyncs
    capsys.readouterr()
    new_run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(new_run), *PLAN]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"autoseg: error: cannot write {new_run}")
    assert err.rstrip().endswith(": No space left on device — free space or choose another --workdir/-o")
    assert err.count("\n") == 1 and "Traceback" not in err
    # no temporary file left behind (the work folder's lock file, empty, stays: locks.py)
    assert not [p for p in new_run.rglob("*") if p.is_file() and p.name != ".plan.lock"]

    assert _train(wd, "2d", 0) == 1
    err = capsys.readouterr().err
    assert err == (f"autoseg: error: cannot write {Workdir(wd).train_settings_json('2d', 0)}: No space left on "
                   f"device — free space or choose another --workdir/-o\n")

    out = tmp_path / "out"
    assert _predict(wd, ds / "imagesTs", out, "2d") == 1
    err = capsys.readouterr().err
    assert err == (f"autoseg: error: cannot write {out / 'prediction_info.json'}: No space left on device — "
                   f"free space or choose another --workdir/-o\n")

    caplog.clear()  # -v: the traceback too (logged)
    with caplog.at_level(logging.DEBUG):
        assert main(["plan", str(ds), "--workdir", str(new_run), *PLAN, "-v"]) == 1
    assert any(r.exc_info is not None for r in caplog.records)


def test_read_only_file_system_is_one_line(run2d, tmp_path, capsys, monkeypatch):
    """EROFS where a temporary file is created (the first step of every atomic write)."""
    wd, ds = run2d
    real_mkstemp = autoseg.atomic.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".x.tmp"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(autoseg.atomic.tempfile, "mkstemp", read_only)
    assert main(["plan", str(ds), "--workdir", str(tmp_path / "run"), *PLAN]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"autoseg: error: cannot write {tmp_path / 'run'}")
    assert "Read-only file system — the file system is mounted read-only; choose another --workdir/-o" in err
    assert ".tmp" not in err and "Traceback" not in err


def test_read_only_folder_with_chmod(run2d, tmp_path, capsys):
    wd, ds = run2d
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the simulated EROFS test covers this)")
        assert main(["plan", str(ds), "--workdir", str(locked / "run"), *PLAN]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"autoseg: error: cannot access {locked}") and "Permission denied — give " \
            "yourself permission (chmod/chown) or choose another --workdir/-o" in err and err.count("\n") == 1
        assert _predict(wd, ds / "imagesTs", locked, "2d") == 1
        err = capsys.readouterr().err
        assert f"cannot access {locked / 'prediction_info.json'}: Permission denied" in err
        assert "Traceback" not in err
    finally:
        locked.chmod(stat.S_IRWXU)


# --------------------------------------------------------------------------- 6. a writer that fails silently

def _silent_failure(monkeypatch, keep_fraction: float) -> None:
    """SimpleITK on a full disk: prints an error, raises nothing, leaves an empty or cut-off file."""
    real = image_io.sitk.WriteImage

    def write(img, path, *args, **kwargs):
        real(img, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: int(len(data) * keep_fraction)])

    monkeypatch.setattr(image_io.sitk, "WriteImage", write)


@pytest.mark.parametrize("keep,reason", [(0.0, "the file written is empty"), (0.5, "the file written is cut off")])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_short_write_is_detected_before_the_rename(tmp_path, monkeypatch, keep, reason, ending):
    seg = np.zeros((8, 16, 16), np.uint8)
    seg[2:5, 4:9, 4:9] = 1
    geometry = Geometry(ndim=3, size=(16, 16, 8), spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0),
                        direction=IDENTITY_3D)
    target = tmp_path / f"case{ending}"
    write_segmentation(seg, geometry, target)
    before = target.read_bytes()
    _silent_failure(monkeypatch, keep)
    with pytest.raises(AutosegError, match=f"could not be written completely \\({reason}") as e:
        write_segmentation(seg + 1, geometry, target)
    assert str(target) in str(e.value) and "the disk may be full" in str(e.value)
    assert target.read_bytes() == before  # the earlier file is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left


def test_short_write_through_predict_fails_the_cases(run2d, tmp_path, monkeypatch, capsys):
    wd, ds = run2d
    _silent_failure(monkeypatch, 0.5)
    out = tmp_path / "out"
    assert _predict(wd, ds / "imagesTs", out, "2d") == 1
    err = capsys.readouterr().err
    assert f"{out / (case_id(6) + '.nii.gz')}: could not be written completely" in err
    assert "the disk may be full" in err
    assert sorted(p.name for p in out.iterdir()) == ["prediction_info.json"]


# --------------------------------------------------------------------------- a real full disk (tmpfs)

def _tmpfs_script_or_skip(tmp_path: Path, body: str) -> str:
    """Run ``body`` (sh) in a private mount namespace where $MNT is a fresh 48 MB tmpfs; return its output.
    Skips with the reason when this machine does not allow unprivileged mount namespaces."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no `unshare` here: a real full disk needs a private tmpfs mount (util-linux)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=48m tmpfs {mnt}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs in a user namespace is not allowed here ({probe.stderr.strip()})")
    script = f"set -u\nMNT={mnt}\nmount -t tmpfs -o size=48m tmpfs $MNT\n{body}\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, env=env, timeout=600)
    return done.stdout + done.stderr


def _cli(name: str, *args: str) -> str:
    """Shell lines that run `autoseg ARGS` and print NAME_RC=<exit code> and NAME_ERR=<stderr, lines joined by |>."""
    err = f"$MNT/../{name.lower()}.err"
    return (f"{sys.executable} -m autoseg {' '.join(str(a) for a in args)} 2>{err} >/dev/null\n"
            f'echo "{name}_RC=$?"; echo "{name}_ERR=$(cat {err} | tr \'\\n\' \'|\')"\n')


def _values(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=", 1)[0].isupper())


def test_a_real_full_disk_fails_plan_train_and_predict_in_one_line(run2d, tmp_path):
    """On a tmpfs that is really full: plan, train and predict each end with one line naming the path and
    'No space left on device', exit code 1, and leave nothing that looks complete."""
    wd, ds = run2d
    predict = ("predict", "--workdir", wd, "-i", ds / "imagesTs", "-o", "$MNT/out", "-c", "2d", "--folds", "0", "--fast",
               "--no-progress", "--device", "cpu")
    out = _tmpfs_script_or_skip(tmp_path, (
        _cli("PLAN", "plan", ds, "--workdir", "$MNT/run", *PLAN)
        + "dd if=/dev/zero of=$MNT/filler bs=64k 2>/dev/null; sync\n"
        + _cli("TRAIN", "train", "--workdir", "$MNT/run", "-c", "2d", "--fold", "0", *TRAIN)
        + 'echo "FOLD_FILES=$(ls $MNT/run/results/2d/fold_0 2>/dev/null | tr \'\\n\' \' \')"\n'
        + _cli("PLAN2", "plan", ds, "--workdir", "$MNT/run2", *PLAN)
        + _cli("PREDICT", *predict)
        + 'echo "OUT_FILES=$(ls $MNT/out 2>/dev/null | tr \'\\n\' \' \')"\n'))
    values = _values(out)
    assert values.get("PLAN_RC") == "0", out
    for step in ("TRAIN", "PLAN2", "PREDICT"):
        assert values[f"{step}_RC"] == "1", (step, out)
        stderr = values[f"{step}_ERR"].rstrip("|")
        assert "Traceback" not in stderr, (step, stderr)
        err = stderr.split("|")[-1]  # the last line: the error, after any progress log lines
        assert err.startswith("autoseg: error: ") and stderr.count("autoseg: error:") == 1, (step, stderr)
        assert "No space left on device" in err and str(tmp_path / "mnt") in err, (step, err)
    assert "checkpoint_final.pt" not in values["FOLD_FILES"]
    assert ".tmp" not in values["FOLD_FILES"] and ".tmp" not in values["OUT_FILES"]
    assert "nii.gz" not in values["OUT_FILES"]  # no prediction that looks complete


def test_a_real_read_only_mount_fails_plan_and_predict_in_one_line(run2d, tmp_path):
    wd, ds = run2d
    out = _tmpfs_script_or_skip(tmp_path, (
        "mkdir -p $MNT/out; mount -o remount,ro $MNT\n"
        + _cli("PLAN", "plan", ds, "--workdir", "$MNT/run", *PLAN)
        + _cli("PREDICT", "predict", "--workdir", wd, "-i", ds / "imagesTs", "-o", "$MNT/out", "-c", "2d", "--folds",
               "0", "--fast", "--no-progress", "--device", "cpu")
        + 'echo "TRACEBACKS=$(cat $MNT/../*.err | grep -c Traceback)"\n'))
    values = _values(out)
    assert values.get("TRACEBACKS") == "0", out
    for step in ("PLAN", "PREDICT"):
        assert values[f"{step}_RC"] == "1", (step, out)
        err = values[f"{step}_ERR"].rstrip("|").split("|")[-1]
        assert err.startswith("autoseg: error: cannot write") and "Read-only file system" in err, (step, err)
        assert str(tmp_path / "mnt") in err, (step, err)
