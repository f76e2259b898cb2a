"""Evaluation metrics with known answers, empty-case conventions, summaries and folder evaluation."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.evaluation import (
    confusion_counts,
    dice,
    evaluate_case,
    evaluate_folders,
    format_table,
    hd95,
    iou,
    summarize,
    surface_dice,
)


def _half_overlapping_cubes() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((6, 6, 8), np.uint8)
    ref = np.zeros_like(pred)
    pred[1:5, 1:5, 0:4] = 1  # 64 voxels
    ref[1:5, 1:5, 2:6] = 1  # 64 voxels, 32 shared
    return pred, ref


def _ball(shape, centre_mm, radius_mm, spacing) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


# ----------------------------------------------------------------------------- overlap

def test_dice_iou_half_overlap():
    pred, ref = _half_overlapping_cubes()
    tp, fp, fn, tn = confusion_counts(pred, ref, 1)
    assert (tp, fp, fn) == (32, 32, 32) and tn == pred.size - 96
    assert dice(tp, fp, fn) == pytest.approx(0.5)
    assert iou(tp, fp, fn) == pytest.approx(1 / 3)


def test_empty_conventions():
    assert dice(0, 0, 0) is None and iou(0, 0, 0) is None
    assert dice(0, 5, 0) == 0.0 and iou(0, 0, 3) == 0.0
    pred, ref = _half_overlapping_cubes()
    res = evaluate_case(pred, ref, [1, 2], (1.0, 1.0, 1.0), surface_metrics=True)
    two = res["2"]
    assert two["both_empty"] and not two["one_empty"]
    assert two["dice"] is None and two["iou"] is None and two["hd95"] is None and two["surface_dice"] is None
    one = evaluate_case(pred, np.zeros_like(ref), [1], (1.0, 1.0, 1.0), surface_metrics=True)["1"]
    assert one["one_empty"] and not one["both_empty"]
    assert one["dice"] == 0.0 and one["hd95"] is None and one["surface_dice"] == 0.0
    assert one["n_pred"] == 64 and one["n_ref"] == 0


# ----------------------------------------------------------------------------- surface

def test_hd95_single_voxels_anisotropic_exact():
    pred = np.zeros((5, 9, 12), bool)
    ref = np.zeros_like(pred)
    pred[1, 4, 5] = True
    ref[3, 4, 8] = True  # 2 voxels in z at 3 mm, 3 voxels in x at 0.5 mm
    expected = np.hypot(2 * 3.0, 3 * 0.5)
    assert hd95(pred, ref, (3.0, 1.0, 0.5)) == pytest.approx(expected)
    assert hd95(ref, pred, (3.0, 1.0, 0.5)) == pytest.approx(expected)


def test_hd95_spheres_offset_along_anisotropic_axis():
    spacing = (3.0, 1.0, 1.0)
    shape = (16, 40, 40)
    a = _ball(shape, (21.0, 20.0, 20.0), 12.0, spacing)
    b = _ball(shape, (27.0, 20.0, 20.0), 12.0, spacing)  # offset 6 mm = 2 slices along z
    h = hd95(a, b, spacing)
    # translated spheres: surface distances ~ d |cos t|, uniform on [0, d] -> HD95 ~ 0.95 d = 5.7 mm;
    # ignoring the spacing would give about 2 voxels
    assert 4.5 <= h <= 6.5
    assert hd95(a, a, spacing) == 0.0
    # the same spheres shifted 6 mm along x (6 voxels of 1 mm) agree within discretisation
    c = _ball(shape, (21.0, 20.0, 26.0), 12.0, spacing)
    assert hd95(a, c, spacing) == pytest.approx(5.7, abs=1.0)


def test_surface_dice():
    spacing = (2.0, 1.0, 1.0)
    a = _ball((12, 30, 30), (11.0, 15.0, 15.0), 8.0, spacing)
    assert surface_dice(a, a, spacing, tolerance_mm=0.0) == 1.0
    b = np.roll(a, 3, axis=2)  # 3 mm along x
    assert surface_dice(a, b, spacing, tolerance_mm=5.0) == 1.0
    low = surface_dice(a, b, spacing, tolerance_mm=1.0)
    assert 0.0 < low < 1.0
    assert surface_dice(np.zeros_like(a), np.zeros_like(a), spacing, 1.0) is None
    assert surface_dice(a, np.zeros_like(a), spacing, 1.0) == 0.0


def test_surface_metrics_on_2d_images_ignore_the_dummy_axis():
    pred = np.zeros((1, 10, 10), bool)
    ref = np.zeros_like(pred)
    pred[0, 2:7, 2:7] = True
    ref[0, 2:7, 2:7] = True
    # with the single slice treated as 3D every voxel would be "surface"; the interior must not be
    assert surface_dice(pred, ref, (999.0, 1.0, 1.0), 0.0) == 1.0
    ref2 = np.zeros_like(pred)
    ref2[0, 2, 6] = True
    single = np.zeros_like(pred)
    single[0, 2, 2] = True
    assert hd95(single, ref2, (999.0, 0.5, 0.5)) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- case + summary

def test_evaluate_case_and_summary():
    pred, ref = _half_overlapping_cubes()
    perfect = evaluate_case(ref, ref, [1, 2], (1.0, 1.0, 1.0))
    half = evaluate_case(pred, ref, [1, 2], (1.0, 1.0, 1.0))
    assert half["1"]["dice"] == pytest.approx(0.5) and "hd95" not in half["1"]
    with pytest.raises(AutosegError, match="shape"):
        evaluate_case(pred[:3], ref, [1], (1.0, 1.0, 1.0))
    s = summarize({"a": perfect, "b": half}, [1, 2], {1: "liver", 2: "tumour"})
    c1, c2 = s["per_class"]["1"], s["per_class"]["2"]
    assert c1["name"] == "liver" and c1["dice"] == pytest.approx(0.75)
    assert c1["cases_defined"] == 2 and c1["tp"] == 64 + 32
    assert c1["worst_cases"][0] == {"case": "b", "dice": pytest.approx(0.5)}
    assert c2["dice"] is None and c2["both_empty_cases"] == 2 and c2["cases_defined"] == 0
    assert s["foreground_mean"]["dice"] == pytest.approx(0.75)  # mean over classes with a mean
    assert s["num_cases"] == 2 and set(s["per_case"]) == {"a", "b"}
    table = format_table(s)
    assert "Dice" in table and "1 liver" in table and "0.7500" in table and "2 tumour" in table
    assert "HD95" not in table


def test_summary_with_surface_metrics_in_table():
    pred, ref = _half_overlapping_cubes()
    case = evaluate_case(pred, ref, [1], (1.0, 1.0, 1.0), surface_metrics=True, tolerance_mm=1.0)
    assert case["1"]["hd95"] > 0 and 0 < case["1"]["surface_dice"] < 1
    s = summarize({"x": case}, [1])
    assert s["foreground_mean"]["hd95"] == pytest.approx(case["1"]["hd95"])
    assert "HD95" in format_table(s) and "NSD" in format_table(s)


# ----------------------------------------------------------------------------- folders

def _write(path, arr, spacing=(1.0, 1.0, 1.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    pred, ref = _half_overlapping_cubes()
    _write(pred_dir / "c1.nii.gz", pred)
    _write(ref_dir / "c1.nii.gz", ref)
    _write(pred_dir / "c2.nii.gz", ref)
    _write(ref_dir / "c2.nii.gz", ref)
    _write(ref_dir / "c3.nii.gz", ref)  # a reference without prediction is fine (another fold)
    return pred_dir, ref_dir


def test_evaluate_folders(folders):
    pred_dir, ref_dir = folders
    s = evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz", surface_metrics=True, tolerance_mm=2.0)
    assert set(s["per_case"]) == {"c1", "c2"}
    assert s["per_case"]["c1"]["1"]["dice"] == pytest.approx(0.5)
    assert s["per_class"]["1"]["dice"] == pytest.approx(0.75)
    assert s["tolerance_mm"] == 2.0 and s["surface_metrics"] is True
    assert s["per_case"]["c2"]["1"]["surface_dice"] == 1.0


def test_uncertainty_maps_beside_predictions_are_not_cases(folders, caplog):
    from autoseg.usecases.evaluate import evaluate

    pred_dir, ref_dir = folders
    _write(pred_dir / "c1_uncertainty.nii.gz", np.zeros((6, 6, 8)))  # predict --save-uncertainty writes these
    _write(pred_dir / "c2_uncertainty.nii.gz", np.zeros((6, 6, 8)))
    with caplog.at_level("WARNING"):
        s = evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz")
    assert set(s["per_case"]) == {"c1", "c2"}
    assert "c3" in caplog.text and "not scored" in caplog.text  # the unscored reference is said
    for p in pred_dir.glob("*_uncertainty.nii.gz"):  # a PNG dataset's uncertainty is .nii.gz
        p.rename(p.with_name(p.name.replace(".nii.gz", ".mha")))
    assert set(evaluate(pred_dir, ref_dir, labels=[1], progress=False).summary["per_case"]) == {"c1", "c2"}


def test_evaluate_folders_errors(folders, tmp_path):
    pred_dir, ref_dir = folders
    with pytest.raises(AutosegError, match=r"missing in .*c3\.nii\.gz"):
        evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz", case_ids=["c1", "c3"])
    _write(pred_dir / "orphan.nii.gz", np.zeros((6, 6, 8)))
    with pytest.raises(AutosegError, match=r"no reference .*orphan\.nii\.gz"):
        evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz")
    (pred_dir / "orphan.nii.gz").unlink()
    _write(pred_dir / "c1.nii.gz", np.zeros((6, 6, 7)))
    with pytest.raises(AutosegError, match=r"c1.*pred.*\(6, 6, 7\).*ref.*\(6, 6, 8\)"):
        evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz")
    with pytest.raises(AutosegError, match="no predictions ending in '.png'"):
        evaluate_folders(pred_dir, ref_dir, [1], ".png")
    with pytest.raises(AutosegError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", ref_dir, [1], ".nii.gz")


def test_evaluate_folders_in_worker_processes(folders):
    pred_dir, ref_dir = folders
    serial = evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz")
    parallel = evaluate_folders(pred_dir, ref_dir, [1], ".nii.gz", num_workers=2)
    assert parallel["per_case"] == serial["per_case"]
