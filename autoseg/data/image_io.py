"""Read and write images and segmentations (SimpleITK), with one axis-order and geometry contract.

Contract for every reader and writer in this module:
  * ``read_image`` returns ``float32`` data of shape ``(C, Z, Y, X)`` (numpy array order, slowest axis
    first, as ``SimpleITK.GetArrayFromImage`` gives it). ``C`` is the number of pixel components of the
    file: 3 for an RGB PNG (an alpha channel is dropped), 1 for a scalar image. A 2D file gives
    ``Z == 1``; a 3D file whose last ITK dimension has size 1 is still 3D (``Geometry.ndim == 3``).
  * ``read_label`` returns ``(Z, Y, X)`` in the file's own dtype (floats are not cast, so that the
    dataset check can see non-integer values).
  * the :class:`~autoseg.schemas.Geometry` returned with the data keeps the file's geometry in ITK
    order (x, y[, z]): size, spacing (mm), origin (mm), direction (row-major cosines), components.
  * writers take the same ``(C, Z, Y, X)`` / ``(Z, Y, X)`` arrays plus a Geometry and write exactly
    that spacing, origin and direction; a 2D geometry writes a 2D file from slice 0. Writes are atomic,
    and what was written is read back (header, completeness) before it replaces the target: SimpleITK
    does not raise when the disk fills up (see :func:`_verify_written`).

Formats (chosen by the file ending, see :data:`SUPPORTED_ENDINGS`): NIfTI (.nii.gz, .nii), NRRD, MHA
(2D or 3D) and the 2D natural-image formats PNG, TIFF and BMP (grey or RGB).
Unreadable, empty or truncated files raise :class:`~autoseg.errors.AutosegError` naming the file.
NaN/Inf voxels of float NIfTI files are kept (SimpleITK alone reads them as 0); a BMP with a grey
palette reads as one channel. PNG and TIFF layouts SimpleITK reads wrongly (palettes, 1-bit, grey + alpha,
several grey samples per pixel, planar or non-alpha extra bands) are read by ``natural_images``.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_write
from ..errors import AutosegError
from ..schemas import Geometry
from .natural_images import Layout, read_pixels, special_layout
from .raw_checks import check_complete, ending_of, restore_nonfinite, short_reason, unreadable

log = logging.getLogger(__name__)

SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff", ".bmp")
#: 2D natural-image formats: may hold RGB(A) pixels; an alpha channel is dropped on reading.
NATURAL_IMAGE_ENDINGS: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp")
#: formats written with 8-bit values (images always; labels too, except a PNG's labels above 255: uint16)
EIGHT_BIT_ENDINGS: tuple[str, ...] = (".png", ".bmp")
#: formats that store an image in one compressed stream: write them compressed
_COMPRESSIBLE_ENDINGS = (".nrrd", ".mha")


# --------------------------------------------------------------------------- reading

def _geometry(img: sitk.Image, components: int) -> Geometry:
    return Geometry(
        ndim=img.GetDimension(),
        size=tuple(int(v) for v in img.GetSize()),
        spacing=tuple(float(v) for v in img.GetSpacing()),
        origin=tuple(float(v) for v in img.GetOrigin()),
        direction=tuple(float(v) for v in img.GetDirection()),
        components=components,
    )


def _bmp_grey_palette(path: Path) -> bool:
    """True for an indexed BMP whose palette is all grey (ITK expands it to RGB; we read it as grey)."""
    try:
        with open(path, "rb") as f:
            head = f.read(54)
            if len(head) < 54 or head[:2] != b"BM":
                return False
            (dib,) = struct.unpack("<I", head[14:18])
            (bpp,) = struct.unpack("<H", head[28:30])
            (used,) = struct.unpack("<I", head[46:50])
            if bpp > 8:
                return False
            f.seek(14 + dib)
            palette = f.read(4 * (used or 2**bpp))
    except OSError:
        return False
    return len(palette) >= 4 and all(palette[i] == palette[i + 1] == palette[i + 2]
                                     for i in range(0, len(palette) - 3, 4))


def _kept_components(path: Path, components: int) -> int:
    """Pixel components kept: alpha of a natural image (grey+alpha, RGBA) is dropped; grey BMP -> 1."""
    ending = ending_of(path)
    if ending == ".bmp" and components > 1 and _bmp_grey_palette(path):
        return 1
    if ending in NATURAL_IMAGE_ENDINGS and components in (2, 4):
        return components - 1
    return components


def _check_dimension(path: Path, ndim: int, size: tuple[int, ...]) -> None:
    if ndim == 4:
        raise AutosegError(f"{path}: is a 4D image (size {size}); expected a 2D or 3D image with one "
                           f"channel per file; split it into 3D files <case>_0000, <case>_0001, ... "
                           f"(one per channel or time point)")
    if ndim not in (2, 3):
        raise AutosegError(f"{path}: has {ndim} dimensions (size {size}); expected a 2D or 3D image; "
                           f"re-export it as 2D or 3D")


def _check_present(path: Path) -> None:
    """AutosegError naming ``path`` when it is missing or empty."""
    if not path.is_file():
        raise AutosegError(f"{path}: file does not exist; expected an image file here; check the path")
    if path.stat().st_size == 0:
        raise unreadable(path, "the file is empty (0 bytes)")


def _read_array(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """Read ``path`` -> (array as SimpleITK returns it, (Z,)Y,X[,comp]; the image), NaN/Inf kept."""
    _check_present(path)
    hdr = check_complete(path)
    try:
        img = sitk.ReadImage(str(path))
        _check_dimension(path, img.GetDimension(), tuple(img.GetSize()))
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as e:
        raise unreadable(path, short_reason(e)) from None
    if img.GetNumberOfComponentsPerPixel() == 1 and np.issubdtype(arr.dtype, np.floating):
        restore_nonfinite(path, hdr, arr)
    return arr, img


def _special(path: Path) -> Layout | None:
    """The layout of a PNG/TIFF that SimpleITK reads wrongly (see ``natural_images``), after the same
    existence and emptiness checks as every other read."""
    if ending_of(path) not in NATURAL_IMAGE_ENDINGS:
        return None
    _check_present(path)
    return special_layout(path)


def _special_geometry(path: Path, layout: Layout, components: int) -> Geometry:
    """A 2D geometry of ``layout``'s size: spacing and origin from the header where SimpleITK can read it
    (PNG pHYs, TIFF resolution), else 1 mm pixels at the origin, as SimpleITK gives files without them."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    spacing, origin = (1.0, 1.0), (0.0, 0.0)
    try:
        reader.ReadImageInformation()
        if reader.GetDimension() == 2 and tuple(reader.GetSize()) == layout.size:
            spacing = tuple(float(v) for v in reader.GetSpacing())
            origin = tuple(float(v) for v in reader.GetOrigin())
    except RuntimeError:
        pass
    return Geometry(ndim=2, size=layout.size, spacing=spacing, origin=origin, direction=(1.0, 0.0, 0.0, 1.0),
                    components=components)


