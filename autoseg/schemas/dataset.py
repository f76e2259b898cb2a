"""What is read from a dataset: geometry, case files, the label spec, the manifest, the fingerprint, and
the hardware a plan is made for."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

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

