#!/usr/bin/env bash
# Makes sure Debian's PostgreSQL server and openssl are installed, for the tests that start their
# own TLS-only server (tests/tls_server.py). Idempotent and quick when both are there; installs
# with apt-get otherwise (as root, or through sudo when available). Prints the server's bin
# directory (the newest version's, e.g. /usr/lib/postgresql/15/bin) on success.
#
# Installing the `postgresql` package also creates a `main` cluster (port 5432) and, where
# services may be started (no policy-rc.d that forbids it), starts it. The tests never use that
# cluster, so every cluster the install created is stopped and set to start manually: no stray
# server is left running, and none comes back at the next boot.
set -euo pipefail

bin_dir() {
    local server
    server=$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n 1)
    [ -n "$server" ] && dirname "$server"
}

# "VERSION NAME" for each cluster that postgresql-common knows of (none before it is installed).
clusters() {
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}'
    fi
}

packages=()
bin_dir >/dev/null || packages+=(postgresql)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
if [ ${#packages[@]} -eq 0 ]; then
    bin_dir
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "${packages[*]} not installed and this user cannot install it: apt-get install ${packages[*]}" >&2
    exit 1
fi
before=$(clusters)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2

while read -r version name; do
    [ -n "$version" ] || continue
    if grep -qxF "$version $name" <<<"$before"; then
        continue  # there before this script: not ours to touch
    fi
    if "${as_root[@]}" pg_ctlcluster "$version" "$name" status >/dev/null 2>&1; then
        echo "stopping the $version/$name cluster that the package started" >&2
        "${as_root[@]}" pg_ctlcluster "$version" "$name" stop >&2
    fi
    echo manual | "${as_root[@]}" tee "/etc/postgresql/$version/$name/start.conf" >/dev/null
done <<<"$(clusters)"

bin_dir || {
    echo "postgresql was installed but no /usr/lib/postgresql/*/bin/postgres was found" >&2
    exit 1
}
