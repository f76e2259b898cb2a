"""Region-based labels and the ignore label (nnU-Net v2's dataset.json semantics): the loss and the metrics
leave ignored voxels out, regions are painted back in regions_class_order, and both kinds of dataset go
through the whole pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.data.image_io import read_label
from autoseg.data.labels import regions_to_segmentation, scored_items
from autoseg.evaluation import evaluate_case
from autoseg.model.export import load_probabilities
from autoseg.schemas import LabelSpec
from autoseg.store import RunStore
from autoseg.training.losses import DiceCELoss, RegionDiceBCELoss, hard_dice_counts, make_loss
from tests.synthetic import make_synthetic_dataset

BRATS = LabelSpec(labels={"background": 0, "edema": 1, "core": 2, "enhancing": 3},
                  regions={"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}, regions_class_order=[1, 2, 3])
PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
TRAIN = ["-c", "3d_fullres", "--epochs", "1", "--iterations-per-epoch", "3", "--validation-iterations", "1",
         "--precision", "fp32", "--num-workers", "0", "--no-progress"]


def test_regions_are_painted_back_in_regions_class_order():
    probs = np.zeros((3, 1, 1, 4), dtype=np.float32)
    probs[0, 0, 0, 1:] = 0.9  # whole tumour in voxels 1..3
    probs[1, 0, 0, 2:] = 0.8  # core in 2..3
    probs[2, 0, 0, 3] = 0.7  # enhancing in 3
    probs[2, 0, 0, 0] = 0.4  # below 0.5: not painted
    assert regions_to_segmentation(probs, BRATS).ravel().tolist() == [0, 1, 2, 3]
    swapped = LabelSpec(labels=BRATS.labels, regions=BRATS.regions, regions_class_order=[3, 2, 1])
    assert regions_to_segmentation(probs, swapped).ravel().tolist() == [0, 3, 2, 1]  # later regions win


@pytest.mark.parametrize("loss", [DiceCELoss(batch_dice=True, ignore_label=3),
                                  RegionDiceBCELoss([[1, 2], [2]], batch_dice=True, ignore_label=3)])
def test_the_loss_does_not_see_what_is_predicted_on_ignored_voxels(loss):
    torch.manual_seed(0)
    k = 3 if isinstance(loss, DiceCELoss) else 2
    target = torch.randint(0, 3, (2, 1, 4, 6, 6))
    target[:, :, 1] = 3  # one slice unannotated
    logits = torch.randn(2, k, 4, 6, 6, requires_grad=True)
    base = loss(logits, target)
    changed = logits.detach().clone()
    changed[:, :, 1] = torch.randn_like(changed[:, :, 1]) * 50  # only where the target is ignored
    assert torch.allclose(loss(changed, target), base, atol=1e-6)
    base.backward()
    assert float(logits.grad[:, :, 1].abs().max()) == 0.0  # no gradient from ignored voxels
    assert float(logits.grad[:, :, 0].abs().max()) > 0.0
    # without the ignore label the same change does change the loss
    plain = DiceCELoss(batch_dice=True) if k == 3 else RegionDiceBCELoss([[1, 2], [2]], batch_dice=True)
    t2 = target.clone()
    t2[t2 == 3] = 0
    assert not torch.allclose(plain(changed, t2), plain(logits.detach(), t2))


def test_pseudo_dice_counts_skip_ignored_voxels_and_score_regions():
    spec = LabelSpec(labels={"background": 0, "a": 1, "b": 2}, ignore_label=3)
    target = torch.tensor([[[[1, 1, 3, 3, 2, 0]]]])
    logits = torch.full((1, 3, 1, 1, 6), -5.0)
    for i, c in enumerate([1, 0, 2, 1, 2, 0]):  # wrong only on voxels 1 (missed 1) and the ignored 2, 3
        logits[0, c, 0, 0, i] = 5.0
    tp, fp, fn = hard_dice_counts(logits, target, spec)
    assert tp.tolist() == [1, 1] and fp.tolist() == [0, 0] and fn.tolist() == [1, 0]
    region_logits = torch.full((1, 3, 1, 1, 4), -5.0)
    region_logits[0, 0, 0, 0, 1:] = 5.0  # whole: 1..3
    region_logits[0, 1, 0, 0, 3] = 5.0  # core: 3 only (truth 2..3)
    tp, fp, fn = hard_dice_counts(region_logits, torch.tensor([[[[0, 1, 2, 3]]]]), BRATS)
    assert tp.tolist() == [3, 1, 0] and fp.tolist() == [0, 0, 0] and fn.tolist() == [0, 1, 1]
    assert isinstance(make_loss(BRATS), RegionDiceBCELoss) and isinstance(make_loss(spec), DiceCELoss)


def test_metrics_leave_ignored_voxels_out_and_score_regions():
    ref = np.array([[[1, 1, 2, 3, 3, 0]]])
    pred = np.array([[[1, 1, 2, 0, 0, 0]]])
    wild = np.array([[[1, 1, 2, 2, 1, 0]]])  # differs only where the reference is ignored
    a = evaluate_case(pred, ref, [1, 2], (1, 1, 1), ignore_label=3)
    b = evaluate_case(wild, ref, [1, 2], (1, 1, 1), ignore_label=3)
    assert a == b and a["1"]["dice"] == 1.0 and a["2"]["dice"] == 1.0 and a["1"]["tn"] == 2
    items, names = scored_items(BRATS)
    assert items == [[1, 2, 3], [2, 3], [3]] and names == {"1,2,3": "whole", "2,3": "core", "3": "enhancing"}
    r = evaluate_case(np.array([[[0, 1, 2, 3]]]), np.array([[[0, 2, 2, 3]]]), items, (1, 1, 1))
    assert r["1,2,3"]["dice"] == 1.0 and r["2,3"]["dice"] == pytest.approx(0.8) and r["3"]["dice"] == 1.0


def test_a_region_based_dataset_goes_plan_train_find_best_predict_evaluate(tmp_path, capsys):
    ds = make_synthetic_dataset(tmp_path / "Dataset063_Regions", n_cases=6, shape=(12, 20, 20), n_labels=3,
                                regions=True, with_test_cases=2, test_labels=True)
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0
    config = RunStore(run).plans().configuration("3d_fullres")
    assert config.network.num_classes == 3 and config.labels.regions_class_order == [1, 2, 3]  # a sigmoid per region
    assert main(["train", "--workdir", str(run), "--fold", "0", *TRAIN]) == 0
    summary = json.loads((run / "results/3d_fullres/fold_0/validation/summary.json").read_text())
    assert set(summary["per_class"]) == {"1,2,3", "2,3", "3"}  # region Dice in validation
    assert main(["find-best", "--workdir", str(run), "--folds", "0", "--no-progress"]) == 0
    selection = json.loads((run / "results/selection.json").read_text())
    assert set(selection["candidates"][0]["dice_per_class"]) == {"1,2,3", "2,3", "3"}
    assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(out),
                 "--save-probabilities", "--no-progress"]) == 0
    capsys.readouterr()
    for case in ("synth_006", "synth_007"):
        seg, _ = read_label(out / f"{case}.nii.gz")
        probs, _ = load_probabilities(out / f"{case}.npz")
        assert probs.shape[0] == 3  # one channel per region
        painted = regions_to_segmentation(probs, config.labels)
        steps = selection["postprocessing"]
        if not steps:  # the exported map is the regions painted in regions_class_order
            assert np.array_equal(seg, painted)
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3}
    assert main(["evaluate", "--pred", str(out), "--ref", str(ds / "labelsTs"), "-l", "1,2,3", "2,3", "3",
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "1,2,3" in table and "2,3" in table
    written = json.loads((out / "summary.json").read_text())
    assert written["labels"] == [[1, 2, 3], [2, 3], 3]  # "3": the label 3, the same voxels as the region [3]


def test_an_ignore_label_dataset_trains_and_validates_without_the_ignored_voxels(tmp_path):
    ds = make_synthetic_dataset(tmp_path / "Dataset064_Ignore", n_cases=6, shape=(12, 20, 20), n_labels=2,
                                ignore_fraction=0.3)
    run = tmp_path / "run"
    assert main(["plan", str(ds), "--workdir", str(run), *PLAN]) == 0
    store = RunStore(run)
    assert store.plans().configuration("3d_fullres").network.num_classes == 3  # the ignore label is no class
    assert main(["train", "--workdir", str(run), "--fold", "0", *TRAIN]) == 0
    summary = store.fold_summary("3d_fullres", "0")
    assert set(summary.per_class) == {"1", "2"}
    for cid, metrics in summary.per_case.items():
        ref, _ = read_label(ds / "labelsTr" / f"{cid}.nii.gz")
        counted = {k: m["tp"] + m["fp"] + m["fn"] + m["tn"] for k, m in metrics.items()}
        assert set(counted.values()) == {int(np.count_nonzero(ref != 3))}  # ignored voxels are not counted
