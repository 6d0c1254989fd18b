#!/bin/bash
# VM smoke test (make e2e-smoke): proves, with real firmware (OVMF) and systemd-boot, the
# boot-selection mechanism the A/B engine relies on.
#   1. a disk with two root volumes A and B (entries a.conf, b.conf; /etc/os-version
#      e2e-A / e2e-B; loader.conf default a.conf) boots A;
#   2. LoaderEntryOneShot=b.conf set offline in the VARS file -> the next boot is B, and
#      systemd-boot has consumed (deleted) the one-shot variable;
#   3. the boot after that is A again.
# Also checks the harness itself: a boot that exceeds its timeout is killed and reported.
# Env: TRIDENT_E2E_WORK (default: a new /var/tmp/trident-e2e-smoke.XXXXXX, removed on
#      success unless TRIDENT_E2E_KEEP=1), TRIDENT_E2E_TIMEOUT (per boot, default 300).
# Needs root (reads the debootstrapped guest), qemu-system-x86, ovmf, mtools,
# dosfstools, gdisk, zstd, python3-venv (virt-firmware from PyPI).
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
TIMEOUT=${TRIDENT_E2E_TIMEOUT:-300}
WORK=${TRIDENT_E2E_WORK:-$(mktemp -d /var/tmp/trident-e2e-smoke.XXXXXX)}
mkdir -p "$WORK"
DISK=$WORK/disk.img VARS=$WORK/vars.fd TIMINGS=$WORK/timings.txt

say() { echo "smoke: $*" >&2; }
fail() { say "FAIL: $*"; say "logs kept in $WORK"; exit 1; }
efivars() { "$HERE/efivars.sh" "$VARS" "$@"; }

# boot N VERSION PARTITION ENTRY: boot once, require the report of that volume.
boot() {
    local n=$1 version=$2 part=$3 entry=$4 t0=$SECONDS
    say "boot $n: expecting $version from $part via $entry"
    "$HERE/vm.sh" --vars "$VARS" --log "$WORK/boot$n.log" --timeout "$TIMEOUT" \
        --expect "TRIDENT-E2E: end" "$DISK" >&2 || fail "boot $n did not complete"
    local line
    # -o: the serial getty's login prompt may share a line with the report.
    line=$(grep -ao "TRIDENT-E2E: booted .*" "$WORK/boot$n.log" | tr -d '\r')
    say "boot $n: ${line#TRIDENT-E2E: }"
    [ "$line" = "TRIDENT-E2E: booted $version root=$part entry=$entry" ] \
        || fail "boot $n: expected 'booted $version root=$part entry=$entry', got '$line'"
    echo "boot $n ($version via $entry): $((SECONDS - t0)) s" >> "$TIMINGS"
}

: > "$TIMINGS"
t0=$SECONDS
say "guest: $("$HERE/build-guest.sh")"
"$HERE/build-guest.sh" --extract "$WORK/root" > /dev/null
# The serial getty shares ttyS0 with the report lines and its terminal reset at start-up
# can swallow a line written at that moment; nobody logs in here: mask it.
ln -sf /dev/null "$WORK/root/etc/systemd/system/serial-getty@ttyS0.service"
echo "guest build/extract: $((SECONDS - t0)) s" >> "$TIMINGS"

t0=$SECONDS
"$HERE/make-disk.sh" --volume a=e2e-A --volume b=e2e-B --default a "$WORK/root" "$DISK" >&2
rm -rf "$WORK/root"
echo "make-disk: $((SECONDS - t0)) s" >> "$TIMINGS"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$VARS"

# Harness self-check: a timeout kills QEMU (by pid) and exits 124 with the console tail.
status=0
"$HERE/vm.sh" --vars "$WORK/selfcheck-vars.fd" --log "$WORK/selfcheck.log" --timeout 3 "$DISK" \
    > /dev/null 2> "$WORK/selfcheck.err" || status=$?
[ $status -eq 124 ] || fail "a 3 s boot should time out with 124, got $status"
grep -q "timed out" "$WORK/selfcheck.err" || fail "the timeout was not reported"

boot 1 e2e-A /dev/vda2 a.conf
status=0
efivars get LoaderEntryOneShot > /dev/null 2>&1 || status=$?
[ $status -eq 3 ] || fail "LoaderEntryOneShot should be unset after boot 1 (got status $status)"

efivars set-string LoaderEntryOneShot b.conf
[ "$(efivars get LoaderEntryOneShot)" = b.conf ] || fail "LoaderEntryOneShot was not written"
say "set LoaderEntryOneShot=b.conf offline"

boot 2 e2e-B /dev/vda3 b.conf
status=0
efivars get LoaderEntryOneShot > /dev/null 2>&1 || status=$?
[ $status -eq 3 ] || fail "systemd-boot did not consume LoaderEntryOneShot (status $status)"

boot 3 e2e-A /dev/vda2 a.conf

say "PASS: A, one-shot B, back to A"
sed 's/^/smoke: /' "$TIMINGS" >&2
if [ "${TRIDENT_E2E_KEEP:-0}" = 1 ] || [ -n "${TRIDENT_E2E_WORK:-}" ]; then
    say "work directory kept: $WORK"
else
    rm -rf "$WORK"
fi
