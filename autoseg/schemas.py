"""Plain data written to disk between stages: frozen dataclasses <-> JSON. No torch, no numpy scalars.

Axis-order contract (everywhere inside autoseg):
  * arrays are numpy ``(C, Z, Y, X)`` for images and ``(Z, Y, X)`` for labels: the order
    ``SimpleITK.GetArrayFromImage`` returns (slowest axis first). A 2D image is ``(C, 1, Y, X)``.
  * every spacing, shape, patch size or voxel coordinate named ``*_zyx`` or stored in plans,
    fingerprints and case properties is in that same array-axis order, spacings in millimetres.
  * :class:`Geometry` keeps the file's own geometry in ITK order (x, y[, z]) so that an output can be
    written back with exactly the input's spacing, origin and direction.
  * 2D images get a dummy spacing of :data:`DUMMY_2D_SPACING_MM` on their (single-slice) first axis.

``from_dict`` rejects unknown or missing keys and says which file and key.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from .errors import SchemaError

SCHEMA_VERSION = 1
DUMMY_2D_SPACING_MM = 999.0


#: Names and values checked when a file is read (a Literal is a plain str in memory and in JSON).
ConfigurationName = Literal["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DeviceKind = Literal["cpu", "cuda"]
Optimizer = Literal["sgd", "adamw"]


class Configuration(str, enum.Enum):
    """The configurations a planner may produce."""

    TWO_D = "2d"
    FULLRES = "3d_fullres"
    LOWRES = "3d_lowres"
    CASCADE_FULLRES = "3d_cascade_fullres"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


# --------------------------------------------------------------------------- (de)serialisation

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Recursively turn dataclasses, enums, tuples into JSON-ready plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    if hasattr(obj, "item") and callable(obj.item) and type(obj).__module__ == "numpy":
        return obj.item()  # a numpy scalar slipped through: store the Python value
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise SchemaError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        last_err: Exception | None = None
        for a in non_none:
            try:
                return _convert(a, value, where)
            except SchemaError as e:
                last_err = e
        raise last_err or SchemaError(f"{where}: cannot read {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {type(value).__name__}")
        return _from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise SchemaError(f"{where}: {value!r} is not one of {allowed}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where}: expected a list, found {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        conv = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(conv) if origin is tuple else conv
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{where}.key") if kt is not str else str(k): _convert(vt, v, f"{where}.{k}")
                for k, v in value.items()}
    if tp is float:
        if value is None:
            return float("nan")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, found {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true/false, found {value!r}")
        return value
    return value


def _renamed(data: dict, **renames: str) -> dict:
    """``data`` with keys of an older autoseg renamed (old=new), for a class's ``_migrate``."""
    return {renames.get(k, k) if renames.get(k) not in data else k: v for k, v in data.items()}


