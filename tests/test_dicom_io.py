"""Reading DICOM series (autoseg.data.dicom_io): slice order by position, geometry, rescaling, and the
series it refuses (several series, mixed modalities, missing slices, uneven spacing, ...)."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.data.dicom_io import (dicom_case_channels, is_dicom_case, read_dicom_series, scan_dicom_series)
from autoseg.errors import AutosegError
from tests.dicom_series import stored_values, write_dicom_series


def volume(shape=(6, 10, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-200, 300, shape).astype(np.float32)


def test_axial_series_sorted_by_position_with_its_geometry(tmp_path):
    vol = volume()
    written = write_dicom_series(tmp_path / "s", vol, spacing_zyx=(2.0, 0.9, 0.7), slope=0.5, intercept=-1000.0,
                                 reverse_instance_numbers=True)
    image, geometry, series = read_dicom_series(tmp_path / "s")
    assert image.shape == (1, 6, 10, 8) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], stored_values(vol, 0.5, -1000.0), atol=1e-4)
    assert geometry.size == (8, 10, 6)
    np.testing.assert_allclose(geometry.spacing, (0.7, 0.9, 2.0), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, written.positions[0], atol=1e-4)
    np.testing.assert_allclose(geometry.direction, np.eye(3).ravel(), atol=1e-6)
    assert series.series_instance_uid == written.series_uid and series.modality == "CT"
    assert series.sop_instance_uids == written.sop_uids  # slice z of the array is written slice z
    assert [str(f) for f in series.files] == [str(f) for f in written.files]


def test_slices_stored_against_the_normal_come_out_ascending(tmp_path):
    """Slice k written at -k * 2 mm: ascending along the normal is the reverse of k."""
    vol = volume()
    written = write_dicom_series(tmp_path / "s", vol, slice_positions=[-2.0 * k for k in range(6)])
    image, geometry, series = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(image[0], stored_values(vol)[::-1], atol=1e-4)
    assert series.sop_instance_uids == written.sop_uids[::-1]
    np.testing.assert_allclose(geometry.origin, written.positions[-1], atol=1e-4)
    assert geometry.spacing[2] == pytest.approx(2.0)


def test_sagittal_series_direction_is_the_slice_normal(tmp_path):
    vol = volume((5, 9, 7))
    row, col = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)  # sagittal: normal = row x column = (-1, 0, 0)
    written = write_dicom_series(tmp_path / "s", vol, row_direction=row, column_direction=col,
                                 spacing_zyx=(3.0, 0.8, 0.6))
    image, geometry, series = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(image[0], stored_values(vol), atol=1e-4)
    direction = np.array(geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], col, atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], (-1.0, 0.0, 0.0), atol=1e-6)
    np.testing.assert_allclose(geometry.spacing, (0.6, 0.8, 3.0), rtol=1e-6)
    assert series.sop_instance_uids == written.sop_uids


def test_two_series_in_one_folder_are_refused_naming_both(tmp_path):
    a = write_dicom_series(tmp_path / "s", volume(), prefix="a")
    b = write_dicom_series(tmp_path / "s", volume(seed=1), prefix="b", modality="MR")
    with pytest.raises(AutosegError) as e:
        read_dicom_series(tmp_path / "s")
    msg = str(e.value)
    assert str(tmp_path / "s") in msg and a.series_uid in msg and b.series_uid in msg
    assert "2 DICOM series" in msg and "/0000/" in msg and "CT" in msg and "MR" in msg


def test_mixed_modalities_in_one_series_are_refused(tmp_path):
    write_dicom_series(tmp_path / "s", volume(), modalities=["CT", "CT", "CT", "MR", "CT", "CT"])
    with pytest.raises(AutosegError, match=r"mixes modalities: CT \(5 files.*MR \(1 files"):
        scan_dicom_series(tmp_path / "s")


def test_missing_slice_is_refused(tmp_path):
    write_dicom_series(tmp_path / "s", volume(), slice_positions=[0, 2, 4, 8, 10, 12])
    with pytest.raises(AutosegError, match=r"1 slice\(s\) missing between .* 4\.000 mm apart where the other "
                                           r"slices are 2\.000 mm"):
        scan_dicom_series(tmp_path / "s")


def test_uneven_spacing_and_duplicate_positions_are_refused(tmp_path):
    write_dicom_series(tmp_path / "uneven", volume(), slice_positions=[0, 2, 4, 6.7, 8.7, 10.7])
    with pytest.raises(AutosegError, match="not evenly spaced: .* 2.700 mm apart"):
        scan_dicom_series(tmp_path / "uneven")
    write_dicom_series(tmp_path / "twice", volume(), slice_positions=[0, 2, 2, 4, 6, 8])
    with pytest.raises(AutosegError, match="same position"):
        scan_dicom_series(tmp_path / "twice")


def test_one_slice_and_an_empty_folder_are_refused(tmp_path):
    write_dicom_series(tmp_path / "one", volume((1, 8, 8)))
    with pytest.raises(AutosegError, match="one slice"):
        scan_dicom_series(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutosegError, match="no DICOM image series"):
        scan_dicom_series(tmp_path / "empty")


def test_case_layouts_one_series_or_channel_folders(tmp_path):
    write_dicom_series(tmp_path / "single", volume())
    assert is_dicom_case(tmp_path / "single")
    assert dicom_case_channels(tmp_path / "single") == [tmp_path / "single"]
    write_dicom_series(tmp_path / "multi" / "0000", volume())
    write_dicom_series(tmp_path / "multi" / "0001", volume(seed=2), modality="MR")
    assert is_dicom_case(tmp_path / "multi")
    assert dicom_case_channels(tmp_path / "multi") == [tmp_path / "multi" / "0000", tmp_path / "multi" / "0001"]
    write_dicom_series(tmp_path / "gap" / "0000", volume())
    write_dicom_series(tmp_path / "gap" / "0002", volume())
    with pytest.raises(AutosegError, match="channel folder.* 0001 missing"):
        dicom_case_channels(tmp_path / "gap")
    write_dicom_series(tmp_path / "both", volume())
    write_dicom_series(tmp_path / "both" / "0000", volume())
    with pytest.raises(AutosegError, match="DICOM files and channel folders"):
        dicom_case_channels(tmp_path / "both")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images")
    assert not is_dicom_case(tmp_path / "notes")
