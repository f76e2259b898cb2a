"""Advisory file locks: one process at a time on a piece of a work folder (e.g. one training per fold).

``fcntl.flock`` on a small lock file: the lock goes with the process (a killed training frees it), and
a second process that finds it taken gets an error naming the holder instead of writing the same
checkpoints. Works on local file systems; on NFS, flock is emulated or ignored depending on the mount.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import AutosegError


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, *, hint: str = "") -> Iterator[None]:
    """Hold ``path`` (created if needed) locked for the block; AutosegError naming ``what``, the
    holder's pid and ``hint`` when another process holds it (shared or exclusive)."""
    with _locked(path, what, hint=hint, shared=False):
        yield


@contextlib.contextmanager
def shared(path: str | Path, what: str, *, hint: str = "") -> Iterator[None]:
    """Hold a shared lock on ``path`` for the block: any number of holders, but none while another
    process holds it exclusively (AutosegError naming ``what``, that holder's pid and ``hint``)."""
    with _locked(path, what, hint=hint, shared=True):
        yield


@contextlib.contextmanager
def _locked(path: str | Path, what: str, *, hint: str, shared: bool) -> Iterator[None]:
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            who = f"another process (pid {holder}; lock {path})" if holder else f"other processes (lock {path})"
            raise AutosegError(f"{what} is in use by {who}" + (f"; {hint}" if hint else "")) from None
        if not shared:
            try:  # the holder's pid, for the message above; writing it can fail on a full disk
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(path)) from None  # name the file (cli's one-line handler)
        yield
    finally:
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the shared holders that come next
        os.close(fd)  # closing the descriptor releases the lock
