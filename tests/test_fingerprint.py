"""Fingerprint extraction on tiny hand-made datasets with known answers."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.fingerprint import _largest_case_gb, extract_fingerprint
from autoseg.schemas import CaseFiles, DatasetManifest, Fingerprint, from_dict, to_dict

SPACING_ZYX = (3.0, 1.0, 0.5)  # voxel volume 1.5 mm3


def _write(arr: np.ndarray, path: Path, spacing_zyx=SPACING_ZYX) -> str:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(reversed(spacing_zyx))[: arr.ndim])
    sitk.WriteImage(img, str(path))
    return str(path)


def _manifest(root: Path, cases: dict[str, tuple[list[np.ndarray], np.ndarray]], ending: str = ".nii.gz",
              ndim: int = 3, labels: dict[str, int] | None = None) -> DatasetManifest:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    files = []
    for cid, (images, label) in cases.items():
        paths = tuple(_write(im, root / "imagesTr" / f"{cid}_{c:04d}{ending}") for c, im in enumerate(images))
        files.append(CaseFiles(case_id=cid, images=paths, label=_write(label, root / "labelsTr" / f"{cid}{ending}")))
    n_ch = len(next(iter(cases.values()))[0])
    return DatasetManifest(schema_version=1, root=str(root), name=root.name,
                           channel_names={str(c): f"ch{c}" for c in range(n_ch)},
                           labels=labels or {"background": 0, "a": 1, "b": 2}, file_ending=ending,
                           cases=tuple(files), ndim=ndim, dataset_hash="h123")


def _known_3d(root: Path) -> DatasetManifest:
    """case_a: zero border, foreground intensity 100 (channel 1: 300); label 1 two cubes, label 2 two
    voxels touching at a corner only. case_b: no zero border, intensity 200 (channel 1: 600); label 2
    absent."""
    img_a = np.zeros((6, 10, 12), np.float32)
    img_a[1:5, 2:8, 3:11] = 10.0  # nonzero region -> shape after crop (4, 6, 8)
    lab_a = np.zeros((6, 10, 12), np.uint8)
    lab_a[1:3, 2:4, 3:5] = 1  # 8 voxels
    lab_a[3:5, 6:8, 8:11] = 1  # 12 voxels, separate
    lab_a[1, 5, 9] = 2
    lab_a[2, 6, 10] = 2  # diagonal neighbour: one component under full connectivity
    img_a[lab_a > 0] = 100.0
    img_b = np.full((5, 9, 12), 10.0, np.float32)
    lab_b = np.zeros((5, 9, 12), np.uint8)
    lab_b[0:2, 0:2, 0:2] = 1
    img_b[lab_b > 0] = 200.0
    return _manifest(root, {"case_a": ([img_a, 3 * img_a], lab_a), "case_b": ([img_b, 3 * img_b], lab_b)})


def test_known_3d_dataset(tmp_path):
    man = _known_3d(tmp_path / "Dataset001_Known")
    fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=2000)
    assert [c.case_id for c in fp.cases] == ["case_a", "case_b"]
    a, b = fp.cases
    assert a.spacing_zyx_mm == pytest.approx(SPACING_ZYX) and b.spacing_zyx_mm == pytest.approx(SPACING_ZYX)
    assert a.shape_zyx == (6, 10, 12) and b.shape_zyx == (5, 9, 12)
    assert a.shape_after_crop_zyx == (4, 6, 8) and b.shape_after_crop_zyx == (5, 9, 12)
    assert a.relative_size_after_crop == pytest.approx(192 / 720)
    assert fp.median_relative_size_after_crop == pytest.approx((192 / 720 + 1.0) / 2)
    assert a.label_voxels == {"1": 20, "2": 2} and b.label_voxels == {"1": 8, "2": 0}

    l1, l2 = fp.label_stats
    assert (l1.label, l1.name, l2.label, l2.name) == (1, "a", 2, "b")
    assert l1.voxels_per_case == {"case_a": 20, "case_b": 8}
    assert l1.components_per_case == {"case_a": 2, "case_b": 1}
    assert (l1.component_size_voxels_min, l1.component_size_voxels_median, l1.component_size_voxels_max) == (8, 8, 12)
    assert l1.component_size_mm3_median == pytest.approx(8 * 1.5)
    assert l1.volume_mm3_median == pytest.approx((20 + 8) * 1.5 / 2)
    assert l1.absent_in_cases == []
    assert l2.components_per_case == {"case_a": 1, "case_b": 0}
    assert l2.absent_in_cases == ["case_b"]
    assert l2.volume_mm3_median == pytest.approx(3.0) and l2.component_size_voxels_max == 2

    # equal per-case budgets: half the samples are 100, half 200 (channel 1: 300 / 600)
    i0, i1 = fp.intensity
    assert (i0.channel, i0.name, i1.name) == (0, "ch0", "ch1")
    assert i0.num_samples == 2000
    assert (i0.mean, i0.std, i0.median, i0.min, i0.max) == pytest.approx((150, 50, 150, 100, 200))
    assert (i0.percentile_00_5, i0.percentile_99_5) == pytest.approx((100, 200))
    assert i1.mean == pytest.approx(450) and i1.max == pytest.approx(600)
    assert (fp.ndim, fp.dataset_name, fp.dataset_hash, fp.intensity_sample_seed) == (3, "Dataset001_Known", "h123", 1234)
    assert from_dict(Fingerprint, to_dict(fp)) == fp  # plain data, JSON round trip


def _noisy(root: Path, n_cases: int = 2) -> DatasetManifest:
    rng = np.random.default_rng(7)
    cases = {}
    for i in range(n_cases):
        img = rng.normal(50.0, 5.0, size=(8, 8, 8)).astype(np.float32)
        lab = np.zeros((8, 8, 8), np.uint8)
        lab[1:7, 1:7, 1:7] = 1
        lab[2:4, 2:4, 2:4] = 2
        cases[f"c{i}"] = ([img], lab)
    return _manifest(root, cases)


def test_intensity_stats_match_the_foreground(tmp_path):
    man = _noisy(tmp_path / "Dataset002_Noisy", n_cases=1)
    fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=40_000)
    img = sitk.GetArrayFromImage(sitk.ReadImage(man.cases[0].images[0])).astype(np.float64)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(man.cases[0].label))
    fg = img[lab > 0]
    st = fp.intensity[0]
    assert st.num_samples == 40_000
    assert st.mean == pytest.approx(fg.mean(), abs=0.15)
    assert st.std == pytest.approx(fg.std(), abs=0.15)
    assert st.median == pytest.approx(np.median(fg), abs=0.3)
    assert fg.min() <= st.min and st.max <= fg.max()
    assert st.percentile_00_5 < st.median < st.percentile_99_5


def test_same_seed_same_fingerprint_and_pool_matches_inline(tmp_path):
    man = _noisy(tmp_path / "Dataset003_Seed", n_cases=3)
    kw = dict(progress=False, max_intensity_samples=60)
    first = extract_fingerprint(man, num_workers=1, **kw)
    assert extract_fingerprint(man, num_workers=1, **kw) == first
    other = extract_fingerprint(man, num_workers=1, seed=99, **kw)
    assert other.intensity[0].mean != first.intensity[0].mean and other.intensity_sample_seed == 99
    pooled = extract_fingerprint(man, num_workers=2, **kw)  # spawned workers, same answer
    assert pooled == first


def test_2d_png_dataset(tmp_path):
    img = np.zeros((12, 16), np.uint8)
    img[2:10, 3:15] = 40  # shape after crop (1, 8, 12)
    lab = np.zeros((12, 16), np.uint8)
    lab[3, 4] = lab[4, 5] = 1  # diagonal pixels: one component (8-connectivity)
    lab[8:10, 10:13] = 1  # 6 pixels, separate
    img[lab > 0] = 200
    img2 = np.full((10, 10), 30, np.uint8)
    lab2 = np.zeros((10, 10), np.uint8)
    lab2[0:3, 0:3] = 1
    img2[lab2 > 0] = 100
    man = _manifest(tmp_path / "Dataset004_Flat", {"p0": ([img], lab), "p1": ([img2], lab2)}, ending=".png",
                    ndim=2, labels={"background": 0, "cell": 1})
    fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=1000)
    assert fp.ndim == 2
    assert fp.cases[0].shape_zyx == (1, 12, 16) and fp.cases[0].shape_after_crop_zyx == (1, 8, 12)
    assert fp.cases[0].spacing_zyx_mm == pytest.approx((999.0, 1.0, 0.5))  # dummy 999, then PNG's own
    (ls,) = fp.label_stats
    assert ls.components_per_case == {"p0": 2, "p1": 1}
    assert ls.voxels_per_case == {"p0": 8, "p1": 9}
    # pixel area 1.0 * 0.5 mm2: "mm3" values of 2D data are areas, without the dummy 999 spacing
    assert ls.component_size_voxels_median == 6 and ls.component_size_mm3_median == pytest.approx(3.0)
    assert ls.volume_mm3_median == pytest.approx(8.5 * 0.5)
    assert fp.intensity[0].min == 100 and fp.intensity[0].max == 200


def test_no_foreground_anywhere_falls_back_to_nonzero(tmp_path, caplog):
    img = np.zeros((4, 6, 6), np.float32)
    img[1:3, 1:5, 1:5] = 7.0
    man = _manifest(tmp_path / "Dataset005_Empty", {"e0": ([img], np.zeros((4, 6, 6), np.uint8))},
                    labels={"background": 0, "x": 1})
    with caplog.at_level(logging.WARNING, logger="autoseg.fingerprint"):
        fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=100)
    assert "nonzero" in caplog.text
    assert fp.intensity[0].num_samples == 100
    assert fp.intensity[0].mean == pytest.approx(7.0) and fp.intensity[0].min == pytest.approx(7.0)
    assert fp.label_stats[0].absent_in_cases == ["e0"]
    assert fp.label_stats[0].volume_mm3_median == 0.0 and fp.label_stats[0].component_size_voxels_max == 0


@pytest.mark.parametrize("workers", [1, 2])  # 2: the error must cross the process boundary intact
def test_label_on_another_grid_is_reported(tmp_path, workers):
    ok = ([np.ones((4, 5, 6), np.float32)], np.zeros((4, 5, 6), np.uint8))
    bad = ([np.ones((4, 5, 6), np.float32)], np.zeros((4, 5, 7), np.uint8))
    man = _manifest(tmp_path / "Dataset006_Bad", {"ok": ok, "bad": bad})
    with pytest.raises(AutosegError, match=r"bad.*\(4, 5, 7\).*\(4, 5, 6\).*re-export"):
        extract_fingerprint(man, num_workers=workers, progress=False)


def test_largest_case_memory_estimate(tmp_path):
    man = _known_3d(tmp_path / "Dataset007_Mem")
    # largest image 6*10*12 voxels, 2 files per case, 4 bytes, factor 6
    assert _largest_case_gb(man) == pytest.approx(720 * 2 * 4 * 6 / 2**30)


def test_float_label_file_counts_like_integers(tmp_path):
    img = np.full((3, 4, 5), 5.0, np.float32)
    lab = np.zeros((3, 4, 5), np.float32)
    lab[0, 0, 0:2] = 1.0
    lab[2, 3, 4] = 2.0
    man = _manifest(tmp_path / "Dataset008_Float", {"f": ([img], lab)})
    fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=10)
    assert fp.cases[0].label_voxels == {"1": 2, "2": 1}
    assert [ls.components_per_case["f"] for ls in fp.label_stats] == [1, 1]


@pytest.mark.parametrize("kwargs", [
    dict(ndim=3, n_cases=3, shape=(6, 10, 9), spacing_zyx=(2.5, 0.8, 0.7), n_channels=2, n_labels=2),
    dict(ndim=2, n_cases=2, shape=(16, 12), spacing_zyx=(0.5, 0.4), file_ending=".png", rgb=True, n_labels=1),
])
def test_on_a_synthetic_dataset_from_load_dataset(synthetic_dataset, kwargs):
    from autoseg.data.dataset import load_dataset

    man = load_dataset(synthetic_dataset(**kwargs))
    fp = extract_fingerprint(man, num_workers=1, progress=False, max_intensity_samples=300)
    shape3 = kwargs["shape"] if kwargs["ndim"] == 3 else (1, *kwargs["shape"])
    spacing3 = kwargs["spacing_zyx"] if kwargs["ndim"] == 3 else (999.0, *kwargs["spacing_zyx"])
    assert fp.ndim == kwargs["ndim"] and len(fp.cases) == kwargs["n_cases"]
    for case in fp.cases:
        assert case.shape_zyx == shape3
        assert case.spacing_zyx_mm == pytest.approx(spacing3, rel=1e-4)
        assert all(a <= b for a, b in zip(case.shape_after_crop_zyx, shape3))
    assert [st.channel for st in fp.intensity] == list(range(man.num_channels))
    assert all(st.num_samples == 300 // kwargs["n_cases"] * kwargs["n_cases"] for st in fp.intensity)
    assert [ls.label for ls in fp.label_stats] == man.foreground_labels
    assert all(sum(ls.voxels_per_case.values()) > 0 for ls in fp.label_stats)
