#!/usr/bin/env bash
# The test command, from a fresh clone: ./run_tests.sh [pytest arguments]
# Makes .venv, then runs ruff (lint and format), mypy, the import contracts (import-linter)
# and pytest. Tests use a real PostgreSQL:
# an embedded one under .pgdata-test, or the server in $TEST_DATABASE_URL when set.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import contracts"
.venv/bin/lint-imports --no-cache | grep -E "KEPT|BROKEN|Contracts:"
echo "== pytest"
exec .venv/bin/python -m pytest --durations=15 "$@"
