"""Runs a loader and its transforms in-process or in batchgenerators worker processes.

A worker that dies (often the out-of-memory killer), raises, or stops producing batches becomes an
AutosegError that says what happened and what to do, never a hang.
"""
from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Iterator
from queue import Empty
from typing import Any

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.utility_transforms import NumpyToTensor

from ..errors import AutosegError

logger = logging.getLogger(__name__)

_WORKER_ERROR_KEY = "__autoseg_worker_error__"


class _GuardedLoader:
    """Wraps a loader so that an exception in a worker comes back as an error item, with its message."""

    def __init__(self, loader: Any, seed: int):
        self.loader = loader
        self.seed = seed

    def set_thread_id(self, thread_id: int) -> None:
        # runs in the worker: batchgenerators seeds numpy, but its Gaussian noise draws from `random`
        random.seed(self.seed + thread_id)
        if hasattr(self.loader, "set_thread_id"):
            self.loader.set_thread_id(thread_id)

    def __iter__(self) -> _GuardedLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self.loader)
        except StopIteration:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the parent process
            return _error_item(e)


class _GuardedTransform:
    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, **batch: Any) -> dict[str, Any]:
        if _WORKER_ERROR_KEY in batch or self.transform is None:
            return batch
        try:
            return self.transform(**batch)
        except Exception as e:  # noqa: BLE001 - reported to the parent process
            return _error_item(e)


def _error_item(e: BaseException) -> dict[str, Any]:
    detail = str(e) if isinstance(e, AutosegError) else f"{type(e).__name__}: {e}"
    return {_WORKER_ERROR_KEY: detail, "traceback": traceback.format_exc()}


class _SeededTransform:
    """Runs ``transform`` with private global random states (batchgenerators draws from numpy's and
    Python's global generators), so in-process augmentation is reproducible and leaves them untouched."""

    def __init__(self, transform: Any, seed: int):
        self.transform = transform
        self._np_state = np.random.RandomState(seed % 2**32).get_state()
        self._py_state = random.Random(seed).getstate()

    def __call__(self, **batch: Any) -> dict[str, Any]:
        if self.transform is None:
            return batch
        outside = np.random.get_state(), random.getstate()
        np.random.set_state(self._np_state)
        random.setstate(self._py_state)
        try:
            return self.transform(**batch)
        finally:
            self._np_state, self._py_state = np.random.get_state(), random.getstate()
            np.random.set_state(outside[0])
            random.setstate(outside[1])


_WHAT_TO_DO = ("This is often the out-of-memory killer. Retry with `--num-workers 0` (augmentation in the "
               "main process, which also shows the full error) or fewer workers, free RAM, or lower the "
               "batch or patch size.")


