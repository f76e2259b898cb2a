"""Read a raw dataset in nnU-Net v2 layout and check its integrity, collecting every problem at once.

Layout (nnU-Net v2): ``ROOT/dataset.json``, ``ROOT/imagesTr/<case>_<cccc><file_ending>`` (one file per
channel, 4-digit channel index), ``ROOT/labelsTr/<case><file_ending>``, optional ``ROOT/imagesTs/``.
:func:`load_dataset` reads every file, checks it, and either returns a :class:`DatasetManifest` or
raises one :class:`DatasetError` listing every problem (file, expected, found, fix). It writes nothing.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AutosegError, DatasetError, suggest_closest
from ..schemas import SCHEMA_VERSION, CaseFiles, DatasetManifest, Geometry, stable_hash
from .dataset_json import parse_dataset_json
from .file_digests import FileDigests
from .image_io import read_image, read_image_info, read_label

log = logging.getLogger(__name__)

IMAGES_TR, LABELS_TR, IMAGES_TS = "imagesTr", "labelsTr", "imagesTs"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
SPACING_RTOL = 1e-3  # relative tolerance on spacing
GEOMETRY_ATOL = 1e-3  # absolute (mm) + relative tolerance on origin and direction


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _listing(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# --------------------------------------------------------------------------- discovery

@dataclass
class _Folder:
    """Files of one images folder grouped by case: case id -> channel index -> relative path."""

    cases: dict[str, dict[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _visible_files(folder: Path) -> list[str]:
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # hidden files (.DS_Store, editor swap files) are not data
        if entry.is_dir():
            log.warning("%s: ignoring the sub-folder %s", folder, entry.name)
            continue
        names.append(entry.name)
    return names


def _group_channel_files(folder: Path, rel_prefix: str, file_ending: str) -> _Folder:
    out = _Folder()
    for name in _visible_files(folder):
        rel = f"{rel_prefix}/{name}" if rel_prefix else name
        if not name.endswith(file_ending):
            out.problems.append(f"{rel} does not end in the dataset's file_ending '{file_ending}'; expected "
                                f"{rel_prefix}/<case>_<cccc>{file_ending}; convert it to {file_ending} or "
                                f"remove it (all files share dataset.json's file_ending)")
            continue
        stem = name[: -len(file_ending)]
        m = _CHANNEL_FILE.match(stem)
        if not m:
            out.problems.append(f"{rel} is not named <case>_<cccc>{file_ending} (case id, underscore, "
                                f"4-digit channel index); rename it, e.g. to {stem}_0000{file_ending}")
            continue
        out.cases.setdefault(m["case"], {})[int(m["channel"])] = rel
    return out


def load_cases_from_folder(folder: str | Path, num_channels: int, file_ending: str) -> list[CaseFiles]:
    """Group ``<case>_<cccc><file_ending>`` files of ``folder`` into cases (sorted, absolute paths).

    A case must have channel files ``_0000`` .. ``_{k-1}`` whose pixel components add up to
    ``num_channels`` (one scalar file per channel, or e.g. one RGB PNG for three channels).
    Raises AutosegError listing every missing channel file and misnamed file.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise AutosegError(f"{folder}: input folder does not exist; expected a folder of "
                           f"<case>_<cccc>{file_ending} images; check the path")
    grouped = _group_channel_files(folder, "", file_ending)
    problems = list(grouped.problems)
    cases = []
    for case_id in sorted(grouped.cases):
        files = grouped.cases[case_id]
        problems += _channel_problems(case_id, files, num_channels, file_ending, folder, None)
        cases.append(CaseFiles(case_id, tuple(str(folder / files[i]) for i in sorted(files))))
    if not cases and not problems:
        problems.append(f"no files ending in '{file_ending}' found; expected <case>_0000{file_ending} ...")
    if problems:
        raise AutosegError(f"{folder}: cannot read the input cases ({len(problems)} problem(s)):\n"
                           + "\n".join(f"  - {p}" for p in problems))
    return cases


