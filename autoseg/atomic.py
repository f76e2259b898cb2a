"""Atomic writes: write to a temporary file in the same folder, then rename over the target.

A crash never leaves a file that looks complete and is not.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` to produce the content, then move it to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the file that was to be written, not the temporary one
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path)) from e
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:  # already gone, or the folder became unwritable: the error below matters
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            # a failed write() or fsync() (disk full) names no file, or only the temporary one: name the target
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def aside_stamp() -> str:
    """A UTC timestamp for :func:`move_aside` names, e.g. ``20261130-052501``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def move_aside(path: str | os.PathLike, tag: str, stamp: str | None = None) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<stamp>`` in its folder (``-2``, ``-3``, ... if taken); return the new path.

    For files that must not be used any more but are kept for a look (a damaged checkpoint, the log
    of a training that starts over)."""
    path = Path(path)
    stamp = stamp or aside_stamp()
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _w)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """Save a numpy array as ``.npy`` (memory-mappable), atomically."""
    import numpy as np

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _w, suffix=".npy")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a broken file gives an AutosegError naming it."""
    from .errors import AutosegError

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AutosegError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                           f"fix or delete the file") from None