class _WatchedAugmenter(MultiThreadedAugmenter):
    """A MultiThreadedAugmenter whose ``__next__`` raises AutosegError where batchgenerators raises
    "background workers are no longer alive" (a worker died), and after ``timeout_s`` without a batch."""

    def __init__(self, *args: Any, timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timeout_s = timeout_s

    def _dead_workers(self) -> str:
        codes = [(i, p.exitcode) for i, p in enumerate(self._processes) if not p.is_alive()]
        return ", ".join(f"worker {i} exit code {c}" + (" (killed, SIGKILL)" if c == -9 else "")
                         for i, c in codes) or "no exit code recorded"

    def _get(self) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.abort_event.is_set():
                dead = self._dead_workers()
                self._finish(timeout=5)
                raise AutosegError(f"a data-augmentation worker died ({dead}). {_WHAT_TO_DO}")
            try:
                return self.pin_memory_queue.get(timeout=self.wait_time)
            except Empty:
                if time.monotonic() > deadline:
                    self._finish(timeout=1)  # a hung worker will not finish by itself
                    raise AutosegError(
                        f"no batch came from the {self.num_processes} data-augmentation worker(s) within "
                        f"{self.timeout_s:.0f} s: a worker died or hangs. {_WHAT_TO_DO}") from None

    def __next__(self) -> Any:
        if not self.was_initialized:
            self._start()
        item = self._get()
        while isinstance(item, str) and item == "end":
            self._end_ctr += 1
            if self._end_ctr == self.num_processes:
                self._end_ctr = 0
                self._queue_ctr = 0
                raise StopIteration
            item = self._get()
        if isinstance(item, dict) and _WORKER_ERROR_KEY in item:
            logger.debug("data-augmentation worker traceback:\n%s", item.get("traceback", ""))
            self._finish(timeout=5)
            raise AutosegError(f"a data-augmentation worker failed: {item[_WORKER_ERROR_KEY]}. Retry with "
                               f"`--num-workers 0` to see the full traceback; if it ran out of memory, use "
                               f"fewer workers or free RAM.")
        return item


def _split_to_tensor(transforms: Any) -> tuple[Any, AbstractTransform | None]:
    """(transforms without a trailing NumpyToTensor, that NumpyToTensor or None)."""
    if isinstance(transforms, Compose) and transforms.transforms and \
            isinstance(transforms.transforms[-1], NumpyToTensor):
        return Compose(list(transforms.transforms[:-1])), transforms.transforms[-1]
    return transforms, None


class BatchIterator:
    """Augmented batches from a loader, in-process or from worker processes. Close it (or use ``with``).

    With workers, a trailing ``NumpyToTensor`` runs in the main process: workers send numpy arrays
    through their pipes, so no torch shared-memory file descriptors cross processes (they fail noisily
    when a worker exits first, and count against the open-file limit).
    """

    def __init__(self, loader: Any, transforms: Any, num_workers: int, seed: int, pin_memory: bool = False,
                 timeout_s: float = 300.0):
        if num_workers < 0:
            raise AutosegError(f"--num-workers must be >= 0, found {num_workers}.")
        self.num_workers = int(num_workers)
        self._augmenter: Any
        self._to_tensor: AbstractTransform | None = None
        if self.num_workers == 0:
            self._augmenter = SingleThreadedAugmenter(loader, _SeededTransform(transforms, seed))
        else:
            if hasattr(loader, "number_of_threads_in_multithreaded"):  # finite loaders split the cases
                loader.number_of_threads_in_multithreaded = self.num_workers
            in_workers, self._to_tensor = _split_to_tensor(transforms)
            self._augmenter = _WatchedAugmenter(
                _GuardedLoader(loader, seed), _GuardedTransform(in_workers), num_processes=self.num_workers,
                num_cached_per_queue=2, seeds=[(seed + i) % 2**32 for i in range(self.num_workers)],
                pin_memory=False, timeout_s=timeout_s)
        self._pin_memory = pin_memory
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise AutosegError("this batch iterator was closed; create a new one with make_batch_iterator().")
        try:
            batch = next(self._augmenter)
        except AutosegError:
            self._closed = True  # the workers were shut down
            raise
        if self._to_tensor is not None:
            batch = self._to_tensor(**batch)
        if self._pin_memory:
            batch = _pinned(batch)
        return batch

    def close(self) -> None:
        """Stop the worker processes (if any); safe to call more than once."""
        if not self._closed and isinstance(self._augmenter, MultiThreadedAugmenter):
            self._augmenter._finish()
        self._closed = True

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _pinned(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return batch
    pin = lambda v: v.pin_memory() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return {k: [pin(x) for x in v] if isinstance(v, list) else pin(v) for k, v in batch.items()}


def make_batch_iterator(loader: Any, transforms: Any, num_workers: int, seed: int,
                        pin_memory: bool = False, timeout_s: float = 300.0) -> BatchIterator:
    """Augmented batches: in-process for ``num_workers == 0``, else ``num_workers`` worker processes.

    Worker ``i`` seeds numpy with ``seed + i``; in-process, the transforms draw from a private random
    state seeded with ``seed`` (numpy's global state is left untouched). A dead worker, a worker that
    raised, or no batch within ``timeout_s`` seconds raises :class:`AutosegError` saying what to do.
    """
    return BatchIterator(loader, transforms, num_workers, seed, pin_memory=pin_memory, timeout_s=timeout_s)


def make_training_iterators(preprocessed_dir: Any, config: Any, settings: Any, train_ids: list[str],
                            val_ids: list[str], ds_scales: list[list[float]], epoch: int,
                            previous_stage_segs: Any = None) -> tuple["BatchIterator", "BatchIterator"]:
    """(training batches with augmentation in ``settings.num_workers`` workers, validation patches in-process)
    for one configuration (ConfigurationPlan) and its TrainingSettings; the cascade's previous-stage
    segmentations become one-hot input channels when given."""
    from .augmentation import initial_patch_size, rotation_ranges, training_transforms, validation_transforms
    from ..model.cascade import cascade_foreground_labels
    from .data_loader import PatchDataLoader

    s = settings
    rot = rotation_ranges(s.patch_size, config.dims, config.dummy_2d_augmentation)
    cascade = cascade_foreground_labels(config) if previous_stage_segs is not None else None
    train_loader = PatchDataLoader(preprocessed_dir, train_ids, s.patch_size, initial_patch_size(s.patch_size, rot),
                                   s.batch_size, oversample_fraction=s.foreground_oversample_fraction,
                                   dims=config.dims, seed=s.seed + 1000 * epoch,
                                   previous_stage_segs=previous_stage_segs)
    transforms = training_transforms(s.patch_size, config.dims, config.dummy_2d_augmentation, config.mirror_axes,
                                     ds_scales, rot, cascade_labels=cascade)
    val_loader = PatchDataLoader(preprocessed_dir, val_ids, s.patch_size, s.patch_size, s.batch_size,
                                 oversample_fraction=s.foreground_oversample_fraction, dims=config.dims,
                                 seed=s.seed + 7, previous_stage_segs=previous_stage_segs)
    on_gpu = str(s.device).startswith("cuda")  # pinned host memory: the copy to the GPU runs without blocking
    train_it = make_batch_iterator(train_loader, transforms, s.num_workers, seed=s.seed + epoch, pin_memory=on_gpu)
    val_it = make_batch_iterator(val_loader, validation_transforms(ds_scales, cascade), 0, seed=s.seed)
    return train_it, val_it
