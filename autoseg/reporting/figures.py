"""The report's pictures as PNG bytes: a training's curves (from training_log.jsonl) and the overlay of
one validation case (its image, reference and prediction on its most informative slice).

Which validation cases are shown: :func:`pick_cases` ranks the cases of a configuration by their mean
foreground Dice (the per-case entries of the folds' ``summary.json``) and picks the best, the median
and the worst. matplotlib runs with the Agg backend.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CURVE_DPI = 80


@dataclass(frozen=True)
class PickedCase:
    """A validation case chosen for an overlay."""

    role: str  # "best", "median", "worst" (or "only case")
    case_id: str
    fold: str
    mean_dice: float | None  # mean foreground Dice over the classes where it is defined
    dice: dict[str, float | None]  # scored key -> Dice of this case


def case_mean_dice(per_class: Mapping[str, Any]) -> float | None:
    """Mean Dice over the foreground classes of one case (``summary.json`` ``per_case.<case>``); classes whose
    Dice is undefined (reference and prediction both empty) are left out; None when none is defined."""
    values = [float(v["dice"]) for k, v in per_class.items()
              if k != "0" and isinstance(v, Mapping) and v.get("dice") is not None]
    return sum(values) / len(values) if values else None


def pick_cases(per_case_by_fold: Mapping[str, Mapping[str, Any]]) -> list[PickedCase]:
    """Best, median and worst case by :func:`case_mean_dice` over every fold's ``per_case``
    (``{fold: {case: {key: metrics}}}``); fewer when there are fewer cases. Cases without any defined
    Dice are ranked only when no case has one. Ties are broken by case id, so the choice is stable."""
    rows = []
    for fold, per_case in per_case_by_fold.items():
        for cid, per_class in per_case.items():
            dice = {k: (None if v.get("dice") is None else float(v["dice"])) for k, v in per_class.items()
                    if k != "0" and isinstance(v, Mapping)}
            rows.append((case_mean_dice(per_class), cid, fold, dice))
    defined = [r for r in rows if r[0] is not None]
    ranked = sorted(defined or rows, key=lambda r: (-(r[0] if r[0] is not None else 0.0), r[1]))
    if not ranked:
        return []
    if len(ranked) == 1:
        picks = [("only case", 0)]
    elif len(ranked) == 2:
        picks = [("best", 0), ("worst", 1)]
    else:
        picks = [("best", 0), ("median", len(ranked) // 2), ("worst", len(ranked) - 1)]
    return [PickedCase(role, ranked[i][1], ranked[i][2], ranked[i][0], ranked[i][3]) for role, i in picks]


def representative_slice(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int]) -> int:
    """The axial slice (axis 0 of ``(Z, Y, X)``) with the most reference voxels of ``labels``; the prediction's
    when the reference has none there; the middle slice when neither has any. The first such slice on ties."""
    for seg in (reference, prediction):
        counts = np.isin(seg, list(labels)).reshape(seg.shape[0], -1).sum(axis=1)
        if counts.max(initial=0) > 0:
            return int(np.argmax(counts))
    return reference.shape[0] // 2


def case_overlay_png(image_path: str | Path, reference_path: str | Path, prediction_path: str | Path, *,
                     label_names: Mapping[int, str], title: str) -> tuple[bytes, dict]:
    """PNG bytes of one validation case side by side (image | reference | prediction) on
    :func:`representative_slice`, its first channel shown, the in-plane aspect ratio from the image's
    spacing; and ``{"slice", "size_px"}``. AutosegError (from the readers) names a file that is
    missing or unreadable."""
    from ..data.image_io import read_image, read_label
    from ..overlay import render_overlay_png

    image, geometry = read_image(image_path)
    reference, _ = read_label(reference_path)
    prediction, _ = read_label(prediction_path)
    if not (image.shape[1:] == reference.shape == prediction.shape):
        raise ValueError(f"{image_path} {image.shape[1:]}, {reference_path} {reference.shape} and "
                         f"{prediction_path} {prediction.shape} are not on one grid")
    z = representative_slice(reference, prediction, list(label_names))
    png, info = render_overlay_png(image[0], reference, prediction, label_names=label_names, title=title,
                                   spacing_zyx=geometry.spacing_zyx, slices=[z], side_by_side=True)
    return png, {"slice": z, "size_px": info["size_px"]}


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def training_curves_png(records: Sequence[Mapping[str, Any]], title: str,
                        class_names: Sequence[str] = ()) -> bytes:
    """PNG bytes of one training's curves from its ``training_log.jsonl`` records: train and validation
    loss; pseudo-Dice (mean, EMA, and per class when there are several); learning rate; over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.get("epoch") for r in records]
    fig, (ax_loss, ax_dice, ax_lr) = plt.subplots(1, 3, figsize=(10.5, 2.8), dpi=CURVE_DPI)
    marker = "o" if len(records) < 20 else None
    ax_loss.plot(epochs, [_nan(r.get("train_loss")) for r in records], color="tab:blue", marker=marker,
                 label="train")
    ax_loss.plot(epochs, [_nan(r.get("val_loss")) for r in records], color="tab:red", marker=marker, label="val")
    ax_loss.set_title("loss (Dice + CE)", fontsize=9)
    ax_loss.legend(fontsize=7)
    per_class = [r.get("val_dice_per_class") or [] for r in records]
    n_classes = max((len(p) for p in per_class), default=0)
    if n_classes > 1:
        for c in range(n_classes):
            name = class_names[c] if c < len(class_names) else f"class {c + 1}"
            ax_dice.plot(epochs, [_nan(p[c]) if c < len(p) else math.nan for p in per_class], lw=0.8, alpha=0.6,
                         marker=marker, markersize=3, label=name)
    ax_dice.plot(epochs, [_nan(r.get("val_dice")) for r in records], color="tab:green", ls=":", marker=marker,
                 label="mean")
    ax_dice.plot(epochs, [_nan(r.get("ema_dice")) for r in records], color="tab:green", marker=marker, label="EMA")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_title("pseudo-Dice (validation patches)", fontsize=9)
    ax_dice.legend(fontsize=7, ncol=2)
    ax_lr.plot(epochs, [_nan(r.get("lr")) for r in records], color="black", marker=marker)
    ax_lr.set_title("learning rate", fontsize=9)
    for ax in (ax_loss, ax_dice, ax_lr):
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=CURVE_DPI)
    plt.close(fig)
    return buffer.getvalue()
