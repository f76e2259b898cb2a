"""Published numbers to set beside a benchmark run, with their sources and how sure we are of them.

Every entry is copied from ../shared/reference/anchors.md §3 (which cites its sources). They are
other people's numbers on other machines and, for most, other splits and far longer training: a
benchmark report prints them in their own labelled table, never as a ratio to our runs.

``published_for(dataset_name)`` matches a dataset by keywords in its folder name
(``Dataset102_Hippocampus`` → the Hippocampus rows).
"""
from __future__ import annotations

from typing import Any

# keywords (lower case, any of them in the dataset folder name) → rows
PUBLISHED: list[dict[str, Any]] = [
    {"keywords": ["hippocampus", "task04"], "rows": [
        {"method": "nnU-Net (MSD submission, test set)", "metric": "Dice anterior / posterior",
         "value": "≈0.90 / ≈0.89", "status": "unverified (recalled, not checked against the primary source)",
         "source": "anchors.md §3.6; Isensee et al., Nature Methods 2021, supplement"},
        {"method": "nnU-Net v1 3d_fullres, a user's run", "metric": "mean Dice",
         "value": "0.90", "status": "weak (user report)", "source": "MIC-DKFZ/nnUNet#298"},
        {"method": "MONAI DynUNet (nnU-Net re-implementation), fold 0", "metric": "mean Dice",
         "value": "≈0.89", "status": "weak (PR description)", "source": "Project-MONAI/tutorials PR #20"},
    ]},
    {"keywords": ["isbi", "em2012", "isbi2012"], "rows": [
        {"method": "nnU-Net", "metric": "–", "value": "none published",
         "status": "the challenge ranks by Rand / information scores on a hidden test stack",
         "source": "anchors.md §3.6"},
    ]},
    {"keywords": ["spleen", "task09"], "rows": [
        {"method": "Auto3DSeg SegResNet, 5-fold CV", "metric": "mean foreground Dice", "value": "0.9576",
         "status": "verified", "source": "Project-MONAI/tutorials auto3dseg/tasks/msd/Task09_Spleen"},
        {"method": "nnU-Net (MSD test set)", "metric": "Dice", "value": "≈0.97", "status": "unverified",
         "source": "anchors.md §3.6"},
    ]},
    {"keywords": ["prostate", "task05"], "rows": [
        {"method": "Auto3DSeg DiNTS / SegResNet, 5-fold CV", "metric": "mean of PZ, TZ Dice",
         "value": "0.7217 / 0.7117", "status": "verified",
         "source": "Project-MONAI/tutorials auto3dseg/tasks/msd/Task05_Prostate"},
        {"method": "nnU-Net (MSD test set)", "metric": "Dice PZ / TZ", "value": "≈0.76–0.77 / ≈0.90",
         "status": "unverified", "source": "anchors.md §3.6"},
    ]},
    {"keywords": ["heart", "task02"], "rows": [
        {"method": "nnU-Net (MSD test set)", "metric": "Dice left atrium", "value": "≈0.93",
         "status": "unverified", "source": "anchors.md §3.6"},
    ]},
    {"keywords": ["btcv"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV", "metric": "mean Dice (%)", "value": "83.08",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556 (resenc_presets.md)"},
    ]},
    {"keywords": ["acdc"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV", "metric": "mean Dice (%)", "value": "91.54",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556"},
    ]},
    {"keywords": ["lits", "liver"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV", "metric": "mean Dice (%)", "value": "80.09",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556"},
        {"method": "nnU-Net v2 3d_fullres, 5-fold mean", "metric": "Dice liver / lesion",
         "value": "0.9572 / 0.6403", "status": "verified", "source": "xmed-lab/TriALS#1 (F. Isensee)"},
    ]},
    {"keywords": ["brats"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV", "metric": "mean Dice (%)", "value": "91.24",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556"},
    ]},
    {"keywords": ["kits"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV (KiTS23)", "metric": "mean Dice (%)", "value": "86.04",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556"},
    ]},
    {"keywords": ["amos"], "rows": [
        {"method": "nnU-Net (org.) 3d_fullres, 5-fold CV", "metric": "mean Dice (%)", "value": "88.64",
         "status": "verified", "source": "nnU-Net Revisited, arXiv 2404.09556"},
    ]},
]


def published_for(dataset_name: str) -> list[dict[str, Any]]:
    """The published rows whose keywords occur in ``dataset_name`` (case-insensitive); [] if none."""
    name = dataset_name.lower()
    rows: list[dict[str, Any]] = []
    for entry in PUBLISHED:
        if any(k in name for k in entry["keywords"]):
            rows.extend(entry["rows"])
    return rows
