"""Which cases a prediction input names (autoseg.inference.case_inputs): imagesTs files and DICOM case
folders side by side, a series folder given alone, channel folders, lists of paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.inference.case_inputs import find_cases
from autoseg.schemas import DatasetManifest
from tests.dicom_series import write_dicom_series


def manifest(channels: int = 1) -> DatasetManifest:
    return DatasetManifest(schema_version=1, root="/nowhere", name="Dataset040_Inputs",
                           channel_names={str(c): ["CT", "T2"][c] for c in range(channels)},
                           labels={"background": 0, "a": 1}, file_ending=".nii.gz", cases=())


def series(folder: Path, seed: int = 0) -> None:
    write_dicom_series(folder, np.random.default_rng(seed).uniform(0, 100, (3, 6, 5)).astype(np.float32), seed=seed)


def jobs_of(found) -> dict[str, tuple[list[str], str]]:
    return {c.case_id: ([Path(p).name for p in c.images], ending) for c, ending in found.jobs}


def test_a_folder_of_files_and_dicom_case_folders(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "in" / "preds"
    inputs.mkdir()
    (inputs / "nifti_a_0000.nii.gz").write_bytes(b"")
    series(inputs / "ct_b")
    series(inputs / "0001")  # a case folder with a 4-digit name is a case for a 1-channel model
    series(inputs / "ct_c" / "0000")
    (inputs / "notes").mkdir()
    (inputs / "notes" / "readme.txt").write_text("not a case")
    series(inputs / "bad" / "0001")  # channel 0000 missing
    series(out)  # the output folder (DICOM SEGs of an earlier run) is no case
    found = find_cases(inputs, manifest(), out.resolve())
    assert jobs_of(found) == {"0001": (["0001"], ".nii.gz"), "ct_b": (["ct_b"], ".nii.gz"),
                              "ct_c": (["0000"], ".nii.gz"), "nifti_a": (["nifti_a_0000.nii.gz"], ".nii.gz")}
    assert list(found.failed) == ["bad"] and "channel folder(s) 0000 missing" in found.failed["bad"]
    assert found.dicom == {"0001", "ct_b", "ct_c", "bad"}


def test_a_series_folder_or_a_multichannel_case_given_alone(tmp_path):
    series(tmp_path / "patient_7")
    found = find_cases(tmp_path / "patient_7", manifest(), tmp_path / "out")
    assert jobs_of(found) == {"patient_7": (["patient_7"], ".nii.gz")}
    series(tmp_path / "mr_8" / "0000")
    series(tmp_path / "mr_8" / "0001", seed=1)
    found = find_cases(tmp_path / "mr_8", manifest(channels=2), tmp_path / "out")
    assert jobs_of(found) == {"mr_8": (["0000", "0001"], ".nii.gz")}
    # for a 1-channel model the same folder holds two cases named 0000 and 0001
    assert sorted(jobs_of(find_cases(tmp_path / "mr_8", manifest(), tmp_path / "out"))) == ["0000", "0001"]


def test_a_list_of_case_folders_and_files(tmp_path):
    series(tmp_path / "a")
    series(tmp_path / "b" / "0000")
    (tmp_path / "c_0000.nii.gz").write_bytes(b"")
    found = find_cases([tmp_path / "a", tmp_path / "b", tmp_path / "c_0000.nii.gz"], manifest(), tmp_path / "out")
    assert jobs_of(found) == {"a": (["a"], ".nii.gz"), "b": (["0000"], ".nii.gz"),
                              "c": (["c_0000.nii.gz"], ".nii.gz")}
    series(tmp_path / "x" / "a")
    with pytest.raises(AutosegError, match="would both be written as case 'a'"):
        find_cases([tmp_path / "a", tmp_path / "x" / "a"], manifest(), tmp_path / "out")
    with pytest.raises(AutosegError, match="is an input folder"):
        find_cases([tmp_path / "a"], manifest(), (tmp_path / "a").resolve())


def test_dicom_channels_are_read_on_one_grid(tmp_path, caplog):
    from autoseg.inference.case_io import read_case_image

    vol = np.random.default_rng(7).uniform(0, 100, (3, 6, 5)).astype(np.float32)
    ct = write_dicom_series(tmp_path / "c" / "0000", vol)
    write_dicom_series(tmp_path / "c" / "0001", vol * 2, modality="MR", seed=1)
    folders = [str(tmp_path / "c" / "0000"), str(tmp_path / "c" / "0001")]
    with caplog.at_level("WARNING"):
        image, geometry, series = read_case_image("c", folders, 2, ["CT", "T2"])
    assert image.shape == (2, 3, 6, 5) and geometry.size == (5, 6, 3)
    assert series is not None and series.series_instance_uid == ct.series_uid  # the SEG references channel 0000
    assert not caplog.records  # CT is CT, T2 is MR: no modality warning
    with caplog.at_level("WARNING"):
        read_case_image("c", folders, 2, ["CT", "CT"])
    assert "channel 1 of the model is 'CT' but the DICOM series in" in caplog.text
    write_dicom_series(tmp_path / "d" / "0000", vol)
    write_dicom_series(tmp_path / "d" / "0001", vol, origin_xyz=(0.0, 0.0, 0.0), seed=1)
    with pytest.raises(AutosegError, match=r"case d: the DICOM series in .*0001 lies on another grid than the one in "
                                           r".*0000 \(spacing .* origin \(0\.0, 0\.0, 0\.0\) vs \(12\.5, -30\.0, 4\.0\)"):
        read_case_image("d", [str(tmp_path / "d" / "0000"), str(tmp_path / "d" / "0001")], 2, ["CT", "CT"])
