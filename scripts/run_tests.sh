#!/usr/bin/env bash
# The README's test command: the layering contracts (import-linter, [tool.importlinter] in
# pyproject.toml), then the test suite. pytest's exit code 5 ("no tests collected") counts as a failure.
set -u
PYTHON="${1:-python3}"
shift || true
BIN="$(dirname "$PYTHON")"
echo "== import layering (lint-imports)"
if ! "$BIN/lint-imports" --no-cache; then
  echo "an import runs against the layers in docs/architecture.md §4: move the code down, or pass the value in" >&2
  exit 1
fi
echo "== tests (pytest)"
"$PYTHON" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit "$rc"
