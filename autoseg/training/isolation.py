"""Run work that can crash the interpreter (native code: oneDNN bf16 kernels) in a child process.

:func:`run_in_child` runs ``fn(*args, **kwargs)`` in a child process and returns its result, or a
:class:`ChildCrashed` when the child dies without one (killed by a signal such as SIGSEGV, exited
early, or ran past ``timeout``). A Python exception in the child is raised again here.

:func:`run_training_guarded` runs ``Trainer.fit()`` that way when training may use bf16 on a CPU:
if the child dies by a signal while training in bf16, it warns and trains again in fp32, resuming
from ``checkpoint_latest.pt``; a death by a signal in fp32 becomes an AutosegError.

Children are started with ``spawn`` (a fresh interpreter) by default, not ``fork``: torch's CPU
wheels use GNU OpenMP, and a forked child of a process that has run a parallel torch operation hangs
at its first parallel operation (measured here with torch 2.13: a conv, even ``x * 2``, never
returns unless the child runs single-threaded). A spawned child has all its threads; the price is
starting an interpreter and importing torch (a few seconds), and ``fn`` and its arguments must be
picklable (a module-level function; its module importable from ``sys.path``). They are pickled with
the standard pickler, so tensors travel by value. The root logger's level and its stderr/stdout
handlers' formats, and torch's thread count, are set up again in the child, so its log lines and
progress bars look like this process's. ``start_method="fork"`` is for work that never uses
torch's threads (tests, numpy).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal as _signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import AutosegError

log = logging.getLogger(__name__)

_CHANNEL: Any = None  # in a child of run_in_child: the connection to the parent (for note())


@dataclass(frozen=True)
class ChildCrashed:
    """A child process that ended without a result."""

    signal: int | None = None  # the signal that killed it (11 = SIGSEGV), if one did
    exitcode: int | None = None  # its exit status (negative: -signal), None if it was still running
    timed_out: bool = False  # killed here after ``timeout`` seconds
    seconds: float = 0.0  # how long it ran
    notes: dict[str, Any] = field(default_factory=dict)  # what it sent with note() before it died

    @property
    def signal_name(self) -> str:
        if self.signal is None:
            return ""
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    def describe(self) -> str:
        """E.g. 'killed by signal 11 (SIGSEGV) after 3.2 s'."""
        if self.timed_out:
            what = "did not finish in time and was killed"
        elif self.signal is not None:
            what = f"killed by signal {self.signal} ({self.signal_name})"
        else:
            what = f"exited with code {self.exitcode} without a result"
        return f"{what} after {self.seconds:.1f} s"


def note(key: str, value: Any) -> None:
    """In a child of :func:`run_in_child`: tell the parent ``key = value`` now (kept in
    ``ChildCrashed.notes`` if the child dies later). Elsewhere: does nothing."""
    if _CHANNEL is not None:
        try:
            _send(_CHANNEL, ("note", key, value))
        except Exception as e:  # noqa: BLE001 - a note is never worth failing for
            log.debug("note %s not sent: %s", key, e)


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                 start_method: str = "spawn", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a child process: its result, or :class:`ChildCrashed`.

    ``timeout`` (seconds, None: no limit): after it the child is killed and a ChildCrashed with
    ``timed_out`` is returned. An exception raised by ``fn`` is raised here again (the child's
    traceback added as a note). Ctrl-C here stops the child (after up to 10 s for it to finish).
    """
    ctx = multiprocessing.get_context(start_method)
    if start_method == "fork":
        payload: Any = (fn, args, kwargs)
        setup = None
    else:
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        setup = _child_setup()
    recv_end, send_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send_end, payload, setup, os.getpid()),
                       name=f"autoseg-child-{getattr(fn, '__name__', 'fn')}")
    t0 = time.monotonic()
    proc.start()
    send_end.close()
    notes: dict[str, Any] = {}
    try:
        message = _wait_for_result(proc, recv_end, timeout, t0, notes)
    except BaseException:
        _stop(proc, grace_s=10.0)
        raise
    finally:
        recv_end.close()
    seconds = time.monotonic() - t0
    if message is None:  # timed out
        _stop(proc, grace_s=0.0)
        return ChildCrashed(exitcode=proc.exitcode, timed_out=True, seconds=seconds, notes=notes)
    proc.join()
    if message == "died":
        code = proc.exitcode
        return ChildCrashed(signal=-code if code is not None and code < 0 else None, exitcode=code,
                            seconds=seconds, notes=notes)
    kind, value, tb = message
    if kind == "ok":
        return value
    if value is None:
        value = RuntimeError(f"the child process raised an exception that could not be sent back:\n{tb}")
    elif tb:
        value.add_note(f"(raised in a child process; its traceback:)\n{tb}")
    raise value


