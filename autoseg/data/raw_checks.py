"""Checks on an image file's raw bytes, for what SimpleITK does not report (used by ``image_io``).

SimpleITK silently zero-fills truncated NIfTI and BMP files, and its NIfTI reader turns NaN and Inf
voxels into 0: :func:`check_complete` finds truncated files, :func:`restore_nonfinite` puts NaN/Inf
back. Errors are :class:`~autoseg.errors.AutosegError` naming the file (:func:`unreadable`).
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AutosegError


def ending_of(path: str | os.PathLike) -> str:
    """The file ending of ``path`` in lower case, ``.nii.gz`` counted as one ending ("" if none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def short_reason(err: Exception) -> str:
    """The useful line of a SimpleITK exception, without C++ file names and object addresses."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    picked = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "unknown error")
    picked = re.sub(r"^(sitk::|ITK )?ERROR:\s*", "", picked)
    picked = re.sub(r"\(0x[0-9a-fA-F]+\)", "", picked)
    return picked[:200]


def unreadable(path: Path, reason: str) -> AutosegError:
    return AutosegError(f"{path}: cannot be read as an image ({reason}); expected a complete, valid "
                        f"'{ending_of(path) or '(no ending)'}' file; re-export the file")


@dataclass(frozen=True)
class NiftiHeader:
    endian: str
    datatype: int
    voxels: int
    vox_offset: int
    bitpix: int

    @property
    def expected_bytes(self) -> int:
        return self.vox_offset + self.voxels * self.bitpix // 8


_NIFTI_FLOAT = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy float type


def _parse_nifti_header(header: bytes) -> NiftiHeader | None:
    """The fields of a NIfTI-1/2 header needed to locate its voxels (None if not NIfTI)."""
    for endian in ("<", ">"):
        if len(header) < 4:
            return None
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            (datatype, bitpix) = struct.unpack(endian + "2h", header[70:74])
            dim = struct.unpack(endian + "8h", header[40:56])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            (datatype, bitpix) = struct.unpack(endian + "2h", header[12:16])
            dim = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dim[1:dim[0] + 1]], dtype=np.int64))
    return NiftiHeader(endian, int(datatype), voxels, int(vox_offset), int(bitpix))


def _check_gzip_complete(path: Path, expected: int | None) -> None:
    """Raise if the gzip stream of ``path`` ends early or holds fewer than ``expected`` bytes."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", f.read(4))
    if expected is not None and isize == expected % 2**32:
        return  # the trailer records the full size: a truncated file would not end with it
    total = 0
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        buf = f.read(1 << 22)
        while buf:
            total += len(dec.decompress(buf))
            if not dec.eof:
                buf = f.read(1 << 22)
                continue
            buf = dec.unused_data or f.read(1 << 22)
            if not buf.strip(b"\x00"):
                break  # zero padding after the last member is tolerated, as by gzip itself
            dec = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
    if not dec.eof:
        raise unreadable(path, "the compressed data ends early: the file is truncated")
    if expected is not None and total < expected:
        raise unreadable(path, f"it holds {total} bytes, its header says {expected}: the file is truncated")


def check_complete(path: Path) -> NiftiHeader | None:
    """Detect truncated NIfTI / BMP files that SimpleITK would read without complaint.

    Returns the NIfTI header of a .nii/.nii.gz file (None otherwise).
    """
    ending = ending_of(path)
    try:
        if ending == ".nii.gz":
            try:
                with gzip.open(path, "rb") as f:
                    header = f.read(540)
            except EOFError:
                raise unreadable(path, "the compressed data ends early: the file is truncated") from None
            except (OSError, zlib.error) as e:
                raise unreadable(path, f"not a valid gzip file: {e}") from None
            hdr = _parse_nifti_header(header)
            _check_gzip_complete(path, hdr.expected_bytes if hdr else None)
            return hdr
        if ending == ".nii":
            with open(path, "rb") as f:
                hdr = _parse_nifti_header(f.read(540))
            size = path.stat().st_size
            if hdr is not None and size < hdr.expected_bytes:
                raise unreadable(path, f"the file has {size} bytes, its header says {hdr.expected_bytes}: "
                                        f"the file is truncated")
            return hdr
        if ending == ".bmp":
            with open(path, "rb") as f:
                header = f.read(6)
            if len(header) == 6 and header[:2] == b"BM":
                (declared,) = struct.unpack("<I", header[2:6])
                size = path.stat().st_size
                if declared and size < declared:
                    raise unreadable(path, f"the file has {size} bytes, its header says {declared}: "
                                            f"the file is truncated")
    except (OSError, zlib.error) as e:
        raise unreadable(path, str(e)) from None
    return None


def restore_nonfinite(path: Path, hdr: NiftiHeader | None, arr: np.ndarray) -> None:
    """Put back, in place, the NaN/Inf voxels of a float NIfTI file that SimpleITK read as 0.

    ``arr`` is the scalar array as SimpleITK returns it (x fastest, the file's own voxel order).
    """
    if hdr is None or hdr.datatype not in _NIFTI_FLOAT or arr.size != hdr.voxels:
        return
    dtype = np.dtype(hdr.endian + _NIFTI_FLOAT[hdr.datatype])
    opener = gzip.open if ending_of(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            f.seek(hdr.vox_offset)
            raw = np.frombuffer(f.read(hdr.voxels * dtype.itemsize), dtype=dtype)
    except (OSError, EOFError, zlib.error) as e:
        raise unreadable(path, str(e)) from None
    bad = np.flatnonzero(~np.isfinite(raw))
    if bad.size:
        arr.reshape(-1)[bad] = raw[bad]
