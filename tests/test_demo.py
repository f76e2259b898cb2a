"""The built-in demo: its dataset is valid and realistic enough; the full run is a slow test."""
from __future__ import annotations

import pytest

from autoseg.cli import main
from autoseg.data.dataset import load_dataset
from autoseg.demo import DEMO_CASES, DEMO_SPACING_ZYX, make_demo_dataset


def test_demo_dataset_is_valid_anisotropic_with_two_classes(tmp_path):
    folder = make_demo_dataset(tmp_path)
    manifest = load_dataset(folder)
    assert len(manifest.cases) == DEMO_CASES and len(manifest.test_cases) > 0
    assert manifest.foreground_labels == [1, 2]
    assert make_demo_dataset(tmp_path) == folder  # reused, not rewritten
    from autoseg.data.image_io import read_image_info

    g = read_image_info(manifest.cases[0].images[0])
    assert g.spacing_zyx == pytest.approx(DEMO_SPACING_ZYX)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--time-budget", "60s", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "foreground mean" in out and "target_spacing" in out
