"""What the planner writes and preprocessing keeps: decisions, configuration plans, splits, and the
sidecar of each preprocessed case."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .dataset import (
    ConfigurationName,
    Geometry,
    HardwareBudget,
    LabelSpec,
)
from .serialisation import _renamed

# --------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Decision:
    """One planning decision: what was decided, by which rule, from which inputs, and why."""

    subject: str  # e.g. "target_spacing", "normalization[0]", "patch_size"
    value: Any
    rule: str  # short rule name, e.g. "median_spacing", "anisotropy_10th_percentile"
    reason: str  # one readable sentence with the numbers that fired the rule
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalized. ``scheme`` is a registered name (see preprocessing/normalize.py)."""

    channel: int
    name: str
    scheme: str  # "ct", "zscore", "no_norm", "rescale_0_1", "rgb_0_1"
    use_mask: bool  # z-score over the nonzero mask only, outside set to 0
    clip_low: float | None = None  # ct: dataset foreground 0.5 percentile
    clip_high: float | None = None  # ct: dataset foreground 99.5 percentile
    mean: float | None = None  # ct: dataset foreground mean
    std: float | None = None  # ct: dataset foreground std


@dataclass(frozen=True)
class ResamplingSpec:
    image_order: int = 3
    label_order: int = 1  # applied to one-hot label maps
    probabilities_order: int = 1
    separate_z_anisotropy_threshold: float = 3.0  # max/min spacing above which the low-res axis is separate
    low_res_axis_order: int = 0  # interpolation order along the separate low-resolution axis


@dataclass(frozen=True)
class NetworkSpec:
    """A plain-number U-Net description; training builds the network from these numbers alone."""

    dims: int  # 2 or 3
    in_channels: int  # image channels (+ previous-stage one-hot channels for the cascade)
    num_classes: int  # including background
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]  # per stage, per axis
    strides: list[list[int]]  # per stage, per axis; stage 0 has stride 1
    n_conv_per_stage_encoder: list[int]
    n_conv_per_stage_decoder: list[int]  # one entry per decoder stage (len(stages) - 1)
    deep_supervision: bool = True
    norm: str = "instance"
    nonlin: str = "leaky_relu"
    negative_slope: float = 0.01


@dataclass(frozen=True)
class ConfigurationPlan:
    """Everything needed to preprocess, train and predict one configuration. Reads alone."""

    name: ConfigurationName
    data_identifier: str  # folder under preprocessed/
    dims: int  # 2 or 3
    spacing_zyx_mm: list[float]  # target spacing in the original (untransposed) zyx order
    transpose_forward: list[int]  # axis permutation of (Z, Y, X) applied after resampling
    transpose_backward: list[int]
    median_shape_zyx: list[int]  # median shape after crop and resampling, original order
    patch_size: list[int]  # in the transposed order; 2D: two numbers
    batch_size: int
    normalization: list[ChannelNormalization]
    resampling: ResamplingSpec
    network: NetworkSpec
    foreground_oversample_fraction: float
    mirror_axes: list[int]  # spatial axes of the patch that may be mirrored (augmentation and TTA)
    dummy_2d_augmentation: bool  # spatial augmentation slice-wise for strongly anisotropic 3D patches
    estimated_memory_gb: float  # training memory estimate (GPU memory on cuda, RAM on cpu)
    estimated_gflop_per_iteration: float  # forward + backward, whole batch
    previous_stage: ConfigurationName | None = None
    next_stage: ConfigurationName | None = None
    decisions: list[Decision] = field(default_factory=list)
    label_spec: LabelSpec | None = None  # None: plans made before label specs (plain labels 0..num_classes-1)

    @property
    def labels(self) -> LabelSpec:
        """The label spec the network was planned for."""
        return self.label_spec if self.label_spec is not None else LabelSpec.plain(self.network.num_classes)


@dataclass(frozen=True)
class Plans:
    schema_version: int
    planner: str
    autoseg_version: str
    dataset_name: str
    fingerprint_hash: str
    hardware: HardwareBudget
    configurations: dict[str, ConfigurationPlan]
    decisions: list[Decision] = field(default_factory=list)  # dataset-level decisions
    warnings: list[str] = field(default_factory=list)
    # The one record of the time budget: wall-clock seconds per training (one fold of one configuration)
    # that the planner sized for and that `autoseg train` uses by default. On a CPU a plan without
    # --time-budget records the default it assumed (time_budget_given false); None: no budget (GPU plans).
    time_budget_s: float | None = None
    time_budget_given: bool = False

    @staticmethod
    def _migrate(data: dict) -> dict:
        """plans.json of autoseg <= 0.1 kept the budget in the hardware record."""
        hw = data.get("hardware")
        if isinstance(hw, dict) and "training_time_budget_s" in hw:
            hw = dict(hw)
            seconds = hw.pop("training_time_budget_s")
            data = {**data, "hardware": hw}
            if "time_budget_s" not in data:
                data["time_budget_s"], data["time_budget_given"] = seconds, seconds is not None
        return data

    def configuration(self, name: str) -> ConfigurationPlan:
        from ..errors import unknown_name_error

        if name not in self.configurations:
            raise unknown_name_error("configuration", name, self.configurations,
                                     hint="See plans.json or `autoseg plan --explain`.")
        return self.configurations[name]


# --------------------------------------------------------------------------- splits

@dataclass(frozen=True)
class Fold:
    train: list[str]
    val: list[str]


@dataclass(frozen=True)
class Splits:
    schema_version: int
    seed: int
    source: str  # "generated" or the path of the user's file
    folds: list[Fold]
    case_ids_hash: str = ""


# --------------------------------------------------------------------------- preprocessed cases

@dataclass(frozen=True)
class CaseProperties:
    """Sidecar of one preprocessed case: how to get back to the original image."""

    schema_version: int
    case_id: str
    geometry: Geometry  # of the first image file; written-back outputs use it
    file_ending: str
    shape_before_crop_zyx: list[int]
    crop_bbox_zyx: list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open, in the original array
    shape_after_crop_zyx: list[int]
    spacing_before_zyx_mm: list[float]
    spacing_after_zyx_mm: list[float]
    shape_after_resampling_zyx: list[int]  # original axis order, before transpose
    class_locations: dict[str, list[list[int]]]  # label -> sampled voxel coords in the stored array
    preprocessing_hash: str  # autoseg.preprocessing.identity.preprocessing_hash of the plan it was made with
    source_hash: str  # hash of the source files' names, sizes and mtimes

    _migrate = staticmethod(lambda data: _renamed(data, plans_hash="preprocessing_hash"))


