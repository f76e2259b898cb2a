"""Tests for autoseg.training.losses: Dice+CE, deep supervision weights, pseudo-Dice counts."""
from __future__ import annotations

import math

import pytest
import torch

from autoseg.training.losses import (DeepSupervisionLoss, DiceCELoss, deep_supervision_weights,
                                     hard_dice_counts, soft_dice_per_class)


def _target(shape=(2, 1, 4, 6, 6), k=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, shape, generator=g)


def _perfect_logits(target: torch.Tensor, k: int, scale: float = 30.0) -> torch.Tensor:
    onehot = torch.zeros((target.shape[0], k, *target.shape[2:]))
    onehot.scatter_(1, target.clamp_min(0).long(), 1.0)
    return onehot * scale


@pytest.mark.parametrize("batch_dice", [True, False])
def test_perfect_prediction_is_at_minimum(batch_dice):
    t = _target()
    loss = DiceCELoss(batch_dice=batch_dice)
    perfect = loss(_perfect_logits(t, 3), t)
    assert perfect.dtype == torch.float32
    assert perfect.item() == pytest.approx(-1.0, abs=1e-4)  # CE ~ 0, Dice ~ 1 -> CE - Dice ~ -1
    random_logits = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    assert loss(random_logits, t).item() > perfect.item() + 0.5


def test_matches_manual_formula():
    t = _target((1, 1, 3, 3), k=2, seed=2)
    logits = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    p = torch.softmax(logits, 1)[:, 1]
    g = (t[:, 0] == 1).float()
    dice = (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5)
    ce = torch.nn.functional.cross_entropy(logits, t[:, 0])
    got = DiceCELoss(batch_dice=False)(logits, t)
    torch.testing.assert_close(got, ce - dice)
    # weights scale each term
    got_w = DiceCELoss(batch_dice=False, weight_ce=0.0, weight_dice=2.0)(logits, t)
    torch.testing.assert_close(got_w, -2 * dice)


def test_minus_one_counts_as_background():
    t = _target((1, 1, 4, 4), k=2, seed=4)
    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    t_bg = t.clone()
    t_bg[..., 0, :] = 0
    t_neg = t.clone()
    t_neg[..., 0, :] = -1
    loss = DiceCELoss(batch_dice=True)
    torch.testing.assert_close(loss(logits, t_neg), loss(logits, t_bg))
    tp, fp, fn = hard_dice_counts(logits, t_neg, 2)
    tp0, fp0, fn0 = hard_dice_counts(logits, t_bg, 2)
    assert (tp == tp0).all() and (fp == fp0).all() and (fn == fn0).all()


def test_low_precision_logits_give_float32_loss_with_gradient():
    t = _target((1, 1, 4, 4), k=3, seed=6)
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16).requires_grad_()
    out = DiceCELoss(batch_dice=True)(logits, t)
    assert out.dtype == torch.float32
    out.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


def test_target_without_channel_axis_and_shape_error():
    t = _target((2, 1, 4, 4), k=2)
    logits = torch.randn(2, 2, 4, 4)
    loss = DiceCELoss(batch_dice=False)
    torch.testing.assert_close(loss(logits, t[:, 0]), loss(logits, t))
    with pytest.raises(ValueError, match="does not match"):
        loss(logits, torch.zeros(2, 1, 4, 5, dtype=torch.long))


def test_deep_supervision_weights():
    w = deep_supervision_weights(4)
    for got, exp in zip(w, [4 / 7, 2 / 7, 1 / 7, 0.0]):
        assert got == pytest.approx(exp)
    assert math.isclose(sum(w), 1.0)
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(1) == [1.0]
    with pytest.raises(ValueError):
        deep_supervision_weights(0)
    assert deep_supervision_weights(4, decay=0.0) == [1.0, 0.0, 0.0, 0.0]  # full resolution alone
    assert deep_supervision_weights(3, decay=1.0) == [0.5, 0.5, 0.0]  # equal, coarsest still 0
    with pytest.raises(ValueError, match="decay"):
        deep_supervision_weights(3, decay=1.5)


