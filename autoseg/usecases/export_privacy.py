"""What must never leave the machine in an exported model: the training set's case ids and the local
paths of this machine (the work folder, the dataset, the home folder, any absolute path).

The exported JSON is built from the fields prediction needs (no case lists); what free text remains
(the planner's decisions, the postprocessing reasons) is scrubbed with :func:`scrub`, and
:func:`find_private` checks every member name and every JSON key and string once more before the
zip is written.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REMOVED = "[removed by autoseg export: named a training case or a local path]"
#: an absolute POSIX path of two or more parts (/home/x, /data/run/...), a home-relative one, a Windows one
_PATH = r"(?<![\w.])/[^\s/'\"]+/[^\s'\"]*|~/[^\s'\"]+|\b[A-Za-z]:\\[^\s'\"]*"


def private_pattern(case_ids: Iterable[str], paths: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of ``case_ids`` as a whole token (not inside a longer id: ``case_1`` does
    not match ``case_10``), any of ``paths``, and any absolute path."""
    ids = sorted({c for c in case_ids if c}, key=len, reverse=True)
    parts = [re.escape(p) for p in sorted({p for p in paths if p and p != "/"}, key=len, reverse=True)]
    if ids:
        parts.append(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(c) for c in ids) + r")(?![A-Za-z0-9])")
    parts.append(_PATH)
    return re.compile("|".join(parts))


def scrub(data: Any, pattern: re.Pattern[str]) -> tuple[Any, int]:
    """``data`` (plain JSON data) with every string value that ``pattern`` matches replaced by
    :data:`REMOVED`; returns (data, number of strings replaced). Keys are left as they are."""
    if isinstance(data, str):
        return (REMOVED, 1) if pattern.search(data) else (data, 0)
    if isinstance(data, list):
        out, n = [], 0
        for v in data:
            v, k = scrub(v, pattern)
            out.append(v)
            n += k
        return out, n
    if isinstance(data, dict):
        result, n = {}, 0
        for key, v in data.items():
            result[key], k = scrub(v, pattern)
            n += k
        return result, n
    return data, 0


def find_private(data: Any, pattern: re.Pattern[str], where: str) -> list[str]:
    """Every key and string of ``data`` that ``pattern`` matches, as ``where.key.path: 'text'``."""
    found: list[str] = []
    if isinstance(data, str):
        m = pattern.search(data)
        if m:
            found.append(f"{where}: {m.group(0)!r}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += find_private(v, pattern, f"{where}[{i}]")
    elif isinstance(data, dict):
        for key, v in data.items():
            m = pattern.search(str(key))
            if m:
                found.append(f"{where} key: {m.group(0)!r}")
            found += find_private(v, pattern, f"{where}.{key}")
    return found
