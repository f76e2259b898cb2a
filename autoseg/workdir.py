"""Every on-disk name of a work folder, in one place.

    RUN/fingerprint.json
    RUN/plans.json
    RUN/splits.json
    RUN/preprocessed/<data_identifier>/<case>.npy | <case>_seg.npy | <case>.json
    RUN/results/<configuration>/fold_<k>/...
    RUN/results/selection.json
    RUN/report.html                 (`autoseg report`, unless -o names another file)
"""
from __future__ import annotations

from pathlib import Path


def fold_name(fold: int | str) -> str:
    return f"fold_{fold}"


CHECKPOINT_KINDS = ("latest", "best", "final")


def checkpoint_filename(which: str) -> str:
    """File name of a fold's checkpoint; ``which`` is 'latest', 'best' or 'final'."""
    if which not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be latest, best or final, not {which!r}")
    return f"checkpoint_{which}.pt"


class Workdir:
    """Names of every artifact below a work folder ``root``. Creates nothing by itself."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # plan stage
    @property
    def manifest_json(self) -> Path:
        """The validated raw dataset (absolute file paths per case), written by `autoseg plan`."""
        return self.root / "dataset_manifest.json"

    @property
    def plan_lock(self) -> Path:
        """Held exclusively by `autoseg plan`, shared by trainings and find-best (autoseg/locks.py)."""
        return self.root / ".plan.lock"

    @property
    def file_digests_json(self) -> Path:
        """Content digests of the dataset's files by size and mtime (autoseg.data.file_digests): freshness
        is judged on bytes, and unchanged files are not read twice."""
        return self.root / "file_digests.json"

    @property
    def fingerprint_json(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def plans_json(self) -> Path:
        return self.root / "plans.json"

    @property
    def plans_explained_txt(self) -> Path:
        return self.root / "plans_explained.txt"

    @property
    def splits_json(self) -> Path:
        return self.root / "splits.json"

    @property
    def preprocessed_root(self) -> Path:
        return self.root / "preprocessed"

    def preprocessed_dir(self, data_identifier: str) -> Path:
        return self.preprocessed_root / data_identifier

    def case_data_npy(self, data_identifier: str, case_id: str) -> Path:
        return self.preprocessed_dir(data_identifier) / f"{case_id}.npy"

    def case_seg_npy(self, data_identifier: str, case_id: str) -> Path:
        return self.preprocessed_dir(data_identifier) / f"{case_id}_seg.npy"

    def case_properties_json(self, data_identifier: str, case_id: str) -> Path:
        return self.preprocessed_dir(data_identifier) / f"{case_id}.json"

    # train stage
    @property
    def results_root(self) -> Path:
        return self.root / "results"

    def configuration_dir(self, configuration: str) -> Path:
        return self.results_root / configuration

    def precision_choice_json(self, configuration: str) -> Path:
        """The CPU precision measured for this configuration's network and batch; its other folds reuse it."""
        return self.configuration_dir(configuration) / "precision_choice.json"

    def fold_dir(self, configuration: str, fold: int | str) -> Path:
        return self.configuration_dir(configuration) / fold_name(fold)

    def checkpoint(self, configuration: str, fold: int | str, which: str) -> Path:
        """``which`` is 'latest', 'best' or 'final'."""
        return self.fold_dir(configuration, fold) / checkpoint_filename(which)

    def train_settings_json(self, configuration: str, fold: int | str) -> Path:
        return self.fold_dir(configuration, fold) / "train_settings.json"

    def training_log_jsonl(self, configuration: str, fold: int | str) -> Path:
        return self.fold_dir(configuration, fold) / "training_log.jsonl"

    def progress_png(self, configuration: str, fold: int | str) -> Path:
        return self.fold_dir(configuration, fold) / "progress.png"

    def validation_dir(self, configuration: str, fold: int | str) -> Path:
        return self.fold_dir(configuration, fold) / "validation"

    def validation_summary_json(self, configuration: str, fold: int | str) -> Path:
        return self.validation_dir(configuration, fold) / "summary.json"

    def validation_probabilities(self, configuration: str, fold: int | str, case_id: str) -> Path:
        return self.validation_dir(configuration, fold) / f"{case_id}_probabilities.npz"

    def lowres_predictions_dir(self, configuration: str, fold: int | str) -> Path:
        """Where a 3d_lowres fold leaves its predictions at the next stage's spacing (cascade input)."""
        return self.fold_dir(configuration, fold) / "predicted_next_stage"

    # selection stage
    @property
    def selection_json(self) -> Path:
        return self.results_root / "selection.json"

    # report
    @property
    def report_html(self) -> Path:
        """The default output of `autoseg report`: the run as one self-contained HTML page."""
        return self.root / "report.html"
