"""The subcommands of the `autoseg` command line that run a use case: each one an argument parser
(``_add_*``) and a handler (``_cmd_*``) that calls one use case from :mod:`autoseg.usecases` and prints
its result. :mod:`autoseg.cli` builds the parser from :data:`ADDERS` and runs the handler.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from .build import _add_find_best, _add_plan, _add_train
from .pipeline import _add_demo, _add_run
from .use import _add_evaluate, _add_export, _add_predict, _add_report

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plan, _add_train, _add_find_best, _add_predict,
                                                                _add_export, _add_evaluate, _add_run, _add_demo,
                                                                _add_report]
