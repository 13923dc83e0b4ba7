#!/usr/bin/env bash
# Runs the emission calculation locally, from a fresh clone, in one command:
#   ./run_local.sh [--database-url URL] [pipeline options, e.g. --no-radiative-forcing]
# Makes .venv, starts the embedded PostgreSQL (unless a URL is given, here or in
# $EMISSIONS_DATABASE_URL), creates the schema, loads the factors, seeds demo data when there
# are no activities yet ($SEED_COUNT, default 100000), runs the pipeline on the DirectRunner
# and prints the run summary.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --database-url|--database_url) export EMISSIONS_DATABASE_URL="$2"; shift 2 ;;
    --database-url=*|--database_url=*) export EMISSIONS_DATABASE_URL="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

py=.venv/bin/python
$py -m pipeline.admin init
$py -m pipeline.seed --count "${SEED_COUNT:-100000}" --if-empty
exec $py -m pipeline.run --runner=DirectRunner ${args[@]+"${args[@]}"}