def _from_dict(cls: type[T], data: dict, where: str) -> T:
    migrate = getattr(cls, "_migrate", None)
    if migrate is not None:
        data = migrate(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"the file was written by another autoseg version or edited by hand")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SchemaError(f"{where}: missing key '{name}' for {cls.__name__}")
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def from_dict(cls: type[T], data: Any, where: str = "<data>") -> T:
    """Build ``cls`` from plain data; ``where`` (usually a file name) prefixes every error."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object for {cls.__name__}")
    if getattr(cls, "_migrate", None) is not None:
        data = cls._migrate(data)  # type: ignore[attr-defined]
    version = data.get("schema_version")
    if "schema_version" in {f.name for f in dataclasses.fields(cls)} and version != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema_version {version!r}, this autoseg reads {SCHEMA_VERSION}; "
                          f"rerun the stage that wrote it with --overwrite")
    return _from_dict(cls, data, where)


def stable_hash(data: Any) -> str:
    """Short content hash of JSON-able data (key order independent)."""
    blob = json.dumps(to_dict(data), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_json(obj: Any, path: Any) -> None:
    """Write a dataclass (or plain data) as JSON atomically."""
    from .atomic import atomic_write_json

    atomic_write_json(path, to_dict(obj))


def load_json(cls: type[T], path: Any) -> T:
    """Read and validate a JSON artifact."""
    from .atomic import read_json

    return from_dict(cls, read_json(path), where=str(path))


# --------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class Geometry:
    """Geometry of one image file, in the file's own ITK axis order (x, y[, z]).

    ``size`` is the ITK size (x, y[, z]); ``ndim`` is 2 or 3. ``components`` is the number of
    values per pixel (3 for an RGB PNG). ``spacing_zyx`` gives the spacing in autoseg's array order.
    """

    ndim: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int = 1

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        s = tuple(reversed(self.size))
        return (1, *s) if self.ndim == 2 else s  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        s = tuple(float(v) for v in reversed(self.spacing))
        return (DUMMY_2D_SPACING_MM, *s) if self.ndim == 2 else s  # type: ignore[return-value]


@dataclass(frozen=True)
class CaseFiles:
    """One training (or test) case: its image files in channel order, and its label file if any.

    Paths are absolute.
    """

    case_id: str
    images: tuple[str, ...]
    label: str | None = None


@dataclass(frozen=True)
class LabelSpec:
    """How label maps become the network's targets, and its outputs a label map again (nnU-Net v2 semantics).

    * Plain labels: ``labels`` name -> value (background 0, values 0..K-1); one softmax output per label.
    * Region-based (``regions`` set): one sigmoid output per region, region ``i`` covering the label
      values ``regions[name_i]`` (e.g. BraTS: whole tumour [1, 2, 3], tumour core [2, 3], enhancing [3]);
      a label map is made back by painting ``regions_class_order[i]`` wherever region ``i`` is predicted,
      in order. ``labels`` then holds every value the label files may contain.
    * ``ignore_label``: voxels with this value (nnU-Net: the highest value) contribute to no loss term and
      no metric and are never sampled as foreground; it is not in ``labels``.

    Array functions: ``autoseg/data/labels.py``.
    """

    labels: dict[str, int]
    regions: dict[str, list[int]] = field(default_factory=dict)
    regions_class_order: list[int] = field(default_factory=list)
    ignore_label: int | None = None

    @property
    def region_based(self) -> bool:
        return bool(self.regions)

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background (the ignore label is not one)."""
        return sorted(v for v in self.labels.values() if v != 0)

    @property
    def num_outputs(self) -> int:
        """Output channels of the network: one per region, else one per label (background included)."""
        return len(self.regions) if self.regions else len(self.labels)

    @property
    def allowed_values(self) -> list[int]:
        """Every value a label file may hold."""
        return sorted({*self.labels.values(), *([] if self.ignore_label is None else [self.ignore_label])})

    def items(self) -> list[tuple[str, tuple[int, ...]]]:
        """What is scored: ``(name, label values)`` per region, else per foreground label."""
        if self.regions:
            return [(name, tuple(int(v) for v in values)) for name, values in self.regions.items()]
        return [(name, (int(v),)) for name, v in sorted(self.labels.items(), key=lambda kv: kv[1]) if v != 0]

    @staticmethod
    def plain(num_classes: int) -> LabelSpec:
        """Labels 0..num_classes-1 without names (plans written before label specs existed)."""
        return LabelSpec(labels={"background": 0, **{f"label_{i}": i for i in range(1, int(num_classes))}})


