"""Training records: one JSON line per epoch and a progress plot (losses, pseudo-Dice, lr)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_write


def _json_line(record: dict[str, Any]) -> str:
    """Strict JSON (NaN, e.g. the Dice of a class absent from every validation patch, becomes null)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps({k: clean(v) for k, v in record.items()}, allow_nan=False) + "\n"


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to training_log.jsonl (the checkpoint holds the authoritative log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(_json_line(record))


def rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the log from the checkpoint's records (after a resume, lines past the checkpoint go)."""
    text = "".join(_json_line(r) for r in records)

    def _w(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, _w)


def plot_progress(records: list[dict[str, Any]], path: Path) -> None:
    """progress.png: train/val loss and pseudo-Dice (with EMA) over epochs, lr on a second panel."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in records]
    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(ep, [r["train_loss"] for r in records], color="tab:blue", label="train loss")
    ax1.plot(ep, [r["val_loss"] for r in records], color="tab:red", label="val loss")
    ax1.set_ylabel("loss (CE + Dice)")
    ax2 = ax1.twinx()
    ax2.plot(ep, [_nan(r["val_dice"]) for r in records], color="tab:green", ls=":", label="pseudo-Dice")
    ax2.plot(ep, [_nan(r["ema_dice"]) for r in records], color="tab:green", label="pseudo-Dice (EMA)")
    ax2.set_ylabel("Dice (validation patches)")
    ax2.set_ylim(0, 1)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="center right")
    for i in range(1, len(records)):  # `--continue-for`: where each new phase starts
        if records[i].get("phase", 1) != records[i - 1].get("phase", 1):
            for ax in (ax1, ax3):
                ax.axvline(ep[i] - 0.5, color="grey", ls="--", lw=1)
            ax1.text(ep[i] - 0.5, ax1.get_ylim()[1], f" phase {records[i].get('phase')}", va="top", fontsize=8)
    ax3.plot(ep, [r["lr"] for r in records], color="black")
    ax3.set_ylabel("learning rate")
    ax3.set_xlabel("epoch")
    fig.tight_layout()

    def _w(tmp: str) -> None:
        fig.savefig(tmp, dpi=90, format="png")

    atomic_write(path, _w, suffix=".png")
    plt.close(fig)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)
