"""Readers and writers: round trips keep array and geometry; broken files give AutosegError naming them."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.data.image_io import (
    SUPPORTED_ENDINGS,
    ending_of,
    read_image,
    read_image_info,
    read_label,
    write_image,
    write_segmentation,
)
from autoseg.errors import AutosegError
from autoseg.schemas import Geometry

GEOM_3D = Geometry(ndim=3, size=(7, 6, 5), spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.5, 3.25),
                   direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
EYE_2D = (1.0, 0.0, 0.0, 1.0)
GEOM_2D = Geometry(ndim=2, size=(9, 8), spacing=(0.5, 0.6), origin=(1.5, -2.0), direction=EYE_2D)
GEOM_2D_PLAIN = Geometry(ndim=2, size=(9, 8), spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=EYE_2D)


def _assert_geometry(found: Geometry, expected: Geometry, rtol: float = 1e-5) -> None:
    assert found.ndim == expected.ndim
    assert found.size == expected.size
    np.testing.assert_allclose(found.spacing, expected.spacing, rtol=rtol)
    np.testing.assert_allclose(found.origin, expected.origin, atol=1e-5)
    np.testing.assert_allclose(found.direction, expected.direction, atol=1e-6)


def _random_image(geometry: Geometry, channels: int = 1, integer: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 250, (channels, *geometry.shape_zyx))
    return np.rint(arr).astype(np.float32) if integer else arr.astype(np.float32)


def test_ending_of() -> None:
    assert ending_of("a/case_0000.nii.gz") == ".nii.gz"
    assert ending_of("case.NII.GZ") == ".nii.gz"
    assert ending_of("x.y.nrrd") == ".nrrd"
    assert ending_of("noext") == ""
    assert set(SUPPORTED_ENDINGS) >= {".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff", ".bmp"}


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_3d_image_round_trip(tmp_path, ending) -> None:
    data = _random_image(GEOM_3D)
    path = tmp_path / f"img{ending}"
    write_image(data, GEOM_3D, path)
    back, geom = read_image(path)
    assert back.dtype == np.float32 and back.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(back, data)
    _assert_geometry(geom, GEOM_3D)
    assert geom.spacing_zyx == pytest.approx((2.5, 0.8, 0.7), rel=1e-6)
    assert os.listdir(tmp_path) == [path.name]  # atomic write left no temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like a normally written file, not 0600


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".tif"])
def test_2d_image_round_trip(tmp_path, ending) -> None:
    geometry = GEOM_2D_PLAIN if ending == ".tif" else GEOM_2D  # TIFF stores no origin
    data = _random_image(geometry)
    path = tmp_path / f"img{ending}"
    write_image(data, geometry, path)
    back, geom = read_image(path)
    assert back.shape == (1, 1, 8, 9)
    np.testing.assert_array_equal(back, data)
    _assert_geometry(geom, geometry)
    assert geom.spacing_zyx[0] == 999.0  # dummy spacing on the single-slice axis


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha", ".nii"])
@pytest.mark.parametrize("geometry", [GEOM_3D, GEOM_2D], ids=["3d", "2d"])
def test_segmentation_round_trip_keeps_geometry(tmp_path, ending, geometry) -> None:
    seg = np.random.default_rng(1).integers(0, 4, geometry.shape_zyx).astype(np.int64)
    path = tmp_path / f"seg{ending}"
    write_segmentation(seg, geometry, path)
    back, geom = read_label(path)
    assert back.shape == geometry.shape_zyx and back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)
    _assert_geometry(geom, geometry)


def test_segmentation_uses_smallest_fitting_type(tmp_path) -> None:
    seg = np.zeros(GEOM_3D.shape_zyx, dtype=np.int64)
    seg[0, 0, 0] = 300
    write_segmentation(seg, GEOM_3D, tmp_path / "a.nii.gz")
    assert read_label(tmp_path / "a.nii.gz")[0].dtype == np.int16
    seg[0, 0, 0] = 70000
    write_segmentation(seg, GEOM_3D, tmp_path / "b.nrrd")
    back = read_label(tmp_path / "b.nrrd")[0]
    assert back.dtype == np.int32 and back.max() == 70000


def test_png_segmentation_is_uint8_then_uint16_and_bmp_refuses_large_labels(tmp_path) -> None:
    seg = np.random.default_rng(2).integers(0, 3, GEOM_2D_PLAIN.shape_zyx)
    write_segmentation(seg, GEOM_2D_PLAIN, tmp_path / "s.png")
    back, geom = read_label(tmp_path / "s.png")
    assert back.dtype == np.uint8 and back.shape == (1, 8, 9)
    np.testing.assert_array_equal(back, seg)
    _assert_geometry(geom, GEOM_2D_PLAIN)
    seg[0, 0, 0] = 260  # a 16-bit PNG dataset's labels: predictions and validations must hold them too
    write_segmentation(seg, GEOM_2D_PLAIN, tmp_path / "s16.png")
    back, _ = read_label(tmp_path / "s16.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, seg)
    with pytest.raises(AutosegError, match=r"s2\.bmp.*0\.\.255"):
        write_segmentation(seg, GEOM_2D_PLAIN, tmp_path / "s2.bmp")
    seg[0, 0, 0] = 70000
    with pytest.raises(AutosegError, match=r"s3\.png.*0\.\.65535"):
        write_segmentation(seg, GEOM_2D_PLAIN, tmp_path / "s3.png")
    assert not (tmp_path / "s2.bmp").exists() and not (tmp_path / "s3.png").exists()


def _pil_png(path, array, mode, palette=None) -> None:
    from PIL import Image

    im = Image.fromarray(array, mode=None if mode in ("P", "1") else mode)
    if mode == "P":
        im = Image.fromarray(array).convert("L").point(lambda v: v).convert("P")
        im.putdata(array.ravel().tolist())
        im.putpalette(palette)
    elif mode == "1":
        im = Image.fromarray(array.astype(bool))
    im.save(path)


def test_png_palette_labels_read_as_indices_and_palette_images_as_colours(tmp_path) -> None:
    idx = (np.arange(72).reshape(8, 9) % 3).astype(np.uint8)
    colours = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (3 * 253)  # VOC-style: black, red, green
    _pil_png(tmp_path / "voc.png", idx, "P", colours)
    label, geom = read_label(tmp_path / "voc.png")
    assert label.shape == (1, 8, 9) and geom.size == (9, 8)
    np.testing.assert_array_equal(label[0], idx)  # indices, not colours
    image, geom = read_image(tmp_path / "voc.png")
    assert image.shape == (3, 1, 8, 9) and geom.components == 3 == read_image_info(tmp_path / "voc.png").components
    np.testing.assert_array_equal(image[:, 0, 0, 1], [200, 10, 10])
    grey = [v for i in range(256) for v in (i, i, i)]
    _pil_png(tmp_path / "grey.png", idx * 40, "P", grey)
    image, geom = read_image(tmp_path / "grey.png")
    assert image.shape == (1, 1, 8, 9) and geom.components == 1
    np.testing.assert_array_equal(image[0, 0], idx * 40)


def test_one_bit_and_grey_alpha_pngs(tmp_path) -> None:
    mask = (np.arange(72).reshape(8, 9) % 2).astype(np.uint8)
    _pil_png(tmp_path / "bits.png", mask, "1")
    label, _ = read_label(tmp_path / "bits.png")
    np.testing.assert_array_equal(label[0], mask)  # 0/1, not 0/255
    la = np.stack([mask * 7, np.full_like(mask, 255)], -1)
    _pil_png(tmp_path / "la.png", la, "LA")
    image, geom = read_image(tmp_path / "la.png")
    assert image.shape == (1, 1, 8, 9) and geom.components == 1
    np.testing.assert_array_equal(image[0, 0], mask * 7)


def test_tiff_with_several_grey_samples_reads_one_channel_per_sample(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    data = np.stack([np.arange(72, dtype=np.uint16).reshape(8, 9) + 100 * c for c in range(4)], -1)
    tifffile.imwrite(tmp_path / "ms.tif", data, photometric="minisblack", planarconfig="contig")  # (Y, X, S)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(data, -1, 0).astype(np.float32),
                     photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "rgbx.tif", data, photometric="rgb", extrasamples=["unspecified"])
    for name in ("ms.tif", "planar.tif", "rgbx.tif"):
        image, geom = read_image(tmp_path / name)
        assert image.shape == (4, 1, 8, 9), name
        assert geom.components == 4 == read_image_info(tmp_path / name).components
        np.testing.assert_array_equal(image[:, 0], np.moveaxis(data, -1, 0))
        with pytest.raises(AutosegError, match=rf"{name.replace('.', '[.]')}.*4 channels per pixel"):
            read_label(tmp_path / name)
    tifffile.imwrite(tmp_path / "rgba.tif", data.astype(np.uint8), photometric="rgb", extrasamples=["unassalpha"])
    assert read_image(tmp_path / "rgba.tif")[0].shape == (3, 1, 8, 9)  # a real alpha band is still dropped


def test_palette_and_one_bit_tiff_labels(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    idx = (np.arange(72).reshape(8, 9) % 3).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :3] = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]).T * 257
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap)
    label, _ = read_label(tmp_path / "pal.tif")
    np.testing.assert_array_equal(label[0], idx)  # not idx * 256
    tifffile.imwrite(tmp_path / "bits.tif", idx.astype(bool), photometric="minisblack")
    label, _ = read_label(tmp_path / "bits.tif")
    np.testing.assert_array_equal(label[0], idx.astype(bool).astype(np.uint8))


def test_png_grey_and_rgb(tmp_path) -> None:
    grey = _random_image(GEOM_2D_PLAIN, 1, integer=True)
    write_image(grey, GEOM_2D_PLAIN, tmp_path / "g.png")
    back, geom = read_image(tmp_path / "g.png")
    assert back.shape == (1, 1, 8, 9) and geom.components == 1
    np.testing.assert_array_equal(back, grey)

    rgb = _random_image(GEOM_2D_PLAIN, 3, integer=True)
    write_image(rgb, GEOM_2D_PLAIN, tmp_path / "c.png")
    back, geom = read_image(tmp_path / "c.png")
    assert back.shape == (3, 1, 8, 9) and geom.components == 3
    np.testing.assert_array_equal(back, rgb)
    assert read_image_info(tmp_path / "c.png").components == 3
    with pytest.raises(AutosegError, match=r"c\.png.*components"):
        read_label(tmp_path / "c.png")


def test_rgba_png_drops_alpha(tmp_path) -> None:
    rgba = np.random.default_rng(3).integers(0, 255, (8, 9, 4)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / "a.png"))
    back, geom = read_image(tmp_path / "a.png")
    assert back.shape == (3, 1, 8, 9) and geom.components == 3
    np.testing.assert_array_equal(back, np.moveaxis(rgba[..., :3], -1, 0)[:, None])


def test_grey_bmp_reads_as_one_channel(tmp_path) -> None:
    grey = _random_image(GEOM_2D_PLAIN, 1, integer=True)
    write_image(grey, GEOM_2D_PLAIN, tmp_path / "g.bmp")
    back, geom = read_image(tmp_path / "g.bmp")
    assert back.shape == (1, 1, 8, 9) and geom.components == 1
    np.testing.assert_array_equal(back, grey)
    label, _ = read_label(tmp_path / "g.bmp")
    assert label.shape == (1, 8, 9)


def test_png_refuses_values_outside_8_bit(tmp_path) -> None:
    data = _random_image(GEOM_2D_PLAIN) + 300
    with pytest.raises(AutosegError, match=r"x\.png"):
        write_image(data, GEOM_2D_PLAIN, tmp_path / "x.png")


def test_3d_file_with_one_slice_stays_3d(tmp_path) -> None:
    geometry = Geometry(ndim=3, size=(6, 5, 1), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0),
                        direction=tuple(np.eye(3).ravel().tolist()))
    write_image(_random_image(geometry), geometry, tmp_path / "one.nii.gz")
    back, geom = read_image(tmp_path / "one.nii.gz")
    assert geom.ndim == 3 and back.shape == (1, 1, 5, 6)
    assert geom.spacing_zyx == (3.0, 1.0, 1.0)


def test_read_label_keeps_float_dtype(tmp_path) -> None:
    img = sitk.GetImageFromArray(np.full((2, 3, 4), 1.5, dtype=np.float32))
    sitk.WriteImage(img, str(tmp_path / "f.nii.gz"))
    arr, _ = read_label(tmp_path / "f.nii.gz")
    assert arr.dtype == np.float32 and arr[0, 0, 0] == 1.5


def test_4d_file_is_refused(tmp_path) -> None:
    vol = sitk.GetImageFromArray(np.zeros((2, 3, 4), dtype=np.float32))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp_path / "four.nii.gz"))
    with pytest.raises(AutosegError, match=r"four\.nii\.gz.*4D"):
        read_image(tmp_path / "four.nii.gz")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".bmp"])
def test_truncated_file_names_the_file(tmp_path, ending) -> None:
    geometry = GEOM_2D_PLAIN if ending in (".png", ".bmp") else GEOM_3D
    path = tmp_path / f"cut{ending}"
    write_image(_random_image(geometry, integer=True), geometry, path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(AutosegError, match=rf"cut{ending.replace('.', r'[.]')}.*re-export"):
        read_image(path)


@pytest.mark.parametrize("content", [b"", b"this is not an image at all" * 10], ids=["empty", "garbage"])
@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".png"])
def test_unreadable_file_names_the_file(tmp_path, content, ending) -> None:
    path = tmp_path / f"bad{ending}"
    path.write_bytes(content)
    with pytest.raises(AutosegError) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg and "re-export" in msg
    assert "Traceback" not in msg and ".cxx" not in msg  # no raw SimpleITK internals


def test_missing_file(tmp_path) -> None:
    with pytest.raises(AutosegError, match="does not exist"):
        read_label(tmp_path / "nope.nii.gz")


def test_write_checks_shape_and_ending(tmp_path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_segmentation(np.zeros((5, 6, 8), np.uint8), GEOM_3D, tmp_path / "s.nii.gz")
    with pytest.raises(AutosegError, match="jpg"):
        write_segmentation(np.zeros(GEOM_3D.shape_zyx, np.uint8), GEOM_3D, tmp_path / "s.jpg")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
def test_nan_and_inf_survive_reading(tmp_path, ending) -> None:
    # SimpleITK's NIfTI reader turns NaN/Inf into 0; read_image must still show them
    data = _random_image(GEOM_3D)
    data[0, 1, 2, 3], data[0, 4, 0, 0], data[0, 0, 5, 6] = np.nan, np.inf, -np.inf
    write_image(data, GEOM_3D, tmp_path / f"n{ending}")
    back, _ = read_image(tmp_path / f"n{ending}")
    assert np.isnan(back[0, 1, 2, 3]) and back[0, 4, 0, 0] == np.inf and back[0, 0, 5, 6] == -np.inf
    assert np.isfinite(back).sum() == data.size - 3
    label, _ = read_label(tmp_path / f"n{ending}")
    assert np.isnan(label[1, 2, 3])
