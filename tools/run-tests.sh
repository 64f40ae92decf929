#!/usr/bin/env bash
# Runs the whole test suite. Exits non-zero on any failure and when no test ran
# (pytest's exit code 5), so a suite that silently collects nothing never passes.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
# Tests spend most of their time waiting on the processes they start, so two workers share two
# cores well; a module's tests stay on one worker (its module-scoped fixtures start once).
# CIC_TEST_WORKERS=0 runs everything in this one process.
workers="${CIC_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  .venv/bin/pytest "$@"
else
  .venv/bin/pytest -n "$workers" --dist loadscope "$@"
fi
code=$?
if [ "$code" -eq 5 ]; then
  echo "run-tests: no tests were collected" >&2
fi
exit "$code"
