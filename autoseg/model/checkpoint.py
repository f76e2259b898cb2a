"""Training checkpoints: atomic writes, safe loads (``weights_only=True``), RNG state, resume lookup.

A checkpoint is a dict of tensors and plain Python data only::

    {"format": "autoseg-checkpoint", "format_version": 1,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict | None,
     "scaler": state_dict | None, "state": {epoch, iteration, best metric, log lines, ...},
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...], "numpy": {...}, "python": {...}}}

so that it loads with ``torch.load(..., weights_only=True)``: a checkpoint can never run code.

Before use a checkpoint is verified (:func:`load_checkpoint`): the zip archive's CRCs (torch does not
check them, so damaged tensor bytes would load without complaint), the expected keys, finite weights
and, given the network, its parameter names and shapes. A file that fails raises
:class:`CheckpointError`; training moves such a file aside (:func:`load_resume_checkpoint` with
``set_aside_bad``) and resumes from the previous good checkpoint or starts over.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write, move_aside
from ..errors import AutosegError

logger = logging.getLogger(__name__)

FORMAT = "autoseg-checkpoint"
FORMAT_VERSION = 1
# resume order: a finished run first, then the periodic one (best is never resumed from: its
# optimizer/schedule state is older than the latest one's)
RESUME_ORDER = ("final", "latest")


class CheckpointError(AutosegError):
    """A checkpoint file that exists but cannot be used: truncated, damaged (CRC), not an autoseg
    checkpoint, holding non-finite weights or the weights of another network. ``path`` and ``reason``
    (what is wrong, without the advice) are kept so that callers can say what to do in their context."""

    def __init__(self, path: str | os.PathLike, reason: str, advice: str | None = None):
        self.path, self.reason = Path(path), reason
        self.advice = advice if advice is not None else (
            "delete it, or run `autoseg train` again: it moves the file aside and resumes from the "
            "previous checkpoint or starts over")
        super().__init__(f"checkpoint {self.path} {reason}; {self.advice}")

    def __reduce__(self):  # picklable, so a training child process can raise it
        return (CheckpointError, (str(self.path), self.reason, self.advice))


def checkpoint_path(fold_dir: str | os.PathLike, which: str) -> Path:
    """``fold_dir/checkpoint_<which>.pt`` (latest, best, final); the name comes from workdir.py."""
    from ..workdir import checkpoint_filename

    return Path(fold_dir) / checkpoint_filename(which)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is plain Python data (what weights_only loading accepts)."""
    # exact types: numpy scalars subclass float/str but do not load under weights_only
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"checkpoint {where}: key {k!r} must be a str or int")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"checkpoint {where} holds a {type(value).__module__}.{type(value).__name__}; only plain "
                    f"Python types (dict, list, str, int, float, bool, None) may be stored")


def get_rng_states() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's global generator and ``random``, as safe types."""
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    py_state = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(np_state[0]), "keys": [int(k) for k in np_state[1]],
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "internal": [int(v) for v in py_state[1]],
                   "gauss_next": None if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(ckpt: dict[str, Any]) -> None:
    """Restore the torch, CUDA, numpy and ``random`` states saved in ``ckpt["rng"]`` (if present)."""
    rng = ckpt.get("rng")
    if not rng:
        logger.warning("checkpoint has no RNG state; random streams are not restored")
        return
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu().to(torch.uint8))
    if rng.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.cpu().to(torch.uint8) for s in rng["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; not restored",
                           len(cuda_states), torch.cuda.device_count())
    if "numpy" in rng:
        s = rng["numpy"]
        np.random.set_state((s["bit_generator"], np.asarray(s["keys"], dtype=np.uint32), int(s["pos"]),
                             int(s["has_gauss"]), float(s["cached_gaussian"])))
    if "python" in rng:
        s = rng["python"]
        random.setstate((int(s["version"]), tuple(int(v) for v in s["internal"]), s["gauss_next"]))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile / DataParallel wrappers, so state-dict keys carry no prefix."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any | None, scaler: Any | None = None, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    ``state`` must be plain Python data (epoch, iteration, best metric, log lines, ...); anything else
    raises TypeError, because it would not load under ``weights_only=True``. ``scheduler`` and
    ``scaler`` need ``state_dict()`` methods returning tensors / plain data.
    """
    _check_plain(state, "state")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": state,
        "rng": get_rng_states(),
    }
    write_checkpoint(path, payload)


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` of a checkpoint dict, atomically (temporary file, fsync, rename)."""
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, _write)
    logger.debug("saved checkpoint %s", path)


def _unpickle_reason(e: Exception) -> str:
    """The informative line of torch's weights_only refusal (e.g. 'Unsupported global: GLOBAL x.Y ...')."""
    for line in str(e).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(" Please use")[0]
    return type(e).__name__


