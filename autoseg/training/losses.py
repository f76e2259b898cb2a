"""Dice + cross-entropy loss with deep supervision, and the per-epoch pseudo-Dice counts.

Shapes: logits ``(B, K, *spatial)`` (K classes, background included), integer targets
``(B, 1, *spatial)`` (``(B, *spatial)`` is accepted too). A target value of ``-1`` (outside the body
after crop-to-nonzero) counts as background 0, as in nnU-Net.

nnU-Net semantics are kept: ``total = weight_ce * CE + weight_dice * (-mean soft Dice)``, so a perfect
prediction gives about ``-weight_dice`` and the loss is negative once Dice exceeds CE. Everything is
computed in float32, even when the network ran under bf16/fp16 autocast.

Region-based labels (:class:`RegionDiceBCELoss`): one sigmoid output per region, binary cross-entropy +
soft Dice per region, the region targets made here from the integer label maps. The ignore label: voxels
with it are left out of every term (cross-entropy averages over the other voxels; Dice sums over them),
so changing what the network predicts there changes nothing. :func:`make_loss` picks the loss for a
:class:`~autoseg.schemas.LabelSpec`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _target_index(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Integer targets as (B, 1, *spatial) int64 with -1 (and any negative value) mapped to 0."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:] \
            or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         f"expected (B, 1, *spatial) integer labels")
    target = target.long()
    return torch.where(target < 0, torch.zeros_like(target), target)


def _one_hot(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) int64 -> (B, K, *spatial) bool, via scatter (no float one-hot copy)."""
    shape = (index.shape[0], num_classes, *index.shape[2:])
    onehot = torch.zeros(shape, dtype=torch.bool, device=index.device)
    onehot.scatter_(1, index, True)
    return onehot


def _soft_dice(probs: torch.Tensor, onehot: torch.Tensor, batch_dice: bool, smooth: float) -> torch.Tensor:
    """Soft Dice per class from probabilities and a bool one-hot of the same shape.

    Returns (K',) with batch Dice (sums over batch and space) or (B, K') otherwise.
    """
    axes = tuple(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes, dtype=probs.dtype)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    return (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, 1e-8)


def _valid(target: torch.Tensor, ignore_label: int | None) -> torch.Tensor | None:
    """(B, 1, *spatial) bool: the voxels that are not the ignore label (None: nothing is ignored)."""
    if ignore_label is None:
        return None
    return target != int(ignore_label)


