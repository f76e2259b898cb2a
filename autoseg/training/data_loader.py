"""Patch sampling from preprocessed cases, as a batchgenerators data loader (nnU-Net's rules).

A preprocessed folder holds, per case, ``<case>.npy`` float32 ``(C, Z, Y, X)``, ``<case>_seg.npy``
int8/int16 ``(1, Z, Y, X)`` (-1 outside the body, 0 background, 1..K-1 labels) and ``<case>.json``
(CaseProperties; ``class_locations`` maps a label to sampled ``[z, y, x]`` voxels of the stored array).
Arrays are opened memory-mapped, lazily, by whichever process samples from them, so a loader can be
forked into augmentation workers (or pickled) without carrying open files.

Sampling (nnU-Net v2 ``nnUNetDataLoader``): cases are drawn uniformly with replacement; the last
``n_forced`` samples of a batch (:func:`autoseg.planning.sampling.forced_foreground_count`, which the plan's
``foreground_oversampling`` decision explains) are centred on a stored voxel of a label picked uniformly
among the labels present in the case; the others are placed uniformly such that
the final (centre) crop may reach each border. Parts of a crop outside the image are padded with 0
(data) and -1 (seg). With ``dims == 2`` one slice along axis 0 is cut (the chosen voxel's slice for
forced samples) and the patches are 2D.

Cascade: given ``previous_stage_segs`` (case id -> ``<case>_seg.npy`` of the previous stage's prediction on
this folder's grid, int (1, Z, Y, X)), that map is cropped and padded exactly like the labels and returned
as a second ``seg`` channel, so spatial augmentation treats it as labels;
:class:`autoseg.training.cascade.CascadeInputTransform` later moves it into ``data`` as one-hot channels.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from ..atomic import read_json
from ..errors import AutosegError
from ..planning.sampling import forced_foreground_count  # the rule lives with the plan that explains it
from ..workdir import Workdir

logger = logging.getLogger(__name__)

DATA_PAD_VALUE = 0.0
SEG_PAD_VALUE = -1
_MAX_OPEN_CASES = 128  # memory maps kept open per process (each holds a file descriptor)
_MAX_CACHED_LOCATIONS = 512  # cases whose class locations are kept in memory per process


def case_file_paths(preprocessed_dir: str | os.PathLike, case_id: str) -> tuple[Path, Path, Path]:
    """(data ``.npy``, seg ``.npy``, properties ``.json``) of ``case_id`` in ``preprocessed_dir``.

    File names come from :mod:`autoseg.workdir`.
    """
    names = Workdir(".")
    folder = Path(preprocessed_dir)
    return (folder / names.case_data_npy("x", case_id).name,
            folder / names.case_seg_npy("x", case_id).name,
            folder / names.case_properties_json("x", case_id).name)


class PatchDataLoader(SlimDataLoaderBase):
    """Batches of patches ``{"data": float32 (B, C, *initial_patch), "seg": int16 (B, 1, *initial_patch),
    "keys": [case ids]}`` from a preprocessed folder (``seg`` (B, 2, ...) with ``previous_stage_segs``).

    Args:
        preprocessed_dir: folder with ``<case>.npy``, ``<case>_seg.npy``, ``<case>.json`` per case.
        case_ids: the cases to sample from (e.g. a fold's training cases).
        patch_size: final patch size after augmentation (voxels; 3 numbers for ``dims == 3``, 2 for 2).
        initial_patch_size: the size actually cropped here (>= ``patch_size`` per axis; larger for
            rotation and scaling, see ``augmentation.initial_patch_size``; equal for validation).
        batch_size: samples per batch.
        oversample_fraction: share of each batch forced to contain foreground.
        dims: 2 (2D patches, one slice along axis 0) or 3.
        seed: seed of this loader's own random generator; worker ``t`` of a multi-process augmenter
            uses the stream ``(seed, t)``.
        infinite: True: random cases forever. False: every case once, in the given order, one patch
            each (the last batch may be smaller), then StopIteration; the next call starts over.
        previous_stage_segs: cascade only: case id -> path of the previous stage's segmentation
            (1, Z, Y, X) on this folder's grid; it becomes ``seg`` channel 1 of every patch.
    """

    def __init__(self, preprocessed_dir: str | os.PathLike, case_ids: Sequence[str],
                 patch_size: Sequence[int], initial_patch_size: Sequence[int], batch_size: int,
                 oversample_fraction: float = 0.33, dims: int = 3, seed: int = 12345,
                 infinite: bool = True,
                 previous_stage_segs: Mapping[str, str | os.PathLike] | None = None):
        super().__init__(None, batch_size, None)
        self.preprocessed_dir = Path(preprocessed_dir)
        self.case_ids = [str(c) for c in case_ids]
        self.patch_size = [int(v) for v in patch_size]
        self.initial_patch_size = [int(v) for v in initial_patch_size]
        self.oversample_fraction = float(oversample_fraction)
        self.dims = int(dims)
        self.seed = int(seed)
        self.infinite = bool(infinite)
        self.previous_stage_segs = ({str(k): Path(v) for k, v in previous_stage_segs.items()}
                                    if previous_stage_segs is not None else None)
        self._check_arguments()
        self._check_files()
        self._need_to_pad = [max(i - p, 0) for i, p in zip(self.initial_patch_size, self.patch_size)]
        self._rng = self._make_rng(0)
        self._position: int | None = None
        self._arrays: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()
        self._locations: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ checks
    def _check_arguments(self) -> None:
        where = f"data loader for {self.preprocessed_dir}"
        if self.dims not in (2, 3):
            raise AutosegError(f"{where}: dims must be 2 or 3, found {self.dims}; check the "
                               f"configuration's 'dims' in plans.json.")
        for name, size in (("patch_size", self.patch_size), ("initial_patch_size", self.initial_patch_size)):
            if len(size) != self.dims or min(size) < 1:
                raise AutosegError(f"{where}: {name} must be {self.dims} positive numbers for a {self.dims}D "
                                   f"configuration, found {size}; check plans.json or --patch-size.")
        if any(i < p for i, p in zip(self.initial_patch_size, self.patch_size)):
            raise AutosegError(f"{where}: initial_patch_size {self.initial_patch_size} must be at least "
                               f"patch_size {self.patch_size} on every axis.")
        if self.batch_size < 1:
            raise AutosegError(f"{where}: batch size must be >= 1, found {self.batch_size}; "
                               f"check --batch-size or plans.json.")
        if not 0.0 <= self.oversample_fraction <= 1.0:
            raise AutosegError(f"{where}: foreground oversample fraction must be in [0, 1], found "
                               f"{self.oversample_fraction}.")
        if not self.case_ids:
            raise AutosegError(f"{where}: no cases to sample from; check splits.json (the fold has no "
                               f"training or validation cases).")

    def _check_files(self) -> None:
        if not self.preprocessed_dir.is_dir():
            raise AutosegError(f"preprocessed folder {self.preprocessed_dir} does not exist; run "
                               f"`autoseg plan DATASET --workdir RUN` to create it.")
        missing = [str(p.name) for c in self.case_ids
                   for p in case_file_paths(self.preprocessed_dir, c) if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            raise AutosegError(
                f"preprocessed data is incomplete in {self.preprocessed_dir}: {len(missing)} file(s) "
                f"missing ({shown}); expected <case>.npy, <case>_seg.npy and <case>.json for every "
                f"case. Rerun `autoseg plan DATASET --workdir RUN` (it redoes missing cases).")
        if self.previous_stage_segs is not None:
            gone = [f"{c} (no file given)" if c not in self.previous_stage_segs else
                    str(self.previous_stage_segs[c]) for c in self.case_ids
                    if c not in self.previous_stage_segs or not self.previous_stage_segs[c].is_file()]
            if gone:
                raise AutosegError(
                    f"cascade data loader for {self.preprocessed_dir}: the previous stage's segmentation is "
                    f"missing for {len(gone)} case(s): {', '.join(gone[:6])}{' ...' if len(gone) > 6 else ''}"
                    f"; train (or re-run) the previous stage's folds first (`autoseg train --workdir RUN "
                    f"-c 3d_lowres --fold K`).")

    # ------------------------------------------------------------------ process-local state
    def _make_rng(self, thread_id: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, int(thread_id)]))

    def set_thread_id(self, thread_id: int) -> None:
        """Called by the augmenter in each worker: switch to this worker's random stream."""
        super().set_thread_id(thread_id)
        self._rng = self._make_rng(thread_id)
        self._position = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = OrderedDict()  # memory maps are reopened by the receiving process
        state["_locations"] = OrderedDict()
        return state

    def _ensure_own_process(self) -> None:
        if self._owner_pid != os.getpid():  # forked: do not reuse the parent's handles
            self._arrays = OrderedDict()
            self._locations = OrderedDict()
            self._owner_pid = os.getpid()

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Memory maps (data, seg, previous-stage seg or None) of ``case_id``, opened once per process."""
        self._ensure_own_process()
        if case_id in self._arrays:
            self._arrays.move_to_end(case_id)
            return self._arrays[case_id]
        data_path, seg_path, _ = case_file_paths(self.preprocessed_dir, case_id)
        try:
            data = np.load(data_path, mmap_mode="r")
            seg = np.load(seg_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise AutosegError(f"case {case_id}: cannot read {data_path.name} / {seg_path.name} in "
                               f"{self.preprocessed_dir} ({e}); rerun `autoseg plan DATASET --workdir RUN "
                               f"--overwrite` to preprocess again.") from e
        if data.ndim != 4 or seg.ndim != 4 or seg.shape[0] != 1 or seg.shape[1:] != data.shape[1:]:
            raise AutosegError(f"case {case_id} in {self.preprocessed_dir}: expected data (C, Z, Y, X) and "
                               f"seg (1, Z, Y, X) of the same spatial shape, found {data.shape} and "
                               f"{seg.shape}; rerun `autoseg plan DATASET --workdir RUN --overwrite`.")
        prev = self._previous_stage_array(case_id, seg.shape)
        self._arrays[case_id] = (data, seg, prev)
        if len(self._arrays) > _MAX_OPEN_CASES:
            self._arrays.popitem(last=False)
        return data, seg, prev

    def _previous_stage_array(self, case_id: str, seg_shape: tuple[int, ...]) -> np.ndarray | None:
        if self.previous_stage_segs is None:
            return None
        path = self.previous_stage_segs[case_id]
        try:
            prev = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise AutosegError(f"case {case_id}: cannot read the previous stage's segmentation {path} ({e}); "
                               f"delete it and re-run the previous stage's fold (`autoseg train --workdir "
                               f"RUN -c 3d_lowres --fold K`) to write it again.") from e
        if tuple(prev.shape) != tuple(seg_shape):
            raise AutosegError(f"case {case_id}: the previous stage's segmentation {path} has shape "
                               f"{tuple(prev.shape)}, expected {tuple(seg_shape)} (this case's labels in "
                               f"{self.preprocessed_dir}); it was made for other preprocessed data: delete "
                               f"it and re-run the previous stage's fold to write it again.")
        return prev

    def _class_locations(self, case_id: str) -> dict[str, np.ndarray]:
        self._ensure_own_process()
        if case_id in self._locations:
            self._locations.move_to_end(case_id)
            return self._locations[case_id]
        json_path = case_file_paths(self.preprocessed_dir, case_id)[2]
        raw = read_json(json_path).get("class_locations", {})
        locs: dict[str, np.ndarray] = {}
        for label, coords in raw.items():
            try:
                value = int(label)
            except ValueError:
                value = 0
            arr = np.asarray(coords, dtype=np.int64).reshape(-1, 3) if coords else np.zeros((0, 3), np.int64)
            if value > 0 and len(arr):  # only foreground labels can be forced
                locs[str(label)] = arr
        self._locations[case_id] = locs
        if len(self._locations) > _MAX_CACHED_LOCATIONS:
            self._locations.popitem(last=False)
        return locs

    # ------------------------------------------------------------------ sampling
    def _next_case_indices(self) -> list[int]:
        n_cases = len(self.case_ids)
        if self.infinite:
            return [int(i) for i in self._rng.integers(0, n_cases, size=self.batch_size)]
        n_threads = max(int(self.number_of_threads_in_multithreaded or 1), 1)
        if self._position is None:
            self._position = self.thread_id * self.batch_size
        start = self._position
        if start >= n_cases:
            self._position = None
            raise StopIteration
        self._position = start + n_threads * self.batch_size
        return list(range(start, min(start + self.batch_size, n_cases)))

    def _crop_start(self, shape: Sequence[int], center: Sequence[int] | None) -> list[int]:
        """Lower corner of the initial-patch crop, per axis (may be negative: padded)."""
        starts = []
        for d, (size, patch) in enumerate(zip(shape, self.initial_patch_size)):
            need = self._need_to_pad[d]
            if need + size < patch:
                need = patch - size
            low = -(need // 2)
            high = size + need // 2 + need % 2 - patch
            if center is None:
                starts.append(int(self._rng.integers(low, high + 1)))
            else:
                starts.append(max(low, int(center[d]) - patch // 2))
        return starts

    def _pick_voxel(self, case_id: str, shape: Sequence[int]) -> np.ndarray | None:
        locs = self._class_locations(case_id)
        if not locs:
            logger.debug("case %s has no stored foreground voxels; using a random crop", case_id)
            return None
        labels = sorted(locs)
        coords = locs[labels[int(self._rng.integers(len(labels)))]]
        voxel = coords[int(self._rng.integers(len(coords)))]
        if np.any(voxel < 0) or np.any(voxel >= np.asarray(shape)):
            raise AutosegError(
                f"case {case_id}: stored foreground voxel {voxel.tolist()} lies outside the preprocessed "
                f"array of shape {list(shape)} ({self.preprocessed_dir}); the case files are out of date. "
                f"Rerun `autoseg plan DATASET --workdir RUN --overwrite`.")
        return voxel

    def _crop(self, array: np.ndarray, starts: Sequence[int], pad_value: float, dtype: Any) -> np.ndarray:
        """Crop the trailing ``len(starts)`` axes of ``array`` to the initial patch; pad outside."""
        lead = array.shape[: array.ndim - len(starts)]
        out = np.full((*lead, *self.initial_patch_size), pad_value, dtype=dtype)
        src, dst = [], []
        for s, size, patch in zip(starts, array.shape[len(lead):], self.initial_patch_size):
            lo, hi = max(s, 0), min(s + patch, size)
            if hi <= lo:
                return out
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        keep = (slice(None),) * len(lead)
        out[keep + tuple(dst)] = array[keep + tuple(src)]
        return out

    def load_sample(self, case_id: str, force_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        """One patch of ``case_id``: data float32 (C, *initial_patch), seg int16 (1, *initial_patch)
        (2 channels with ``previous_stage_segs``: labels, then the previous stage's segmentation)."""
        data, seg, prev = self._case_arrays(case_id)
        shape = data.shape[1:]
        voxel = self._pick_voxel(case_id, shape) if force_foreground else None
        if self.dims == 2:
            z = int(voxel[0]) if voxel is not None else int(self._rng.integers(shape[0]))
            data, seg = data[:, z], seg[:, z]
            prev = prev[:, z] if prev is not None else None
            voxel = voxel[1:] if voxel is not None else None
            shape = shape[1:]
        starts = self._crop_start(shape, voxel)
        seg_patch = self._crop(seg, starts, SEG_PAD_VALUE, np.int16)
        if prev is not None:
            seg_patch = np.concatenate([seg_patch, self._crop(prev, starts, SEG_PAD_VALUE, np.int16)])
        return self._crop(data, starts, DATA_PAD_VALUE, np.float32), seg_patch

    def generate_train_batch(self) -> dict[str, Any]:
        """The next batch (see the class docstring); the last samples are forced foreground."""
        indices = self._next_case_indices()
        n = len(indices)
        n_forced = forced_foreground_count(n, self.oversample_fraction)
        datas, segs, keys = [], [], []
        for j, i in enumerate(indices):
            case_id = self.case_ids[i]
            d, s = self.load_sample(case_id, force_foreground=j >= n - n_forced)
            datas.append(d)
            segs.append(s)
            keys.append(case_id)
        n_channels = {d.shape[0] for d in datas}
        if len(n_channels) > 1:
            raise AutosegError(f"cases {keys} in {self.preprocessed_dir} have different channel counts "
                               f"{sorted(n_channels)}; rerun `autoseg plan DATASET --workdir RUN "
                               f"--overwrite`.")
        return {"data": np.stack(datas), "seg": np.stack(segs), "keys": keys}
