#!/usr/bin/env bash
# Runs the emission calculation on Apache Flink, from a fresh clone, in one command:
#   ./run_flink.sh [pipeline and Beam options]                        start a local cluster, run
#   ./run_flink.sh stop                                               stop everything it started
#   ./run_flink.sh status                                             is it up? (its /overview)
#   FLINK_MASTER=host:8081 ./run_flink.sh [options]                   use your own cluster
#     (PARALLELISM: the job's, WORKER_PARALLELISM: the task slots of each TaskManager)
# The first time it fetches Flink (PyPI) and builds the Beam job server jar (Maven) into
# .cache/flink, saying how far it has got every ten seconds. The local cluster listens on
# 127.0.0.1 only and is left running for the next run; each run stops the job server it
# started, and ./run_flink.sh stop stops the cluster (and any job server a killed run left).
# Each TaskManager starts the Python workers itself (flink/worker-boot, Beam's PROCESS
# environment), one per task slot, with the code of this checkout.
# Stdout is the run's JSON summary; everything else goes to stderr. See docs/flink.md.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
py=.venv/bin/python

case "${1:-}" in
  stop|status) exec $py -m ops.flink_cluster "$1" ;;
esac

if [ -n "${FLINK_MASTER:-}" ]; then
  flink_args="$($py -m ops.flink_cluster args --flink-master "$FLINK_MASTER" \
    --parallelism "${PARALLELISM:-2}" --worker-parallelism "${WORKER_PARALLELISM:-1}")"
else
  $py -m ops.flink_cluster start --slots "${PARALLELISM:-2}" >&2
  flink_args="$($py -m ops.flink_cluster args --parallelism "${PARALLELISM:-2}")"
fi

# Options given on the command line come after the Flink ones, so they win.
# shellcheck disable=SC2086 # flink_args is a list of --key=value words without spaces
exec $py -m ops.local $flink_args "$@"
