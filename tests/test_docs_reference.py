"""The reference pages stay true to the code: docs/cli.md names every command and long flag the parser
accepts, docs/architecture.md every module, docs/plans_format.md every field written to disk."""
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


def test_every_module_is_in_the_architecture_map():
    """Each module of the package has a row in docs/architecture.md (its path, or its file name in its
    folder's row), and every module path the page names exists."""
    root = CLI_MD.parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `autoseg/")}
    missing = []
    for path in sorted((root / "autoseg").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if path.name == "__init__.py" or rel in doc:
            continue
        folder_row = rows.get(f"{path.parent.relative_to(root).as_posix()}/", "")
        if f"`{path.name}`" not in folder_row:
            missing.append(rel)
    assert not missing, f"docs/architecture.md has no row for: {', '.join(missing)}"
    named = set(re.findall(r"autoseg/[\w/]+\.py", doc))
    assert named and not [n for n in named if not (root / n).exists()], "docs/architecture.md names a module that is gone"


def test_every_field_written_to_a_work_folder_file_is_in_the_format_page():
    """Each field of the dataclasses autoseg writes to disk (schemas/) is named in docs/plans_format.md."""
    import dataclasses

    from autoseg import schemas

    doc = (CLI_MD.parent / "plans_format.md").read_text()
    classes = [c for c in vars(schemas).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(classes) >= 10
    missing = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
               if not re.search(rf"`{re.escape(f.name)}`|`{re.escape(f.name)}\.|`{re.escape(f.name)}_", doc)]
    assert not missing, f"docs/plans_format.md does not name: {', '.join(missing)}"
