"""What every subcommand shares: the common options and the duration argument type."""
from __future__ import annotations

import argparse

from ..errors import AutosegError


def duration(text: str) -> float:
    from ..hardware import parse_duration

    try:
        return parse_duration(text)
    except AutosegError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a TTY)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="worker processes (default: derived from CPU cores and free RAM)")

