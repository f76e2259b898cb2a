"""The whole pipeline through the CLI: plan → train 5 folds → find-best → predict (selection used)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.schemas import Selection, load_json
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
        "--num-workers", "0", "--no-progress"]


@pytest.mark.e2e
def test_plan_train_find_best_predict(tmp_path, capsys):
    ds = make_synthetic_dataset(tmp_path / "Dataset020_E2E", n_cases=6, shape=(12, 16, 16), with_test_cases=2,
                                spacing_zyx=(2.0, 0.8, 0.8))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    out = tmp_path / "pred"
    # predict before any training: a clear error naming the training commands
    assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(out)]) == 1
    assert "autoseg train --workdir" in capsys.readouterr().err
    for fold in range(5):
        assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", str(fold), *TINY]) == 0
    capsys.readouterr()
    assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(out),
                 "--no-progress"]) == 0  # runs find-best first
    printed = capsys.readouterr().out
    assert "3d_fullres" in printed
    selection = load_json(Selection, Workdir(run).selection_json)
    assert selection.winner_configurations == ["3d_fullres"] and selection.folds == [0, 1, 2, 3, 4]
    info = json.loads((out / "prediction_info.json").read_text())
    assert info["configurations"] == ["3d_fullres"]
    for img in sorted((ds / "imagesTs").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        ref, pred = sitk.ReadImage(str(img)), sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert pred.GetSize() == ref.GetSize()
        assert pred.GetSpacing() == pytest.approx(ref.GetSpacing())
        assert pred.GetOrigin() == pytest.approx(ref.GetOrigin())
        assert pred.GetDirection() == pytest.approx(ref.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
