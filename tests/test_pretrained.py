"""Fine-tuning (`autoseg train --pretrained`, model/pretrained.py): weights of another model with the same
topology are copied, the heads re-initialised when the classes differ, a mismatch refused naming both shapes."""
from __future__ import annotations

import pytest
import torch

from autoseg.cli import main
from autoseg.model.checkpoint import load_checkpoint
from autoseg.model.network import build_network
from autoseg.model.pretrained import load_pretrained
from autoseg.store import load_plans
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
TRAIN = ["-c", "3d_fullres", "--fold", "0", "--epochs", "1", "--iterations-per-epoch", "2",
         "--validation-iterations", "1", "--no-validation", "--precision", "fp32", "--num-workers", "0",
         "--no-progress"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    ds = make_synthetic_dataset(root / "Dataset080_Source", n_cases=5, shape=(12, 16, 16), n_labels=2)
    assert main(["plan", str(ds), "--workdir", str(root / "src"), *PLAN]) == 0
    assert main(["train", "--workdir", str(root / "src"), *TRAIN]) == 0
    return root


def test_fine_tuning_copies_the_encoder_and_reinitialises_heads_of_other_classes(source, caplog):
    import logging

    target = make_synthetic_dataset(source / "Dataset081_Target", n_cases=5, shape=(12, 16, 16), n_labels=3, seed=4)
    run = source / "tgt"
    assert main(["plan", str(target), "--workdir", str(run), *PLAN]) == 0
    fold = source / "src" / "results" / "3d_fullres" / "fold_0"
    net = build_network(load_plans(run).configuration("3d_fullres").network)
    loaded = load_pretrained(fold, net)
    saved = load_checkpoint(fold / "checkpoint_final.pt")["model"]
    state = net.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(state[k], saved[k]) for k in encoder)
    assert loaded.reinitialised and all(k.startswith("decoder.seg_layers.") for k in loaded.reinitialised)
    assert state[loaded.reinitialised[0]].shape != saved[loaded.reinitialised[0]].shape  # 4 classes, not 3
    with caplog.at_level(logging.INFO):
        assert main(["train", "--workdir", str(run), *TRAIN, "--pretrained", str(fold)]) == 0
    assert "started from the weights of" in caplog.text and "segmentation heads re-initialised" in caplog.text
    final = load_checkpoint(Workdir(run).checkpoint("3d_fullres", 0, "final"))
    assert final["state"]["pretrained"]["path"].endswith("checkpoint_final.pt")
    assert final["state"]["pretrained"]["copied"] == len(saved) - len(loaded.reinitialised)


def test_a_model_of_other_input_channels_is_refused_naming_both_shapes(source, capsys):
    other = make_synthetic_dataset(source / "Dataset082_TwoChannels", n_cases=5, shape=(12, 16, 16), n_channels=2)
    run = source / "two"
    assert main(["plan", str(other), "--workdir", str(run), *PLAN]) == 0
    ckpt = source / "src" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    capsys.readouterr()
    assert main(["train", "--workdir", str(run), *TRAIN, "--pretrained", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert f"--pretrained {ckpt} does not fit 3d_fullres's plan" in err
    assert "has shape [" in err and "(another number of input channels)" in err and "Traceback" not in err
    assert not Workdir(run).checkpoint("3d_fullres", 0, "final").exists()
    assert main(["train", "--workdir", str(run), *TRAIN, "--pretrained", str(source / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_plans_from_another_run_make_its_models_fit(source, capsys):
    """A dataset of other image sizes plans another topology by itself; with --plans-from it gets the
    source run's, and the source model fine-tunes on it. Other channel counts are refused."""
    target = make_synthetic_dataset(source / "Dataset083_Bigger", n_cases=5, shape=(24, 40, 40), n_labels=3, seed=5)
    own, moved = source / "own", source / "moved"
    assert main(["plan", str(target), "--workdir", str(own), *PLAN]) == 0
    assert main(["plan", str(target), "--workdir", str(moved), "--plans-from", str(source / "src"), *PLAN]) == 0
    src_cfg = load_plans(source / "src").configuration("3d_fullres")
    own_cfg, moved_cfg = (load_plans(r).configuration("3d_fullres") for r in (own, moved))
    assert own_cfg.network.features_per_stage != src_cfg.network.features_per_stage  # its own plan differs
    assert moved_cfg.network.features_per_stage == src_cfg.network.features_per_stage
    assert moved_cfg.patch_size == src_cfg.patch_size and moved_cfg.network.num_classes == 4
    assert any(d.subject == "plans_from" for d in moved_cfg.decisions)
    fold = source / "src" / "results" / "3d_fullres" / "fold_0"
    assert main(["train", "--workdir", str(moved), *TRAIN, "--pretrained", str(fold)]) == 0
    capsys.readouterr()
    assert main(["train", "--workdir", str(own), *TRAIN, "--pretrained", str(fold)]) == 1
    assert "--plans-from" in capsys.readouterr().err  # the refusal says how to make a compatible plan
    two = make_synthetic_dataset(source / "Dataset084_Two", n_cases=5, shape=(12, 16, 16), n_channels=2)
    assert main(["plan", str(two), "--workdir", str(source / "two2"), "--plans-from", str(source / "src"), *PLAN]) == 1
    assert "normalizes 1 image channel(s), this dataset (Dataset084_Two) has 2" in capsys.readouterr().err