def _masked_mean_or_zero(values: torch.Tensor, valid: torch.Tensor | None, anchor: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` voxels; 0 (still in the graph) when every voxel is ignored."""
    if valid is None:
        return values.mean()
    n = valid.sum()
    if int(n) == 0:
        return anchor.sum() * 0.0
    return (values * valid).sum() / n


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * (-mean soft Dice)`` on logits and integer targets.

    Soft Dice is nnU-Net's memory-efficient variant: softmax probabilities, a bool one-hot target made
    by scatter, intersection and sums over the spatial axes (and the batch axis when ``batch_dice``),
    then the mean over the classes (foreground only unless ``include_background``).
    """

    def __init__(self, batch_dice: bool, smooth: float = 1e-5, include_background: bool = False,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, ignore_label: int | None = None):
        super().__init__()
        self.ignore_label = ignore_label
        self.batch_dice = bool(batch_dice)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.weight_ce = float(weight_ce)
        self.weight_dice = float(weight_dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar float32 loss for logits (B, K, *spatial) and targets (B, 1, *spatial)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            index = _target_index(target, logits)
            valid = _valid(index, self.ignore_label)
            if valid is not None:
                index = torch.where(valid, index, torch.zeros_like(index))  # a class index; masked below
            total = logits.new_zeros(())
            if self.weight_ce != 0:
                ce = F.cross_entropy(logits, index[:, 0], reduction="none")
                total = total + self.weight_ce * _masked_mean_or_zero(ce, None if valid is None else valid[:, 0],
                                                                      logits)
            if self.weight_dice != 0:
                probs = torch.softmax(logits, dim=1)
                with torch.no_grad():
                    onehot = _one_hot(index, logits.shape[1])
                    if valid is not None:
                        onehot &= valid
                if valid is not None:
                    probs = probs * valid
                if not self.include_background:
                    probs, onehot = probs[:, 1:], onehot[:, 1:]
                dice = _soft_dice(probs, onehot, self.batch_dice, self.smooth).mean()
                total = total - self.weight_dice * dice
            return total


def deep_supervision_weights(n_outputs: int, decay: float = 0.5) -> list[float]:
    """Weights for ``n_outputs`` outputs (highest resolution first); nnU-Net's with the default ``decay``.

    ``decay**i``, the last (coarsest) set to 0, normalised to sum 1; e.g. 4 outputs and decay 0.5 give
    ``[4/7, 2/7, 1/7, 0]``; decay 0 gives ``[1, 0, 0, 0]`` (the full-resolution output alone). A single
    output gets weight 1.
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, found {n_outputs}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"the deep-supervision decay must be in [0, 1], found {decay}")
    if n_outputs == 1:
        return [1.0]
    w = [decay ** i for i in range(n_outputs)]
    w[-1] = 0.0
    s = sum(w)
    return [v / s for v in w]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss(output_i, target_i)`` over lists of outputs and targets.

    Terms with weight 0 are skipped (not computed); with ``every_output_in_graph`` they add
    ``0 x sum(output)`` instead, so that every parameter gets a (zero) gradient, as data-parallel
    training (DDP) needs. A single tensor output/target pair (deep supervision off) is passed straight
    to ``loss``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]
        self.every_output_in_graph = False

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                targets: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            target = targets if isinstance(targets, torch.Tensor) else targets[0]
            return self.loss(outputs, target)
        if len(outputs) != len(targets) or len(outputs) > len(self.weights):
            raise ValueError(f"deep supervision got {len(outputs)} outputs, {len(targets)} targets and "
                             f"{len(self.weights)} weights; they must match (one target per output)")
        total: torch.Tensor | None = None
        for w, out, tgt in zip(self.weights, outputs, targets):
            if w == 0.0 and not self.every_output_in_graph:
                continue
            term = 0.0 * out.sum() if w == 0.0 else w * self.loss(out, tgt)
            total = term if total is None else total + term
        if total is None or not any(self.weights):
            raise ValueError("every deep supervision weight is 0: nothing to optimise")
        return total


@torch.no_grad()
def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Batch soft Dice of each foreground class: float32 tensor (K-1,), class 1 first (a metric, no grad)."""
    logits = logits.float()
    index = _target_index(target, logits)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = _one_hot(index, logits.shape[1])[:, 1:]
    return _soft_dice(probs, onehot, batch_dice=True, smooth=smooth)


def region_targets(index: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, 1, *spatial) label indices -> (B, R, *spatial) bool: region ``r`` where the label is one of its values."""
    out = torch.zeros((index.shape[0], len(regions), *index.shape[2:]), dtype=torch.bool, device=index.device)
    for r, values in enumerate(regions):
        for v in values:
            out[:, r] |= index[:, 0] == int(v)
    return out


class RegionDiceBCELoss(nn.Module):
    """Region-based training (nnU-Net v2's): ``weight_ce * BCE + weight_dice * (-mean soft Dice)`` over the
    regions, each a sigmoid output; targets are integer label maps, region ``r`` = label in ``regions[r]``."""

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool, smooth: float = 1e-5,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, ignore_label: int | None = None):
        super().__init__()
        self.regions = [[int(v) for v in r] for r in regions]
        self.batch_dice, self.smooth = bool(batch_dice), float(smooth)
        self.weight_ce, self.weight_dice = float(weight_ce), float(weight_dice)
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"logits have {logits.shape[1]} channels but there are {len(self.regions)} regions")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            index = _target_index(target, logits)
            valid = _valid(index, self.ignore_label)
            with torch.no_grad():
                regions = region_targets(index, self.regions)
                if valid is not None:
                    regions &= valid
            total = logits.new_zeros(())
            if self.weight_ce != 0:
                bce = F.binary_cross_entropy_with_logits(logits, regions.float(), reduction="none")
                mask = None if valid is None else valid.expand_as(bce)
                total = total + self.weight_ce * _masked_mean_or_zero(bce, mask, logits)
            if self.weight_dice != 0:
                probs = torch.sigmoid(logits)
                if valid is not None:
                    probs = probs * valid
                total = total - self.weight_dice * _soft_dice(probs, regions, self.batch_dice, self.smooth).mean()
            return total


def make_loss(spec, batch_dice: bool = True) -> nn.Module:
    """The loss of a :class:`~autoseg.schemas.LabelSpec`: Dice + CE over classes, or Dice + BCE over regions;
    the ignore label left out of both."""
    if spec.region_based:
        return RegionDiceBCELoss(list(spec.regions.values()), batch_dice=batch_dice, ignore_label=spec.ignore_label)
    return DiceCELoss(batch_dice=batch_dice, ignore_label=spec.ignore_label)


@torch.no_grad()
def hard_dice_counts(logits: torch.Tensor, target: torch.Tensor,
                     spec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard prediction vs target: (tp, fp, fn), each int64 with one entry per scored item (foreground classes,
    or regions), summed over batch and space; ignored voxels are not counted. ``spec`` is a
    :class:`~autoseg.schemas.LabelSpec` (or, for plain labels, the number of classes).

    Summing these over the validation batches of an epoch and taking ``2tp / (2tp + fp + fn)`` per
    item gives nnU-Net's "pseudo Dice". Classes: the argmax; regions: sigmoid > 0.5 (logit > 0).
    """
    from ..schemas import LabelSpec

    if not isinstance(spec, LabelSpec):
        spec = LabelSpec.plain(int(spec))
    if logits.shape[1] != spec.num_outputs:
        raise ValueError(f"logits have {logits.shape[1]} channels but the labels need {spec.num_outputs}")
    index = _target_index(target, logits)
    valid = _valid(index, spec.ignore_label)
    if spec.region_based:
        truth = region_targets(index, list(spec.regions.values()))
        pairs = [(logits[:, r] > 0, truth[:, r]) for r in range(len(spec.regions))]
    else:
        pred = logits.argmax(1)
        pairs = [(pred == c, index[:, 0] == c) for c in range(1, spec.num_outputs)]
    tp, fp, fn = [], [], []
    for p, t in pairs:
        if valid is not None:
            p, t = p & valid[:, 0], t & valid[:, 0]
        tp.append((p & t).sum())
        fp.append((p & ~t).sum())
        fn.append((~p & t).sum())
    if not tp:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return empty, empty.clone(), empty.clone()
    return torch.stack(tp).long(), torch.stack(fp).long(), torch.stack(fn).long()
