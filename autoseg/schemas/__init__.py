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

The classes live in four modules: ``serialisation`` (the JSON machinery), ``dataset`` (manifest,
fingerprint, hardware), ``plans`` (plans, splits, preprocessed cases) and ``results`` (training and
selection); import them from here.
"""
from __future__ import annotations

from .dataset import (
    DUMMY_2D_SPACING_MM,
    CaseFiles,
    CaseFingerprint,
    Configuration,
    ConfigurationName,
    DatasetManifest,
    DeviceKind,
    Fingerprint,
    Geometry,
    HardwareBudget,
    IntensityStats,
    LabelSpec,
    LabelStats,
    Optimizer,
    Precision,
)
from .plans import (
    CaseProperties,
    ChannelNormalization,
    ConfigurationPlan,
    Decision,
    Fold,
    NetworkSpec,
    Plans,
    ResamplingSpec,
    Splits,
)
from .results import (
    Candidate,
    FoldSummary,
    PostprocessingStep,
    Selection,
    TrainingSettings,
)
from .serialisation import (
    SCHEMA_VERSION,
    from_dict,
    load_json,
    save_json,
    stable_hash,
    to_dict,
)

__all__ = [
    "DUMMY_2D_SPACING_MM", "SCHEMA_VERSION", "Candidate", "CaseFiles", "CaseFingerprint", "CaseProperties",
    "ChannelNormalization", "Configuration", "ConfigurationName", "ConfigurationPlan", "DatasetManifest", "Decision",
    "DeviceKind", "Fingerprint", "Fold", "FoldSummary", "Geometry", "HardwareBudget", "IntensityStats", "LabelSpec",
    "LabelStats", "NetworkSpec", "Optimizer", "Plans", "PostprocessingStep", "Precision", "ResamplingSpec", "Selection",
    "Splits", "TrainingSettings", "from_dict", "load_json", "save_json", "stable_hash", "to_dict",
]
