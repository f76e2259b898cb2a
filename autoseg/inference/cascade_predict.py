"""Cascade prediction of new images: 3d_lowres first, its segmentation fed to 3d_cascade_fullres.

As in nnU-Net, a configuration with ``previous_stage`` (3d_cascade_fullres) takes the previous
stage's segmentation of the same case as extra input channels. For a new image the
:class:`~autoseg.inference.predictor.Predictor` predicts the previous stage first (its folds'
logits averaged, with the same folds, tile step and mirroring), takes the argmax at the original
geometry (no postprocessing), and this module puts that label map on the cascade's preprocessed
grid and appends it one-hot: the same two functions that make the training and validation inputs
(:func:`autoseg.model.cascade.next_stage_segmentation`, with which the lowres folds write
``predicted_next_stage/<case>_seg.npy``, and :func:`autoseg.model.cascade.append_previous_stage`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import AutosegError
from ..schemas import CaseProperties, ConfigurationPlan, Plans
from ..model.cascade import append_previous_stage, cascade_foreground_labels, next_stage_segmentation


def stage_order(plans: Plans, configurations: Sequence[str]) -> list[str]:
    """Every configuration to run for ``configurations``: each one's previous stages before it, each once.

    E.g. ``["3d_cascade_fullres"]`` -> ``["3d_lowres", "3d_cascade_fullres"]``;
    ``["3d_cascade_fullres", "3d_lowres"]`` -> the same (3d_lowres is predicted once and serves both).
    Unknown names raise "did you mean"; a cycle of previous stages raises AutosegError.
    """
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> None:
        if name in order:
            return
        if name in chain:
            raise AutosegError(f"plans.json: the previous stages of {chain[0]} form a cycle "
                               f"({' -> '.join([*chain, name])}); rerun `autoseg plan --overwrite`")
        cfg = plans.configuration(name)
        if cfg.previous_stage:
            visit(cfg.previous_stage, [*chain, name])
        order.append(cfg.name)

    for name in configurations:
        visit(str(name), [])
    return order


def cascade_input(data: np.ndarray, properties: CaseProperties, previous_segmentation: np.ndarray,
                  config: ConfigurationPlan) -> np.ndarray:
    """The network input of a cascade configuration for one case.

    Args:
        data: the case preprocessed for ``config``, float32 ``(C, *S)``.
        properties: what preprocessing recorded for it (crop box, shapes, spacings).
        previous_segmentation: the previous stage's label map ``(Z, Y, X)`` at the original geometry.
        config: the cascade configuration (``previous_stage`` set).

    Returns:
        float32 ``(C + L, *S)``: ``data`` and one 0/1 channel per foreground label 1..K-1.
    """
    expected = data.shape[0] + len(cascade_foreground_labels(config))
    if expected != config.network.in_channels:
        raise AutosegError(f"plans.json: {config.name} takes network.in_channels={config.network.in_channels}, "
                           f"but the image has {data.shape[0]} channel(s) and the {config.previous_stage} "
                           f"segmentation adds {expected - data.shape[0]}, {expected} in all; rerun "
                           f"`autoseg plan --overwrite` and retrain")
    previous = next_stage_segmentation(np.asarray(previous_segmentation), properties, config)
    if previous.shape[1:] != data.shape[1:]:  # both come from the same properties: a bug if they differ
        raise RuntimeError(f"case {properties.case_id}: {config.previous_stage} segmentation on the "
                           f"{config.name} grid has shape {previous.shape[1:]}, the data {data.shape[1:]}")
    return append_previous_stage(data, previous[0], config)
