"""Map a function over items in forked worker processes, in order.

:func:`fork_map` hands the function to the workers by fork (they inherit it), not by pickling, so
it may be a closure over lazy readers; only the items and the results travel between processes
and must be picklable. Where fork is not available it runs in this process.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_TASK: Callable[[Any], Any] | None = None  # the function of the pool being forked (inherited by its workers)


def _run(item: Any) -> Any:
    assert _TASK is not None, "fork_map worker started without its function"
    return _TASK(item)


def fork_map(fn: Callable[[T], R], items: Iterable[T], num_workers: int = 1,
             on_result: Callable[[], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in ``num_workers`` forked processes when that is > 1.

    Results come back in the order of ``items`` (``on_result()`` is called here after each, e.g. to
    advance a progress bar); an exception in ``fn`` is raised here. Workers
    must not use torch or CUDA (a forked child of a process that did may hang): numpy and scipy
    work is what this is for. Not re-entrant: one pool at a time per process.
    """
    global _TASK
    items = list(items)
    done = on_result or (lambda: None)
    if num_workers <= 1 or len(items) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        out = []
        for item in items:
            out.append(fn(item))
            done()
        return out
    if _TASK is not None:
        raise RuntimeError("fork_map is already running a pool in this process")
    _TASK = fn  # set before the workers are forked, so that they inherit it
    try:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(items)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            out = []
            for result in pool.map(_run, items):
                out.append(result)
                done()
            return out
    finally:
        _TASK = None