def _channel_problems(case_id: str, files: dict[int, str], n_channels: int | None, file_ending: str,
                      base: Path, components: dict[int, int] | None) -> list[str]:
    """Missing / extra channel files of one case. ``components``: pixel components per channel file
    when already known; otherwise they are read from the file headers when needed."""
    if n_channels is None:
        return []
    prefix = str(Path(files[min(files)]).parent)
    prefix = "" if prefix == "." else prefix + "/"
    name = f"{prefix}{case_id}_{{:04d}}{file_ending}"
    gaps = [i for i in range(max(files) + 1) if i not in files]
    if gaps:
        return [f"case '{case_id}': missing channel file(s) {', '.join(name.format(i) for i in gaps)}; "
                f"expected {name.format(0)} .. {name.format(max(files))} without gaps; add them or "
                f"renumber the channel files"]
    if components is None:  # an RGB file carries several channels: look at the headers
        try:
            components = {i: read_image_info(base / rel).components for i, rel in files.items()}
        except AutosegError as e:
            return [str(e)]
    total = sum(components.values())
    if total == n_channels:
        return []
    if total < n_channels and all(c == 1 for c in components.values()):
        missing = [name.format(i) for i in range(len(files), n_channels)]
        return [f"case '{case_id}': missing channel file(s) {', '.join(missing)}; dataset.json "
                f"channel_names declares {n_channels} channel(s), found {total}; add the missing files"]
    return [f"case '{case_id}' has {total} channel(s) (pixel components of {len(files)} file(s) "
            f"{name.format(0)} ..), but dataset.json channel_names declares {n_channels}; add or remove "
            f"channel files, or correct channel_names"]


# --------------------------------------------------------------------------- per-case check

@dataclass
class _CaseResult:
    problems: list[str]
    image_ndims: dict[str, int]  # relative image path -> 2 or 3


def _close(a: tuple[float, ...], b: tuple[float, ...], rtol: float, atol: float) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _compare_grids(rel: str, g: Geometry, ref_rel: str, ref: Geometry, what: str, fix: str) -> list[str]:
    """Problems when ``rel`` (geometry ``g``) is not on the grid of ``ref_rel``; ``what`` names ref_rel."""
    axes = "(x, y)" if ref.ndim == 2 else "(x, y, z)"
    if g.shape_zyx != ref.shape_zyx or g.ndim != ref.ndim:
        dims = "" if g.ndim == ref.ndim else f" ({g.ndim}D vs {ref.ndim}D)"
        return [f"{rel} has shape (Z, Y, X) {g.shape_zyx} but {what} {ref_rel} has {ref.shape_zyx}{dims}; "
                f"{fix}"]
    out = []
    if not _close(g.spacing, ref.spacing, SPACING_RTOL, 0.0):
        out.append(f"{rel} has spacing {axes} {_fmt(g.spacing)} mm but {what} {ref_rel} has "
                   f"{_fmt(ref.spacing)} mm; {fix}")
    hint = (f"; if only the header is wrong, copy the geometry of {ref_rel} into it "
            f"(SimpleITK: CopyInformation)")
    if not _close(g.origin, ref.origin, GEOMETRY_ATOL, GEOMETRY_ATOL):
        diff = float(np.max(np.abs(np.subtract(g.origin, ref.origin))))
        out.append(f"{rel} has origin {axes} {_fmt(g.origin)} mm but {what} {ref_rel} has "
                   f"{_fmt(ref.origin)} mm (off by up to {diff:.4g} mm); {fix}{hint}")
    if not _close(g.direction, ref.direction, GEOMETRY_ATOL, GEOMETRY_ATOL):
        out.append(f"{rel} has direction {_fmt(g.direction)} but {what} {ref_rel} has "
                   f"{_fmt(ref.direction)} (different orientation); {fix}{hint}")
    return out


