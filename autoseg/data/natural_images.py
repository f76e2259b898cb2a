"""2D PNG and TIFF layouts that SimpleITK reads wrongly, read with Pillow or tifffile instead.

SimpleITK (ITK's PNG and TIFF readers) is right for the common layouts (grey, RGB, RGBA; 8, 16 or 32
bits) and ``image_io`` keeps using it there. It is wrong for these, found with real datasets' layouts:

==========================================  ============================  ===============================
file                                        SimpleITK                      read here as
==========================================  ============================  ===============================
PNG with a palette (VOC-style label maps)   RGB colours                    the palette indices (labels);
                                                                           grey or RGB colours (images)
PNG or TIFF with 1 bit per pixel            0/255, or 4 components (TIFF)  0/1
PNG grey + alpha                            cannot be read                 grey (alpha dropped)
TIFF with several grey samples per pixel    one channel, samples           one channel per sample
(microscopy, ``photometric=minisblack``)    interleaved as pixels
TIFF with extra samples that are not alpha  the 4th band dropped           every band kept
TIFF stored band after band (planar)        fails for 32-bit samples       one channel per band
TIFF with a palette                         indices × 256                  the indices (labels);
                                                                           grey or RGB colours (images)
==========================================  ============================  ===============================

Only single-page files are handled here (a multi-page TIFF is a 3D volume, which SimpleITK reads).
Pillow and tifffile are both dependencies of scikit-image; they only open the file's header to decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AutosegError
from .raw_checks import ending_of, short_reason, unreadable

#: TIFF tag values (TIFF 6.0): photometric interpretation, planar configuration, extra samples
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE = 0, 1, 2, 3
_PLANAR_SEPARATE = 2
_ALPHA_EXTRASAMPLES = (1, 2)  # associated, unassociated alpha; 0 is "unspecified data"
#: Pillow modes SimpleITK reads wrongly: palette (+ alpha), 1-bit, grey + alpha
_PIL_MODES = ("P", "PA", "1", "LA", "La")


@dataclass(frozen=True)
class Layout:
    """How to read a file SimpleITK gets wrong."""

    reader: str  # "pillow" or "tifffile"
    size: tuple[int, int]  # ITK order (x, y)
    components: int  # channels an image keeps (alpha dropped)
    reason: str  # what SimpleITK would get wrong, for the logs and errors
    samples: tuple[int, ...] = ()  # TIFF: the samples per pixel kept, in order (alpha left out)


def special_layout(path: Path) -> Layout | None:
    """The Layout of a PNG/TIFF file SimpleITK reads wrongly, or None (also for other formats and for
    files these libraries cannot open: SimpleITK then reads them, or reports them unreadable)."""
    ending = ending_of(path)
    if ending == ".png":
        return _png_layout(path)
    if ending in (".tif", ".tiff"):
        return _tiff_layout(path)
    return None


def _png_layout(path: Path) -> Layout | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, size = im.mode, (int(im.size[0]), int(im.size[1]))
            grey = mode in ("P", "PA") and _grey_palette(im.getpalette() or [])
    except Exception:  # noqa: BLE001 - not readable by Pillow: SimpleITK decides
        return None
    if mode not in _PIL_MODES:
        return None
    if mode in ("P", "PA"):
        return Layout("pillow", size, 1 if grey else 3, "a PNG with a palette")
    if mode == "1":
        return Layout("pillow", size, 1, "a 1-bit PNG")
    return Layout("pillow", size, 1, "a grey + alpha PNG")


def _grey_palette(palette: list[int]) -> bool:
    rgb = np.asarray(palette, dtype=np.int64).reshape(-1, 3) if palette else np.zeros((0, 3), np.int64)
    return bool(np.all((rgb[:, 0] == rgb[:, 1]) & (rgb[:, 1] == rgb[:, 2])))


def _tiff_layout(path: Path) -> Layout | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                return None
            page = tif.pages[0]
            photometric = int(page.photometric)
            planar = int(page.planarconfig)
            samples = int(page.samplesperpixel)
            bits = int(page.bitspersample)
            extras = [int(e) for e in (page.extrasamples or ())]
            colormap = page.colormap if photometric == _PALETTE else None
            shape = tuple(int(v) for v in page.shape)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile can parse: SimpleITK decides
        return None
    base, keep = _kept_samples(photometric, samples, extras)
    kept = len(keep)
    if samples == 1 or planar == _PLANAR_SEPARATE:
        size = (shape[-1], shape[-2])
    else:
        size = (shape[-2], shape[-3])
    if photometric == _PALETTE:
        grey = colormap is None or _grey_palette(np.asarray(colormap).T.ravel().tolist())
        return Layout("tifffile", size, 1 if grey else 3, "a TIFF with a palette")
    if bits == 1:
        return Layout("tifffile", size, 1, "a 1-bit TIFF")
    if planar == _PLANAR_SEPARATE and samples > 1:
        return Layout("tifffile", size, kept, "a TIFF stored band after band (planar)", keep)
    if samples > 1 and photometric in (_MINISBLACK, _MINISWHITE):
        return Layout("tifffile", size, kept, f"a TIFF with {samples} grey samples per pixel", keep)
    if kept > base:
        return Layout("tifffile", size, kept, "a TIFF whose extra samples are not alpha", keep)
    if photometric == _RGB and samples < 3:
        return Layout("tifffile", size, kept, f"an RGB TIFF with {samples} samples per pixel", keep)
    return None


def read_pixels(path: Path, layout: Layout, *, label: bool) -> np.ndarray:
    """The pixels of a file with a special ``layout``: (Y, X) for one channel, else (Y, X, C).

    ``label``: palette indices are the values (a VOC-style label map); for an image the palette's
    colours are (grey: one channel). Alpha is dropped; 1-bit pixels read as 0/1."""
    try:
        arr = _read_pillow(path, layout, label) if layout.reader == "pillow" else _read_tifffile(path, layout, label)
    except AutosegError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file: name it
        raise unreadable(path, short_reason(e)) from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def _read_pillow(path: Path, layout: Layout, label: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "PA"):
            if label:
                return np.asarray(im.convert("P") if im.mode == "PA" else im)
            return np.asarray(im.convert("L" if layout.components == 1 else "RGB"))
        if im.mode in ("LA", "La"):
            return np.asarray(im.getchannel(0))
        return np.asarray(im)  # mode "1": bool


def _read_tifffile(path: Path, layout: Layout, label: bool) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        if int(page.photometric) == _PALETTE:
            if label:
                return arr
            cmap = np.asarray(page.colormap)  # (3, 2**bits), 16-bit colours
            rgb = np.moveaxis(cmap[:, arr], 0, -1).astype(np.float32) / 257.0
            return rgb[..., 0] if layout.components == 1 else rgb
        if int(page.samplesperpixel) == 1:
            return arr
        if int(page.planarconfig) == _PLANAR_SEPARATE:
            arr = np.moveaxis(arr, 0, -1)
        return arr[..., list(layout.samples)]


def _kept_samples(photometric: int, samples: int, extras: list[int]) -> tuple[int, tuple[int, ...]]:
    """(colour samples, indices of the samples kept): the colour samples (3 for RGB, 1 for grey; an "RGB"
    file with fewer keeps what it has) and every extra sample that is not alpha (TIFF ExtraSamples 0,
    "unspecified data", is a channel: microscopy and multispectral files use it)."""
    base = min(samples, 3) if photometric == _RGB else 1
    extras = (extras + [0] * samples)[: max(0, samples - base)]
    return base, (*range(base), *(base + i for i, e in enumerate(extras) if e not in _ALPHA_EXTRASAMPLES))
