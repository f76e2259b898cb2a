"""Content digests of a dataset's files, remembered by size and modification time.

Freshness is judged on bytes, never on timestamps (issue 16, item 8): copying a dataset, touching a
label file or restoring it from a backup with the same bytes must not make a finished run stale. Reading
every file's bytes on every `autoseg plan` would cost a second pass over the data, so a work folder
remembers each file's digest under its (size, mtime): a file whose size and mtime are unchanged is not
read again, and a file whose mtime changed is read and, when its bytes are the same, gives the same
digest as before.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from ..store import file_hash

log = logging.getLogger(__name__)


class FileDigests:
    """``digest(path)``: the content hash of a file (``autoseg.store.file_hash``), remembered in ``path``
    (a JSON file in the work folder, or nothing when None) under the file's size and mtime.
    Thread-safe; ``save()`` writes the remembered digests back (atomically) when any were added."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self._entries: dict[str, list] = {}
        self._changed = False
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = {str(k): list(v) for k, v in data.get("files", {}).items()
                                 if isinstance(v, list) and len(v) == 3}
            except (OSError, ValueError, AttributeError):
                log.debug("%s is unreadable: digests are computed again", self.path)

    def digest(self, path: str | Path) -> str:
        key = str(Path(path).absolute())
        st = os.stat(key)
        stamp = [int(st.st_size), int(st.st_mtime_ns)]
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[:2] == stamp:
            return str(entry[2])
        value = file_hash(key)
        with self._lock:
            self._entries[key] = [*stamp, value]
            self._changed = True
        return value

    def save(self) -> None:
        if self.path is None or not self._changed:
            return
        from ..atomic import atomic_write_text

        with self._lock:
            data = {"about": "content digests of the dataset's files, by size and mtime (autoseg.data.file_digests)",
                    "files": dict(sorted(self._entries.items()))}
            self._changed = False
        try:
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        except OSError as e:  # only a cache: the next plan reads the files again
            log.warning("cannot remember file digests in %s (%s); the next `autoseg plan` reads the files again",
                        self.path, e)
