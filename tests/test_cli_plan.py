"""`autoseg plan` end to end through the CLI: bad input leaves the work folder empty; good input plans."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.schemas import Fingerprint, Plans, Splits, load_json
from autoseg.workdir import Workdir
from tests.synthetic import case_id, make_synthetic_dataset

FAST = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]


def _plan(ds: Path, wd: Path, *extra: str) -> int:
    return main(["plan", str(ds), "--workdir", str(wd), *FAST, *extra])


def _rewrite(path: Path, fn) -> None:
    img = sitk.ReadImage(str(path))
    out = fn(img)
    sitk.WriteImage(out, str(path))


def _set_voxel(value: float, label: bool = False):
    def fn(img):
        arr = sitk.GetArrayFromImage(img).astype(np.float32 if not label else np.float32)
        arr[tuple(s // 2 for s in arr.shape)] = value
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out
    return fn


def _spacing(img):
    img.SetSpacing(tuple(s * 1.5 for s in img.GetSpacing()))
    return img


def _origin(img):
    img.SetOrigin(tuple(o + 7.0 for o in img.GetOrigin()))
    return img


def _crop(img):
    return img[:, :, :-2]


# each breaker damages a valid dataset and names the file the message must mention
def _missing_label(ds):
    (ds / "labelsTr" / f"{case_id(1)}.nii.gz").unlink()
    return case_id(1)


def _missing_channel(ds):
    (ds / "imagesTr" / f"{case_id(2)}_0000.nii.gz").unlink()
    return case_id(2)


def _shape(ds):
    _rewrite(ds / "labelsTr" / f"{case_id(0)}.nii.gz", _crop)
    return f"{case_id(0)}.nii.gz"


def _spacing_mismatch(ds):
    _rewrite(ds / "labelsTr" / f"{case_id(0)}.nii.gz", _spacing)
    return f"{case_id(0)}.nii.gz"


def _origin_mismatch(ds):
    _rewrite(ds / "labelsTr" / f"{case_id(3)}.nii.gz", _origin)
    return f"{case_id(3)}.nii.gz"


def _undeclared_label(ds):
    _rewrite(ds / "labelsTr" / f"{case_id(0)}.nii.gz", _set_voxel(7, label=True))
    return f"{case_id(0)}.nii.gz"


def _non_integer_label(ds):
    _rewrite(ds / "labelsTr" / f"{case_id(0)}.nii.gz", _set_voxel(0.5, label=True))
    return f"{case_id(0)}.nii.gz"


def _nan(ds):
    _rewrite(ds / "imagesTr" / f"{case_id(1)}_0000.nii.gz", _set_voxel(float("nan")))
    return f"{case_id(1)}_0000.nii.gz"


def _unreadable(ds):
    (ds / "imagesTr" / f"{case_id(4)}_0000.nii.gz").write_bytes(b"not an image at all")
    return f"{case_id(4)}_0000.nii.gz"


def _truncated(ds):
    p = ds / "imagesTr" / f"{case_id(2)}_0000.nii.gz"
    p.write_bytes(p.read_bytes()[: 200])
    return f"{case_id(2)}_0000.nii.gz"


def _malformed_json(ds):
    (ds / "dataset.json").write_text("{ not json")
    return "dataset.json"


def _missing_key(ds):
    d = json.loads((ds / "dataset.json").read_text())
    del d["labels"]
    (ds / "dataset.json").write_text(json.dumps(d))
    return "dataset.json"


def _empty(ds):
    for p in list((ds / "imagesTr").iterdir()) + list((ds / "labelsTr").iterdir()):
        p.unlink()
    return "imagesTr"


BREAKERS = [_missing_label, _missing_channel, _shape, _spacing_mismatch, _origin_mismatch,
            _undeclared_label, _non_integer_label, _nan, _unreadable, _truncated, _malformed_json,
            _missing_key, _empty]


@pytest.mark.parametrize("breaker", BREAKERS, ids=[b.__name__.strip("_") for b in BREAKERS])
def test_bad_dataset_fails_cleanly_and_writes_nothing(tmp_path, capsys, breaker):
    ds = make_synthetic_dataset(tmp_path / "Dataset001_Bad", n_cases=5, shape=(12, 16, 16))
    named = breaker(ds)
    wd = tmp_path / "run"
    assert _plan(ds, wd) == 1
    err = capsys.readouterr().err
    assert err.startswith("autoseg: error:"), err
    assert named in err, err
    assert "Traceback" not in err
    assert not wd.exists() or not any(wd.iterdir()), list(wd.iterdir())


@pytest.mark.parametrize("ndim,shape,ending,expected", [
    (3, (16, 24, 24), ".nii.gz", {"2d", "3d_fullres"}),
    (2, (48, 40), ".png", {"2d"}),
])
def test_plan_synthetic_datasets(tmp_path, capsys, ndim, shape, ending, expected):
    ds = make_synthetic_dataset(tmp_path / "Dataset002_Ok", ndim=ndim, n_cases=6, shape=shape,
                                file_ending=ending)
    wd = tmp_path / "run"
    assert _plan(ds, wd, "--time-budget", "5m", "--explain") == 0
    out = capsys.readouterr().out
    assert "Configuration" in out and "target_spacing" in out
    w = Workdir(wd)
    plans = load_json(Plans, w.plans_json)
    assert set(plans.configurations) == expected
    assert plans.hardware.device == "cpu" and plans.time_budget_s == 300 and plans.time_budget_given
    fp = load_json(Fingerprint, w.fingerprint_json)
    assert len(fp.cases) == 6
    splits = load_json(Splits, w.splits_json)
    assert len(splits.folds) == 5
    assert sorted(c for f in splits.folds for c in f.val) == sorted(c.case_id for c in fp.cases)
    for cfg in plans.configurations.values():
        for cid in (c.case_id for c in fp.cases):
            arr = np.load(w.case_data_npy(cfg.data_identifier, cid), mmap_mode="r")
            seg = np.load(w.case_seg_npy(cfg.data_identifier, cid), mmap_mode="r")
            assert arr.dtype == np.float32 and arr.shape[1:] == seg.shape[1:]
            assert math.isfinite(float(np.asarray(arr).mean()))
            assert w.case_properties_json(cfg.data_identifier, cid).exists()
        assert all(d.reason for d in cfg.decisions)
    assert (wd / "plans_explained.txt").read_text().strip()


def test_rerun_keeps_current_outputs(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset003_Rerun", n_cases=5, shape=(12, 16, 16))
    wd = tmp_path / "run"
    assert _plan(ds, wd) == 0
    w = Workdir(wd)
    plans = load_json(Plans, w.plans_json)
    data_id = next(iter(plans.configurations.values())).data_identifier
    stamp = {p: p.stat().st_mtime_ns for p in
             [w.fingerprint_json, w.plans_json, w.splits_json, w.case_properties_json(data_id, case_id(0))]}
    assert _plan(ds, wd) == 0
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_unknown_planner_suggests_a_name(tmp_path, capsys):
    ds = make_synthetic_dataset(tmp_path / "Dataset004_P", n_cases=5, shape=(12, 16, 16))
    assert _plan(ds, tmp_path / "run", "--planner", "defualt") == 1
    err = capsys.readouterr().err
    assert "did you mean 'default'" in err
    assert not (tmp_path / "run").exists()


def test_list_planners(capsys):
    assert main(["plan", "--list-planners"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "nnunet_v2" in out
