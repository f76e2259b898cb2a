"""`autoseg predict` on DICOM series: a tiny model trained on a NIfTI synthetic dataset (channel "CT")
predicts the same kind of images written as DICOM CT series; `--output-format dicom-seg` adds a DICOM
SEG per case whose frames equal the NIfTI segmentation. Folders with two series and non-DICOM
inputs with dicom-seg are refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.data.image_io import read_image
from autoseg.inference.partial import PREDICTION_INFO_JSON
from autoseg.inference.predictor import PredictionResult, Predictor
from tests.dicom_series import WrittenSeries, write_dicom_series
from tests.synthetic import case_id, make_synthetic_dataset

TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]
SPACING_ZYX = (2.0, 0.9, 0.7)  # anisotropic in plane: a swapped X/Y would show
LABELS = {"background": 0, "liver": 1, "liver tumour": 2}
PREDICT = ["-c", "3d_fullres", "--folds", "0", "--no-progress", "--num-workers", "1"]


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory) -> tuple[Path, Path, dict[str, WrittenSeries]]:
    """(work folder with 3d_fullres fold 0, folder of 2 DICOM cases, their written series by case id)."""
    root = tmp_path_factory.mktemp("dicom_predict")
    ds = make_synthetic_dataset(root / "Dataset030_Dicom", n_cases=5, shape=(8, 24, 20), spacing_zyx=SPACING_ZYX,
                                channel_names=["CT"], with_test_cases=2)
    dataset_json = json.loads((ds / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({**dataset_json, "labels": LABELS}))
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", *TRAIN]) == 0
    cases = root / "dicom_in"
    series = {}
    for i, (cid, positions) in enumerate([(case_id(5), None), (case_id(6), [-2.0 * k for k in range(8)])]):
        image, geometry = read_image(ds / "imagesTs" / f"{cid}_0000.nii.gz")
        vol = image[0] if positions is None else image[0][::-1]  # the second case stored feet first
        series[cid] = write_dicom_series(cases / cid, vol, spacing_zyx=SPACING_ZYX, origin_xyz=geometry.origin,
                                         seed=i)
    return run, cases, series


def nifti_slices_by_instance(nifti: Path, written: WrittenSeries) -> np.ndarray:
    """The NIfTI label map's slices in the order the series' instances were written (matched by position)."""
    img = sitk.ReadImage(str(nifti))
    arr = sitk.GetArrayFromImage(img)
    centres = np.array([img.TransformIndexToPhysicalPoint((0, 0, z)) for z in range(arr.shape[0])])
    order = [int(np.argmin(np.linalg.norm(centres - np.array(p), axis=1))) for p in written.positions]
    for z, p in zip(order, written.positions):
        np.testing.assert_allclose(centres[z], p, atol=1e-3)
    return arr[order]


def check_case(out: Path, cid: str, written: WrittenSeries) -> np.ndarray:
    """The DICOM SEG of ``cid`` against its NIfTI prediction and its source series; returns its frames."""
    nifti = sitk.ReadImage(str(out / f"{cid}.nii.gz"))
    assert nifti.GetSize() == (20, 24, 8)
    np.testing.assert_allclose(nifti.GetSpacing(), (0.7, 0.9, 2.0), rtol=1e-5)
    np.testing.assert_allclose(nifti.GetOrigin(), min(written.positions, key=lambda p: p[2]), atol=1e-3)

    raw = pydicom.dcmread(out / f"{cid}.dcm")
    assert raw.Modality == "SEG" and raw.SegmentationType == "BINARY"
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == written.series_uid
    assert {i.ReferencedSOPInstanceUID for i in raw.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == set(written.sop_uids)
    source = pydicom.dcmread(written.files[0])
    assert raw.StudyInstanceUID == source.StudyInstanceUID and raw.PatientID == source.PatientID
    assert raw.FrameOfReferenceUID == source.FrameOfReferenceUID

    seg = hd.seg.segread(out / f"{cid}.dcm")
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "liver"), (2, "liver tumour")]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "autoseg"
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(written.sop_uids), combine_segments=True)
    np.testing.assert_array_equal(frames, nifti_slices_by_instance(out / f"{cid}.nii.gz", written))
    return frames


def test_dicom_series_in_nifti_and_dicom_seg_out(dicom_run, tmp_path, capsys):
    run, cases, series = dicom_run
    out = tmp_path / "out"
    assert main(["predict", "--workdir", str(run), "-i", str(cases), "-o", str(out), "--output-format", "dicom-seg",
                 *PREDICT]) == 0
    assert "predicted 2 case(s)" in capsys.readouterr().out
    for cid, written in series.items():
        check_case(out, cid, written)
    info = json.loads((out / PREDICTION_INFO_JSON).read_text())
    assert info["output_format"] == "dicom-seg" and info["predicted_cases"] == sorted(series)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PREDICTION_INFO_JSON, *(f"{c}.nii.gz" for c in series), *(f"{c}.dcm" for c in series)])

    # the same cases as a list of series folders, NIfTI only: the same segmentations, and no SEG left behind
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert main(["predict", "--workdir", str(run), "-i", *(str(cases / c) for c in series), "-o", str(again),
                 *PREDICT]) == 0
    for cid in series:
        assert not (again / f"{cid}.dcm").exists()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / f"{cid}.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}.nii.gz"))))


def test_seg_frames_follow_slice_positions(dicom_run, tmp_path, monkeypatch):
    """A segmentation that differs from slice to slice (the image thresholded, instead of a 2-iteration
    network's output): the SEG frame of every source instance is that instance's own slice."""
    run, cases, series = dicom_run

    def thresholded(self, prepared, **kwargs):
        image = prepared.image[0]
        return PredictionResult(((image > 90).astype(np.uint8) + (image > 150).astype(np.uint8)))

    monkeypatch.setattr(Predictor, "predict_prepared", thresholded)
    out = tmp_path / "out"
    assert main(["predict", "--workdir", str(run), "-i", str(cases / case_id(6)), "-o", str(out),
                 "--output-format", "dicom-seg", *PREDICT]) == 0
    written = series[case_id(6)]
    frames = check_case(out, case_id(6), written)
    truth = np.stack([pydicom.dcmread(f).pixel_array.astype(np.float32) - 1024.0 for f in written.files])
    np.testing.assert_array_equal(frames, (truth > 90).astype(np.uint8) + (truth > 150))
    assert len(np.unique(frames.reshape(len(frames), -1), axis=0)) > 2  # frames differ: an order error would show


def test_a_folder_with_two_series_is_refused_naming_both(dicom_run, tmp_path, capsys):
    run, cases, series = dicom_run
    inputs = tmp_path / "in"
    shutil.copytree(cases / case_id(5), inputs / "good")
    shutil.copytree(cases / case_id(5), inputs / "mixed")
    other = write_dicom_series(inputs / "mixed", np.zeros((8, 24, 20), np.float32), modality="MR", prefix="mr")
    shutil.copytree(cases / case_id(5), inputs / "two_channels" / "0000")
    shutil.copytree(cases / case_id(6), inputs / "two_channels" / "0001")
    out = tmp_path / "out"
    assert main(["predict", "--workdir", str(run), "-i", str(inputs), "-o", str(out), "--output-format", "dicom-seg",
                 *PREDICT]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 case(s) could not be predicted" in err
    assert f"{inputs / 'mixed'}: holds 2 DICOM series" in err
    assert series[case_id(5)].series_uid in err and other.series_uid in err
    assert "case two_channels: found 2 channel(s)" in err and "networks expect 1 (CT)" in err
    assert (out / "good.dcm").is_file() and (out / "good.nii.gz").is_file()
    assert not list(out.glob("mixed*")) and not list(out.glob("two_channels*"))


def test_dicom_seg_refused_for_nifti_input(dicom_run, tmp_path, capsys):
    run, _, _ = dicom_run
    nifti = tmp_path / "in"
    nifti.mkdir()
    image = run.parent / "Dataset030_Dicom" / "imagesTs" / f"{case_id(5)}_0000.nii.gz"
    shutil.copy(image, nifti)
    out = tmp_path / "out"
    for given in ([str(nifti)], [str(nifti / image.name)]):
        assert main(["predict", "--workdir", str(run), "-i", *given, "-o", str(out), "--output-format", "dicom-seg",
                     *PREDICT]) == 1
        err = capsys.readouterr().err
        assert "--output-format dicom-seg writes DICOM Segmentations" in err
        assert f"1 input case(s) are not DICOM series: {nifti / image.name}" in err
        assert "Traceback" not in err and not out.exists()
