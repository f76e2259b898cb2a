"""One training per fold at a time: a second `autoseg train` of the same fold is refused, naming the holder."""
from __future__ import annotations

import os
from pathlib import Path

from autoseg.cli import main
from autoseg.locks import exclusive
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

FAST = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
        "--num-workers", "0", "--no-progress", "--no-validation"]


def test_a_second_training_of_the_same_fold_is_refused_and_other_folds_still_train(tmp_path: Path, capsys):
    ds = make_synthetic_dataset(tmp_path / "Dataset016_Lock", n_cases=5, shape=(8, 16, 16))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1", "--device", "cpu",
                 "--cpu-gflops", "100"]) == 0
    lock = Workdir(run).fold_dir("3d_fullres", 0) / ".train.lock"
    with exclusive(lock, "held by this test"):  # stands for a training running in another process
        capsys.readouterr()
        assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", *FAST]) == 1
        err = capsys.readouterr().err
        assert "3d_fullres fold 0" in err and "in use by another process" in err and f"pid {os.getpid()}" in err
        assert not Workdir(run).checkpoint("3d_fullres", 0, "final").exists()  # nothing written
        assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "1", *FAST]) == 0
    assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", *FAST]) == 0  # freed
    assert Workdir(run).checkpoint("3d_fullres", 0, "final").exists()
