"""Error types raised for problems a user can fix, and the "did you mean" helper.

Every message says what was expected, what was found, where (file, case, key) and what to do.
The CLI turns an AutosegError into its message and exit code 1; anything else is a bug.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutosegError(Exception):
    """A problem with the user's input, files or request; the message says how to fix it."""


class DatasetError(AutosegError):
    """The raw dataset is malformed. ``problems`` lists every problem found, one line each."""

    def __init__(self, dataset: str, problems: list[str]):
        self.dataset = dataset
        self.problems = list(problems)
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"dataset check failed for {dataset}: {n} problem{'s' if n != 1 else ''} found "
            f"(nothing was written):\n{lines}"
        )

    def __reduce__(self):  # picklable, so a worker process can raise it
        return (DatasetError, (self.dataset, self.problems))


class UsageError(AutosegError):
    """The command line is incomplete or inconsistent (exit code 2, like argparse's own errors)."""


class SchemaError(AutosegError):
    """A JSON artifact does not match its schema (unknown or missing key, wrong version)."""


class StaleArtifactError(AutosegError):
    """An artifact on disk was derived from inputs that have changed since."""


class UnknownNameError(AutosegError):
    """A name (planner, configuration, normalization scheme, ...) is not registered."""


def suggest_closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``name`` (closest first)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        low = name.lower()
        close = [c for c in choices if low in c.lower() or c.lower() in low][:n]
    return close


def unknown_name_error(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the standard "unknown X 'name'; did you mean ...? Known: ..." error."""
    choices = sorted(choices)
    close = suggest_closest(name, choices)
    msg = f"unknown {kind} '{name}'"
    if close:
        msg += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    msg += f" Known {kind}s: {', '.join(choices) if choices else '(none)'}."
    if hint:
        msg += f" {hint}"
    return UnknownNameError(msg)
