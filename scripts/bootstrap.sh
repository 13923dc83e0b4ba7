#!/usr/bin/env bash
# Creates (or refreshes) the project's virtualenv in .venv: sourced by run_local.sh and
# run_tests.sh. Reinstalls only when requirements*.txt or setup.py changed since last time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: Python 3.10 or newer is needed (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
stamp="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" "$root/setup.py" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtualenv in .venv" >&2
  "$python" -m venv "$venv"
fi
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
  echo "installing packages into .venv (first time: a minute or two; log in .venv/install.log)" >&2
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$venv/bin/python" -m pip install --disable-pip-version-check \
           -r "$root/requirements-dev.txt" -e "$root"; } > "$venv/install.log" 2>&1; then
    tail -n 30 "$venv/install.log" >&2
    echo "error: installing the packages failed; the whole log is in .venv/install.log" >&2
    exit 1
  fi
  echo "$stamp" > "$venv/.installed"
fi
