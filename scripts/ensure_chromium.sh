#!/usr/bin/env bash
# Makes sure a headless Chromium is installed (Debian's `chromium` package), for the report test.
# Idempotent and quick when it is already there; installs with apt-get otherwise (as root, or
# through sudo when available). Prints the browser's path on success.
set -euo pipefail
for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
        command -v "$candidate"
        exit 0
    fi
done
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "chromium is not installed and this user cannot install it: apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
command -v chromium
