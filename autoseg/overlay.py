"""A PNG that shows a segmentation on its image: image, reference and prediction, slice by slice.

Three rows of panels (image alone; image with the reference; image with the prediction), one
column per axial slice (array axis 0 of ``(Z, Y, X)``), or with ``side_by_side`` one row per slice
with the three panels beside each other (the run report), each label in its own colour (filled,
half transparent, with its contour), a legend with the label names and a title. The figure has an
exact pixel size (:func:`overlay_size_px`), so callers and tests know what they get. matplotlib
runs with the Agg backend (no display needed). :func:`write_overlay_png` writes the file,
:func:`render_overlay_png` returns the PNG bytes (the run report embeds them).
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


def overlay_size_px(n_slices: int, side_by_side: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of an overlay with ``n_slices`` slices: one column per slice (the
    default), or with ``side_by_side`` one row per slice with image, reference and prediction beside each other."""
    cols, rows = (len(ROWS), n_slices) if side_by_side else (n_slices, len(ROWS))
    return ROW_LABEL_PX + cols * PANEL_PX, HEADER_PX + rows * PANEL_PX


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
                      n_slices: int = 4, side_by_side: bool = False) -> dict:
    """Write the overlay PNG of one case to ``path`` (atomically); the arguments are :func:`render_overlay_png`'s.
    Returns ``{"path", "slices", "size_px": (width, height)}``."""
    png, info = render_overlay_png(image, reference, prediction, label_names=label_names, title=title,
                                   spacing_zyx=spacing_zyx, slices=slices, n_slices=n_slices,
                                   side_by_side=side_by_side)

    def _w(tmp: str) -> None:
        Path(tmp).write_bytes(png)

    atomic_write(path, _w, suffix=".png")
    return {"path": str(path), **info}


def render_overlay_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, *,
                       label_names: Mapping[int, str], title: str,
                       spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0), slices: Sequence[int] | None = None,
                       n_slices: int = 4, side_by_side: bool = False) -> tuple[bytes, dict]:
    """The overlay of one case as PNG bytes, and ``{"slices", "size_px": (width, height)}``.

    ``image``: ``(Z, Y, X)`` intensities (one channel); ``reference`` and ``prediction``: ``(Z, Y, X)``
    label maps on the same grid; ``label_names``: foreground label value -> name (legend; values not
    named, e.g. an ignore label, are not drawn); ``spacing_zyx`` (mm) sets the in-plane aspect ratio;
    ``slices``: axial indices to show (default :func:`choose_slices`); ``side_by_side``: one row per
    slice (image, reference, prediction beside each other) instead of one column per slice.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not (image.shape == reference.shape == prediction.shape) or image.ndim != 3:
        raise ValueError(f"image, reference and prediction must be (Z, Y, X) arrays of one shape, got "
                         f"{image.shape}, {reference.shape}, {prediction.shape}")
    slices = list(slices) if slices is not None else choose_slices(reference, prediction, n_slices)
    labels = sorted(int(k) for k in label_names)
    width, height = overlay_size_px(len(slices), side_by_side)
    n_rows = len(slices) if side_by_side else len(ROWS)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    body = image[image != 0] if np.any(image != 0) else image.ravel()
    vmin, vmax = (float(v) for v in np.percentile(body, [0.5, 99.5]))
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    for s_index, z in enumerate(slices):
        for k, name in enumerate(ROWS):
            row, col = (s_index, k) if side_by_side else (k, s_index)
            left = (ROW_LABEL_PX + col * PANEL_PX) / width
            bottom = (n_rows - 1 - row) * PANEL_PX / height
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
            column_title, row_title = (name, f"slice z={z}") if side_by_side else (f"slice z={z}", name)
            if row == 0:
                ax.set_title(column_title, fontsize=8, pad=2)
            if col == 0:
                ax.set_ylabel(row_title, fontsize=9)
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=10)
    handles = [Patch(facecolor=(*label_colour(lab), FILL_ALPHA), edgecolor=label_colour(lab),
                     label=f"{lab} {label_names[lab]}") for lab in labels]
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 30 / height), ncol=len(handles),
                   fontsize=8, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    plt.close(fig)
    return buffer.getvalue(), {"slices": slices, "size_px": (width, height)}
