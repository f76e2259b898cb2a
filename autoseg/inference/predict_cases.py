"""Predict a folder (or a list) of new cases: what ``autoseg predict`` calls.

Inputs are either a folder in nnU-Net's ``imagesTs`` layout (``<case>_<cccc><file_ending>``, one
file per channel) or a list of single files (one case per file: single-channel datasets, or one
RGB file per case). Each case is predicted on its own: a case that fails (missing channel file,
unreadable image, ...) is reported at the end while the others are written. Outputs in
``output_dir``: ``<case><ending>`` with the input's format and geometry, optional ``<case>.npz``
probabilities and ``<case>_uncertainty<ending>``, and ``prediction_info.json`` saying which models
produced them.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..atomic import atomic_write_json
from ..errors import AutosegError
from ..schemas import CaseFiles, to_dict
from .case_io import probabilities_path, uncertainty_path
from .predictor import Predictor

log = logging.getLogger(__name__)

PREDICTION_INFO_JSON = "prediction_info.json"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _group_folder(folder: Path, file_ending: str) -> tuple[list[CaseFiles], dict[str, str]]:
    """``<case>_<cccc><ending>`` files of ``folder`` -> (cases with contiguous channels, problems by case).

    A case whose channel numbers have a gap, or a file with the right ending that is not named
    ``<case>_<cccc>``, becomes a problem of that case (the other cases are still predicted).
    """
    grouped: dict[str, dict[int, str]] = {}
    problems: dict[str, str] = {}
    other_endings: set[str] = set()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not entry.name.endswith(file_ending):
            other_endings.add(Path(entry.name).suffix or entry.name)
            continue
        stem = entry.name[: -len(file_ending)]
        m = _CHANNEL_FILE.match(stem)
        if m is None:
            problems[stem] = (f"{folder / entry.name} is not named <case>_<cccc>{file_ending} (case id, "
                              f"underscore, 4-digit channel index); rename it, e.g. to {stem}_0000{file_ending}")
            continue
        grouped.setdefault(m["case"], {})[int(m["channel"])] = str(folder / entry.name)
    if other_endings:
        log.warning("%s: ignoring files not ending in the dataset's file ending '%s' (found %s)", folder,
                    file_ending, ", ".join(sorted(other_endings)))
    if not grouped and not problems:
        raise AutosegError(f"{folder}: no files ending in '{file_ending}' found; expected images named "
                           f"<case>_0000{file_ending} (nnU-Net imagesTs layout)"
                           + (f"; found files ending in {', '.join(sorted(other_endings))}" if other_endings else ""))
    cases = []
    for case_id in sorted(grouped):
        files = grouped[case_id]
        gaps = [i for i in range(max(files) + 1) if i not in files]
        if gaps:
            names = ", ".join(str(folder / f"{case_id}_{i:04d}{file_ending}") for i in gaps)
            problems[case_id] = (f"case {case_id}: missing channel file(s) {names}; expected "
                                 f"{case_id}_0000{file_ending} .. {case_id}_{max(files):04d}{file_ending} "
                                 f"without gaps; add them")
            continue
        cases.append(CaseFiles(case_id, tuple(files[i] for i in sorted(files))))
    return cases, problems


def _single_files(paths: Sequence[str | Path]) -> list[tuple[CaseFiles, str]]:
    """One case per file: (CaseFiles, the file's ending). A trailing ``_0000`` is not part of the id."""
    from ..data.image_io import ending_of

    out, seen = [], {}
    for p in paths:
        path = Path(p).resolve()
        ending = ending_of(path)
        stem = path.name[: len(path.name) - len(ending)] if ending else path.name
        m = _CHANNEL_FILE.match(stem)
        case_id = m["case"] if m and m["channel"] == "0000" else stem
        if case_id in seen:
            raise AutosegError(f"{path} and {seen[case_id]} would both be written as case '{case_id}'; "
                               f"rename one of them")
        seen[case_id] = path
        out.append((CaseFiles(case_id, (str(path),)), ending))
    return out


def _remove_outputs(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def predict_cases(workdir: str | Path, inputs: str | Path | Sequence[str | Path], output_dir: str | Path, *,
                  configurations: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
                  fast: bool = False, save_probabilities: bool = False, save_uncertainty: bool = False,
                  device: str | None = None, progress: bool = True, precision: str = "auto",
                  checkpoint: str = "final") -> dict[str, Any]:
    """Predict every case of ``inputs`` into ``output_dir``; returns what prediction_info.json holds.

    ``inputs``: a folder in imagesTs layout (channel count from the plans, file ending from the
    dataset manifest), a single image file, or a list of image files (one case each; for datasets
    with one file per case). ``configurations``/``folds``/``fast``/``device``/``precision``/
    ``checkpoint``: see :class:`~autoseg.inference.predictor.Predictor` (None: the selection's winner).

    A failed case leaves no output file (an older prediction of it in ``output_dir`` is removed,
    so that every prediction there comes from the models in prediction_info.json); after every
    other case is written and prediction_info.json is saved, AutosegError lists the failed cases.
    """
    from tqdm import tqdm

    from ..pipeline import load_manifest

    manifest = load_manifest(workdir)
    output_dir = Path(output_dir).resolve()
    jobs: list[tuple[CaseFiles, str]] = []
    failed: dict[str, str] = {}
    if isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
        folder = Path(inputs).resolve()
        if folder == output_dir:
            raise AutosegError(f"the output folder {output_dir} is the input folder; predictions would be "
                               f"mixed with the images; choose another output folder (-o)")
        cases, failed = _group_folder(folder, manifest.file_ending)
        jobs = [(c, manifest.file_ending) for c in cases]
    else:
        files = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        if not files:
            raise AutosegError("no input given; pass a folder of <case>_0000 images or image files")
        if manifest.cases and len(manifest.cases[0].images) > 1:
            raise AutosegError(f"this dataset has {len(manifest.cases[0].images)} channel files per case, so "
                               f"single files cannot be predicted; put the cases in a folder as "
                               f"<case>_0000{manifest.file_ending}, <case>_0001{manifest.file_ending}, ... "
                               f"and pass the folder (-i)")
        missing = [str(f) for f in files if not Path(f).exists()]
        if len(missing) == len(files):
            raise AutosegError(f"input {', '.join(missing[:5])} does not exist; pass a folder of "
                               f"<case>_0000{manifest.file_ending} images or existing image files")
        jobs = _single_files(files)

    predictor = Predictor(workdir, configurations=configurations, folds=folds, device=device,
                          precision=precision, fast=fast, checkpoint=checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_start = time.monotonic()
    for case, ending in tqdm(jobs, desc="predicting", unit="case", disable=not progress):
        out_path = output_dir / f"{case.case_id}{ending}"
        try:
            info = predictor.predict_file(case, out_path, save_probabilities=save_probabilities,
                                          save_uncertainty=save_uncertainty)
            seconds[case.case_id] = info["seconds"]
            continue
        except AutosegError as e:
            failed[case.case_id] = str(e)
        except MemoryError:
            failed[case.case_id] = (f"case {case.case_id} ran out of memory ({', '.join(case.images)}); "
                                    f"predict it on a machine with more RAM or with --fast")
        except (RuntimeError, ValueError, OSError) as e:  # an unexpected file or network problem
            log.debug("case %s failed", case.case_id, exc_info=True)
            failed[case.case_id] = (f"case {case.case_id} failed with {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''} ({', '.join(case.images)}); "
                                    f"rerun with -v for the traceback")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _remove_outputs([out_path, probabilities_path(out_path), uncertainty_path(out_path)])
        log.error("%s", failed[case.case_id])

    info = {
        "autoseg_version": __version__,
        "workdir": str(Path(workdir).resolve()),
        "inputs": str(Path(inputs).resolve()) if isinstance(inputs, (str, Path)) else [str(p) for p in inputs],
        "configurations": list(predictor.configurations),
        "previous_stages": dict(predictor.previous_stages),
        "selection_winner": predictor.selection_winner,
        "folds": list(predictor.folds),
        "checkpoint": predictor.checkpoint,
        "step_size": predictor.step_size,
        "mirroring": predictor.mirror,
        "fast": predictor.fast,
        "postprocessing": to_dict(predictor.postprocessing),
        "plans_hash": predictor.plans_hash,
        "device": str(predictor.device),
        "precision": dict(predictor.precisions),
        "seconds_per_case": seconds,
        "total_seconds": round(time.monotonic() - t_start, 3),
        "predicted_cases": sorted(seconds),
        "failed_cases": failed,
    }
    atomic_write_json(output_dir / PREDICTION_INFO_JSON, info)
    log.info("predicted %d case(s) into %s%s", len(seconds), output_dir,
             f"; {len(failed)} failed" if failed else "")
    if failed:
        lines = "\n".join(f"  - {msg}" for msg in failed.values())
        raise AutosegError(f"{len(failed)} of {len(failed) + len(seconds)} case(s) could not be predicted "
                           f"(the other {len(seconds)} were written to {output_dir}):\n{lines}")
    return info
