"""The `autoseg` command line: the parser, logging, error handling and exit codes; the subcommands that
run a use case are in :mod:`autoseg.commands`. Only these two modules print.

Exit codes: 0 success, 2 usage error, 1 AutosegError or OSError (a read-only or full disk: one line
naming the file; traceback with -v).
torch is imported lazily by the stages that need it, so `autoseg --help` is fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .commands import ADDERS
from .errors import AutosegError, UsageError

log = logging.getLogger("autoseg")


# --------------------------------------------------------------------------- benchmark

BENCHMARK_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "baseline.py"


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="autoseg beside nnU-Net v2 on one dataset (source checkout only)",
                       description="Runs benchmarks/baseline.py of the source repository: autoseg and nnU-Net "
                                   "v2 (in its own virtual environment, made on first use) on the same folds "
                                   "with the same budget per training, then select and predict; writes a "
                                   "markdown + JSON report. See benchmarks/README.md.")
    p.add_argument("dataset", help="raw dataset folder DatasetXXX_Name (nnU-Net v2 layout)")
    p.add_argument("--budget", required=True, help="wall-clock budget of each training, e.g. 5m")
    p.add_argument("--quick", action="store_true", help="one fold of one configuration")
    p.add_argument("--out", default=None, help="output folder (default: bench_out/baseline/<dataset>[_quick])")
    p.add_argument("--skip-nnunet", action="store_true", help="autoseg only")
    p.add_argument("--predict-cases", type=int, default=None, metavar="N", help="cases for the prediction timings")
    p.set_defaults(func=_cmd_benchmark)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    if not BENCHMARK_SCRIPT.is_file():
        raise AutosegError(f"{BENCHMARK_SCRIPT} not found: the benchmark harness ships with the source repository, "
                           f"not with an installed package; clone the repository and run `autoseg benchmark` "
                           f"(or `python benchmarks/baseline.py`) from there")
    cmd = [sys.executable, str(BENCHMARK_SCRIPT), "--dataset", args.dataset, "--budget", args.budget]
    cmd += ["--quick"] * args.quick + ["--skip-nnunet"] * args.skip_nnunet
    cmd += ["--out", args.out] if args.out else []
    cmd += ["--predict-cases", str(args.predict_cases)] if args.predict_cases else []
    exe = shutil.which("autoseg", path=str(Path(sys.executable).parent))  # this environment's autoseg
    cmd += ["--autoseg", exe] if exe else []
    return subprocess.call(cmd)


# --------------------------------------------------------------------------- main

_ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [*ADDERS, _add_benchmark]


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring medical image segmentation for nnU-Net-format datasets.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _ADDERS:
        add(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def share_the_cpu_politely() -> None:
    """OpenMP threads that wait passively (sleep at once instead of spinning) unless the user chose.

    torch's CPU wheels use GNU OpenMP, whose idle threads spin; beside another CPU-bound process on 2
    cores a training step then ran 2.72x slower than alone, with OMP_WAIT_POLICY=PASSIVE 1.74x, for the
    same speed alone (0.402 vs 0.424 s/iteration; docs/benchmarks/shared_machine.md). Must run before
    torch is imported (the OpenMP runtime reads it once); child processes inherit it.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    share_the_cpu_politely()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. `train --nproc N` relaunches it under torchrun
    verbose = getattr(args, "verbose", False)
    _setup_logging(verbose)
    if getattr(args, "no_progress", False) is False and not sys.stderr.isatty():
        args.no_progress = True
    try:
        return int(args.func(args) or 0)
    except AutosegError as e:
        if verbose:
            log.exception("autoseg failed")
        print(f"autoseg: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except OSError as e:  # a read-only or full disk, a folder without permission: one line, not a traceback
        if verbose:
            log.exception("autoseg failed")
        print(f"autoseg: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoseg: interrupted", file=sys.stderr)
        return 130


_WRITE_ERRNOS = {"ENOSPC": "free space or choose another --workdir/-o",
                 "EDQUOT": "free space (your disk quota is used up) or choose another --workdir/-o",
                 "EROFS": "the file system is mounted read-only; choose another --workdir/-o",
                 "EFBIG": "the file system cannot hold a file this large; choose another --workdir/-o"}
_ACCESS_ERRNOS = {"EACCES", "EPERM"}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what could not be done to which file, the system's reason and what to do,
    e.g. 'cannot write RUN/plans.json: No space left on device — free space or choose another --workdir/-o'."""
    import errno as _errno

    name = _errno.errorcode.get(e.errno or 0, "")
    reason = e.strerror or str(e) or type(e).__name__
    where = e.filename if e.filename is not None else "a file (its name was not reported)"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    if name in _WRITE_ERRNOS:
        return f"cannot write {where}: {reason} — {_WRITE_ERRNOS[name]}"
    if name in _ACCESS_ERRNOS:
        return (f"cannot access {where}: {reason} — give yourself permission (chmod/chown) or choose another "
                f"--workdir/-o")
    return f"{where}: {reason} ({type(e).__name__}); rerun with -v for the traceback"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
