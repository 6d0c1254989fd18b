#!/bin/bash
# VM scenario: the project layered onto the guest (`make install DESTDIR=...` +
# layer_staging) boots under OVMF, its binaries run there, and a scenario unit's results
# come back on the serial console. This is the path every engine scenario of issue 7
# takes: stage the project, add the scenario's units and files, make a disk, boot.
# Env: TRIDENT_E2E_WORK, TRIDENT_E2E_KEEP, TRIDENT_E2E_TIMEOUT as for smoke.sh;
#      PROFILE (debug|release, default debug), NO_BUILD=1 to skip `cargo build`.
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
REPO=$(cd "$HERE/../.." && pwd)
TIMEOUT=${TRIDENT_E2E_TIMEOUT:-300}
PROFILE=${PROFILE:-debug}
WORK=${TRIDENT_E2E_WORK:-$(mktemp -d /var/tmp/trident-e2e-layered.XXXXXX)}
mkdir -p "$WORK"
say() { echo "layered: $*" >&2; }
fail() { say "FAIL: $*"; say "logs kept in $WORK"; exit 1; }

# shellcheck source=tests/e2e/build-guest.sh
source "$HERE/build-guest.sh" --lib

if [ "${NO_BUILD:-0}" != 1 ]; then
    profile_flag=()
    [ "$PROFILE" != release ] || profile_flag=(--release)
    (cd "$REPO" && cargo build "${profile_flag[@]}" --bin trident --bin trident-generator) >&2
fi
stage=$WORK/stage
rm -rf "$stage"
make -s -C "$REPO" -f mk/install.mk install DESTDIR="$stage" PROFILE="$PROFILE" NO_BUILD=1 >&2

# The scenario's own part of the stage: a unit that runs before the report and writes
# what the guest should tell the host into /var/lib/trident-e2e/results.
mkdir -p "$stage/etc/systemd/system/multi-user.target.wants" "$stage/usr/lib/trident-e2e"
cat > "$stage/usr/lib/trident-e2e/scenario" <<'EOF'
#!/bin/sh
{
    echo "version $(trident --version)"
    echo "units $(systemctl list-unit-files 'trident*' --no-legend | wc -l)"
    echo "efivars $(ls /sys/firmware/efi/efivars | wc -l)"
    # The storage modules kept for the RAID, LUKS and verity scenarios must load.
    modprobe -a md_mod raid1 dm_mod dm_crypt dm_verity && echo "modules $(lsmod | grep -cE '^(md_mod|raid1|dm_mod|dm_crypt|dm_verity) ')"
} > /var/lib/trident-e2e/results 2>&1
EOF
chmod 0755 "$stage/usr/lib/trident-e2e/scenario"
cat > "$stage/etc/systemd/system/trident-e2e-scenario.service" <<'EOF'
[Unit]
Description=VM scenario: collect results for the report
Before=trident-e2e-report.service

[Service]
Type=oneshot
ExecStart=/usr/lib/trident-e2e/scenario

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../trident-e2e-scenario.service \
    "$stage/etc/systemd/system/multi-user.target.wants/trident-e2e-scenario.service"

"$HERE/build-guest.sh" --extract "$WORK/root" > /dev/null
# The serial getty shares ttyS0 with the report lines and its terminal reset at start-up
# can swallow a line written at that moment; nobody logs in here: mask it.
ln -sf /dev/null "$WORK/root/etc/systemd/system/serial-getty@ttyS0.service"
layer_staging "$stage" "$WORK/root"
"$HERE/make-disk.sh" --volume a=layered --root-mb 512 "$WORK/root" "$WORK/disk.img" >&2
rm -rf "$WORK/root"

"$HERE/vm.sh" --log "$WORK/boot.log" --timeout "$TIMEOUT" --expect "TRIDENT-E2E: end" \
    "$WORK/disk.img" >&2 || fail "the layered guest did not boot and report"
# -o: the serial getty's login prompt may share a line with the report.
results=$(grep -ao "TRIDENT-E2E: result .*" "$WORK/boot.log" | tr -d '\r')
say "guest results:"
printf '%s\n' "$results" | while read -r line; do say "  $line"; done
expected_version=$("${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/trident" --version)
echo "$results" | grep -qxF "TRIDENT-E2E: result version $expected_version" \
    || fail "trident did not run in the guest (expected '$expected_version')"
units=$(echo "$results" | sed -n 's/^TRIDENT-E2E: result units //p')
[ "${units:-0}" -ge "$(find "$REPO/units" -name 'trident*' | wc -l)" ] \
    || fail "the guest sees ${units:-no} trident unit files"
echo "$results" | grep -q "^TRIDENT-E2E: result efivars [1-9]" || fail "no EFI variables in the guest"
echo "$results" | grep -qx "TRIDENT-E2E: result modules 5" \
    || fail "md_mod raid1 dm_mod dm_crypt dm_verity do not all load in the guest"
say "PASS: the project runs in the guest"
if [ "${TRIDENT_E2E_KEEP:-0}" = 1 ] || [ -n "${TRIDENT_E2E_WORK:-}" ]; then
    say "work directory kept: $WORK"
else
    rm -rf "$WORK"
fi
