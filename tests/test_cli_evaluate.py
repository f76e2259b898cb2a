"""`autoseg evaluate` on hand-made masks with known Dice."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main


def _write(path, arr, spacing=(1.0, 1.0, 2.0)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def test_evaluate_known_dice_and_both_empty(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    a = np.zeros((4, 8, 8), np.uint8)
    a[:2, :4, :4] = 1  # 32 voxels
    b = np.zeros_like(a)
    b[:2, :4, 2:6] = 1  # 32 voxels, 16 shared -> Dice 0.5
    _write(ref / "c1.nii.gz", a)
    _write(pred / "c1.nii.gz", b)
    _write(ref / "c2.nii.gz", a)
    _write(pred / "c2.nii.gz", a)  # perfect
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1, "tumour": 2},
                                                       "file_ending": ".nii.gz"}))
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--dataset-json",
                 str(tmp_path / "dataset.json"), "--surface", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "organ" in out
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["per_case"]["c1"]["1"]["dice"] == pytest.approx(0.5)
    assert summary["per_case"]["c2"]["1"]["dice"] == pytest.approx(1.0)
    assert summary["per_case"]["c1"]["2"]["both_empty"] is True  # label 2 absent everywhere: reported


def test_evaluate_missing_prediction_is_named(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    _write(ref / "c1.nii.gz", np.ones((2, 4, 4)))
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", "1",
                 "--file-ending", ".nii.gz", "--no-progress"]) == 1
    assert "autoseg: error:" in capsys.readouterr().err
