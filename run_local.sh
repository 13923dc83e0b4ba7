#!/usr/bin/env bash
# Runs the emission calculation locally, from a fresh clone, in one command:
#   ./run_local.sh [pipeline options, e.g. --no-radiative-forcing]
# Makes .venv, then `python -m ops.local`: the embedded PostgreSQL (unless $EMISSIONS_DATABASE_URL
# or --database-url names another database), the schema and the factors, demo data when the
# embedded database has no activities yet ($SEED_COUNT, default 100000; --seed-demo to seed
# another empty database), the pipeline on the DirectRunner, and the run summary.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec .venv/bin/python -m ops.local --runner=DirectRunner "$@"
