#!/usr/bin/env bash
# Runs the default test suite; pytest's exit code 5 ("no tests collected") counts as a failure.
set -u
PYTHON="${1:-python3}"
shift || true
"$PYTHON" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit "$rc"
