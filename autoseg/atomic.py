"""Atomic writes: write to a temporary file in the same folder, then rename over the target.

A crash never leaves a file that looks complete and is not.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` to produce the content, then move it to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get normal permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
