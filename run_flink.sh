#!/usr/bin/env bash
# Runs the emission calculation on Apache Flink, from a fresh clone, in one command:
#   ./run_flink.sh [--database-url URL] [pipeline and Beam options]   start a local cluster, run
#   ./run_flink.sh stop                                               stop the local cluster
#   ./run_flink.sh status                                             is it up? (its /overview)
#   FLINK_MASTER=host:8081 ./run_flink.sh [options]                   use your own cluster
# The first time it fetches Flink (PyPI) and builds the Beam job server jar (Maven) into
# .cache/flink. The local cluster listens on 127.0.0.1 only and is left running for the next
# run; stop it with ./run_flink.sh stop. See docs/flink.md.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
py=.venv/bin/python

case "${1:-}" in
  stop|status) exec $py -m pipeline.flink_cluster "$1" ;;
esac

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --database-url|--database_url) export EMISSIONS_DATABASE_URL="$2"; shift 2 ;;
    --database-url=*|--database_url=*) export EMISSIONS_DATABASE_URL="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "${FLINK_MASTER:-}" ]; then
  flink_args="$($py -m pipeline.flink_cluster args --flink-master "$FLINK_MASTER" \
    --parallelism "${PARALLELISM:-2}")"
else
  $py -m pipeline.flink_cluster start --slots "${PARALLELISM:-2}"
  flink_args="$($py -m pipeline.flink_cluster args --parallelism "${PARALLELISM:-2}")"
fi

$py -m pipeline.admin init
$py -m pipeline.seed --count "${SEED_COUNT:-100000}" --if-empty
# Options given on the command line come after the Flink ones, so they win.
# shellcheck disable=SC2086 # flink_args is a list of --key=value words without spaces
exec $py -m pipeline.run $flink_args ${args[@]+"${args[@]}"}
