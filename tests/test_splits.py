"""Cross-validation splits: generated folds, user files (nnU-Net and autoseg format), fold lookup."""
from __future__ import annotations

import json

import pytest

from autoseg.errors import AutosegError
from autoseg.schemas import save_json
from autoseg.training.splits import fold_cases, load_user_splits, make_splits

IDS = [f"case_{i:03d}" for i in range(12)]


def test_five_folds_cover_every_case_once_in_val():
    splits = make_splits(IDS)
    assert len(splits.folds) == 5 and splits.seed == 12345 and splits.source == "generated"
    vals = [c for f in splits.folds for c in f.val]
    assert sorted(vals) == IDS
    assert [len(f.val) for f in splits.folds] == [3, 3, 2, 2, 2]
    for f in splits.folds:
        assert not set(f.train) & set(f.val) and sorted(f.train + f.val) == IDS


def test_splits_are_deterministic_by_seed_and_independent_of_input_order():
    a = make_splits(IDS, seed=7)
    assert a == make_splits(list(reversed(IDS)), seed=7)
    assert make_splits(IDS, seed=8).folds != a.folds


def test_splits_match_nnunet_kfold():
    sklearn = pytest.importorskip("sklearn.model_selection")
    ids = sorted(IDS)
    kfold = sklearn.KFold(n_splits=5, shuffle=True, random_state=12345)
    expected = [[ids[i] for i in val] for _, val in kfold.split(ids)]
    assert [f.val for f in make_splits(IDS).folds] == expected


def test_too_few_cases_is_a_clear_error():
    with pytest.raises(AutosegError, match="at least 5 training cases, found 3"):
        make_splits(IDS[:3])
    assert len(make_splits(IDS[:3], n_folds=3).folds) == 3


def test_nnunet_splits_file_is_honoured(tmp_path):
    path = tmp_path / "splits_final.json"
    folds = [{"train": IDS[4:], "val": IDS[:4]}, {"train": IDS[:8], "val": IDS[8:]}]
    path.write_text(json.dumps(folds))
    splits = load_user_splits(path, IDS)
    assert splits.source == str(path) and len(splits.folds) == 2
    assert fold_cases(splits, 0) == (IDS[4:], IDS[:4])
    assert fold_cases(splits, "1") == (IDS[:8], IDS[8:])


def test_autoseg_splits_file_round_trips(tmp_path):
    path = tmp_path / "splits.json"
    save_json(make_splits(IDS, seed=3), path)
    loaded = load_user_splits(path, IDS)
    assert loaded.folds == make_splits(IDS, seed=3).folds and loaded.seed == 3


@pytest.mark.parametrize("folds,message", [
    ([{"train": IDS[1:], "val": ["case_999"]}], r"fold 0 'val' names case 'case_999'"),
    ([{"train": IDS[1:], "val": IDS[:1]}, {"train": IDS, "val": IDS[:2]}],
     r"fold 1 has case 'case_000' in both"),
    ([{"train": IDS, "val": []}], r"fold 0 has an empty 'val'"),
    ([{"train": IDS}], r"fold 0 must be an object with exactly the keys"),
])
def test_bad_user_splits_name_the_file_fold_and_case(tmp_path, folds, message):
    path = tmp_path / "my_splits.json"
    path.write_text(json.dumps(folds))
    with pytest.raises(AutosegError, match=message) as err:
        load_user_splits(path, IDS)
    assert "my_splits.json" in str(err.value)


def test_unknown_id_suggests_the_closest(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"train": IDS[1:], "val": ["case_00"]}]))
    with pytest.raises(AutosegError, match="did you mean"):
        load_user_splits(path, IDS)


def test_fold_all_and_out_of_range():
    splits = make_splits(IDS)
    train, val = fold_cases(splits, "all")
    assert train == IDS and val == IDS
    with pytest.raises(AutosegError, match="valid folds: 0, 1, 2, 3, 4, all"):
        fold_cases(splits, 5)
    with pytest.raises(AutosegError, match="valid folds"):
        fold_cases(splits, "last")
