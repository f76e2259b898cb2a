"""A PNG that shows a segmentation on its image: image, reference and prediction, slice by slice.

Three rows of panels (image alone; image with the reference; image with the prediction), one
column per axial slice (array axis 0 of ``(Z, Y, X)``), each label in its own colour (filled,
half transparent, with its contour), a legend with the label names and a title. The figure has an
exact pixel size (:func:`overlay_size_px`), so callers and tests know what they get. matplotlib
runs with the Agg backend (no display needed).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_write

PANEL_PX = 220  # each panel is PANEL_PX x PANEL_PX pixels
ROW_LABEL_PX = 28  # left margin for the row names
HEADER_PX = 76  # title and legend
DPI = 100
ROWS = ("image", "reference", "prediction")
#: label value -> RGB; colour-blind-friendly first (Okabe-Ito), then matplotlib's tab10.
_COLOURS = [(0.90, 0.62, 0.00), (0.34, 0.71, 0.91), (0.00, 0.62, 0.45), (0.80, 0.47, 0.65),
            (0.84, 0.37, 0.00), (0.00, 0.45, 0.70), (0.94, 0.89, 0.26)]
FILL_ALPHA = 0.45


def label_colour(label: int) -> tuple[float, float, float]:
    """The overlay colour of foreground ``label`` (1, 2, ...)."""
    if label <= len(_COLOURS):
        return _COLOURS[label - 1]
    import matplotlib

    return tuple(matplotlib.colormaps["tab10"]((label - 1) % 10)[:3])


def overlay_size_px(n_slices: int) -> tuple[int, int]:
    """(width, height) in pixels of an overlay with ``n_slices`` columns."""
    return ROW_LABEL_PX + n_slices * PANEL_PX, HEADER_PX + len(ROWS) * PANEL_PX


def choose_slices(reference: np.ndarray, prediction: np.ndarray, n_slices: int = 4) -> list[int]:
    """Up to ``n_slices`` axial slice indices spread evenly over the slices that hold reference
    foreground (over the prediction's when the reference is empty; the middle slices when both are)."""
    def with_foreground(seg: np.ndarray) -> np.ndarray:
        return np.flatnonzero((seg > 0).reshape(seg.shape[0], -1).any(axis=1))

    candidates = with_foreground(reference)
    if not candidates.size:
        candidates = with_foreground(prediction)
    if not candidates.size:
        candidates = np.arange(reference.shape[0])
    if candidates.size <= n_slices:
        return [int(v) for v in candidates]
    positions = (np.arange(n_slices) + 0.5) / n_slices * candidates.size
    return sorted({int(candidates[int(p)]) for p in positions})


def _rgba(label_slice: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    out = np.zeros((*label_slice.shape, 4), dtype=np.float32)
    for lab in labels:
        mask = label_slice == lab
        out[mask, :3] = label_colour(lab)
        out[mask, 3] = FILL_ALPHA
    return out


def write_overlay_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, path: str | Path, *,
                      label_names: Mapping[int, str], title: str,
                      spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), slices: Sequence[int] | None = None,
                      n_slices: int = 4) -> dict:
    """Write the overlay PNG of one case to ``path`` (atomically).

    ``image``: ``(Z, Y, X)`` intensities (one channel); ``reference`` and ``prediction``: ``(Z, Y, X)``
    label maps on the same grid; ``label_names``: foreground label value -> name (legend);
    ``spacing_zyx`` (mm) sets the in-plane aspect ratio; ``slices``: axial indices to show (default
    :func:`choose_slices`). Returns ``{"path", "slices", "size_px": (width, height)}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not (image.shape == reference.shape == prediction.shape) or image.ndim != 3:
        raise ValueError(f"image, reference and prediction must be (Z, Y, X) arrays of one shape, got "
                         f"{image.shape}, {reference.shape}, {prediction.shape}")
    slices = list(slices) if slices is not None else choose_slices(reference, prediction, n_slices)
    labels = sorted(int(k) for k in label_names)
    width, height = overlay_size_px(len(slices))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    body = image[image != 0] if np.any(image != 0) else image.ravel()
    vmin, vmax = (float(v) for v in np.percentile(body, [0.5, 99.5]))
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    for col, z in enumerate(slices):
        for row, name in enumerate(ROWS):
            left = (ROW_LABEL_PX + col * PANEL_PX) / width
            bottom = (len(ROWS) - 1 - row) * PANEL_PX / height
            ax = fig.add_axes((left, bottom, PANEL_PX / width, PANEL_PX / height))
            ax.imshow(image[z], cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            seg = {"reference": reference, "prediction": prediction}.get(name)
            if seg is not None:
                ax.imshow(_rgba(seg[z], labels), aspect=aspect, interpolation="nearest")
                for lab in labels:
                    if np.any(seg[z] == lab):
                        ax.contour((seg[z] == lab).astype(np.float32), levels=[0.5], colors=[label_colour(lab)],
                                   linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"slice z={z}", fontsize=8, pad=2)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=10)
    handles = [Patch(facecolor=(*label_colour(lab), FILL_ALPHA), edgecolor=label_colour(lab),
                     label=f"{lab} {label_names[lab]}") for lab in labels]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 30 / height), ncol=len(handles),
               fontsize=8, frameon=False)

    def _w(tmp: str) -> None:
        fig.savefig(tmp, dpi=DPI, format="png")

    atomic_write(path, _w, suffix=".png")
    plt.close(fig)
    return {"path": str(path), "slices": slices, "size_px": (width, height)}
