"""Shared test set-up: make ``autoseg`` and ``tests.synthetic`` importable without installing, and
offer a ``synthetic_dataset`` factory fixture (see tests/synthetic.py for its arguments)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # plain `pytest` does not put the repository root on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from tests.synthetic import make_synthetic_dataset  # noqa: E402


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``synthetic_dataset(name="Dataset900_Synth", **kwargs) -> Path``: a fresh dataset under tmp_path."""

    def make(name: str = "Dataset900_Synth", **kwargs) -> Path:
        return make_synthetic_dataset(tmp_path / name, **kwargs)

    return make
