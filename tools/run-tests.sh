#!/usr/bin/env bash
# Runs the whole test suite. Exits non-zero on any failure and when no test ran
# (pytest's exit code 5), so a suite that silently collects nothing never passes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
.venv/bin/pytest "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "run-tests: no tests were collected" >&2
fi
exit "$code"
