"""Use case `autoseg predict`: segment new images with the selection (find-best is run first when the
work folder has none) or with the configurations named, from a work folder or from an exported model
zip (`autoseg predict --model model.zip`)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store import RunStore
from .find_best import FindBestResult, find_best

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    output_dir: Path
    configurations: list[str]
    folds: list[Any]
    predicted_cases: list[str]
    failed_cases: dict[str, str]
    total_seconds: float
    info_path: Path  # prediction_info.json (prediction_info.part-K-of-N.json for a part)
    info: dict[str, Any] = field(repr=False, default_factory=dict)  # everything prediction_info.json holds
    find_best: FindBestResult | None = None  # when it had to run first


def predict(workdir: str | Path | None, inputs: str | Path | Sequence[str | Path], output_dir: str | Path, *,
            configurations: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
            fast: bool = False, step_size: float | None = None, mirror: bool | None = None,
            save_probabilities: bool = False, save_uncertainty: bool = False, device: str | None = None,
            progress: bool = True, num_workers: int | None = None, checkpoint: str | None = None,
            num_parts: int = 1, part_id: int = 0, resume: bool = False, model: str | Path | None = None,
            backend: str = "auto", output_format: str = "auto") -> PredictResult:
    """Predict every case of ``inputs`` into ``output_dir`` (see :func:`autoseg.inference.predict_cases.predict_cases`;
    ``checkpoint``: final or best (None: final, or what the model zip holds); ``num_parts``/``part_id``/``resume``:
    :mod:`autoseg.inference.partial`). Exactly one of ``workdir`` and ``model`` (an exported model zip, read
    without unpacking and refused when unsafe: :mod:`autoseg.model.model_zip_reader`); ``backend``: auto (onnxruntime
    on the CPU in fp32 when installed, else torch), torch or onnxruntime; ``output_format``: "auto" or "dicom-seg",
    :mod:`autoseg.inference.dicom_seg`."""
    from ..inference.model_source import WorkdirSource, ZipSource
    from ..inference.partial import check_parts, info_name
    from ..inference.predict_cases import predict_cases

    if (workdir is None) == (model is None):
        raise UsageError("predict needs either a work folder (--workdir RUN) or an exported model (--model "
                         "model.zip), not both")
    check_parts(num_parts, part_id)  # before find-best runs

    ran = None
    if model is not None:
        source = ZipSource(model)
    elif configurations is None and not RunStore(workdir).wd.selection_json.exists():
        log.info("no selection yet: running find-best first")
        ran = find_best(workdir, progress=progress, num_workers=num_workers)
    if model is None:
        source = WorkdirSource(workdir)
    if not isinstance(inputs, (str, Path)) and len(inputs) == 1:
        inputs = inputs[0]
    info = predict_cases(source, inputs, output_dir, configurations=configurations, folds=folds, fast=fast,
                         step_size=step_size, mirror=mirror, save_probabilities=save_probabilities,
                         save_uncertainty=save_uncertainty, device=device, progress=progress,
                         num_workers=num_workers, checkpoint=checkpoint, num_parts=num_parts, part_id=part_id,
                         resume=resume, backend=backend, output_format=output_format)
    out = Path(output_dir).resolve()
    return PredictResult(output_dir=out, configurations=list(info["configurations"]), folds=list(info["folds"]),
                         predicted_cases=list(info["predicted_cases"]), failed_cases=dict(info["failed_cases"]),
                         total_seconds=float(info["total_seconds"]), info_path=out / info_name(num_parts, part_id),
                         info=info, find_best=ran)
