"""load_dataset: a valid dataset loads; every kind of broken input gives a DatasetError naming the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.data.dataset import load_cases_from_folder, load_dataset
from autoseg.errors import AutosegError, DatasetError
from tests.synthetic import make_synthetic_dataset

SMALL = dict(n_cases=3, shape=(6, 10, 12))


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_synthetic_dataset(tmp_path / "Dataset900_Synth", **SMALL)


def _problems(root: Path) -> list[str]:
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert str(info.value).count("\n  - ") == len(info.value.problems)
    return info.value.problems


def _one_problem_naming(root: Path, name: str, *words: str) -> str:
    problems = _problems(root)
    hits = [p for p in problems if name in p]
    assert hits, f"no problem names {name}: {problems}"
    for w in words:
        assert any(w in p for p in hits), f"'{w}' missing in {hits}"
    return hits[0]


def _rewrite(path: Path, edit) -> None:
    """Read ``path`` with SimpleITK, let ``edit(image) -> image`` change it, write it back."""
    img = sitk.ReadImage(str(path))
    sitk.WriteImage(edit(img), str(path))


def _edit_json(root: Path, **changes) -> None:
    data = json.loads((root / "dataset.json").read_text())
    data.update(changes)
    (root / "dataset.json").write_text(json.dumps(data))


# --------------------------------------------------------------------------- valid datasets

def test_valid_dataset_loads(ds: Path) -> None:
    before = sorted(p.relative_to(ds) for p in ds.rglob("*"))
    m = load_dataset(ds)
    assert [c.case_id for c in m.cases] == ["synth_000", "synth_001", "synth_002"]
    assert m.ndim == 3 and m.num_channels == 1 and m.foreground_labels == [1, 2]
    assert m.file_ending == ".nii.gz" and m.name == "Dataset900_Synth"
    case = m.cases[1]
    assert Path(case.images[0]).is_absolute() and case.images[0].endswith("imagesTr/synth_001_0000.nii.gz")
    assert case.label is not None and case.label.endswith("labelsTr/synth_001.nii.gz")
    assert sorted(p.relative_to(ds) for p in ds.rglob("*")) == before  # nothing written


def test_dataset_hash_follows_the_bytes_not_the_timestamps(ds: Path) -> None:
    h1 = load_dataset(ds).dataset_hash
    assert load_dataset(ds, num_workers=2).dataset_hash == h1
    label = ds / "labelsTr/synth_000.nii.gz"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    assert load_dataset(ds).dataset_hash == h1
    other = ds / "labelsTr/synth_001.nii.gz"
    label.write_bytes(other.read_bytes())  # other bytes (still a valid label map)
    assert load_dataset(ds).dataset_hash != h1


def test_remembered_digests_are_reused_until_size_or_mtime_changes(ds: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from autoseg.data import file_digests
    from autoseg.data.file_digests import FileDigests

    cache = tmp_path / "digests.json"
    digests = FileDigests(cache)
    first = load_dataset(ds, digests=digests)
    digests.save()
    assert cache.is_file()
    read: list[str] = []
    real = file_digests.file_hash
    monkeypatch.setattr(file_digests, "file_hash", lambda p: read.append(str(p)) or real(p))
    assert load_dataset(ds, digests=FileDigests(cache)).dataset_hash == first.dataset_hash
    assert read == []  # nothing read again
    label = ds / "labelsTr/synth_000.nii.gz"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_dataset(ds, digests=FileDigests(cache)).dataset_hash == first.dataset_hash
    assert read == [str(label)]  # only the touched file was read


def test_parallel_and_progress_give_same_manifest(ds: Path) -> None:
    assert load_dataset(ds, num_workers=2, progress=True) == load_dataset(ds)


@pytest.mark.parametrize("kwargs, ndim, channels", [
    (dict(ndim=2, shape=(16, 20), file_ending=".png"), 2, 1),
    (dict(ndim=2, shape=(16, 20), file_ending=".png", rgb=True), 2, 3),
    (dict(ndim=2, shape=(16, 20), file_ending=".nii.gz"), 2, 1),
    (dict(shape=(5, 8, 8), file_ending=".nrrd", n_channels=2, spacing_zyx=(3.0, 0.7, 0.7)), 3, 2),
    (dict(shape=(5, 8, 8), file_ending=".mha", n_labels=3), 3, 1),
])
def test_formats_load(tmp_path: Path, kwargs: dict, ndim: int, channels: int) -> None:
    m = load_dataset(make_synthetic_dataset(tmp_path / "d", n_cases=2, **kwargs))
    assert m.ndim == ndim and m.num_channels == channels and len(m.cases) == 2


def test_test_cases_are_listed(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_channels=2, with_test_cases=2, **SMALL)
    m = load_dataset(root)
    assert [c.case_id for c in m.test_cases] == ["synth_003", "synth_004"]
    assert all(c.label is None and len(c.images) == 2 for c in m.test_cases)
    (root / "imagesTs/synth_004_0001.nii.gz").unlink()
    _one_problem_naming(root, "imagesTs/synth_004_0001.nii.gz", "missing")


# --------------------------------------------------------------------------- files

def test_missing_label(ds: Path) -> None:
    (ds / "labelsTr/synth_001.nii.gz").unlink()
    _one_problem_naming(ds, "imagesTr/synth_001_0000.nii.gz", "labelsTr/synth_001.nii.gz", "no label")


def test_extra_label(ds: Path) -> None:
    (ds / "labelsTr/synth_000.nii.gz").rename(ds / "labelsTr/stray.nii.gz")
    _one_problem_naming(ds, "labelsTr/stray.nii.gz", "has no image")


def test_label_with_channel_suffix_gets_a_hint(ds: Path) -> None:
    (ds / "labelsTr/synth_000.nii.gz").rename(ds / "labelsTr/synth_000_0000.nii.gz")
    _one_problem_naming(ds, "labelsTr/synth_000_0000.nii.gz", "rename it to labelsTr/synth_000.nii.gz")


def test_missing_channel_file(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_channels=2, **SMALL)
    (root / "imagesTr/synth_002_0001.nii.gz").unlink()
    _one_problem_naming(root, "imagesTr/synth_002_0001.nii.gz", "missing channel")


def test_channel_gap(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_channels=2, **SMALL)
    (root / "imagesTr/synth_002_0001.nii.gz").rename(root / "imagesTr/synth_002_0002.nii.gz")
    _one_problem_naming(root, "imagesTr/synth_002_0001.nii.gz", "missing channel")


def test_wrong_channel_count(ds: Path) -> None:
    _edit_json(ds, channel_names={"0": "MRI", "1": "T2"})
    problems = _problems(ds)
    assert len([p for p in problems if "missing channel" in p]) == 3  # every case
    assert any("imagesTr/synth_000_0001.nii.gz" in p for p in problems)


def test_rgb_file_counts_three_channels(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", ndim=2, shape=(12, 14), file_ending=".png", n_cases=2)
    write = make_synthetic_dataset(tmp_path / "rgb", ndim=2, shape=(12, 14), file_ending=".png", n_cases=2,
                                   rgb=True)
    (write / "imagesTr/synth_001_0000.png").replace(root / "imagesTr/synth_001_0000.png")
    _one_problem_naming(root, "synth_001", "3 channel(s)", "declares 1")


def test_file_with_other_ending(ds: Path) -> None:
    (ds / "imagesTr/notes.txt").write_text("hello")
    (ds / "labelsTr/synth_000.nrrd").write_text("x")
    problems = _problems(ds)
    assert any("imagesTr/notes.txt" in p and "file_ending" in p for p in problems)
    assert any("labelsTr/synth_000.nrrd" in p for p in problems)


def test_misnamed_image(ds: Path) -> None:
    (ds / "imagesTr/synth_000_0000.nii.gz").rename(ds / "imagesTr/synth_000.nii.gz")
    _one_problem_naming(ds, "imagesTr/synth_000.nii.gz", "synth_000_0000.nii.gz")


def test_empty_dataset(ds: Path) -> None:
    for sub in ("imagesTr", "labelsTr"):
        for f in (ds / sub).iterdir():
            f.unlink()
    _one_problem_naming(ds, "imagesTr/", "empty")


def test_missing_folders(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 1,
         "file_ending": ".nii.gz"}))
    problems = _problems(root)
    assert any(p.startswith("imagesTr/ is missing") for p in problems)
    assert any(p.startswith("labelsTr/ is missing") for p in problems)


def test_num_training_mismatch(ds: Path) -> None:
    _edit_json(ds, numTraining=5)
    _one_problem_naming(ds, "numTraining", "is 5", "3 case(s)")


# --------------------------------------------------------------------------- grids

def test_shape_mismatch(ds: Path) -> None:
    _rewrite(ds / "labelsTr/synth_002.nii.gz", lambda im: im[:, :, :5])
    _one_problem_naming(ds, "labelsTr/synth_002.nii.gz", "shape", "(5, 10, 12)", "(6, 10, 12)",
                        "imagesTr/synth_002_0000.nii.gz")


def test_shape_mismatch_between_channels(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_channels=2, **SMALL)
    _rewrite(root / "imagesTr/synth_000_0001.nii.gz", lambda im: im[:, :9, :])
    _one_problem_naming(root, "imagesTr/synth_000_0001.nii.gz", "shape", "channel 0")


def _set(attr: str, value):
    def edit(im):
        getattr(im, f"Set{attr}")(value)
        return im
    return edit


def test_spacing_mismatch(ds: Path) -> None:
    _rewrite(ds / "labelsTr/synth_001.nii.gz", _set("Spacing", (1.0, 1.0, 1.5)))
    _one_problem_naming(ds, "labelsTr/synth_001.nii.gz", "spacing", "1.5", "image grid")


def test_small_spacing_difference_is_tolerated(ds: Path) -> None:
    _rewrite(ds / "labelsTr/synth_001.nii.gz", _set("Spacing", (1.0, 1.0, 1.0002)))
    load_dataset(ds)


def test_origin_mismatch(ds: Path) -> None:
    _rewrite(ds / "labelsTr/synth_001.nii.gz", _set("Origin", (12.5, -30.0, 9.0)))
    _one_problem_naming(ds, "labelsTr/synth_001.nii.gz", "origin", "image grid", "CopyInformation")


def test_direction_mismatch(ds: Path) -> None:
    _rewrite(ds / "labelsTr/synth_001.nii.gz", _set("Direction", (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)))
    _one_problem_naming(ds, "labelsTr/synth_001.nii.gz", "direction", "image grid")


def test_mixed_2d_and_3d(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_cases=2, shape=(1, 10, 12))
    two_d = make_synthetic_dataset(tmp_path / "e", n_cases=2, ndim=2, shape=(10, 12))
    for sub, name in (("imagesTr", "synth_001_0000.nii.gz"), ("labelsTr", "synth_001.nii.gz")):
        (two_d / sub / name).replace(root / sub / name)
    _one_problem_naming(root, "imagesTr/synth_001_0000.nii.gz", "2D", "3D")


# --------------------------------------------------------------------------- values

def _write_array(path: Path, arr: np.ndarray, like: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(img, str(path))


def test_undeclared_label_value(ds: Path) -> None:
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr/synth_000.nii.gz")))
    lab[0, 0, :2] = [5, 7]
    _write_array(ds / "labelsTr/synth_000.nii.gz", lab, ds / "labelsTr/synth_000.nii.gz")
    _one_problem_naming(ds, "labelsTr/synth_000.nii.gz", "[5, 7]", "not declared")


def test_non_integer_labels(ds: Path) -> None:
    path = ds / "labelsTr/synth_000.nii.gz"
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    lab[0, 0, 0] = 0.5
    _write_array(path, lab, path)
    _one_problem_naming(ds, "labelsTr/synth_000.nii.gz", "non-integer", "0.5")


def test_float_labels_with_integer_values_are_fine(ds: Path) -> None:
    path = ds / "labelsTr/synth_000.nii.gz"
    _write_array(path, sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32), path)
    load_dataset(ds)


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_intensities(ds: Path, value: float, word: str) -> None:
    path = ds / "imagesTr/synth_002_0000.nii.gz"
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    img[1, 2, 3:5] = value
    _write_array(path, img, path)
    assert "2 " in _one_problem_naming(ds, "imagesTr/synth_002_0000.nii.gz", word)


def test_unreadable_file(ds: Path) -> None:
    (ds / "imagesTr/synth_001_0000.nii.gz").write_bytes(b"not an image" * 20)
    _one_problem_naming(ds, "imagesTr/synth_001_0000.nii.gz", "cannot be read", "re-export")


def test_truncated_nifti(ds: Path) -> None:
    path = ds / "labelsTr/synth_002.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    _one_problem_naming(ds, "labelsTr/synth_002.nii.gz", "truncated")


# --------------------------------------------------------------------------- dataset.json

def test_dataset_json_missing(ds: Path) -> None:
    (ds / "dataset.json").unlink()
    _one_problem_naming(ds, "dataset.json", "missing")


def test_dataset_json_not_json(ds: Path) -> None:
    (ds / "dataset.json").write_text('{"labels": {"background": 0,}')
    _one_problem_naming(ds, "dataset.json", "not valid JSON", "line 1")


def test_dataset_json_missing_key(ds: Path) -> None:
    data = json.loads((ds / "dataset.json").read_text())
    del data["file_ending"]
    data["modality"] = data.pop("channel_names")
    (ds / "dataset.json").write_text(json.dumps(data))
    problems = _problems(ds)
    assert any("'file_ending'" in p and "add it" in p for p in problems)
    assert any("'channel_names'" in p and "modality" in p for p in problems)


@pytest.mark.parametrize("changes, words", [
    (dict(numTraining="3"), ["numTraining", '"3"']),
    (dict(labels={"a": 1, "b": 2}), ["labels", "value 0"]),
    (dict(labels={"background": 0, "a": 1, "b": 1}), ["labels", "[1]", "unique"]),
    (dict(labels={"background": 0, "a": "1"}), ["'a'", "integer"]),
    (dict(labels={"0": "background", "1": "a"}), ["v1 form"]),
    (dict(channel_names=["CT"]), ["channel_names"]),
    (dict(file_ending="nii.gz"), ["file_ending", "did you mean '.nii.gz'"]),
    (dict(labels={"background": 0, "a": 1, "b": 2, "ignore": 1}), ["'ignore'", "value of its own", "e.g. 3"]),
    (dict(labels={"background": 0, "whole": [1, 2], "core": 2}), ["regions_class_order", "2 regions", "[2, 2]"]),
    (dict(labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1]),
     ["'regions_class_order' has 1 entries", "2 regions"]),
    (dict(labels={"background": 0, "whole": [], "core": 2}, regions_class_order=[1, 2]), ["region 'whole'", "[]"]),
])
def test_dataset_json_wrong_types(ds: Path, changes: dict, words: list[str]) -> None:
    _edit_json(ds, **changes)
    _one_problem_naming(ds, "dataset.json", *words)


def test_region_based_labels_and_the_ignore_label_are_read_as_nnunet_v2_means_them(ds: Path) -> None:
    _edit_json(ds, labels={"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2])
    m = load_dataset(ds)
    assert m.regions == {"whole": [1, 2], "core": [2]} and m.regions_class_order == [1, 2]
    assert m.ignore_label == 3 and 3 not in m.labels.values()
    assert m.labels == {"background": 0, "whole": 1, "core": 2}  # each value named after the region painting it
    spec = m.label_spec
    assert spec.num_outputs == 2 and spec.allowed_values == [0, 1, 2, 3]


def test_a_label_file_may_hold_the_ignore_label_but_no_undeclared_value(ds: Path) -> None:
    _edit_json(ds, labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    path = ds / "labelsTr/synth_000.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, :2] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    assert load_dataset(ds).ignore_label == 3
    arr[0, 0, :2] = 4
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))
    _one_problem_naming(ds, "synth_000", "[4]", "not declared")


# --------------------------------------------------------------------------- all at once

def test_several_problems_are_all_reported(ds: Path) -> None:
    (ds / "labelsTr/synth_000.nii.gz").unlink()
    path = ds / "imagesTr/synth_001_0000.nii.gz"
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    img[0, 0, 0] = np.nan
    _write_array(path, img, path)
    _rewrite(ds / "labelsTr/synth_002.nii.gz", _set("Spacing", (2.0, 1.0, 1.0)))
    (ds / "labelsTr/orphan.nii.gz").write_bytes(b"")
    _edit_json(ds, numTraining=7)
    problems = _problems(ds)
    expected = ["labelsTr/synth_000.nii.gz", "imagesTr/synth_001_0000.nii.gz", "labelsTr/synth_002.nii.gz",
                "labelsTr/orphan.nii.gz", "numTraining"]
    for name in expected:
        assert any(name in p for p in problems), f"{name} not reported: {problems}"
    assert len(problems) == len(expected)


# --------------------------------------------------------------------------- prediction inputs

def test_load_cases_from_folder(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_channels=2, **SMALL)
    cases = load_cases_from_folder(root / "imagesTr", 2, ".nii.gz")
    assert [c.case_id for c in cases] == ["synth_000", "synth_001", "synth_002"]
    assert all(len(c.images) == 2 and c.images[1].endswith("_0001.nii.gz") for c in cases)
    (root / "imagesTr/synth_001_0001.nii.gz").unlink()
    with pytest.raises(AutosegError, match=r"synth_001_0001\.nii\.gz"):
        load_cases_from_folder(root / "imagesTr", 2, ".nii.gz")


def test_load_cases_from_folder_rgb(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", ndim=2, shape=(8, 8), file_ending=".png", rgb=True,
                                  n_cases=2)
    cases = load_cases_from_folder(root / "imagesTr", 3, ".png")
    assert [len(c.images) for c in cases] == [1, 1]
    with pytest.raises(AutosegError, match="declares 2"):
        load_cases_from_folder(root / "imagesTr", 2, ".png")


def test_labels_must_be_consecutive(ds: Path) -> None:
    d = json.loads((ds / "dataset.json").read_text())
    d["labels"] = {"background": 0, "a": 1, "b": 3}
    (ds / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match="skip"):
        load_dataset(ds)
