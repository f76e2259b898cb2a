"""Preprocess a whole dataset for one configuration: which cases are already current, how many worker
processes the RAM allows, and the progress bar. One case: :func:`autoseg.preprocessing.preprocess.preprocess_case`."""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import AutosegError
from ..schemas import (
    CaseFiles,
    CaseProperties,
    ConfigurationPlan,
    DatasetManifest,
    load_json,
)
from ..store import freshness
from ..workdir import Workdir
from .identity import preprocessing_hash
from .preprocess import (
    _PROCESS_OVERHEAD_GB,
    _case_paths,
    _label_values,
    case_source_hash,
    preprocess_case,
    target_spacing_zyx,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- a dataset

def _case_digests(manifest: DatasetManifest, case: CaseFiles) -> dict[str, str]:
    """The manifest's content digests of ``case``'s files (what a worker needs, not the whole dataset's)."""
    files = [*case.images, *([case.label] if case.label else [])]
    return {f: manifest.file_digests[f] for f in files if f in manifest.file_digests}


def _is_current(case: CaseFiles, out_dir: Path, expected_hash: str, digests: Mapping[str, str]) -> bool:
    """The case's files are there and its sidecar records the current preprocessing and source hashes."""
    data_path, seg_path, json_path = _case_paths(out_dir, case.case_id)
    if not data_path.is_file() or (case.label is not None and not seg_path.is_file()):
        return False
    try:
        props = load_json(CaseProperties, json_path) if json_path.is_file() else None
    except AutosegError:
        props = None
    recorded = None if props is None else {"preprocessing_hash": props.preprocessing_hash,
                                           "source_hash": props.source_hash}
    return freshness(json_path, recorded, {"preprocessing_hash": expected_hash,
                                           "source_hash": case_source_hash(case, digests)}).current


def estimate_case_memory_gb(cases: Sequence[CaseFiles], plan: ConfigurationPlan) -> float:
    """RAM one preprocessing worker needs (GB): the largest case's voxels x max(1, resampling
    factor) x 8 bytes per channel (+ the label maps), plus the process overhead. Headers only."""
    from ..data.image_io import read_image_info

    worst = 0.0
    for case in cases:
        try:
            geom = read_image_info(case.images[0])
        except AutosegError:
            continue  # the worker reports the unreadable file itself
        voxels = float(np.prod(geom.shape_zyx))
        target = target_spacing_zyx(geom.spacing_zyx, plan)
        factor = float(np.prod([s / t for s, t in zip(geom.spacing_zyx, target)]))
        channels = geom.components * len(case.images)
        per_voxel = 8.0 * channels + (10.0 if case.label is not None else 0.0)
        worst = max(worst, voxels * max(1.0, factor) * per_voxel)
    return worst / 1024 ** 3 + _PROCESS_OVERHEAD_GB


def _describe(case: CaseFiles) -> str:
    files = list(case.images) + ([case.label] if case.label else [])
    return ", ".join(files)


def _run_case(case: CaseFiles, plan: ConfigurationPlan, out_dir: str, file_ending: str,
              labels: list[int], digests: Mapping[str, str] | None = None) -> str:
    """Worker entry point: preprocess one case; any failure becomes an AutosegError naming it."""
    try:
        preprocess_case(case, plan, out_dir, file_ending, labels, digests)
    except AutosegError as e:
        raise AutosegError(f"preprocessing case {case.case_id} failed ({_describe(case)}): {e}") from None
    except MemoryError:
        raise AutosegError(f"preprocessing case {case.case_id} ran out of memory ({_describe(case)}); "
                           f"rerun with --num-workers 1 or on a machine with more RAM") from None
    except Exception as e:  # a bug or an unexpected file problem: keep the message, name the case
        raise AutosegError(f"preprocessing case {case.case_id} failed with {type(e).__name__}: {e} "
                           f"(files: {_describe(case)}); rerun with --num-workers 1 -v for the "
                           f"traceback") from e
    return case.case_id


def preprocess_dataset(manifest: DatasetManifest, plan: ConfigurationPlan, workdir: Workdir, *,
                       num_workers: int | None = None, progress: bool = True,
                       overwrite: bool = False) -> list[str]:
    """Preprocess every training case of ``manifest`` for ``plan`` into the work folder.

    A case is skipped when its json exists with the current plan hash and source hash and its npy
    files exist (unless ``overwrite``). ``num_workers`` None picks as many processes as fit in the
    available RAM (hardware.worker_count). Returns the ids of the cases (re)processed by this call,
    in manifest order. A failing case raises an AutosegError naming the case and its files.
    """
    out_dir = workdir.preprocessed_dir(plan.data_identifier)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected_hash = preprocessing_hash(plan)
    todo = [c for c in manifest.cases
            if overwrite or not _is_current(c, out_dir, expected_hash, _case_digests(manifest, c))]
    logger.info("preprocessing %s: %d case(s) to process, %d up to date in %s", plan.name, len(todo),
                len(manifest.cases) - len(todo), out_dir)
    if not todo:
        return []
    labels = _label_values(manifest.labels)
    if num_workers is None:
        from ..hardware import worker_count

        per_case_gb = estimate_case_memory_gb(todo, plan)
        num_workers = worker_count(per_case_gb, max_workers=len(todo))
        logger.info("preprocessing with %d worker(s) (about %.2f GB per case)", num_workers, per_case_gb)
    num_workers = max(1, min(int(num_workers), len(todo)))
    args = (plan, str(out_dir), manifest.file_ending, labels)
    done: list[str] = []
    with tqdm(total=len(todo), desc=f"preprocessing {plan.name}", unit="case",
              disable=not progress) as bar:
        if num_workers == 1:
            for case in todo:
                done.append(_run_case(case, *args, _case_digests(manifest, case)))
                bar.update(1)
        else:
            # the platform default (fork on Linux): workers use numpy/scipy only, and unlike spawn it
            # does not re-run a user script that lacks an `if __name__ == "__main__":` guard
            ctx = multiprocessing.get_context()
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_case, case, *args, _case_digests(manifest, case)): case
                           for case in todo}
                try:
                    for fut in as_completed(futures):
                        done.append(fut.result())
                        bar.update(1)
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pending = [c.case_id for c in futures.values() if c.case_id not in done]
                    raise AutosegError(
                        f"a preprocessing worker died (most likely out of memory) while processing "
                        f"case(s) {', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}; rerun "
                        f"with fewer workers (--num-workers 1); finished cases are kept") from None
                except AutosegError:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    order = {c.case_id: i for i, c in enumerate(manifest.cases)}
    return sorted(done, key=order.__getitem__)
