#!/bin/bash
# Read and write UEFI variables of an OVMF VARS file offline (see efivars.py for verbs):
#   tests/e2e/efivars.sh VARS get LoaderEntrySelected
#   tests/e2e/efivars.sh VARS set-string LoaderEntryOneShot b.conf
# Uses the virt-firmware package from PyPI, installed on first use into a venv under
# $TRIDENT_E2E_CACHE (default /var/cache/trident-e2e).
set -euo pipefail

CACHE=${TRIDENT_E2E_CACHE:-/var/cache/trident-e2e}
VENV=$CACHE/venv
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")

if ! "$VENV/bin/python" -c 'import virt.firmware.varstore.edk2' 2> /dev/null; then
    mkdir -p "$CACHE"
    (
        flock 9
        if ! "$VENV/bin/python" -c 'import virt.firmware.varstore.edk2' 2> /dev/null; then
            echo "efivars: installing virt-firmware into $VENV" >&2
            rm -rf "$VENV"
            python3 -m venv "$VENV" >&2 || { echo "efivars: needs python3-venv" >&2; exit 1; }
            "$VENV/bin/pip" install -q virt-firmware >&2
        fi
    ) 9> "$CACHE/.venv.lock"
fi
exec "$VENV/bin/python" "$HERE/efivars.py" "$@"
