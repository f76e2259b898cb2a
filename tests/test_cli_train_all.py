"""`autoseg train` without -c trains every planned configuration; `autoseg benchmark` hands over to the harness."""
from __future__ import annotations

import json
from pathlib import Path


import autoseg.cli as cli
from autoseg.cli import main
from autoseg.usecases.train import planned_in_training_order
from tests.synthetic import make_synthetic_dataset

TINY = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
        "--num-workers", "0", "--no-progress", "--no-validation"]


def test_previous_stage_is_trained_first(lowres_run: Path) -> None:
    order = planned_in_training_order(str(lowres_run))
    assert set(order) >= {"3d_lowres", "3d_cascade_fullres"}
    assert order.index("3d_lowres") < order.index("3d_cascade_fullres")


def test_train_without_configuration_trains_every_planned_one(tmp_path, capsys) -> None:
    ds = make_synthetic_dataset(tmp_path / "Dataset021_All", n_cases=5, shape=(8, 16, 16), spacing_zyx=(2.0, 1.0, 1.0))
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1",
                 "--device", "cpu", "--cpu-gflops", "100"]) == 0
    planned = list(json.loads((run / "plans.json").read_text())["configurations"])
    assert len(planned) >= 2
    capsys.readouterr()
    assert main(["train", "--workdir", str(run), "--fold", "0", *TINY]) == 0
    out = capsys.readouterr().out
    for name in planned:
        assert (run / "results" / name / "fold_0" / "checkpoint_final.pt").is_file(), name
        assert f"== {name} fold 0" in out


def test_benchmark_without_the_source_checkout_says_what_to_do(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(cli, "BENCHMARK_SCRIPT", tmp_path / "missing" / "baseline.py")
    assert main(["benchmark", str(tmp_path), "--budget", "1m"]) == 1
    err = capsys.readouterr().err
    assert "source repository" in err and "benchmarks/baseline.py" in err


def test_benchmark_passes_its_flags_to_the_harness(monkeypatch, tmp_path) -> None:
    script = tmp_path / "baseline.py"
    record = tmp_path / "argv.json"
    script.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "BENCHMARK_SCRIPT", script)
    assert main(["benchmark", "D", "--budget", "5m", "--quick", "--skip-nnunet", "--predict-cases", "4"]) == 3
    argv = json.loads(record.read_text())
    assert argv[:4] == ["--dataset", "D", "--budget", "5m"]
    assert "--quick" in argv and "--skip-nnunet" in argv and argv[argv.index("--predict-cases") + 1] == "4"


def test_the_real_harness_is_where_the_cli_looks() -> None:
    assert cli.BENCHMARK_SCRIPT.is_file(), "benchmarks/baseline.py moved: update autoseg.cli.BENCHMARK_SCRIPT"


def test_every_configuration_on_one_fold_leaves_a_cascade_waiting_for_its_previous_stage(tmp_path, capsys) -> None:
    """`train --fold 0` without -c trains what it can: the cascade needs every 3d_lowres fold's held-out
    predictions, so on fold 0 it is skipped with the reason and the command to run, not a failed loop."""
    from tests.conftest import make_cascade_run

    run = make_cascade_run(tmp_path)
    capsys.readouterr()
    assert main(["train", "--workdir", str(run), "--fold", "0", *TINY]) == 0
    out = capsys.readouterr().out
    assert (run / "results" / "3d_lowres" / "fold_0" / "checkpoint_final.pt").is_file()
    assert (run / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()
    assert not (run / "results" / "3d_cascade_fullres" / "fold_0").exists()
    assert "skipped: 3d_cascade_fullres fold 0 not trained yet" in out
    assert "3d_lowres fold(s) 0, 1, 2, 3, 4 are not trained yet" in out  # --no-validation: fold 0 wrote none
    assert "-c 3d_lowres --fold K" in out
    # naming the cascade itself still fails with the missing files and the commands that write them
    assert main(["train", "--workdir", str(run), "-c", "3d_cascade_fullres", "--fold", "0", *TINY]) == 1
    assert "autoseg train --workdir" in capsys.readouterr().err
