"""Writing DICOM SEG objects (autoseg.inference.dicom_seg) without a model: segment numbers and names,
frames in the source instances' order, references, equipment, and what it refuses."""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from autoseg.data.dataset import load_dataset
from autoseg.data.dicom_io import read_dicom_series
from autoseg.errors import AutosegError
from autoseg.inference.dicom_seg import SegModel, dicom_seg_path, write_dicom_seg
from autoseg.version import __version__
from tests.dicom_series import write_dicom_series
from tests.synthetic import make_synthetic_dataset

MODEL = SegModel(dataset_name="Dataset031_SegWrite", configurations=("3d_fullres",), folds=("0", "1"),
                 plans_hash="0123456789abcdef")


def threshold_labels(volume: np.ndarray) -> np.ndarray:
    """A label map that differs from slice to slice (so a wrong frame order shows)."""
    return ((volume > 100).astype(np.uint8) + (volume > 200).astype(np.uint8))


def test_frames_follow_the_source_instances_and_segments_are_named(tmp_path):
    vol = np.random.default_rng(3).uniform(0, 300, (7, 12, 9)).astype(np.float32)
    # slices stored against the normal: the reader's array order is the reverse of the slice index k
    written = write_dicom_series(tmp_path / "ct", vol, slice_positions=[-2.5 * k for k in range(7)], series_number=7)
    image, _, series = read_dicom_series(tmp_path / "ct")
    seg = threshold_labels(image[0])
    path = write_dicom_seg(seg, series, tmp_path / "out" / "ct.dcm",
                           label_names={0: "background", 1: "liver", 2: "liver tumour"}, model=MODEL)
    assert path == tmp_path / "out" / "ct.dcm" and dicom_seg_path(tmp_path / "out" / "ct.nii.gz") == path

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SOPClassUID == pydicom.uid.SegmentationStorage
    assert ds.SegmentationType == "BINARY" and ds.SeriesNumber == 1007
    assert ds.Manufacturer == "autoseg" and ds.ManufacturerModelName == MODEL.dataset_name
    assert ds.SoftwareVersions == __version__ and ds.DeviceSerialNumber == MODEL.plans_hash
    assert ds.SeriesDescription == "autoseg 3d_fullres"
    assert ds.StudyInstanceUID == pydicom.dcmread(written.files[0]).StudyInstanceUID
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == written.series_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(written.sop_uids)

    read = hd.seg.segread(path)
    assert [s.SegmentLabel for s in read.SegmentSequence] == ["liver", "liver tumour"]
    assert [s.SegmentNumber for s in read.SegmentSequence] == [1, 2]
    assert {s.SegmentAlgorithmType for s in read.SegmentSequence} == {"AUTOMATIC"}
    algorithm = read.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "autoseg" and algorithm.AlgorithmVersion == __version__
    # frames by source instance, in the order the slices were written (k): the truth is the volume itself
    frames = read.get_pixels_by_source_instance(source_sop_instance_uids=list(written.sop_uids),
                                                combine_segments=True)
    np.testing.assert_array_equal(frames, threshold_labels(np.rint(vol)))


def test_region_based_labels_name_the_painted_values(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset032_Regions", n_cases=2, shape=(6, 10, 8), regions=True)
    label_names = {int(v): name for name, v in load_dataset(ds).labels.items()}
    assert label_names == {0: "background", 1: "region_1", 2: "region_2"}
    vol = np.random.default_rng(4).uniform(0, 300, (5, 10, 8)).astype(np.float32)
    written = write_dicom_series(tmp_path / "mr", vol, modality="MR")
    image, _, series = read_dicom_series(tmp_path / "mr")
    seg = np.zeros(image.shape[1:], np.uint8)
    seg[1:3, 2:6, 2:5] = 2  # only the value painted by region_2
    write_dicom_seg(seg, series, tmp_path / "mr.dcm", label_names=label_names, model=MODEL)
    read = hd.seg.segread(tmp_path / "mr.dcm")
    assert [s.SegmentLabel for s in read.SegmentSequence] == ["region_1", "region_2"]
    frames = read.get_pixels_by_source_instance(source_sop_instance_uids=list(written.sop_uids),
                                                combine_segments=True)
    np.testing.assert_array_equal(frames, seg)


def test_labels_with_gaps_get_consecutive_segment_numbers(tmp_path):
    vol = np.random.default_rng(5).uniform(0, 300, (4, 8, 8)).astype(np.float32)
    written = write_dicom_series(tmp_path / "ct", vol)
    image, _, series = read_dicom_series(tmp_path / "ct")
    seg = threshold_labels(image[0]) * 2  # values 0, 2, 4
    write_dicom_seg(seg, series, tmp_path / "ct.dcm", label_names={0: "background", 2: "b", 4: "d"}, model=MODEL)
    read = hd.seg.segread(tmp_path / "ct.dcm")
    assert [(s.SegmentNumber, s.SegmentLabel) for s in read.SegmentSequence] == [(1, "b"), (2, "d")]
    frames = read.get_pixels_by_source_instance(source_sop_instance_uids=list(written.sop_uids),
                                                combine_segments=True)
    np.testing.assert_array_equal(frames, seg // 2)


def test_a_changed_series_and_a_wrong_shape_are_refused(tmp_path):
    vol = np.random.default_rng(6).uniform(0, 300, (4, 8, 8)).astype(np.float32)
    written = write_dicom_series(tmp_path / "ct", vol)
    image, _, series = read_dicom_series(tmp_path / "ct")
    names = {0: "background", 1: "a", 2: "b"}
    with pytest.raises(AutosegError, match=r"segmentation has shape \(Z, Y, X\) \(4, 8, 7\) but the series has 4 "
                                           r"slices of 8 x 8"):
        write_dicom_seg(np.zeros((4, 8, 7), np.uint8), series, tmp_path / "a.dcm", label_names=names, model=MODEL)
    changed = pydicom.dcmread(written.files[2])
    changed.SOPInstanceUID = pydicom.uid.generate_uid()
    changed.save_as(written.files[2])
    with pytest.raises(AutosegError, match="changed while predicting"):
        write_dicom_seg(threshold_labels(image[0]), series, tmp_path / "b.dcm", label_names=names, model=MODEL)
    assert not (tmp_path / "a.dcm").exists() and not (tmp_path / "b.dcm").exists()
