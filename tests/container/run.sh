#!/bin/bash
# Boot a root directory once under systemd-nspawn (systemd as PID 1) with a payload
# tree laid over it, and collect what the boot reports.
#
# Usage: tests/container/run.sh ROOT PAYLOAD RESULTS [TIMEOUT_SECONDS]
#   ROOT     extracted root (scripts/container-rootfs.sh --extract); only read
#   PAYLOAD  directory laid over ROOT (make install DESTDIR=..., test units, markers)
#   RESULTS  directory bind-mounted at /results (rw); the persistent journal is kept
#            in RESULTS/journal, the console in RESULTS/console.log
# Env: TRIDENT_NSPAWN_EXTRA  more systemd-nspawn options, split on spaces (e.g. the
#      --bind=/dev/loopN... of a test that lets the container write a loop device).
# Exit status: the container's (0 = powered off, 133 = rebooted), 124 on timeout.
# Needs root, systemd-nspawn (systemd-container), util-linux (unshare), overlayfs.
set -euo pipefail

root=$(realpath "$1"); payload=$(realpath "$2"); results=$(realpath "$3"); timeout=${4:-120}
[ -d "$root/usr/lib/systemd" ] || { echo "run.sh: $root is not a systemd root" >&2; exit 2; }
mkdir -p "$results/journal"

work=$(mktemp -d /tmp/trident-ct.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/upper" "$work/work" "$work/merged"

# Everything below runs in a private mount namespace: the overlay, the tmpfs on
# /run/systemd/nspawn and nspawn's own mounts vanish with it.
set +e
unshare -m --propagation private bash -euc '
    root=$1 payload=$2 results=$3 timeout=$4 work=$5
    mount -t tmpfs tmpfs /run/systemd/nspawn 2>/dev/null || {
        mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn; }
    mount -t overlay overlay \
        -o "lowerdir=$payload:$root,upperdir=$work/upper,workdir=$work/work" "$work/merged"
    exec timeout --kill-after=10 "$timeout" systemd-nspawn -q -b -D "$work/merged" \
        --register=no --keep-unit --volatile=no --link-journal=no \
        --bind="$results":/results --bind="$results/journal":/var/log/journal \
        ${TRIDENT_NSPAWN_EXTRA:-} \
        --console=pipe --machine=trident-ct-$$ </dev/null
' run "$root" "$payload" "$results" "$timeout" "$work" > "$results/console.log" 2>&1
rc=$?
set -e
echo "$rc" > "$results/exit-status"
exit "$rc"
