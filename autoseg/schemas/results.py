"""What training and selection write: the resolved training settings, a fold's summary, and the
selection with its postprocessing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dataset import ConfigurationName, Optimizer, Precision
from .serialisation import SCHEMA_VERSION, _renamed

# --------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainingSettings:
    """Resolved training settings: defaults, then CLI overrides. Written to train_settings.json."""

    schema_version: int
    configuration: ConfigurationName
    fold: str  # "0".."4" or "all"
    epochs: int
    iterations_per_epoch: int
    validation_iterations_per_epoch: int
    initial_lr: float
    weight_decay: float
    momentum: float
    grad_clip_norm: float
    poly_exponent: float
    batch_size: int
    patch_size: list[int]
    foreground_oversample_fraction: float
    num_workers: int
    device: str
    precision: Precision  # "auto" is resolved by the trainer (the faster of fp32 and bf16 on a CPU)
    seed: int
    time_budget_s: float | None
    checkpoint_every_s: float
    overrides: dict[str, Any] = field(default_factory=dict)
    configuration_hash: str = ""  # autoseg.store.configuration_hash of the plan trained with (changed: stale)
    lr_shape: str = "poly"  # registered decay shape (training/schedule.py): "poly" (exponent poly_exponent), "linear"
    warmup_fraction: float = 0.0  # linear lr warm-up over this fraction of the training (time or iterations)
    optimizer: Optimizer = "sgd"  # "sgd" (Nesterov, momentum) or "adamw" (betas (momentum, 0.999))
    recipe: str = "nnunet"  # training/recipe.py: which recipe set optimizer, lr, decay shape and warm-up
    recipe_reason: str = ""  # why (chosen from the iterations the training is expected to run, or --recipe)
    pretrained: str | None = None  # fine-tuning: start the first run from this checkpoint / fold folder's weights
    world_size: int = 1  # processes training this fold data-parallel (torchrun); batch_size is their global batch
    batch_dice: bool = True  # the Dice term over the whole batch (nnU-Net's) or per sample, then averaged
    # weight of deep-supervision output i (0: full resolution) ∝ decay**i, the coarsest 0, normalised (nnU-Net:
    # 0.5); 0 trains the full-resolution output alone (no deep supervision)
    deep_supervision_decay: float = 0.5

    _migrate = staticmethod(lambda data: _renamed(data, plans_hash="configuration_hash"))


@dataclass(frozen=True)
class FoldSummary:
    """``validation/summary.json``: a fold's final validation, scored against the original labels.

    The metric fields are :func:`autoseg.evaluation.summarize`'s (``per_class``: label -> name, dice,
    iou, ...; ``foreground_mean``; ``per_case``); ``checkpoint_hash`` names the network that made the
    predictions (content hash of ``checkpoint_final.pt``), so reused predictions are never stale.
    """

    schema_version: int
    configuration: ConfigurationName
    fold: str
    checkpoint_hash: str
    num_cases: int
    labels: list[int | list[int]]  # label values, or regions (the label values each covers)
    per_class: dict[str, Any]
    foreground_mean: dict[str, Any]
    per_case: dict[str, Any]
    seconds_per_case: dict[str, float] = field(default_factory=dict)
    mean_seconds_per_case: float | None = None
    # how the cases were predicted: mirror (bool), step_size, reason (a budgeted training may validate
    # without mirroring or with less tile overlap; training/budget.choose_final_validation); {}: older runs
    validation_mode: dict[str, Any] = field(default_factory=dict)

    @property
    def foreground_dice(self) -> float | None:
        return self.foreground_mean.get("dice")

    @staticmethod
    def _migrate(data: dict) -> dict:
        """summary.json of autoseg <= 0.1 had no schema_version or checkpoint hash."""
        if "schema_version" in data:
            return data
        return {**data, "schema_version": SCHEMA_VERSION, "checkpoint_hash": "", "fold": str(data.get("fold", ""))}


# --------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class PostprocessingStep:
    """One accepted postprocessing step, applied in order to the winner's segmentations.

    kind: "largest_component_foreground" (all foreground labels together: keep the largest
    connected component, set the rest to background), "largest_component" (per label in ``labels``),
    or "remove_small_components" (per label: drop components smaller than ``min_size_voxels``).
    """

    kind: str
    labels: list[int] = field(default_factory=list)
    min_size_voxels: dict[str, int] = field(default_factory=dict)  # label -> minimum component size
    reason: str = ""


@dataclass(frozen=True)
class Candidate:
    """A configuration or an ensemble of configurations scored on the cross-validation predictions."""

    name: str  # "3d_fullres" or "2d+3d_fullres"
    configurations: list[str]
    foreground_dice: float
    dice_per_class: dict[str, float]  # label -> mean Dice over cases
    seconds_per_case: float  # estimated inference cost: sum over members of measured validation s/case


@dataclass(frozen=True)
class Selection:
    schema_version: int
    plans_hash: str
    folds: list[int]
    candidates: list[Candidate]  # ranked, best first
    winner: str
    winner_configurations: list[str]
    postprocessing: list[PostprocessingStep]
    foreground_dice_before_postprocessing: float
    foreground_dice_after_postprocessing: float
    dice_per_class_after_postprocessing: dict[str, float]
    validation_hash: str = ""  # hash of the fold summaries it was made from (autoseg.store.validation_hash)
