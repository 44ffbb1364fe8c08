#!/usr/bin/env bash
# Install the Debian packages named on the command line that are not installed yet.
#
# Used by `make run` (through ops/stack/packages.py) and by .ci/run. Installing
# orthanc or postgresql-15 would normally start a default Orthanc (port 4242/8042)
# or a default PostgreSQL cluster, which would take the hub's ports and run with
# the package's configuration. A policy-rc.d that exits 101 tells invoke-rc.d not
# to start any service; it is removed again only if this script created it.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [ "${status:0:2}" != "ii" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "These Debian packages are missing: ${missing[*]}" >&2
    echo "Install them as root:  sudo $0 ${missing[*]}" >&2
    exit 1
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# written by the routing hub installer: start no service while installing\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    created_policy=1
fi

echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