def test_the_trainer_takes_batch_dice_and_the_supervision_decay_from_its_settings(tmp_path, monkeypatch):
    import dataclasses

    import autoseg.training.trainer as trainer_module
    from tests.conftest import tiny_training

    decays: list[float] = []  # the tiny plan has one output only: record what the trainer asks for
    monkeypatch.setattr(trainer_module, "deep_supervision_weights",
                        lambda n, decay=0.5: decays.append(decay) or deep_supervision_weights(n, decay))
    wd, config, settings, train_ids, val_ids = tiny_training(tmp_path, "Dataset014_Loss", {
        "epochs": 1, "iterations_per_epoch": 1, "validation_iterations_per_epoch": 1})
    assert config.network.deep_supervision
    default = trainer_module.Trainer(wd, config, settings, train_ids, val_ids, progress=False)
    assert default.loss.loss.batch_dice is True and decays == [0.5]  # nnU-Net's
    changed = trainer_module.Trainer(wd, config, dataclasses.replace(
        settings, batch_dice=False, deep_supervision_decay=0.0), train_ids, val_ids, progress=False)
    assert changed.loss.loss.batch_dice is False and decays == [0.5, 0.0]


def test_deep_supervision_loss_sums_and_skips_zero_weights():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, out, tgt):
            calls.append(out.shape)
            return out.mean()

    outs = [torch.full((1, 2, 4, 4), 1.0), torch.full((1, 2, 2, 2), 3.0), torch.full((1, 2, 1, 1), 100.0)]
    tgts = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    ds = DeepSupervisionLoss(Recorder(), deep_supervision_weights(3))  # [2/3, 1/3, 0]
    total = ds(outs, tgts)
    assert total.item() == pytest.approx(2 / 3 * 1.0 + 1 / 3 * 3.0)
    assert len(calls) == 2  # the weight-0 term was not computed
    assert ds(outs[0], tgts[0]).item() == pytest.approx(1.0)  # a plain tensor passes through
    with pytest.raises(ValueError):
        ds(outs, tgts[:2])


def test_soft_dice_per_class_and_hard_counts():
    t = torch.tensor([[[[0, 1], [2, 2]]]])
    logits = _perfect_logits(t, 3)
    sd = soft_dice_per_class(logits, t)
    assert sd.shape == (2,) and torch.allclose(sd, torch.ones(2), atol=1e-4)
    pred = torch.tensor([[[[1, 1], [2, 0]]]])  # class1: tp1 fp1 fn0; class2: tp1 fp0 fn1
    tp, fp, fn = hard_dice_counts(_perfect_logits(pred, 3), t, 3)
    assert tp.tolist() == [1, 1] and fp.tolist() == [1, 0] and fn.tolist() == [0, 1]
    assert tp.dtype == torch.int64


def test_every_output_in_graph_gives_the_zero_weight_head_a_zero_gradient_and_the_same_loss():
    torch.manual_seed(0)
    heads = torch.nn.ModuleList(torch.nn.Conv2d(1, 2, 1) for _ in range(3))
    x = torch.randn(2, 1, 4, 4)
    targets = [torch.randint(0, 2, (2, 1, 4, 4)) for _ in range(3)]
    ds = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(3))  # last weight 0
    plain = ds([h(x) for h in heads], targets)
    plain.backward()
    assert heads[2].weight.grad is None  # skipped: DDP would wait for this gradient forever
    heads.zero_grad(set_to_none=True)
    ds.every_output_in_graph = True
    touched = ds([h(x) for h in heads], targets)
    touched.backward()
    assert torch.allclose(touched, plain)
    assert heads[2].weight.grad is not None and float(heads[2].weight.grad.abs().sum()) == 0.0
    assert float(heads[0].weight.grad.abs().sum()) > 0
