"""find_best on a hand-made work folder: two fake configurations ("2d", "3d_fullres" of a real plan),
2 folds of 2 cases, known probabilities, hence known Dice for singles and the ensemble."""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pytest

from autoseg.atomic import atomic_write_json, read_json
from autoseg.data.image_io import write_segmentation
from autoseg.errors import AutosegError, StaleArtifactError
from autoseg.inference.ensemble import average_probabilities, segmentations_of_ensembles
from autoseg.model.export import probabilities_to_segmentation, save_probabilities
from autoseg.parallel import fork_map
from autoseg.store import plans_hash
from autoseg.usecases.train import resolve_training_settings
from autoseg.planning.registry import get_planner
from autoseg.schemas import (SCHEMA_VERSION, Candidate, CaseFiles, CaseFingerprint, DatasetManifest, Fingerprint,
                             Fold, FoldSummary,
                             Geometry, HardwareBudget, IntensityStats, LabelStats, Selection, Splits, load_json,
                             save_json, stable_hash, to_dict)
from autoseg.selection import _rank_key, find_best, format_ranking
from autoseg.workdir import Workdir

SHAPE = (4, 8, 8)
GEOMETRY = Geometry(3, (8, 8, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
CASES = [f"case_{i:03d}" for i in range(4)]
LABELS = {"background": 0, "a": 1, "b": 2}
SECONDS = {"2d": 1.0, "3d_fullres": 2.0}


def _reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 1:5, :] = 1  # 64 voxels
    ref[1:3, 6:8, :] = 2  # 32 voxels, not touching label 1
    return ref


def _probabilities(config: str) -> np.ndarray:
    """Both right on label 2. On label 1, "2d" misses x 0:2 and adds a false positive blob, "3d_fullres"
    misses x 2:8; averaged, every voxel is right (and a union of their segmentations would not be)."""
    p = np.zeros((3, *SHAPE), np.float32)
    p[0] = 1.0
    ref = _reference()
    for lab in (1, 2):
        p[lab][ref == lab], p[0][ref == lab] = 0.9, 0.1
    wrong = (slice(1, 3), slice(1, 5), slice(0, 2) if config == "2d" else slice(2, 8))
    p[1][wrong], p[0][wrong] = 0.4, 0.6
    fp = (3, slice(6, 8), slice(6, 8))  # beside label 2, far from label 1
    p[1][fp], p[0][fp] = (0.6, 0.4) if config == "2d" else (0.1, 0.9)
    return p


def _fingerprint() -> Fingerprint:
    cases = [CaseFingerprint(c, (2.0, 1.0, 1.0), SHAPE, SHAPE, 1.0, {"1": 64, "2": 32}) for c in CASES]
    stats = [LabelStats(v, k, {c: 64 for c in CASES}, 64.0, {c: 1 for c in CASES}, 32, 48.0, 64, 96.0, [])
             for k, v in LABELS.items() if v]
    intensity = [IntensityStats(0, "MRI", 1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 2.0, 100)]
    return Fingerprint(1, "Dataset998_Sel", "hash", 3, {"0": "MRI"}, LABELS, cases, intensity, stats, 1.0)


def _write_validation(wd: Workdir, config: str, fold: int, val: list[str], *, probs: bool = True) -> None:
    vdir = wd.validation_dir(config, fold)
    vdir.mkdir(parents=True, exist_ok=True)
    p = _probabilities(config)
    for cid in val:
        write_segmentation(probabilities_to_segmentation(p), GEOMETRY, vdir / f"{cid}.nii.gz")
        if probs:
            save_probabilities(p, wd.validation_probabilities(config, fold, cid), case_id=cid)
    save_json(FoldSummary(SCHEMA_VERSION, config, str(fold), checkpoint_hash="", num_cases=len(val), labels=[1, 2],
                          per_class={}, foreground_mean={}, per_case={},
                          seconds_per_case={c: SECONDS[config] for c in val}, mean_seconds_per_case=SECONDS[config]),
              wd.validation_summary_json(config, fold))


@pytest.fixture
def run(tmp_path):
    """A work folder with plans, manifest, splits and reference labels; no validation yet."""
    wd = Workdir(tmp_path / "run")
    wd.root.mkdir()
    labels_dir = tmp_path / "labelsTr"
    labels_dir.mkdir()
    for cid in CASES:
        write_segmentation(_reference(), GEOMETRY, labels_dir / f"{cid}.nii.gz")
    budget = HardwareBudget("cpu", None, None, None, 2, 8.0, 4.0, False, 100.0)
    plans = get_planner("nnunet_v2").plan(_fingerprint(), budget)
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    save_json(plans, wd.plans_json)
    save_json(DatasetManifest(1, str(tmp_path), "Dataset998_Sel", {"0": "MRI"}, LABELS, ".nii.gz",
                              tuple(CaseFiles(c, (str(tmp_path / f"{c}_0000.nii.gz"),),
                                              str(labels_dir / f"{c}.nii.gz")) for c in CASES)), wd.manifest_json)
    folds = [Fold(CASES[2:], CASES[:2]), Fold(CASES[:2], CASES[2:])]
    save_json(Splits(1, 12345, "generated", folds), wd.splits_json)
    wd.plans = plans
    return wd


def _write_all(wd: Workdir, configs=("2d", "3d_fullres")) -> None:
    for c in configs:
        _write_validation(wd, c, 0, CASES[:2])
        _write_validation(wd, c, 1, CASES[2:])


def test_ensemble_from_averaged_probabilities_wins_and_ranking_is_ordered(run):
    _write_all(run)
    sel = find_best(run.root, progress=False)
    assert [c.name for c in sel.candidates] == ["2d+3d_fullres", "2d", "3d_fullres"]
    ens, two_d, full = sel.candidates
    assert ens.foreground_dice == pytest.approx(1.0)  # only averaging probabilities gets every voxel right
    assert two_d.dice_per_class["1"] == pytest.approx(2 * 48 / (2 * 48 + 4 + 16))
    assert full.dice_per_class["1"] == pytest.approx(2 * 16 / (2 * 16 + 48))
    assert two_d.dice_per_class["2"] == pytest.approx(1.0)
    assert ens.seconds_per_case == pytest.approx(3.0) and two_d.seconds_per_case == pytest.approx(1.0)
    assert sel.winner == "2d+3d_fullres" and sel.winner_configurations == ["2d", "3d_fullres"]
    assert sel.postprocessing == [] and sel.foreground_dice_after_postprocessing == pytest.approx(1.0)
    assert sel.plans_hash == plans_hash(run.plans) and sel.folds == [0, 1]
    # round trip through the schema
    again = load_json(Selection, run.selection_json)
    assert to_dict(again) == to_dict(sel)
    table = format_ranking(sel)
    lines = table.splitlines()
    winner_line = next(line for line in lines if "2d+3d_fullres" in line and "*" in line)
    assert winner_line.lstrip().startswith("*") and "1.0000" in winner_line and "3.00" in winner_line
    assert table.index("2d+3d_fullres") < table.index(" 2d ") < table.index(" 3d_fullres ")


def test_incomplete_configuration_is_skipped_and_winner_gets_postprocessing(run, caplog):
    _write_validation(run, "2d", 0, CASES[:2])
    _write_validation(run, "2d", 1, CASES[2:])
    _write_validation(run, "3d_fullres", 0, CASES[:2])  # fold 1 missing
    with caplog.at_level(logging.WARNING, logger="autoseg.selection"):
        sel = find_best(run.root, progress=False)
    assert f"autoseg train --workdir {run.root} -c 3d_fullres --fold 1" in caplog.text
    assert [c.name for c in sel.candidates] == ["2d"] and sel.winner == "2d"
    # the false-positive blob of "2d" touches label 2, so the largest foreground component would drop
    # label 2 entirely (rejected); the largest component of label 1 removes the blob (accepted)
    assert [(s.kind, s.labels) for s in sel.postprocessing] == [("largest_component", [1])]
    before = sel.candidates[0].dice_per_class["1"]
    after = sel.dice_per_class_after_postprocessing["1"]
    assert after == pytest.approx(2 * 48 / (2 * 48 + 16)) and after > before
    assert sel.foreground_dice_after_postprocessing > sel.foreground_dice_before_postprocessing
    assert "label 1 Dice" in sel.postprocessing[0].reason
    assert "largest_component label(s) 1" in format_ranking(sel)
    # scored and postprocessing learned in 2 forked processes: the same selection
    parallel = find_best(run.root, progress=False, overwrite=True, num_workers=2)
    assert to_dict(parallel) == to_dict(sel)


def test_no_complete_configuration_lists_the_train_commands(run):
    _write_validation(run, "2d", 0, CASES[:2])
    with pytest.raises(AutosegError) as err:
        find_best(run.root, progress=False)
    msg = str(err.value)
    assert f"autoseg train --workdir {run.root} -c 2d --fold 1" in msg
    assert f"autoseg train --workdir {run.root} -c 3d_fullres --fold 0" in msg
    assert "-c 2d --fold 0" not in msg


def test_missing_probabilities_keep_a_configuration_out_of_ensembles(run):
    _write_all(run, ["2d"])
    _write_validation(run, "3d_fullres", 0, CASES[:2], probs=False)
    _write_validation(run, "3d_fullres", 1, CASES[2:], probs=False)
    sel = find_best(run.root, progress=False)
    assert [c.name for c in sel.candidates] == ["2d", "3d_fullres"]


def test_stale_selection_is_recomputed_and_current_one_kept(run, caplog):
    _write_all(run)
    find_best(run.root, progress=False)
    data = read_json(run.selection_json)
    data["winner"] = "edited"  # a current file is returned as it is
    atomic_write_json(run.selection_json, data)
    with caplog.at_level(logging.INFO, logger="autoseg.selection"):
        assert find_best(run.root, progress=False).winner == "edited"
    assert "is current" in caplog.text
    data["plans_hash"] = "0000000000000000"
    atomic_write_json(run.selection_json, data)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autoseg.selection"):
        sel = find_best(run.root, progress=False)
    assert "stale" in caplog.text and sel.winner == "2d+3d_fullres"
    assert load_json(Selection, run.selection_json).plans_hash == plans_hash(run.plans)
    # a subset of folds or configurations is a different selection, made again
    sub = find_best(run.root, configurations=["3d_fullres"], folds=[1], progress=False)
    assert sub.folds == [1] and [c.name for c in sub.candidates] == ["3d_fullres"]
    with pytest.raises(AutosegError, match="did you mean"):
        find_best(run.root, configurations=["3d_fulres"], progress=False)
    with pytest.raises(AutosegError, match="folds 0..1"):
        find_best(run.root, folds=[2], progress=False)


def test_ranking_ties_go_to_fewer_members_then_cheaper():
    def cand(name, dice, seconds):
        return Candidate(name, name.split("+"), dice, {"1": dice}, seconds)
    ranked = sorted([cand("a+b", 0.9, 1.0), cand("b", 0.9, 2.0), cand("a", 0.9, 1.5), cand("c", 0.95, 9.0),
                     cand("d", math.nan, 0.1)], key=_rank_key)
    assert [c.name for c in ranked] == ["c", "a", "b", "a+b", "d"]


def test_average_probabilities_and_shared_cache(tmp_path):
    a, b = _probabilities("2d"), _probabilities("3d_fullres")
    save_probabilities(a, tmp_path / "a.npz", case_id="x")
    save_probabilities(b, tmp_path / "b.npz", case_id="x")
    mean = average_probabilities([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert mean.dtype == np.float32 and mean.shape == a.shape
    assert np.allclose(mean, (a.astype(np.float16).astype(np.float32) + b.astype(np.float16)) / 2, atol=1e-3)
    paths = {"a": tmp_path / "a.npz", "b": tmp_path / "b.npz"}
    cached = segmentations_of_ensembles(paths, [("a", "b")])
    streamed = segmentations_of_ensembles(paths, [("a", "b")], max_cache_bytes=0)
    assert np.array_equal(cached[("a", "b")], _reference()) and np.array_equal(streamed[("a", "b")], _reference())
    save_probabilities(a[:, :2], tmp_path / "c.npz", case_id="x")
    with pytest.raises(AutosegError, match="same labels"):
        average_probabilities([tmp_path / "a.npz", tmp_path / "c.npz"])


def test_folds_trained_with_other_plans_are_refused(run):
    _write_all(run)
    plans = run.plans
    current_2d = stable_hash(plans.configuration("2d"))
    for config, fold, phash in (("2d", 0, current_2d), ("3d_fullres", 1, "0123456789abcdef")):
        settings = resolve_training_settings(plans, plans.configuration(config), str(fold), {"device": "cpu"})
        save_json(replace(settings, configuration_hash=phash), run.train_settings_json(config, fold))
    with pytest.raises(StaleArtifactError) as err:
        find_best(run.root, progress=False)
    msg = str(err.value)
    assert f"3d_fullres fold 1: {run.train_settings_json('3d_fullres', 1)} made from other inputs: configuration_hash '0123456789abcdef'" in msg
    assert f"rm -r {run.fold_dir('3d_fullres', 1)} && autoseg train --workdir {run.root} -c 3d_fullres --fold 1" in msg
    assert f"autoseg find-best --workdir {run.root} -c 2d" in msg and "2d fold" not in msg
    assert not run.selection_json.exists()
    assert find_best(run.root, configurations=["2d"], progress=False).winner == "2d"


def test_fork_map_keeps_order_and_raises():
    offset = 10  # a closure: handed to the workers by fork, not pickled
    assert fork_map(lambda x: x + offset, range(7), 3) == list(range(10, 17))
    seen = []
    assert fork_map(lambda x: x * 2, [1, 2], 1, on_result=lambda: seen.append(1)) == [2, 4] and seen == [1, 1]

    def boom(x):
        if x == 3:
            raise AutosegError("case 3 is broken")
        return x

    with pytest.raises(AutosegError, match="case 3 is broken"):
        fork_map(boom, range(5), 2)