@dataclass(frozen=True)
class DatasetManifest:
    """A validated raw dataset in nnU-Net v2 layout."""

    schema_version: int
    root: str
    name: str
    channel_names: dict[str, str]  # "0" -> "CT"/"MRI"/...
    labels: dict[str, int]  # "background" -> 0, ...
    file_ending: str
    cases: tuple[CaseFiles, ...]
    test_cases: tuple[CaseFiles, ...] = ()
    ndim: int = 3  # 2 when every image file is 2D
    dataset_hash: str = ""  # hash of dataset.json and every file's name and content (never timestamps)
    file_digests: dict[str, str] = field(default_factory=dict)  # absolute path -> content digest
    # region-based labels (name -> label values, in output order) and the order they are painted back in,
    # and the ignore label (not in ``labels``); see LabelSpec
    regions: dict[str, list[int]] = field(default_factory=dict)
    regions_class_order: list[int] = field(default_factory=list)
    ignore_label: int | None = None

    @property
    def label_spec(self) -> LabelSpec:
        return LabelSpec(labels=dict(self.labels), regions={k: list(v) for k, v in self.regions.items()},
                         regions_class_order=list(self.regions_class_order), ignore_label=self.ignore_label)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def files_per_case(self) -> int:
        """Image files per case: one per channel, or 1 (one RGB file holds three channels)."""
        return len(self.cases[0].images) if self.cases else self.num_channels

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(v for v in self.labels.values() if v != 0)


# --------------------------------------------------------------------------- fingerprint

@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing_zyx_mm: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    shape_after_crop_zyx: tuple[int, int, int]
    relative_size_after_crop: float  # voxels after crop / voxels before
    label_voxels: dict[str, int]  # label value (as str) -> voxel count in this case


@dataclass(frozen=True)
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel, from a bounded sample."""

    channel: int
    name: str
    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int


@dataclass(frozen=True)
class LabelStats:
    """Statistics of one foreground label over the training cases."""

    label: int
    name: str
    voxels_per_case: dict[str, int]
    volume_mm3_median: float
    components_per_case: dict[str, int]
    component_size_voxels_min: int
    component_size_voxels_median: float
    component_size_voxels_max: int
    component_size_mm3_median: float
    absent_in_cases: list[str]


@dataclass(frozen=True)
class Fingerprint:
    schema_version: int
    dataset_name: str
    dataset_hash: str
    ndim: int
    channel_names: dict[str, str]
    labels: dict[str, int]
    cases: list[CaseFingerprint]
    intensity: list[IntensityStats]
    label_stats: list[LabelStats]
    median_relative_size_after_crop: float
    intensity_sample_seed: int = 1234
    label_spec: LabelSpec | None = None  # regions and the ignore label (None: plain labels from ``labels``)
    ignored_voxel_fraction: float | None = None  # share of all voxels with the ignore label (None: no ignore label)

    @property
    def labels_spec(self) -> LabelSpec:
        return self.label_spec if self.label_spec is not None else LabelSpec(labels=dict(self.labels))


# --------------------------------------------------------------------------- hardware

@dataclass(frozen=True)
class HardwareBudget:
    """What the plan was sized for. Detected once at the edge (hardware.py), overridable by flags."""

    device: DeviceKind  # "cuda" or "cpu"
    gpu_name: str | None
    gpu_total_memory_gb: float | None
    gpu_free_memory_gb: float | None
    cpu_cores: int
    ram_total_gb: float
    ram_available_gb: float
    cpu_bf16: bool  # the CPU has native bf16 (AVX512-BF16 / AMX)
    cpu_conv_gflops: float | None = None  # measured fp32 3D-conv throughput, GFLOP/s (informational)
    # measured effective throughput of whole U-Net training steps on this CPU, keyed "2d"/"3d":
    # analytic conv GFLOP of a step / best step time, at the faster of fp32 and bf16 (overheads included)
    cpu_unet_gflops: dict[str, float] = field(default_factory=dict)
    cpu_unet_precision: dict[str, str] = field(default_factory=dict)  # the precision that was faster
    cpu_speed_source: str = ""  # where cpu_unet_gflops comes from (measured now / remembered for this CPU class)
    overrides: dict[str, str] = field(default_factory=dict)  # flag -> value given by the user


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
        from .errors import unknown_name_error

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
