"""docs/cli.md is the command reference: every command and every long flag the parser accepts is on it."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from autoseg.cli import build_parser

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_and_flag_is_in_the_command_reference():
    doc = CLI_MD.read_text()
    commands = _commands()
    assert {"plan", "train", "find-best", "predict", "run", "demo", "evaluate"} <= set(commands)
    missing = [f"autoseg {name}" for name in commands if f"## autoseg {name}" not in doc]
    for name, parser in commands.items():
        for action in parser._actions:
            missing += [f"autoseg {name} {o}" for o in action.option_strings
                        if o.startswith("--") and o != "--help"
                        and not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", doc)]
    assert not missing, f"docs/cli.md does not mention: {', '.join(missing)}"
