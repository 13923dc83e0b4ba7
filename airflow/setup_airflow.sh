#!/usr/bin/env bash
# Creates (or reuses) the virtualenv that runs Apache Airflow for this project.
#
# Airflow lives apart from the pipeline's own .venv so that its pins never fight Beam's: the DAG
# launches the pipeline with the project's interpreter (see docs/airflow.md). The install uses
# the constraints file shipped next to this script, as Airflow recommends.
#
# Usage: airflow/setup_airflow.sh            # venv in .venv-airflow at the repository root
#        AIRFLOW_VENV=/opt/airflow-venv airflow/setup_airflow.sh
# Prints the venv's directory on its last line. Safe to run again: a venv whose stamp matches
# the pins and the constraints file is reused as it is.
set -euo pipefail

AIRFLOW_VERSION=3.3.2
BEAM_PROVIDER_VERSION=6.3.1
# The Beam provider's operators refuse to be built without the Google provider (provider 6.3.1:
# BeamDataflowMixin raises AirflowOptionalProviderFeatureException), whatever the runner.
GOOGLE_PROVIDER_VERSION=22.8.0
PYTHON_SERIES=3.11

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${AIRFLOW_VENV:-$root/.venv-airflow}"
constraints="$here/constraints-${AIRFLOW_VERSION}-py${PYTHON_SERIES}.txt"

# The constraints were resolved for one Python series; any other would resolve differently.
python="${AIRFLOW_PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in "python${PYTHON_SERIES}" python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi
if [[ -z "$python" ]] || ! "$python" -c "import sys; sys.exit(sys.version_info[:2] != (${PYTHON_SERIES/./, }))"; then
  echo "setup_airflow.sh: needs Python ${PYTHON_SERIES} (set AIRFLOW_PYTHON to its interpreter)" >&2
  exit 1
fi

stamp_value="airflow=${AIRFLOW_VERSION} beam-provider=${BEAM_PROVIDER_VERSION} google-provider=${GOOGLE_PROVIDER_VERSION} constraints=$(sha256sum "$constraints" | cut -d' ' -f1)"
stamp="$venv/.emissions-airflow-stamp"

mkdir -p "$(dirname "$venv")"
# One installer at a time: two test sessions may ask for the venv at once.
exec 9>"$venv.lock"
flock 9

if [[ -f "$stamp" && "$(cat "$stamp")" == "$stamp_value" && -x "$venv/bin/airflow" ]]; then
  echo "$venv"
  exit 0
fi

if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" ]]; then
  echo "setup_airflow.sh: $venv exists and is not a virtualenv; not touching it" >&2
  exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
  "apache-airflow==${AIRFLOW_VERSION}" \
  "apache-airflow-providers-apache-beam==${BEAM_PROVIDER_VERSION}" \
  "apache-airflow-providers-google==${GOOGLE_PROVIDER_VERSION}" \
  --constraint "$constraints"
"$venv/bin/airflow" version >/dev/null
echo "$stamp_value" >"$stamp"
echo "$venv"
