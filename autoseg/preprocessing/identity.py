"""What makes preprocessed data what it is: the plan fields that change it, their hash, and the folder
name derived from them. Configurations that preprocess alike share one folder; a case made under
another hash is stale (the decision itself is :func:`autoseg.store.freshness`)."""
from __future__ import annotations

from collections.abc import Sequence

from ..schemas import (
    ChannelNormalization,
    ConfigurationPlan,
    ResamplingSpec,
    stable_hash,
    to_dict,
)


def _preprocessing_fields(spacing_zyx_mm: Sequence[float], transpose_forward: Sequence[int],
                          normalization: Sequence[ChannelNormalization], resampling: ResamplingSpec) -> dict:
    return {"spacing_zyx_mm": [float(s) for s in spacing_zyx_mm],
            "transpose_forward": [int(a) for a in transpose_forward],
            "normalization": to_dict(list(normalization)), "resampling": to_dict(resampling)}


def data_identifier(spacing_zyx_mm: Sequence[float], transpose_forward: Sequence[int],
                    normalization: Sequence[ChannelNormalization], resampling: ResamplingSpec) -> str:
    """Folder name under ``preprocessed/``, e.g. ``s1.00x0.79x0.79_1a2b3c4d``.

    Derived from exactly the fields that change preprocessing (target spacing, transpose,
    normalization list, resampling), so configurations that preprocess alike share a folder.
    """
    fields = _preprocessing_fields(spacing_zyx_mm, transpose_forward, normalization, resampling)
    spacing = "x".join(f"{float(s):.2f}" for s in spacing_zyx_mm)
    return f"s{spacing}_{stable_hash(fields)[:8]}"


def preprocessing_hash(plan: ConfigurationPlan) -> str:
    """Hash of the fields of ``plan`` that change preprocessing; a case made under another hash is stale."""
    return stable_hash(_preprocessing_fields(plan.spacing_zyx_mm, plan.transpose_forward,
                                             plan.normalization, plan.resampling))
