"""`autoseg report`: one self-contained HTML page of a run, full or partial, plain labels or regions; and the
page rendered in a real headless browser (skipped, with the reason, when none is installed)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.reporting.figures import pick_cases, representative_slice
from autoseg.reporting.html import esc, table
from autoseg.schemas import SCHEMA_VERSION, FoldSummary, Plans, Selection, load_json, save_json
from autoseg.workdir import Workdir
from tests.conftest import FAST_TRAIN
from tests.synthetic import make_synthetic_dataset

PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
N_FOLDS = 5


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """3d_fullres trained on all 5 folds (a few iterations each) and find-best; 2d planned, not trained."""
    root = tmp_path_factory.mktemp("report")
    ds = make_synthetic_dataset(root / "Dataset030_Report", n_cases=6, shape=(12, 16, 16), spacing_zyx=(2.0, 0.8, 0.8))
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0
    for fold in range(N_FOLDS):
        assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", str(fold), *FAST_TRAIN]) == 0
    assert main(["find-best", "--workdir", str(run), "--no-progress"]) == 0
    return run


def _external_references(text: str) -> list[str]:
    """Everything in the page that would load something from elsewhere."""
    found = re.findall(r'(?:src|href)\s*=\s*"(?!data:|#)[^"]*"', text)
    found += re.findall(r"<link\b[^>]*>|<script\b[^>]*>|@import|url\(", text, flags=re.IGNORECASE)
    return found


def test_report_of_a_trained_run(trained_run, capsys):
    before = {p for p in trained_run.rglob("*")}
    capsys.readouterr()
    assert main(["report", "--workdir", str(trained_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = Workdir(trained_run).report_html
    assert f"report written: {path}" in out
    assert {p for p in trained_run.rglob("*")} - before == {path}  # one file, nothing beside it
    text = path.read_text(encoding="utf-8")
    assert _external_references(text) == []
    assert 'src="http' not in text and "<link" not in text
    # 5 folds' curves + best, median and worst validation case of 3d_fullres
    assert text.count("<img ") == text.count('<img src="data:image/png;base64,') == N_FOLDS + 3
    selection = load_json(Selection, Workdir(trained_run).selection_json)
    assert f"{selection.winner} ★ winner" in text
    for name in ("label_1 (1)", "label_2 (2)"):
        assert name in text
    for role in ("best:", "median:", "worst:"):
        assert role in text
    plans = load_json(Plans, Workdir(trained_run).plans_json)
    for decision in plans.configuration("3d_fullres").decisions:
        assert str(esc(decision.reason)) in text
    for step in selection.postprocessing:
        assert str(esc(step.reason)) in text
    # 2d is planned but not trained: said, with the command
    assert f"for k in 0 1 2 3 4; do autoseg train --workdir {trained_run} -c 2d --fold $k; done" in text
    assert "2d folds 0, 1, 2, 3, 4: not trained" in out
    # the Dice per fold table has a row per fold and their mean
    assert text.count("mean of folds") == 1


def test_report_to_another_file(trained_run, tmp_path):
    out = tmp_path / "sub" / "my report.html"
    assert main(["report", "--workdir", str(trained_run), "-o", str(out), "--no-progress"]) == 0
    assert out.is_file() and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.fixture
def planned_run(tmp_path) -> Path:
    ds = make_synthetic_dataset(tmp_path / "Dataset031_Plan", n_cases=5, shape=(10, 14, 14))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0
    return run


def test_report_of_a_plan_only_run_names_what_is_missing(planned_run, capsys):
    capsys.readouterr()
    assert main(["report", "--workdir", str(planned_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    text = Workdir(planned_run).report_html.read_text(encoding="utf-8")
    assert "<img" not in text and _external_references(text) == []
    for config in load_json(Plans, Workdir(planned_run).plans_json).configurations:
        command = f"for k in 0 1 2 3 4; do autoseg train --workdir {planned_run} -c {config} --fold $k; done"
        assert command in text and command in out
    assert f"autoseg find-best --workdir {planned_run}" in text
    assert "No results/selection.json yet" in text
    assert "Plan and its reasons" in text and "target_spacing" in text


def test_report_escapes_every_text(planned_run):
    wd = Workdir(planned_run)
    data = json.loads(wd.plans_json.read_text())
    data["warnings"] = ['<script>alert("x")</script> & <b>bold</b>']  # not part of the plans' hash
    wd.plans_json.write_text(json.dumps(data))
    assert main(["report", "--workdir", str(planned_run), "--no-progress"]) == 0
    text = wd.report_html.read_text(encoding="utf-8")
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text


def test_report_without_the_plan_names_autoseg_plan(planned_run, capsys):
    wd = Workdir(planned_run)
    for path in (wd.plans_json, wd.splits_json):
        path.unlink()
    capsys.readouterr()
    assert main(["report", "--workdir", str(planned_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "autoseg plan " in out and f"--workdir {planned_run}" in out
    assert "No plans.json yet" in wd.report_html.read_text(encoding="utf-8")


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", "--workdir", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "is not an autoseg work folder" in err and "plans.json" in err and "autoseg plan" in err
    assert main(["report", "--workdir", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def _region_run(tmp_path: Path) -> tuple[Path, Path]:
    """(dataset, work folder): a region-based dataset planned, 3d_fullres validated on every fold with the
    reference labels as predictions and made-up Dice values (no training: no logs), not selected yet."""
    ds = make_synthetic_dataset(tmp_path / "Dataset032_Regions", n_cases=5, shape=(10, 14, 14), regions=True)
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0
    wd = Workdir(run)
    rng = np.random.default_rng(0)
    for k, fold in enumerate(json.loads(wd.splits_json.read_text())["folds"]):
        per_case = {}
        wd.validation_dir("3d_fullres", k).mkdir(parents=True)
        for cid in fold["val"]:
            shutil.copy(ds / "labelsTr" / f"{cid}.nii.gz", wd.validation_dir("3d_fullres", k) / f"{cid}.nii.gz")
            per_case[cid] = {key: {"dice": float(rng.uniform(0.5, 1.0))} for key in ("1,2", "2")}
        per_class = {key: {"name": f"region_{i + 1}", "dice": float(np.mean([c[key]["dice"] for c in per_case.values()]))}
                     for i, key in enumerate(("1,2", "2"))}
        save_json(FoldSummary(SCHEMA_VERSION, "3d_fullres", str(k), "", len(per_case), [[1, 2], [2]], per_class,
                              {"dice": 0.7}, per_case, mean_seconds_per_case=0.1),
                  wd.validation_summary_json("3d_fullres", k))
        wd.checkpoint("3d_fullres", k, "final").write_bytes(b"")
    return ds, run


def test_report_of_a_region_based_run(tmp_path):
    """Regions ("1,2" keys) in the Dice tables and the overlays."""
    _, run = _region_run(tmp_path)
    assert main(["report", "--workdir", str(run), "--no-progress"]) == 0
    text = Workdir(run).report_html.read_text(encoding="utf-8")
    assert "region_1 (1,2)" in text and "region_2 (2)" in text
    assert text.count('<img src="data:image/png;base64,') == 3  # no training logs; best, median, worst
    assert f"autoseg find-best --workdir {run}" in text  # complete, not selected yet


def test_report_without_the_images_says_why(tmp_path, caplog):
    """The dataset moved away after planning: the overlays become lines saying why, the rest is written."""
    ds, run = _region_run(tmp_path)
    shutil.rmtree(ds / "imagesTr")
    assert main(["report", "--workdir", str(run), "--no-progress"]) == 0
    text = Workdir(run).report_html.read_text(encoding="utf-8")
    assert "<img" not in text
    assert text.count("cannot draw it:") == 3 and "imagesTr" in text
    assert "region_1 (1,2)" in text


# --------------------------------------------------------------------------- units

def test_pick_cases_best_median_worst():
    per_case = {"0": {"a": {"1": {"dice": 0.9}, "2": {"dice": None}}, "b": {"1": {"dice": 0.1}}},
                "1": {"c": {"1": {"dice": 0.5}, "2": {"dice": 0.3}}, "d": {"1": {"dice": None}}}}
    picks = pick_cases(per_case)
    assert [(p.role, p.case_id, p.fold) for p in picks] == [("best", "a", "0"), ("median", "c", "1"),
                                                            ("worst", "b", "0")]
    assert picks[1].mean_dice == pytest.approx(0.4)
    assert [p.role for p in pick_cases({"0": {"x": {"1": {"dice": 1.0}}}})] == ["only case"]
    assert pick_cases({}) == []


def test_representative_slice_has_the_most_reference_foreground():
    ref = np.zeros((5, 4, 4), np.uint8)
    ref[1, :2, :2] = 1
    ref[3] = 2
    assert representative_slice(ref, np.zeros_like(ref), [1, 2]) == 3
    assert representative_slice(ref, np.zeros_like(ref), [1]) == 1
    pred = np.zeros_like(ref)
    pred[4, 0, 0] = 1
    assert representative_slice(np.zeros_like(ref), pred, [1]) == 4
    assert representative_slice(np.zeros_like(ref), np.zeros_like(ref), [1]) == 2


def test_table_escapes_cells():
    html = table(["a<b"], [["x & y"], ['"q"']])
    assert "a&lt;b" in html and "x &amp; y" in html and "&quot;q&quot;" in html


# --------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser():
    """(playwright's sync_playwright, the Chromium executable or None for playwright's own), or a skip.

    Module-scoped and asked for first, so a machine without a browser skips before the run is trained."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser: playwright is not installed (pip install playwright; then Debian's "
                    "`apt-get install chromium`, or `python -m playwright install chromium`)")
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if exe := shutil.which(name):
            return sync_playwright, exe
    with sync_playwright() as p:
        if Path(p.chromium.executable_path).exists():
            return sync_playwright, None
    pytest.skip("no browser: playwright is installed but no Chromium was found (apt-get install chromium, or "
                "python -m playwright install chromium)")


def test_report_renders_in_a_headless_browser(browser, trained_run, tmp_path):
    sync_playwright, exe = browser
    out = tmp_path / "report.html"
    assert main(["report", "--workdir", str(trained_run), "-o", str(out), "--no-progress"]) == 0
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(out.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) == N_FOLDS + 3
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert [u for u in requested if not u.startswith(("data:", "file:"))] == []  # nothing from the network
    assert (tmp_path / "report.png").stat().st_size > 10_000