def _check_archive(path: Path) -> None:
    """Every entry of the zip archive torch.save writes must pass its CRC check (torch.load does not
    check: flipped bytes in a tensor would load as wrong weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as e:
        raise CheckpointError(path, f"is corrupt or truncated (not a complete zip archive: {e})") from None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise CheckpointError(path, f"is corrupt or truncated ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CheckpointError(path, f"is damaged: its entry {bad} fails the zip CRC check (the bytes on disk "
                                    f"changed after it was written)")


def _check_contents(path: Path, ckpt: Any) -> None:
    """The keys every autoseg checkpoint has, tensors in its model state, and finite weights."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, f"is not an autoseg checkpoint (expected a dict with format={FORMAT!r})",
                              "delete it or move it out of the fold folder")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise AutosegError(f"checkpoint {path} has format version {ckpt.get('format_version')}, this autoseg "
                           f"reads up to {FORMAT_VERSION}; upgrade autoseg")
    missing = [k for k in ("model", "state") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(path, f"lacks {', '.join(repr(k) for k in missing)} (expected the keys "
                                    f"format, format_version, model, optimizer, scheduler, scaler, state, rng)")
    not_tensors = [k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(path, f"has model entries that are not tensors ({', '.join(not_tensors[:3])})")
    nonfinite = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        more = f" and {len(nonfinite) - 3} more" if len(nonfinite) > 3 else ""
        raise CheckpointError(path, f"has NaN or infinite weights in {', '.join(nonfinite[:3])}{more} (the "
                                    f"training diverged or the file is damaged)")


def check_fits_network(path: str | os.PathLike, ckpt: dict[str, Any], network: torch.nn.Module) -> None:
    """Raise CheckpointError unless ``ckpt["model"]`` has exactly ``network``'s parameter names and shapes."""
    expected = {k: tuple(v.shape) for k, v in _unwrap(network).state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [k for k in expected if k in saved and saved[k] != expected[k]]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) of the network missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (e.g. {k}: saved {saved[k]}, network {expected[k]})")
    raise CheckpointError(path, f"holds the weights of another network ({'; '.join(parts)})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    network: torch.nn.Module | None = None) -> dict[str, Any]:
    """Load and verify a checkpoint with ``torch.load(weights_only=True)`` (never runs code from the file).

    Verified: the zip CRCs, the format and its version, the ``model`` and ``state`` entries, finite
    weights, and with ``network`` its parameter names and shapes (:func:`check_fits_network`).
    Raises AutosegError when the file is missing or of a newer format, :class:`CheckpointError`
    (an AutosegError naming the file) when it is truncated, damaged, holds objects other than
    tensors and plain data, is not an autoseg checkpoint or does not fit ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"checkpoint {path} does not exist; train first (`autoseg train`) or check the path")
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            path, f"contains objects other than tensors and plain data and was refused (autoseg loads "
                  f"checkpoints with weights_only=True; {_unpickle_reason(e)})",
            "if you did not write this file, do not trust it; delete it and training will resume from an "
            "older checkpoint or start over") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(path, f"is corrupt or truncated ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
    _check_contents(path, ckpt)
    if network is not None:
        check_fits_network(path, ckpt, network)
    return ckpt


def restore_checkpoint(ckpt: dict[str, Any], *, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None,
                       scaler: Any | None = None, rng: bool = True) -> dict[str, Any]:
    """Load the saved states into the given objects (those not None) and return the plain ``state``."""
    _unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if rng:
        restore_rng_states(ckpt)
    return dict(ckpt.get("state") or {})


def load_resume_checkpoint(fold_dir: str | os.PathLike, map_location: Any = "cpu", *,
                           network: torch.nn.Module | None = None, set_aside_bad: bool = False,
                           stamp: str | None = None) -> tuple[Path, dict] | None:
    """(path, contents) of the checkpoint to resume from: ``checkpoint_final.pt``, else
    ``checkpoint_latest.pt``. Only files that pass :func:`load_checkpoint` (with ``network``: that fit
    it) count; a bad one is skipped with a warning saying why, and with ``set_aside_bad`` renamed to
    ``<name>.corrupt-<stamp>`` so that it is never used again. None when there is nothing to resume.
    Each file is read once."""
    for which in RESUME_ORDER:
        p = checkpoint_path(fold_dir, which)
        if not p.is_file():
            continue
        try:
            return p, load_checkpoint(p, map_location=map_location, network=network)
        except CheckpointError as e:
            if set_aside_bad:
                moved = move_aside(p, "corrupt", stamp)
                logger.warning("%s is unusable and was moved aside to %s (%s); resuming from the previous "
                               "checkpoint if there is a good one, else training starts over", p, moved.name,
                               e.reason)
            else:
                logger.warning("not resuming from %s: %s", p, e)
        except AutosegError as e:  # a newer format: not damaged, not ours to move or to overwrite
            if set_aside_bad:
                raise
            logger.warning("not resuming from %s: %s", p, e)
    return None


def find_resume_checkpoint(fold_dir: str | os.PathLike) -> Path | None:
    """The path :func:`load_resume_checkpoint` would resume from, or None."""
    found = load_resume_checkpoint(fold_dir)
    return None if found is None else found[0]