def _unique(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for integer maps (much faster than sorting big volumes)."""
    if np.issubdtype(arr.dtype, np.integer) and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < 1 << 16:
            return np.flatnonzero(np.bincount((arr.ravel().astype(np.int64) - lo))) + lo
    return np.unique(arr)


def _label_problems(rel: str, arr: np.ndarray, declared: set[int] | None) -> list[str]:
    out = []
    values = _unique(arr)
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        if finite.size < values.size:
            out.append(f"{rel} contains NaN or infinite label values; expected integer labels; "
                       f"re-export the label map with integer values")
        fractional = finite[finite != np.round(finite)]
        if fractional.size:
            shown = ", ".join(np.format_float_positional(v) for v in fractional[:5])  # every digit: 1.0000001
            out.append(f"{rel} contains non-integer label values (e.g. {shown}); expected "
                       f"integer labels; round the label map or re-export it with an integer type (the "
                       f"label may have been resampled with linear interpolation: use nearest neighbour)")
        values = np.round(finite[finite == np.round(finite)]).astype(np.int64)
    if declared is not None:
        bad = sorted(int(v) for v in values if int(v) not in declared)
        if bad:
            out.append(f"{rel} contains label value(s) {bad} not declared in dataset.json 'labels' "
                       f"(declared: {sorted(declared)}); add them to 'labels' or fix the label file")
    return out


def _check_case(root: Path, case_id: str, images: dict[int, str], label: str | None,
                n_channels: int | None, declared: set[int] | None, file_ending: str) -> _CaseResult:
    """Read one case's files and return its problems (all of them) and its image dimensionality."""
    problems: list[str] = []
    geoms: dict[int, Geometry] = {}
    for idx in sorted(images):
        rel = images[idx]
        try:
            arr, geoms[idx] = read_image(root / rel)
        except AutosegError as e:
            problems.append(str(e).replace(str(root / rel), rel))
            continue
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        if n_nan:
            problems.append(f"{rel} contains {n_nan} NaN voxel(s); expected finite intensities; replace "
                            f"them (e.g. by the background value) and re-export the image")
        if n_inf:
            problems.append(f"{rel} contains {n_inf} infinite voxel(s); expected finite intensities; "
                            f"replace them (e.g. by the background value) and re-export the image")
    if len(geoms) == len(images):
        problems += _channel_problems(case_id, images, n_channels, file_ending, root,
                                      {i: g.components for i, g in geoms.items()})
    if geoms:
        first = min(geoms)
        for idx in sorted(geoms)[1:]:
            problems += _compare_grids(images[idx], geoms[idx], images[first], geoms[first],
                                       f"channel {first} of case '{case_id}'",
                                       "all channels of a case must share one grid; resample/re-export "
                                       "the channel on the grid of the first channel")
    if label is not None:
        try:
            lab, lab_geom = read_label(root / label)
        except AutosegError as e:
            problems.append(str(e).replace(str(root / label), label))
        else:
            problems += _label_problems(label, lab, declared)
            if geoms:
                first = min(geoms)
                problems += _compare_grids(label, lab_geom, images[first], geoms[first], "its image",
                                           "resample/re-export the label on the image grid")
    return _CaseResult(problems, {images[i]: g.ndim for i, g in geoms.items()})


# --------------------------------------------------------------------------- load_dataset

def _run_checks(jobs: list[tuple], num_workers: int, progress: bool) -> list[_CaseResult]:
    """Check every case; ``num_workers`` threads (SimpleITK and zlib release the GIL while reading)."""
    with ThreadPoolExecutor(max_workers=max(1, min(num_workers, len(jobs)))) as pool:
        results = pool.map(lambda job: _check_case(*job), jobs) if num_workers > 1 else map(
            lambda job: _check_case(*job), jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc="checking dataset", unit="case")
        return list(results)


def _file_digests(root: Path, rel_files: Iterable[str], digests: FileDigests, num_workers: int) -> dict[str, str]:
    """{absolute path: content digest} of every file (read again only when its size or mtime changed)."""
    paths = [str(root / rel) for rel in sorted(set(rel_files))]
    with ThreadPoolExecutor(max_workers=max(1, min(num_workers, len(paths) or 1))) as pool:
        return dict(zip(paths, pool.map(digests.digest, paths)))


def _dataset_hash(root: Path, raw_json: object, file_digests: dict[str, str]) -> str:
    """dataset.json and every file's name and content: the same bytes give the same hash, whatever the
    files' timestamps."""
    entries = [[os.path.relpath(path, root), digest] for path, digest in sorted(file_digests.items())]
    return stable_hash({"dataset_json": raw_json, "files": entries})


def load_dataset(root: str | Path, *, num_workers: int = 1, progress: bool = False,
                 digests: FileDigests | None = None) -> DatasetManifest:
    """Read and check the nnU-Net-layout dataset at ``root``; return its manifest (absolute paths).

    Every problem found (dataset.json, missing/extra/misnamed files, channel counts, shapes, spacing,
    origin, direction, label values, NaN/Inf, unreadable files) is collected and raised together as one
    DatasetError. Reads with ``num_workers`` threads; a tqdm bar when ``progress``. Writes nothing
    (``digests`` remembers the files' content digests; its owner saves them).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(str(root), [f"{root} is not a folder; expected a dataset folder holding "
                                       f"dataset.json, imagesTr/ and labelsTr/; check the path"])
    problems: list[str] = []
    dj, json_problems = parse_dataset_json(root / "dataset.json")
    problems += json_problems
    file_ending = dj.file_ending if dj else None

    train = _Folder()
    labels: dict[str, str] = {}
    for sub in (IMAGES_TR, LABELS_TR):
        if not (root / sub).is_dir():
            problems.append(f"{sub}/ is missing; expected the folder {root / sub} holding the training "
                            f"{'images' if sub == IMAGES_TR else 'labels'}; create it (nnU-Net v2 layout)")
    if file_ending and (root / IMAGES_TR).is_dir():
        train = _group_channel_files(root / IMAGES_TR, IMAGES_TR, file_ending)
        problems += train.problems
        if not train.cases and not train.problems:
            problems.append(f"{IMAGES_TR}/ holds no image files; expected {IMAGES_TR}/<case>_0000"
                            f"{file_ending} ...; add the training cases (the dataset is empty)")
    if file_ending and (root / LABELS_TR).is_dir():
        for name in _visible_files(root / LABELS_TR):
            rel = f"{LABELS_TR}/{name}"
            if not name.endswith(file_ending):
                problems.append(f"{rel} does not end in the dataset's file_ending '{file_ending}'; "
                                f"convert it to {file_ending} or remove it")
            else:
                labels[name[: -len(file_ending)]] = rel

    for case_id in sorted(set(labels) - set(train.cases)):
        m = _CHANNEL_FILE.match(case_id)
        hint = (f" (labels are named <case>{file_ending}, without the channel suffix: rename it to "
                f"{LABELS_TR}/{m['case']}{file_ending})" if m and m["case"] in train.cases else "")
        problems.append(f"{labels[case_id]} has no image; expected {IMAGES_TR}/{case_id}_0000{file_ending}"
                        f"{hint}; add the case's images or remove the label")
    for case_id in sorted(set(train.cases) - set(labels)):
        close = suggest_closest(case_id, sorted(set(labels) - set(train.cases)), n=1)
        hint = f" (did you mean {LABELS_TR}/{close[0]}{file_ending}?)" if close else ""
        first = train.cases[case_id][min(train.cases[case_id])]
        problems.append(f"{first} (case '{case_id}') has no label; "
                        f"expected {LABELS_TR}/{case_id}{file_ending}{hint}; add the label or move the "
                        f"case's images to {IMAGES_TS}/")
    if dj and dj.num_training is not None and train.cases and dj.num_training != len(train.cases):
        problems.append(f"dataset.json: numTraining is {dj.num_training} but {IMAGES_TR}/ holds "
                        f"{len(train.cases)} case(s); set numTraining to {len(train.cases)}")

    n_channels = len(dj.channel_names) if dj and dj.channel_names else None
    declared = ({*dj.labels.values(), *([] if dj.ignore_label is None else [dj.ignore_label])}
                if dj and dj.labels else None)
    jobs = [(root, cid, train.cases[cid], labels.get(cid), n_channels, declared, file_ending)
            for cid in sorted(train.cases)]
    results = _run_checks(jobs, num_workers, progress)
    ndims: dict[str, int] = {}
    for res in results:
        problems += res.problems
        ndims.update(res.image_ndims)
    if len(set(ndims.values())) > 1:
        two = sorted(r for r, d in ndims.items() if d == 2)
        three = sorted(r for r, d in ndims.items() if d == 3)
        problems.append(f"the dataset mixes 2D images ({_listing(two)}) and 3D images ({_listing(three)}); "
                        f"expected all images 2D or all 3D; re-export them with one dimensionality")

    test = _Folder()
    if file_ending and (root / IMAGES_TS).is_dir():
        test = _group_channel_files(root / IMAGES_TS, IMAGES_TS, file_ending)
        problems += test.problems
        common = {len(files) for files in train.cases.values()}
        for cid in sorted(test.cases):
            # test files are not read (prediction reads them); channels must match the training cases
            expected = max(common) if len(common) == 1 else None
            problems += _channel_problems(cid, test.cases[cid], expected, file_ending, root,
                                          {i: 1 for i in test.cases[cid]})

    if problems or dj is None or not file_ending:
        raise DatasetError(str(root), problems)

    def case_files(folder: _Folder, with_labels: bool) -> tuple[CaseFiles, ...]:
        return tuple(CaseFiles(cid, tuple(str(root / rel) for _, rel in sorted(folder.cases[cid].items())),
                               str(root / labels[cid]) if with_labels else None)
                     for cid in sorted(folder.cases))

    all_files = [r for f in (train, test) for c in f.cases.values() for r in c.values()]
    all_files += list(labels.values())
    file_digests = _file_digests(root, all_files, digests or FileDigests(), num_workers)
    manifest = DatasetManifest(
        schema_version=SCHEMA_VERSION,
        root=str(root),
        name=root.name,
        channel_names=dj.channel_names,
        labels=dj.labels, regions=dict(dj.regions), regions_class_order=list(dj.regions_class_order),
        ignore_label=dj.ignore_label,
        file_ending=file_ending,
        cases=case_files(train, True),
        test_cases=case_files(test, False),
        ndim=2 if ndims and all(d == 2 for d in ndims.values()) else 3,
        dataset_hash=_dataset_hash(root, dj.raw, file_digests),
        file_digests=file_digests,
    )
    log.info("dataset %s: %d training case(s), %d test case(s), %dD, %d channel(s), labels %s%s%s",
             manifest.name, len(manifest.cases), len(manifest.test_cases), manifest.ndim,
             manifest.num_channels, manifest.labels,
             f", regions {manifest.regions} painted as {manifest.regions_class_order}" if manifest.regions else "",
             f", ignore label {manifest.ignore_label}" if manifest.ignore_label is not None else "")
    return manifest