def read_image_info(path: str | os.PathLike) -> Geometry:
    """The Geometry of an image file from its header only (fast; no voxel data is read)."""
    path = Path(path)
    layout = _special(path)
    if layout is not None:
        return _special_geometry(path, layout, layout.components)
    if not path.is_file():
        _check_present(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise unreadable(path, short_reason(e)) from None
    _check_dimension(path, reader.GetDimension(), tuple(reader.GetSize()))
    return Geometry(
        ndim=reader.GetDimension(),
        size=tuple(int(v) for v in reader.GetSize()),
        spacing=tuple(float(v) for v in reader.GetSpacing()),
        origin=tuple(float(v) for v in reader.GetOrigin()),
        direction=tuple(float(v) for v in reader.GetDirection()),
        components=_kept_components(path, reader.GetNumberOfComponents()),
    )


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image file -> (float32 array (C, Z, Y, X), Geometry in ITK order).

    2D files give Z == 1; RGB(A) natural images give C == 3 (alpha dropped).
    Raises AutosegError naming the file when it is missing, empty, truncated, unreadable or 4D.
    """
    path = Path(path)
    layout = _special(path)
    if layout is not None:
        pixels = read_pixels(path, layout, label=False)
        arr = (np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 else pixels[None])[:, None]
        return np.ascontiguousarray(arr, dtype=np.float32), _special_geometry(path, layout, arr.shape[0])
    arr, img = _read_array(path)
    n_comp = img.GetNumberOfComponentsPerPixel()
    kept = _kept_components(path, n_comp)
    if np.iscomplexobj(arr):
        raise AutosegError(f"{path}: has complex-valued pixels; expected real intensities; "
                           f"re-export the magnitude image")
    if n_comp > 1:  # vector image: (..., comp) -> (comp, ...)
        arr = np.moveaxis(arr[..., :kept], -1, 0)
    else:
        arr = arr[None]
    if img.GetDimension() == 2:
        arr = arr[:, None]
    return np.ascontiguousarray(arr, dtype=np.float32), _geometry(img, kept)


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a segmentation file -> (array (Z, Y, X) in the file's dtype, Geometry in ITK order).

    A 2D file gives Z == 1. Multi-component (RGB) label files raise AutosegError.
    """
    path = Path(path)
    layout = _special(path)
    if layout is not None:
        pixels = read_pixels(path, layout, label=True)
        if pixels.ndim == 3:
            raise AutosegError(f"{path}: is a label file with {pixels.shape[-1]} channels per pixel ({layout.reason}); "
                               f"expected one integer label value per pixel; save the label map as a "
                               f"single-channel (greyscale) image with values 0, 1, 2, ...")
        return pixels[None], _special_geometry(path, layout, 1)
    arr, img = _read_array(path)
    n_comp = img.GetNumberOfComponentsPerPixel()
    if _kept_components(path, n_comp) > 1:
        raise AutosegError(f"{path}: is a label file with {n_comp} components per pixel (RGB/vector); "
                           f"expected one integer label value per pixel; save the label map as a "
                           f"single-channel (greyscale) image with values 0, 1, 2, ...")
    if n_comp > 1:  # a grey-palette BMP expanded to RGB by ITK, or grey + alpha
        arr = arr[..., 0]
    if img.GetDimension() == 2:
        arr = arr[None]
    return arr, _geometry(img, 1)


# --------------------------------------------------------------------------- writing

def _with_geometry(img: sitk.Image, geometry: Geometry) -> sitk.Image:
    img.SetSpacing(tuple(float(v) for v in geometry.spacing))
    img.SetOrigin(tuple(float(v) for v in geometry.origin))
    img.SetDirection(tuple(float(v) for v in geometry.direction))
    return img


def _check_shape(shape: tuple[int, ...], geometry: Geometry, what: str) -> None:
    if tuple(shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"{what} has shape (Z, Y, X) {tuple(shape)} but its geometry describes "
                         f"{tuple(geometry.shape_zyx)}")


def _check_ending(path: Path) -> str:
    ending = ending_of(path)
    if ending not in SUPPORTED_ENDINGS:
        raise AutosegError(f"{path}: cannot write files ending in '{ending or '(none)'}'; expected one of "
                           f"{', '.join(SUPPORTED_ENDINGS)}; choose a supported file ending")
    return ending


@functools.lru_cache(maxsize=None)
def _new_file_mode() -> int:
    """Permissions of a normally created file (0666 minus the umask); temporary files get 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: formats whose header stores the spacing as written (PNG, TIFF and BMP round it to their units)
_EXACT_SPACING_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _short_write(path: Path, reason: str) -> AutosegError:
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 1024**2:.0f} MiB are free there"
    except OSError:
        free = ""
    return AutosegError(f"{path}: could not be written completely ({reason}){free}; the disk may be full: free "
                        f"space or write elsewhere (an earlier file of that name, if any, was kept)")


def _verify_written(tmp: Path, path: Path, img: sitk.Image, ending: str) -> None:
    """Read back what SimpleITK wrote to ``tmp`` before it replaces ``path``: its NIfTI writer does not
    raise when the disk is full, it prints an error and leaves an empty or cut-off file.

    Checks: not empty, complete (NIfTI: the gzip stream and the voxel bytes the header announces;
    BMP: the size it declares), a readable header with the written size and (where the format keeps
    it exactly) spacing. Raises AutosegError naming ``path``."""
    size_bytes = tmp.stat().st_size
    if size_bytes == 0:
        raise _short_write(path, "the file written is empty (0 bytes)")
    try:
        check_complete(tmp)
    except AutosegError:
        raise _short_write(path, f"the file written is cut off after {size_bytes} bytes") from None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _short_write(path, f"its header cannot be read back: {short_reason(e)}") from None
    got_size, want_size = tuple(reader.GetSize()), tuple(img.GetSize())
    got_spacing, want_spacing = tuple(reader.GetSpacing()), tuple(img.GetSpacing())
    if got_size != want_size or (ending in _EXACT_SPACING_ENDINGS
                                 and not np.allclose(got_spacing, want_spacing, rtol=1e-4, atol=1e-6)):
        raise _short_write(path, f"it reads back as size {got_size}, spacing {got_spacing}; written were size "
                                 f"{want_size}, spacing {want_spacing}")


def _write_sitk(img: sitk.Image, path: Path, ending: str) -> None:
    def _w(tmp: str) -> None:
        try:
            sitk.WriteImage(img, tmp, useCompression=ending in _COMPRESSIBLE_ENDINGS)
        except RuntimeError as e:
            raise AutosegError(f"{path}: could not be written ({short_reason(e)}); check that the "
                               f"folder is writable and the disk is not full") from None
        _verify_written(Path(tmp), path, img, ending)
        os.chmod(tmp, _new_file_mode())

    # the temporary name keeps the real ending last: SimpleITK picks the writer from it
    atomic_write(path, _w, suffix=ending)


def _smallest_int_dtype(lo: int, hi: int) -> type:
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return np.int64


def write_segmentation(seg: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write an integer label map ``seg`` (Z, Y, X) with exactly ``geometry``'s spacing/origin/direction.

    The format follows ``path``'s ending. A 2D geometry writes a 2D file from ``seg[0]``. PNG and BMP
    are written as uint8; a PNG with labels above 255 as uint16 (AutosegError for values outside 0..65535
    in PNG, 0..255 in BMP); other formats use the smallest fitting type of uint8 / int16 / int32. Atomic.
    """
    path = Path(path)
    ending = _check_ending(path)
    seg = np.asarray(seg)
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise TypeError(f"segmentation for {path} must be an integer array, got {seg.dtype}")
    _check_shape(seg.shape, geometry, f"segmentation for {path}")
    lo, hi = (int(seg.min()), int(seg.max())) if seg.size else (0, 0)
    if ending == ".png" and 0 <= lo and 255 < hi <= 65535:
        dtype: type = np.uint16  # a 16-bit PNG, as the dataset's labels above 255 must have been stored
    elif ending in EIGHT_BIT_ENDINGS:
        top = 65535 if ending == ".png" else 255
        if lo < 0 or hi > top:
            raise AutosegError(f"{path}: {ending} stores labels 0..{top}, found values {lo}..{hi}; "
                               f"write the segmentation as .nii.gz, .nrrd, .mha or .tif instead")
        dtype = np.uint8
    else:
        dtype = _smallest_int_dtype(lo, hi)
    data = seg.astype(dtype, copy=False)
    img = sitk.GetImageFromArray(data[0] if geometry.ndim == 2 else data)
    _write_sitk(_with_geometry(img, geometry), path, ending)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a float image ``array`` (C, Z, Y, X) with exactly ``geometry``'s spacing/origin/direction.

    C == 1 writes a scalar image, C > 1 a vector image (C == 3 with PNG/BMP: RGB). Non-8-bit formats
    store float32; PNG and BMP store rounded uint8 and raise AutosegError for values outside 0..255.
    A 2D geometry writes a 2D file from slice 0. Atomic.
    """
    path = Path(path)
    ending = _check_ending(path)
    array = np.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"image for {path} must be (C, Z, Y, X), got shape {array.shape}")
    _check_shape(array.shape[1:], geometry, f"image for {path}")
    if ending in EIGHT_BIT_ENDINGS:
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -0.5 or hi > 255.5:
            raise AutosegError(f"{path}: {ending} stores 8-bit values 0..255, found {lo:g}..{hi:g}; "
                               f"rescale the image or write it as .nii.gz/.nrrd/.mha/.tif")
        data = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    else:
        data = array.astype(np.float32, copy=False)
    if geometry.ndim == 2:
        data = data[:, 0]
    if data.shape[0] == 1:
        img = sitk.GetImageFromArray(data[0])
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(data, 0, -1)), isVector=True)
    _write_sitk(_with_geometry(img, geometry), path, ending)
