"""One preprocessed case through the networks and back: sliding-window logits (models averaged) →
probabilities at the case's original geometry. Shared by a fold's final validation and by prediction."""
from __future__ import annotations

import numpy as np

from ..schemas import CaseProperties, ConfigurationPlan
from .export import logits_to_original_probabilities
from .sliding_window import TileNetwork, predict_sliding_window


def predict_preprocessed_case(networks: TileNetwork | list[TileNetwork], data: np.ndarray,
                              properties: CaseProperties, config: ConfigurationPlan, *,
                              device: str = "cpu", precision: str = "fp32", step_size: float = 0.5,
                              mirror: bool = True, tile_batch_size: int = 4) -> np.ndarray:
    """Sliding-window logits (folds averaged) → probabilities (K, Z, Y, X) at the original geometry."""
    logits = predict_sliding_window(networks, data, config.patch_size, config.network.num_classes,
                                    step_size=step_size,
                                    mirror_axes=tuple(config.mirror_axes) if mirror else None,
                                    tile_batch_size=tile_batch_size, device=device, precision=precision)
    return logits_to_original_probabilities(logits, properties, config)