def _wait_for_result(proc, conn, timeout: float | None, t0: float, notes: dict[str, Any]):
    """("ok", result, None) / ("error", exception, traceback), "died", or None after ``timeout``."""
    from multiprocessing.connection import wait

    while True:
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return None
        ready = wait([conn, proc.sentinel], timeout=left)
        if not ready:
            return None
        if conn in ready or conn.poll(0):
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return "died"
            if message[0] == "note":
                notes[message[1]] = message[2]
                continue
            return message
        return "died"  # the process ended and nothing is left to read


def _stop(proc, grace_s: float) -> None:
    if proc.is_alive() and grace_s > 0:
        proc.join(grace_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _child_setup() -> dict[str, Any]:
    """What a spawned child needs to log and compute like this process."""
    handlers = []
    root = logging.getLogger()
    for h in root.handlers:
        stream = getattr(h, "stream", None)
        if type(h) is logging.StreamHandler and stream in (sys.stderr, sys.stdout):
            fmt = h.formatter
            handlers.append({"stream": "stdout" if stream is sys.stdout else "stderr", "level": h.level,
                             "format": fmt._fmt if fmt else None, "datefmt": fmt.datefmt if fmt else None})
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    return {"root_level": root.level, "handlers": handlers, "levels": levels, "torch_threads": threads}


def _apply_setup(setup: dict[str, Any]) -> None:
    root = logging.getLogger()
    root.setLevel(setup["root_level"])
    for h in setup["handlers"]:
        handler = logging.StreamHandler(sys.stdout if h["stream"] == "stdout" else sys.stderr)
        handler.setLevel(h["level"])
        if h["format"] is not None:
            handler.setFormatter(logging.Formatter(h["format"], h["datefmt"]))
        root.addHandler(handler)
    for name, level in setup["levels"].items():
        logging.getLogger(name).setLevel(level)
    if setup.get("torch_threads"):
        import torch

        torch.set_num_threads(setup["torch_threads"])


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when its parent dies (no orphaned training left behind)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(_signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def _send(conn, message) -> None:
    """The standard pickler, not multiprocessing's: with torch.multiprocessing imported, that one sends
    tensors as shared-memory handles which cannot be opened once the child has exited."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _child_main(conn, payload, setup, parent_pid: int) -> None:
    global _CHANNEL
    _die_with_parent(parent_pid)
    import faulthandler

    faulthandler.enable()  # a native crash prints the Python stack it happened in (stderr)
    _CHANNEL = conn
    try:
        if setup is not None:
            _apply_setup(setup)
        fn, args, kwargs = pickle.loads(payload) if isinstance(payload, bytes) else payload
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))  # some exceptions pickle but do not unpickle
            _send(conn, ("error", e, tb))
        except Exception:  # noqa: BLE001 - then the traceback alone goes back
            _send(conn, ("error", None, tb))
    else:
        try:
            _send(conn, ("ok", result, None))
        except Exception as e:  # noqa: BLE001 - a result that does not pickle
            _send(conn, ("error", TypeError(f"the child's result could not be sent back: {e}"), ""))
    finally:
        _CHANNEL = None
        conn.close()


# --------------------------------------------------------------------------- training

def needs_isolation(settings) -> bool:
    """True when a training with these settings may run in bf16 on a CPU (bf16, or auto on a CPU
    with native bf16): those runs go to a child process. fp32 and CUDA runs stay in this process."""
    if str(settings.device) != "cpu":
        return False
    if settings.precision == "bf16":
        return True
    if settings.precision == "auto":
        from ..hardware import cpu_has_bf16

        return cpu_has_bf16()
    return False


def _fit(trainer, rng: dict[str, Any]):
    from ..model.checkpoint import restore_rng_states

    restore_rng_states({"rng": rng})  # the random streams as they are here, as if fit() ran here
    return trainer.fit()


def run_training_guarded(trainer, *, isolate: bool | None = None):
    """``trainer.fit()``, in a child process when training may use bf16 on a CPU (or ``isolate``).

    The child trains (resuming from the fold's checkpoint as usual) and writes checkpoint_final.pt;
    its TrainState comes back, and ``trainer.network`` gets the final weights from that file. When
    the child dies by a signal while training in bf16, a warning is logged and the training runs
    again in fp32: ``checkpoint_latest.pt`` (if any) is set to fp32 so that the run resumes from it
    in fp32, and stays in fp32 when the command is run again. A death by a signal in fp32 raises an
    AutosegError naming the signal and the fold. The final checkpoint is verified before its weights
    are taken (:func:`~autoseg.model.checkpoint.load_checkpoint` with the network): an unusable one is
    moved aside (``checkpoint_final.pt.corrupt-<stamp>``) and the fold trained again, once. Returns
    the TrainState.
    """
    from ..atomic import move_aside
    from ..model.checkpoint import CheckpointError, load_checkpoint, restore_checkpoint

    if isolate is None:
        isolate = needs_isolation(trainer.settings)
    if not isolate:
        return trainer.fit()
    wd, name, fold = trainer.wd, trainer.config.name, trainer.settings.fold
    where = f"{name} fold {fold}"
    final = wd.checkpoint(name, fold, "final")
    for attempt in (1, 2):
        outcome = _fit_in_child(trainer, where)
        trainer.state = outcome
        try:  # the child's final weights, verified: an unusable file is moved aside and the fold trained again once
            ckpt = load_checkpoint(final, map_location=trainer.device, network=trainer.network)
        except CheckpointError as e:
            moved = move_aside(final, "corrupt")
            if attempt == 2:
                raise AutosegError(f"training {where} finished twice, but each time its {final.name} could not be "
                                   f"used ({e.reason}; moved aside to {moved.name}). Check the disk (full or "
                                   f"failing?) and run the same command again.") from None
            log.warning("training %s finished, but %s is unusable (%s); it was moved aside to %s and the fold "
                        "is trained again", where, final, e.reason, moved.name)
            continue
        restore_checkpoint(ckpt, model=trainer.network, rng=False)
        return outcome
    raise AssertionError("unreachable")


def _fit_in_child(trainer, where: str):
    """``trainer.fit()`` in a child process; after a death by a signal in bf16, again in fp32 (see
    :func:`run_training_guarded`). Returns the child's TrainState."""
    from ..model.checkpoint import get_rng_states

    wd, name, fold = trainer.wd, trainer.config.name, trainer.settings.fold
    forced = False
    while True:
        outcome = run_in_child(_fit, trainer, get_rng_states())
        if not isinstance(outcome, ChildCrashed):
            return outcome
        precision = "fp32" if forced else _precision_of_crashed_run(trainer, outcome)
        if outcome.signal is None:
            raise AutosegError(f"training {where} stopped: its process {outcome.describe()} (precision "
                               f"{precision}). Run the same command again to resume from the last checkpoint.")
        if precision == "fp32":
            hint = " (SIGKILL often means the system ran out of memory)" if outcome.signal == _signal.SIGKILL else ""
            raise AutosegError(
                f"training {where} crashed: its process was {outcome.describe()} while training in fp32"
                f"{hint}. Run the same command again to resume from the last checkpoint; if it crashes "
                f"again, report it with the command and the plan.")
        log.warning("training %s crashed in %s: its process was %s. Training again in fp32, resuming from "
                    "the last checkpoint (bf16 is not used again for this fold).", where, precision,
                    outcome.describe())
        _force_fp32_checkpoint(wd.checkpoint(name, fold, "latest"))
        trainer.settings = replace(trainer.settings, precision="fp32")
        forced = True


def _precision_of_crashed_run(trainer, outcome: ChildCrashed) -> str:
    """The precision the child trained in: what it reported after resolving "auto", else the one its
    checkpoint records (a resumed run), else the settings'."""
    from ..model.checkpoint import load_checkpoint

    if outcome.notes.get("precision"):
        return str(outcome.notes["precision"])
    latest = trainer.wd.checkpoint(trainer.config.name, trainer.settings.fold, "latest")
    if latest.is_file():
        try:
            recorded = load_checkpoint(latest)["state"].get("precision")
        except AutosegError:
            recorded = None
        if recorded:
            return str(recorded)
    return str(trainer.settings.precision)


def _force_fp32_checkpoint(path: Path) -> None:
    """Set the precision recorded in a checkpoint to fp32 (atomically), so a resume from it trains in fp32."""
    from ..model.checkpoint import load_checkpoint, write_checkpoint

    if not path.is_file():
        return
    try:
        ckpt = load_checkpoint(path)
    except AutosegError as e:
        log.warning("%s", e)
        return
    if ckpt["state"].get("precision") in (None, "fp32"):
        return
    ckpt["state"]["precision"] = "fp32"
    write_checkpoint(path, ckpt)
