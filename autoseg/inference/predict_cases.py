"""Predict a folder (or a list) of new cases: what ``autoseg predict`` calls.

Inputs (:mod:`.case_inputs`) are a folder in nnU-Net's ``imagesTs`` layout (``<case>_<cccc><file_ending>``,
one file per channel) and/or of DICOM case folders (one series each, or channel folders ``0000``, ...),
a DICOM series folder, or a list of single files (one case per file: single-channel datasets, or one
RGB file per case) and DICOM case folders. Each case is predicted on its own: a case that fails
(missing channel file, unreadable image, a folder with two series, ...) is reported at the end while
the others are written. Outputs in ``output_dir``: ``<case><ending>`` with the input's format and
geometry (``.nii.gz`` for DICOM series), with ``output_format="dicom-seg"`` also a DICOM SEG
``<case>.dcm`` (:mod:`.dicom_seg`), optional ``<case>.npz`` probabilities and
``<case>_uncertainty<ending>``, and ``prediction_info.json`` saying which models produced them.

Overlap (``num_workers`` >= 2): while the networks predict one case in the calling thread, a
background thread reads and preprocesses the next case and writes the previous one's files (with
3 or more, one thread reads and another writes). At most one case is read ahead and one is being
written. The networks run in the calling thread only, so the outputs are those of ``num_workers=1``.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..version import __version__
from ..atomic import atomic_write_json
from ..errors import AutosegError
from ..schemas import CaseFiles, to_dict
from .case_inputs import InputLayout, find_cases, is_dicom_job
from .case_io import case_output_paths
from .dicom_seg import SegModel, dicom_seg_path, require_highdicom, write_dicom_seg
from .model_source import ModelSource, open_model_source
from .partial import check_parts, info_name, model_signature, predicted_before
from .predictor import PredictionResult, Predictor, PreparedCase

log = logging.getLogger(__name__)

#: ``output_format`` values: the input's format (NIfTI for DICOM series), or also a DICOM SEG per DICOM case
OUTPUT_FORMATS = ("auto", "dicom-seg")


def _remove_outputs(out_path: Path) -> None:
    """Remove every file a prediction of ``out_path`` may have left (an older run's included)."""
    for p in case_output_paths(out_path):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _failure(case: CaseFiles, e: BaseException) -> str | None:
    """The message a failed case is listed with, or None for an exception that is a bug (re-raised)."""
    if isinstance(e, AutosegError):
        return str(e)
    if isinstance(e, MemoryError):
        return (f"case {case.case_id} ran out of memory ({', '.join(case.images)}); predict it on a machine "
                f"with more RAM, with --fast, or with --num-workers 1 (no case read ahead)")
    if isinstance(e, (RuntimeError, ValueError, OSError)):  # an unexpected file or network problem
        log.debug("case %s failed", case.case_id, exc_info=e)
        return (f"case {case.case_id} failed with {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''} ({', '.join(case.images)}); rerun with -v for "
                f"the traceback")
    return None


def _submit(pool: Executor | None, fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on ``pool``, or now in this thread (a finished Future) when there is none."""
    if pool is not None:
        return pool.submit(fn, *args)
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001 - handed over like a pool would
        done.set_exception(e)
    return done


def default_num_workers(jobs: Sequence[tuple[CaseFiles, str]], predictor: Predictor) -> int:
    """Threads working on cases at once (the networks' included): min(CPU cores, 3, what free RAM
    allows for one case read ahead and one being written), at least 1 (:func:`autoseg.hardware.worker_count`).

    Per voxel of the largest input (headers only) such a case holds about 4C bytes of image while
    it is read, 4C x (preprocessed / original voxels) per preprocessed grid, and its result: 1 byte
    of segmentation, 4K + 2K of probabilities and their float16 copy, 4 of uncertainty.
    """
    from ..data.dicom_io import estimate_series_geometry
    from ..data.image_io import read_image_info
    from ..hardware import worker_count
    from ..preprocessing.preprocess import target_spacing_zyx

    plans = {predictor.plans.configuration(n).data_identifier: predictor.plans.configuration(n)
             for n in predictor.stages}
    worst = 0.0
    for case, _ in jobs:
        try:
            geom = estimate_series_geometry(case.images[0]) if is_dicom_job(case) else read_image_info(case.images[0])
        except AutosegError:
            continue  # reported when the case is read
        if geom is None:
            continue
        ratios = sum(float(np.prod([s / t for s, t in zip(geom.spacing_zyx, target_spacing_zyx(geom.spacing_zyx, p))]))
                     for p in plans.values())
        c, k = predictor.num_channels, predictor.num_classes
        worst = max(worst, float(np.prod(geom.shape_zyx)) * (4 * c * (1 + ratios) + 6 * k + 5))
    return worker_count(max(worst / 1024 ** 3, 0.05), max_workers=3)


def _predict_jobs(predictor: Predictor, jobs: Sequence[tuple[CaseFiles, str]], output_dir: Path, workers: int,
                  save_probabilities: bool, save_uncertainty: bool, failed: dict[str, str],
                  progress: bool, seg_writer: Callable[[PreparedCase], Callable[..., Any]] | None = None
                  ) -> dict[str, float]:
    """Predict every job (see the module doc for the overlap); returns seconds per written case and
    adds the failed ones to ``failed`` (their output files removed). ``seg_writer(prepared)``: the
    DICOM SEG writer of a case (``--output-format dicom-seg``)."""
    from tqdm import tqdm

    reader = ThreadPoolExecutor(1, thread_name_prefix="autoseg-read") if workers >= 2 and len(jobs) > 1 else None
    writer = None if reader is None else reader if workers == 2 else ThreadPoolExecutor(
        1, thread_name_prefix="autoseg-write")
    seconds: dict[str, float] = {}
    bar = tqdm(total=len(jobs), desc="predicting", unit="case", disable=not progress)

    def read(i: int) -> PreparedCase:
        case, ending = jobs[i]
        return predictor.read_case(case, output_dir / f"{case.case_id}{ending}", preprocess=reader is not None)

    def write(case: CaseFiles, prepared: PreparedCase, result: PredictionResult, out_path: Path) -> float:
        t0 = time.monotonic()
        predictor.write_result(case.case_id, prepared.geometry, result, out_path,
                               dicom_seg=seg_writer(prepared) if seg_writer is not None else None)
        return time.monotonic() - t0

    def fail(i: int, e: BaseException) -> None:
        case, ending = jobs[i]
        _remove_outputs(output_dir / f"{case.case_id}{ending}")
        message = _failure(case, e)
        if message is None:
            raise e
        failed[case.case_id] = message
        log.error("%s", message)
        bar.update()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def finish(pending: tuple[int, Future, float] | None) -> None:
        if pending is None:
            return
        i, future, spent = pending
        try:
            seconds[jobs[i][0].case_id] = round(spent + future.result(), 3)
            bar.update()
        except BaseException as e:  # noqa: BLE001 - attributed to its case
            fail(i, e)

    pending_write: tuple[int, Future, float] | None = None
    try:
        next_read = _submit(reader, read, 0) if jobs else None
        for i, (case, ending) in enumerate(jobs):
            assert next_read is not None
            current, next_read = next_read, None
            if reader is not None and i + 1 < len(jobs):
                next_read = _submit(reader, read, i + 1)  # read ahead while this case is predicted
            try:
                prepared = current.result()
                t0 = time.monotonic()
                result = predictor.predict_prepared(prepared, return_probabilities=save_probabilities,
                                                    return_uncertainty=save_uncertainty)
                spent = prepared.seconds + time.monotonic() - t0
            except BaseException as e:  # noqa: BLE001 - attributed to its case
                fail(i, e)
            else:
                finish(pending_write)  # at most one case is being written
                pending_write = (i, _submit(writer, write, case, prepared, result,
                                            output_dir / f"{case.case_id}{ending}"), spent)
                del prepared, result
            if reader is None and i + 1 < len(jobs):
                next_read = _submit(None, read, i + 1)
        finish(pending_write)
        pending_write = None
    finally:
        for pool in {p for p in (reader, writer) if p is not None}:
            pool.shutdown(wait=True, cancel_futures=True)
        if pending_write is not None:  # interrupted: a case whose writing did not finish is no result
            i, future = pending_write[0], pending_write[1]
            if not future.done() or future.cancelled() or future.exception() is not None:
                _remove_outputs(output_dir / f"{jobs[i][0].case_id}{jobs[i][1]}")
        bar.close()
    return seconds


def _refuse_dicom_seg_without_dicom(jobs: Sequence[tuple[CaseFiles, str]], failed: dict[str, str],
                                    dicom: set[str]) -> None:
    """``--output-format dicom-seg`` needs DICOM series in (a SEG references its source images) and highdicom."""
    not_dicom = [c.images[0] for c, _ in jobs if not is_dicom_job(c)]
    not_dicom += [f"case {case_id}" for case_id in failed if case_id not in dicom]
    if not_dicom:
        shown = ", ".join(str(p) for p in not_dicom[:5]) + (f" and {len(not_dicom) - 5} more" if len(not_dicom) > 5 else "")
        raise AutosegError(f"--output-format dicom-seg writes DICOM Segmentations, which reference the DICOM series "
                           f"they segment, but {len(not_dicom)} input case(s) are not DICOM series: {shown}; pass "
                           f"folders that hold one DICOM series per case, or drop --output-format dicom-seg (the "
                           f"segmentations are then written in the input's format)")
    require_highdicom()


def _seg_writer(predictor: Predictor) -> Callable[[PreparedCase], Callable[..., Any]]:
    """``prepared -> (segmentation, path) -> write_dicom_seg(...)``, labels named by the dataset's ``labels``."""
    label_names = {int(v): str(name) for name, v in predictor.label_spec.labels.items()}
    model = SegModel(dataset_name=predictor.plans.dataset_name, configurations=tuple(predictor.configurations),
                     folds=tuple(str(f) for f in predictor.folds), plans_hash=predictor.plans_hash)

    def for_case(prepared: PreparedCase) -> Callable[..., Any]:
        if prepared.dicom is None:
            raise AutosegError(f"case {prepared.case_id}: is not a DICOM series, so no DICOM SEG can be written")
        series = prepared.dicom
        return lambda segmentation, path: write_dicom_seg(segmentation, series, path, label_names=label_names,
                                                          model=model)

    return for_case


def predict_cases(workdir: str | Path | ModelSource, inputs: str | Path | Sequence[str | Path],
                  output_dir: str | Path, *,
                  configurations: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
                  fast: bool = False, step_size: float | None = None, mirror: bool | None = None,
                  save_probabilities: bool = False, save_uncertainty: bool = False,
                  device: str | None = None, progress: bool = True, precision: str = "auto",
                  checkpoint: str | None = None, num_workers: int | None = None, num_parts: int = 1,
                  part_id: int = 0, resume: bool = False, output_format: str = "auto",
                  backend: str = "auto") -> dict[str, Any]:
    """Predict every case of ``inputs`` into ``output_dir``; returns what prediction_info.json holds.

    ``workdir``: the work folder, an exported model zip, or a ModelSource (:mod:`.model_source`).
    ``inputs``: a folder in imagesTs layout (channel count from the plans, file ending from the
    dataset manifest) and/or of DICOM case folders, a DICOM series folder, a single image file, or a
    list of image files (one case each; for datasets with one file per case) and DICOM case folders
    (:mod:`.case_inputs`). ``output_format``: "auto" (the input's format; ``.nii.gz`` for DICOM
    series) or "dicom-seg" (also a DICOM SEG ``<case>.dcm`` per case; DICOM inputs only, anything else
    refused before a network is loaded). ``configurations``/``folds``/``fast``/``step_size``/``mirror``/
    ``device``/``precision``/``checkpoint``/``backend``: see :class:`~autoseg.inference.predictor.Predictor`
    (None: the selection's winner). ``num_workers``: threads working on cases at once, the
    networks' included (1: one case after the other; None: :func:`default_num_workers`).
    ``num_parts``/``part_id``: predict only this part of the cases, ``resume``: skip the cases this model
    predicted before (see :mod:`autoseg.inference.partial`).

    A failed case leaves no output file (an older prediction of it in ``output_dir``, with its
    ``.npz`` and uncertainty files, is removed, so that every prediction there comes from the
    models in prediction_info.json); after every other case is written and prediction_info.json
    is saved, AutosegError lists the failed cases.
    """
    if output_format not in OUTPUT_FORMATS:
        raise AutosegError(f"output format '{output_format}' is unknown; expected one of {', '.join(OUTPUT_FORMATS)}")
    source = open_model_source(workdir)
    file_ending = source.file_ending
    output_dir = Path(output_dir).resolve()
    layout = InputLayout(file_ending=file_ending, num_channels=source.files_per_case,
                         files_per_case=source.files_per_case)
    found = find_cases(inputs, layout, output_dir)
    jobs, failed = found.jobs, found.failed
    if output_format == "dicom-seg":
        _refuse_dicom_seg_without_dicom(jobs, failed, found.dicom)
    check_parts(num_parts, part_id)
    if num_parts > 1:  # round-robin over the sorted case ids, failed groupings included
        mine = set(sorted({c.case_id for c, _ in jobs} | set(failed))[part_id::num_parts])
        jobs = [j for j in jobs if j[0].case_id in mine]
        failed = {k: v for k, v in failed.items() if k in mine}
        log.info("part %d of %d: %d case(s)", part_id, num_parts, len(jobs) + len(failed))
    if num_workers is not None and num_workers < 1:
        raise AutosegError(f"--num-workers {num_workers}: expected 1 or more (1 predicts one case after the other)")

    predictor = Predictor(source, configurations=configurations, folds=folds, device=device,
                          precision=precision, fast=fast, step_size=step_size, mirror=mirror,
                          checkpoint=checkpoint, backend=backend)
    record = source.record(selection_used=predictor.selection_winner is not None)
    model = {
        "workdir": record["workdir"],
        "model": record["model"],  # an exported model zip (autoseg predict --model), else None
        "model_id": record["model_id"],  # the zip's content (hash of its manifest, which hashes every member)
        "backend": predictor.backend_used,
        "configurations": list(predictor.configurations),
        "previous_stages": dict(predictor.previous_stages),
        "folds": list(predictor.folds),
        "checkpoint": predictor.checkpoint,
        "step_size": predictor.step_size,
        "mirroring": predictor.mirror,
        "postprocessing": to_dict(predictor.postprocessing),
        "plans_hash": predictor.plans_hash,
        "selection_hash": record["selection_hash"],
    }
    kept: list[str] = []
    if resume and output_dir.is_dir():
        done, ignored = predicted_before(output_dir, model_signature(model))
        for reason in ignored:
            log.info("--continue: %s; its cases are predicted again", reason)
        kept = sorted(c.case_id for c, ending in jobs
                      if c.case_id in done and (output_dir / f"{c.case_id}{ending}").is_file()
                      and (output_format != "dicom-seg" or dicom_seg_path(output_dir / f"{c.case_id}{ending}").is_file()))
        jobs = [j for j in jobs if j[0].case_id not in kept]
        log.info("--continue: %d case(s) already predicted by this model are kept, %d to predict", len(kept),
                 len(jobs))
    output_dir.mkdir(parents=True, exist_ok=True)
    for case_id, message in failed.items():  # misnamed files, channel gaps: no older output may stay
        _remove_outputs(output_dir / f"{case_id}{found.endings.get(case_id, file_ending)}")
        log.error("%s", message)
    workers = int(num_workers) if num_workers is not None else default_num_workers(jobs, predictor)
    log.info("predicting %d case(s) with %d thread(s)%s", len(jobs), workers,
             " (reading ahead and writing in the background)" if workers > 1 and len(jobs) > 1 else "")
    t_start = time.monotonic()
    seg_writer = _seg_writer(predictor) if output_format == "dicom-seg" else None
    seconds = _predict_jobs(predictor, jobs, output_dir, workers, save_probabilities, save_uncertainty, failed,
                            progress, seg_writer)

    info = {
        "autoseg_version": __version__,
        "inputs": str(Path(inputs).resolve()) if isinstance(inputs, (str, Path)) else [str(p) for p in inputs],
        **model,
        "selection_winner": predictor.selection_winner,
        "fast": predictor.fast,
        "output_format": output_format,
        "part": {"num_parts": num_parts, "part_id": part_id},
        "device": str(predictor.device),
        "precision": dict(predictor.precisions),
        "num_workers": workers,
        "seconds_per_case": seconds,
        "total_seconds": round(time.monotonic() - t_start, 3),
        "predicted_cases": sorted(set(seconds) | set(kept)),
        "kept_from_before": kept,  # --continue: predicted earlier by this same model, not again
        "failed_cases": dict(sorted(failed.items())),
    }
    atomic_write_json(output_dir / info_name(num_parts, part_id), info)
    log.info("predicted %d case(s) into %s%s", len(seconds), output_dir,
             f"; {len(failed)} failed" if failed else "")
    if failed:
        lines = "\n".join(f"  - {msg}" for msg in failed.values())
        raise AutosegError(f"{len(failed)} of {len(failed) + len(seconds)} case(s) could not be predicted "
                           f"(the other {len(seconds)} were written to {output_dir}):\n{lines}")
    return info
