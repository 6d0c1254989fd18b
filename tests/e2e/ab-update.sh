#!/bin/bash
# The seven VM scenarios of issue 7 — install, A/B update, manual rollback, failed
# health check, broken OS, power cut mid-stage, timer-driven update — on one installed
# disk, each boot reusing the state the previous one left (docs/testing.md, "The A/B
# scenario"):
#
#   install  the real `trident install` on the host onto a loop device over a sparse
#            disk image (ESP, A/B root pair, shared /var/lib/trident); boot 1: v1 from
#            volume A, trident-commit.service commits the clean install
#   update   boot 1 then stages v2 (trident-stage.service) into B and calls Finalize
#            over D-Bus → reboot; boot 2: trial boot of B, health check passes, commit;
#            boot 3: B again, no trial
#   rollback boot 3 runs `trident rollback --ab` → reboot; boot 4: A (v1), committed
#   failed   boot 4 stages v3, whose health check fails, and finalizes → reboot; boot 5:
#            trial of B fails its check, trident-rollback.service reboots; boot 6: A
#            (v1), the fallback recorded, provisioned on the v1 Host Configuration
#   broken-os  boot 6 stages v4-panic (its /sbin/init exits at once) and finalizes;
#            boot 7: B's kernel panics (no userspace runs; panic=10 restarts); boot 8:
#            the firmware's default, A (v1), records the automatic rollback
#   power-cut  boot 8 starts staging v2 and the host kills QEMU while it writes; boot 9:
#            A (v1), healthy, nothing staged, nothing recorded; it stages v2 again and
#            finalizes; boot 10: trial of B (v2), committed
#   timer    boot 10 only enables the schedule timers (drop-ins shorten them) with v5
#            configured: the update timer stages, the finalize window reboots; boot 11:
#            trial of A (v5), committed
#
# The Host Configuration names the disk /dev/disk/by-id/virtio-SERIAL: in the guest
# udev makes that link for the VM's disk (vm.sh --serial); on the host the script makes
# the same link to the loop device for the duration of the install, and removes it.
#
# Env: TRIDENT_E2E_WORK, TRIDENT_E2E_KEEP, TRIDENT_E2E_TIMEOUT as for smoke.sh (a boot
#      that stages gets the timeout plus TRIDENT_E2E_STAGE_TIMEOUT, default 300 s);
#      PROFILE (release|debug, default release: the guest runs under TCG),
#      NO_BUILD=1 to skip `cargo build`; AB_SCENARIOS (default "install update rollback
#      failed broken-os power-cut timer"): a prefix of that list to stop early; AB_RESUME_AT_BOOT=N (development)
#      continues a kept TRIDENT_E2E_WORK at boot N.
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
REPO=$(cd "$HERE/../.." && pwd)
TIMEOUT=${TRIDENT_E2E_TIMEOUT:-300}
STAGE_TIMEOUT=$((TIMEOUT + ${TRIDENT_E2E_STAGE_TIMEOUT:-300}))
PROFILE=${PROFILE:-release}
ALL_SCENARIOS="install update rollback failed broken-os power-cut timer"
SCENARIOS=${AB_SCENARIOS:-$ALL_SCENARIOS}
WORK=${TRIDENT_E2E_WORK:-$(mktemp -d /var/tmp/trident-e2e-ab.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
T0=$SECONDS
say() { echo "ab-update: [$((SECONDS - T0)) s] $*" >&2; }
fail() {
    say "FAIL: $*"
    # The last console lines of the boot that failed (vm.sh prints them itself when
    # the boot as such failed; this covers a failed assertion on a finished boot).
    if [ -n "${LOG:-}" ] && [ -f "$LOG" ]; then
        say "last 40 console lines ($LOG):"
        tail -n 40 "$LOG" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/^/  | /' >&2
    fi
    say "logs kept in $WORK"
    exit 1
}
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
case "$ALL_SCENARIOS " in
    "$SCENARIOS "*) ;;
    *) fail "AB_SCENARIOS must be a prefix of '$ALL_SCENARIOS', not '$SCENARIOS'" ;;
esac
# The update images the scenarios need (v1 is installed; v2 also serves power-cut).
UPDATES=''
wants update && UPDATES+=' v2'
wants failed && UPDATES+=' v3-broken'
wants broken-os && UPDATES+=' v4-panic'
wants timer && UPDATES+=' v5'
IMAGES="v1$UPDATES"
# Development: resume at boot N of a kept work directory (TRIDENT_E2E_WORK) whose disk
# is in the state boot N-1 left; nothing is rebuilt or reinstalled.
FIRST_BOOT=${AB_RESUME_AT_BOOT:-1}
if [ "$FIRST_BOOT" != 1 ] && { [ -z "${TRIDENT_E2E_WORK:-}" ] || [ ! -f "$WORK/updates.img" ]; }; then
    fail "AB_RESUME_AT_BOOT needs TRIDENT_E2E_WORK with the disks of an earlier run"
fi

[ "$(id -u)" = 0 ] || { echo "ab-update: needs root (loop devices, the guest's files)" >&2; exit 1; }
for tool in losetup sfdisk mke2fs debugfs strip; do
    command -v "$tool" > /dev/null || fail "missing $tool (apt-get install util-linux fdisk e2fsprogs binutils)"
done

# shellcheck source=tests/e2e/build-guest.sh
source "$HERE/build-guest.sh" --lib
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
TRIDENT=$TARGET_DIR/$PROFILE/trident

# --- the project, staged for the guest --------------------------------------------------
if [ "${NO_BUILD:-0}" != 1 ]; then
    say "cargo build ($PROFILE)"
    profile_flag=()
    [ "$PROFILE" != release ] || profile_flag=(--release)
    (cd "$REPO" && cargo build "${profile_flag[@]}" --bin trident --bin trident-generator --bin tridentd) >&2
fi
stage=$WORK/stage
rm -rf "$stage"
# The top-level Makefile's install: trident, the generator, the units, tridentd and its
# D-Bus/polkit files.
make -s -C "$REPO" install DESTDIR="$stage" PROFILE="$PROFILE" NO_BUILD=1 >&2
# Debug info is most of a binary's size; the guest does not need it.
strip --strip-debug "$stage/usr/bin/trident" "$stage/usr/bin/tridentd" \
    "$stage/usr/lib/systemd/system-generators/trident-generator"
install -D -m 0755 "$HERE/ab-update-guest.sh" "$stage/usr/lib/trident-e2e/ab-step"
mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
# After multi-user.target as well as commit: commit orders itself after
# multi-user.target, so a unit wanted by multi-user.target that orders itself after
# commit without it would be an ordering cycle (docs/units.md).
cat > "$stage/etc/systemd/system/trident-e2e-ab.service" <<'EOF'
[Unit]
Description=VM scenario ab-update: report this boot, then do the host's step
After=multi-user.target boot-complete.target trident-commit.service trident-record-rollback.service
Before=trident-e2e-report.service

[Service]
Type=oneshot
ExecStart=/usr/lib/trident-e2e/ab-step
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../trident-e2e-ab.service \
    "$stage/etc/systemd/system/multi-user.target.wants/trident-e2e-ab.service"
# The scenario drives every update itself: the schedule timers must not stage or reboot
# behind its back (the guest's first boot applies systemd's presets, Debian's enable
# everything).
ln -sf /dev/null "$stage/etc/systemd/system/trident-update.timer"
ln -sf /dev/null "$stage/etc/systemd/system/trident-finalize.timer"
# Not masked: systemd-networkd-wait-online.service. The VM has no network device
# (-nic none) and the first boot's presets enable networkd and its wait-online service,
# which holds network-online.target for its whole 120 s timeout — a host whose network
# never comes online. The images are local files, so the stage must not wait for that
# target (each stage asserts it did not).
# The serial getty shares ttyS0 with the report lines, and its terminal reset at
# start-up can swallow lines written at that moment (seen once in smoke.sh); nobody logs
# in to this guest (root is locked), so it is masked here.
ln -sf /dev/null "$stage/etc/systemd/system/serial-getty@ttyS0.service"

# --- images: v1, v2, v5 good; v3-broken fails its health check; v4-panic cannot boot ----
images=$WORK/images
mkdir -p "$images"
if [ "$FIRST_BOOT" = 1 ]; then
    rm -rf "$WORK/root"
    "$HERE/build-guest.sh" --extract "$WORK/root" > /dev/null
    layer_staging "$stage" "$WORK/root"
    declare -A SHA
    for v in $IMAGES; do
        say "image $v: make-disk.sh + trident cosi build"
        if [ "$v" = v4-panic ]; then
            # An OS that cannot come up: its init exits at once, so the kernel panics
            # ("Attempted to kill init!") before any of its userspace runs. The root
            # is restored right after this image is built.
            init=$WORK/root/usr/sbin/init
            [ -L "$WORK/root/sbin" ] || init=$WORK/root/sbin/init
            mv "$init" "$init.e2e-saved"
            printf '#!/bin/sh\necho "v4-panic: init exits"\nexit 1\n' > "$init"
            chmod 0755 "$init"
        fi
        "$HERE/make-disk.sh" --volume "a=$v" --esp-mb 64 --root-mb 320 "$WORK/root" "$WORK/$v.img" > /dev/null
        "$TRIDENT" cosi build "$WORK/$v.img" -o "$images/$v.cosi" --force \
            --mount 1=/boot/efi --mount root-a=/ --format json > "$WORK/$v.cosi.json" \
            2> "$WORK/$v.cosi.log" || { cat "$WORK/$v.cosi.log" >&2; fail "cosi build of $v"; }
        rm -f "$WORK/$v.img"
        [ "$v" != v4-panic ] || mv -f "$init.e2e-saved" "$init"
        SHA[$v]=$(sed -n 's/.*"metadataSha384": *"\([0-9a-f]*\)".*/\1/p' "$WORK/$v.cosi.json")
        [ -n "${SHA[$v]}" ] || fail "no metadataSha384 in the cosi build summary: $(cat "$WORK/$v.cosi.json")"
    done
    rm -rf "$WORK/root"
fi

# --- Host Configurations ----------------------------------------------------------------
SERIAL=tr-e2e-$(printf '%s' "$WORK" | sha256sum | cut -c1-8)
DISK_LINK=/dev/disk/by-id/virtio-$SERIAL
hc() { # IMAGE_URL SHA384
    cat <<EOF
storage:
  disks:
  - id: os
    device: $DISK_LINK
    partitions:
    - id: esp
      type: esp
      size: 64M
    - id: root-a
      type: root
      size: 448M
    - id: root-b
      type: root
      size: 448M
    - id: trident
      type: linux-generic
      size: 32M
  abUpdate:
    volumePairs:
    - id: root
      volumeAId: root-a
      volumeBId: root-b
  filesystems:
  - deviceId: esp
    mountPoint:
      path: /boot/efi
      options: umask=0077
  - deviceId: root
    mountPoint: /
  - deviceId: trident
    source: new
    mountPoint: /var/lib/trident
image:
  url: $1
  sha384: $2
os:
  hostname: trident-e2e-ab
  kernelCommandLine:
    extraCommandLine:
    - console=ttyS0
    - panic=10
health:
  checks:
  - name: os-version-healthy
    runOn:
    - clean-install
    - ab-update
    content: "! grep -q broken /etc/os-version"
EOF
}
if [ "$FIRST_BOOT" = 1 ]; then
    hc "file://$images/v1.cosi" "${SHA[v1]}" > "$WORK/hc-v1.yaml"
    "$TRIDENT" validate "$WORK/hc-v1.yaml" || fail "hc-v1.yaml is not valid"
    # The update disk: the COSI files and their Host Configurations (as the guest sees them).
    upd=$WORK/updates
    mkdir -p "$upd"
    for v in $UPDATES; do
        ln -f "$images/$v.cosi" "$upd/$v.cosi"
        hc "file:///run/trident-e2e/images/$v.cosi" "${SHA[$v]}" > "$upd/hc-$v.yaml"
    done
    echo none > "$upd/step"
    # Room for ext4's own metadata (journal, inode tables: ~8 % here) and the step file.
    upd_mb=$(($(du -sm "$upd" | cut -f1) * 11 / 10 + 64))
    rm -f "$WORK/updates.img"
    mke2fs -q -F -t ext4 -L e2e-images -d "$upd" "$WORK/updates.img" "${upd_mb}M" \
        || fail "making the update disk (${upd_mb} MiB for $(du -sm "$upd" | cut -f1) MiB of files)"
    rm -rf "$upd"
fi
set_step() { # the guest reads it at its next boot
    printf '%s\n' "$1" > "$WORK/step"
    debugfs -w -f - "$WORK/updates.img" > "$WORK/debugfs.log" 2>&1 <<EOF
rm step
write $WORK/step step
EOF
    grep -q "Allocated inode" "$WORK/debugfs.log" || { cat "$WORK/debugfs.log" >&2; fail "could not write the step"; }
}

# --- install, on the host ---------------------------------------------------------------
DISK=$WORK/os.img
VARS=$WORK/vars.fd
LOOP=''
MADE_DIRS=()
cleanup() {
    if [ -L "$DISK_LINK" ] && [ "$(readlink "$DISK_LINK")" = "$LOOP" ]; then rm -f "$DISK_LINK"; fi
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2> /dev/null || true; fi
    # The directories this script created for the link, deepest first, if still empty.
    local d
    for d in "${MADE_DIRS[@]}"; do rmdir "$d" 2> /dev/null || true; done
    MADE_DIRS=()
}
trap cleanup EXIT
if [ "$FIRST_BOOT" = 1 ]; then
    rm -f "$DISK" "$VARS"
    truncate -s 1G "$DISK"
    LOOP=$(losetup -f --show "$DISK")
    [ ! -e "$DISK_LINK" ] || fail "$DISK_LINK already exists"
    for d in /dev/disk/by-id /dev/disk; do [ -d "$d" ] || MADE_DIRS+=("$d"); done
    mkdir -p "$(dirname "$DISK_LINK")"
    ln -s "$LOOP" "$DISK_LINK"
    say "install: trident install onto $LOOP (as $DISK_LINK)"
    rm -rf "$WORK/efivars" "$WORK/engine" "$WORK/install-ds"
    mkdir -p "$WORK/efivars"
    "$TRIDENT" install "$WORK/hc-v1.yaml" --no-reboot --datastore "$WORK/install-ds/datastore.sqlite" \
        --efivars "$WORK/efivars" --work-dir "$WORK/engine" > "$WORK/install.log" 2>&1 \
        || { tail -30 "$WORK/install.log" >&2; fail "trident install"; }
    cleanup
    LOOP=''
    # The firmware variables the installer set (LoaderEntryDefault, Boot####,
    # BootOrder) go into the machine's VARS file, as they would into its NVRAM.
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$VARS"
    "$HERE/efivars.sh" "$VARS" import "$WORK/efivars" | sed 's/^/ab-update:   efivar /' >&2
fi
if [ ! -f "$DISK" ] || [ ! -f "$VARS" ]; then
    fail "no installed disk in $WORK to resume from"
fi
partuuid() { sfdisk --json "$DISK" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    if p.get("name") == sys.argv[1]:
        print(p["uuid"].lower())' "$1"; }
UUID_A=$(partuuid root-a)
UUID_B=$(partuuid root-b)
if [ -z "$UUID_A" ] || [ -z "$UUID_B" ]; then fail "the installed disk has no root-a/root-b partitions"; fi
say "disk: root-a PARTUUID=$UUID_A, root-b PARTUUID=$UUID_B"

# --- booting and checking ------------------------------------------------------------------
BOOT=0
LOG=''
# boot STEP EXPECT TIMEOUT [--kill-on]: one boot with STEP for the guest; QEMU must end
# by itself and the console match EXPECT — or, with --kill-on, the host cuts the power
# (QEMU killed) as soon as the console matches EXPECT.
boot() {
    BOOT=$((BOOT + 1))
    LOG=$WORK/boot$BOOT.log
    set_step "$1"
    say "boot $BOOT (step: $1)"
    local match=--expect
    [ "${4:-}" != --kill-on ] || match=--kill-on
    "$HERE/vm.sh" --vars "$VARS" --log "$LOG" --timeout "$3" --serial "$SERIAL" \
        --disk2 "$WORK/updates.img" "$match" "$2" "$DISK" >&2 || fail "boot $BOOT"
}
# The value of "TRIDENT-E2E: ab KEY VALUE" (first one) in this boot's console log.
ab_all() { grep -ao "TRIDENT-E2E: ab $1 .*" "$LOG" | tr -d '\r' | cut -c$((${#1} + 18))-; }
ab() { ab_all "$1" | head -1; }
expect() { # WHAT ACTUAL WANTED (glob)
    # shellcheck disable=SC2053 # the pattern is a glob on purpose
    [[ $2 == $3 ]] || { show; fail "boot $BOOT: $1 is '$2', expected '$3'"; }
}
show() { grep -ao "TRIDENT-E2E: ab .*" "$LOG" | tr -d '\r' | sed 's/^TRIDENT-E2E: ab /  | /' >&2; }
history() { ab_all history | sed -n "${1}p"; } # the Nth newest history row
status_field() { ab_all status | sed -n "s/^$1: //p" | head -1; }
rebooted() { grep -aq "reboot: Restarting system" "$LOG" || { show; fail "boot $BOOT did not end with a reboot"; }; }
# What booted: the OS version, the root partition (kernel command line), systemd-boot's
# entry, and the datastore's view.
check_booted() { # VERSION VOLUME(a|b)
    local uuid=$UUID_A
    [ "$2" = a ] || uuid=$UUID_B
    expect "/etc/os-version" "$(ab os)" "$1"
    expect "root= on the kernel command line" "$(ab cmdline-root)" "PARTUUID=$uuid"
    expect "LoaderEntrySelected" "$(ab entry-selected)" "trident-$2.conf"
    expect "servicingState" "$(status_field servicingState)" provisioned
    expect "activeVolume" "$(status_field activeVolume)" "volume-$2"
    expect "LoaderEntryDefault" "$(ab entry-default)" "trident-$2.conf"
    expect "LoaderEntryOneShot" "$(ab entry-oneshot)" "-"
    expect "markers" "$(ab markers)" "trial=no pending=no"
    # The Host Status names this machine's devices, not the installer's loop device.
    expect "blockDevices" "$(ab_all status | sed -n 's/^  \(root-[ab]\): /\1=/p' | tr '\n' ' ')" "root-a=/dev/vd?2 root-b=/dev/vd?3 "
}
check_committed() { # this boot was a trial and commit ran
    expect "trident-commit.service" "$(ab 'unit trident-commit.service')" "ran=yes active=active result=success status=0"
    expect "COMMITTED milestones" "$(ab journal)" "committed=1 rolled-back=0"
}
check_no_trial() {
    expect "trident-commit.service" "$(ab 'unit trident-commit.service')" "ran=no *"
    expect "trident-health.target" "$(ab 'unit trident-health.target')" "ran=no active=inactive *"
}
check_no_failure() { # the guest's step did not report a failure
    [ -z "$(ab failed)" ] || { show; fail "boot $BOOT: the guest reported a failure"; }
}
# A (v1) booted after a failed trial and recorded it: the code of lastError, the two
# newest history rows.
check_fallback() { # LAST_ERROR_CODE HISTORY1 HISTORY2
    check_booted v1 a
    expect "trident-record-rollback.service" "$(ab 'unit trident-record-rollback.service')" "ran=yes active=active result=success status=0"
    expect "ROLLED_BACK milestones" "$(ab journal)" "committed=0 rolled-back=1"
    expect "last error" "$(ab_all last-error | tr '\n' ' ')" "*code: $1 *"
    expect "history" "$(history 1)" "$2"
    expect "history" "$(history 2)" "$3"
    expect "image" "$(ab image-url)" "*/v1.cosi"
}
check_staged_and_finalized() { # VERSION: the boot staged VERSION and called Finalize
    expect "STAGED milestones" "$(ab stage-journal)" "staged=1"
    expect "staged stamp" "$(ab staged-stamp)" yes
    expect "staged state" "$(ab_all staged-status | tr '\n' ' ')" "servicingState: ab-update-staged *"
    expect "stage waited for network-online.target (a file:// image)" "$(ab stage-network-waits)" 0
    expect "Finalize over D-Bus" "$(ab finalize-call)" ok
    check_no_failure
    rebooted
    say "  staged $1 in $(ab stage-seconds) s, finalized over D-Bus, rebooted"
}

REPORT_END="TRIDENT-E2E: end"
REPORT_DONE="TRIDENT-E2E: ab report-done"

# Boot N's step: what the next scenario needs, or "none" on the last boot.
next_step() { # STEP_IF_WANTED SCENARIO
    if wants "$2"; then echo "$1"; else echo none; fi
}
boot_for() { # STEP TIMEOUT_IF_STAGING
    case $1 in
        none) boot none "$REPORT_END" "$TIMEOUT" ;;
        update* | timers*) boot "$1" "$REPORT_DONE" "$STAGE_TIMEOUT" ;;
        *) boot "$1" "$REPORT_DONE" "$TIMEOUT" ;;
    esac
}

# 1: the installed v1 boots from A and commits the clean install.
boot1() {
    local step
    step=$(next_step "update v2" update)
    boot_for "$step"
    check_booted v1 a
    check_committed
    expect "history" "$(history 1)" "commit-clean-install clean-install-finalized->provisioned"
    expect "/var/lib/trident" "$(ab var-lib-trident)" "/dev/vd?4"
    say "PASS install: v1 booted from A (PARTUUID $UUID_A), clean install committed, provisioned"
    [ "$step" = none ] || check_staged_and_finalized v2
}
# 2: trial boot of B (v2): the health check passes, commit.
boot2() {
    boot none "$REPORT_END" "$TIMEOUT"
    check_booted v2 b
    check_committed
    expect "trident-health.target" "$(ab 'unit trident-health.target')" "ran=yes active=active *"
    expect "history" "$(history 1)" "commit-ab-update ab-update-finalized->provisioned"
    expect "history" "$(history 2)" "finalize-ab-update ab-update-staged->ab-update-finalized"
    expect "image" "$(ab image-url)" "*/v2.cosi"
    say "PASS update (trial): v2 booted from B, health check passed, committed, active B"
}
# 3: B again, no trial.
boot3() {
    local step
    step=$(next_step rollback rollback)
    boot_for "$step"
    check_booted v2 b
    check_no_trial
    say "PASS update (after): B again with no trial boot"
    if [ "$step" != none ]; then
        expect "rollback --check" "$(ab rollback-check)" "would roll back to volume-a *"
        rebooted
    fi
}
# 4: the manual rollback's trial boot of A (v1), committed.
boot4() {
    local step
    step=$(next_step "update v3-broken" failed)
    boot_for "$step"
    check_booted v1 a
    check_committed
    expect "history" "$(history 1)" "commit-manual-rollback-ab manual-rollback-ab-finalized->provisioned"
    expect "image" "$(ab image-url)" "*/v1.cosi"
    say "PASS rollback: trident rollback --ab went back to A (v1), committed, active A"
    [ "$step" = none ] || check_staged_and_finalized v3-broken
}
# 5: trial boot of B (v3-broken): the check fails, trident-rollback.service reboots.
boot5() {
    boot none "reboot: Restarting system" "$TIMEOUT"
    grep -aq "Command line: .*root=PARTUUID=$UUID_B " "$LOG" || fail "boot $BOOT: the trial boot did not boot B"
    grep -aq "trident-generator: trial boot of AbUpdate" "$LOG" || fail "boot $BOOT: the generator did not wire a trial boot"
    # The scenario unit may or may not get to report before the rollback reboots; when
    # it does, it saw v3-broken and the failed check.
    [ -z "$(ab os)" ] || expect "/etc/os-version" "$(ab os)" v3-broken
    if grep -aq "$REPORT_DONE" "$LOG"; then
        expect "failed check" "$(ab health-check-failed)" "waiting for trident-rollback.service to reboot"
    fi
    if grep -aq "$REPORT_END" "$LOG"; then fail "boot $BOOT: the failed trial boot powered off instead of rebooting"; fi
    say "  trial boot of B (v3-broken) did not commit and rebooted"
}
# 6: back on A (v1): the fallback is recorded.
boot6() {
    local step
    step=$(next_step "update v4-panic" broken-os)
    boot_for "$step"
    check_fallback health-check-failed \
        "record-fallback ab-update-health-check-failed->provisioned" \
        "health-check-failed ab-update-finalized->ab-update-health-check-failed"
    say "PASS failed update: v3's health check failed, B was not committed, A (v1) booted, the failure recorded"
    [ "$step" = none ] || check_staged_and_finalized v4-panic
}
# 7: trial boot of B (v4-panic): the kernel panics, restarts by itself (panic=10).
boot7() {
    boot none "Kernel panic - not syncing" "$TIMEOUT"
    grep -aq "Command line: .*root=PARTUUID=$UUID_B " "$LOG" || fail "boot $BOOT: the trial boot did not boot B"
    grep -aq "v4-panic: init exits" "$LOG" || fail "boot $BOOT: v4-panic's init did not run"
    grep -aq "Attempted to kill init" "$LOG" || fail "boot $BOOT: the kernel did not panic for want of an init"
    grep -aq "Rebooting in 10 seconds" "$LOG" || fail "boot $BOOT: the panic did not restart the machine"
    if grep -aq "TRIDENT-E2E:\|Welcome to" "$LOG"; then fail "boot $BOOT: userspace of v4-panic ran"; fi
    say "  trial boot of B (v4-panic): kernel panic before any userspace, restart"
}
# 8: the firmware's default, A (v1), records the automatic rollback.
boot8() {
    if wants power-cut; then
        boot "power-cut v2" "TRIDENT-E2E: ab power-cut-now" "$STAGE_TIMEOUT" --kill-on
    else
        boot none "$REPORT_END" "$TIMEOUT"
    fi
    check_fallback trial-boot-failed \
        "record-fallback ab-update-finalized->provisioned" \
        "finalize-ab-update ab-update-staged->ab-update-finalized"
    say "PASS broken OS: v4's kernel panicked on the trial boot, A (v1) booted next, the rollback recorded"
    if wants power-cut; then
        expect "action" "$(ab action)" "stage v2 (the power will be cut)"
        check_no_failure
        say "  power cut while staging v2 ($(ab power-cut-now))"
    fi
}
# 9: after the power cut: A (v1), healthy, nothing staged; stage v2 again and finalize.
boot9() {
    boot_for "update v2"
    check_booted v1 a
    check_no_trial
    expect "staged stamp" "$(ab staged-now)" no
    expect "failed units" "$(ab failed-units)" ""
    expect "history (the cut stage recorded nothing)" "$(history 1)" "record-fallback ab-update-finalized->provisioned"
    say "PASS power cut (after): A (v1) booted healthy, provisioned, nothing staged"
    check_staged_and_finalized v2
}
# 10: trial boot of B (v2) after the re-stage: committed.
boot10() {
    local step
    step=$(next_step "timers v5" timer)
    boot_for "$step"
    check_booted v2 b
    check_committed
    expect "history" "$(history 1)" "commit-ab-update ab-update-finalized->provisioned"
    expect "image" "$(ab image-url)" "*/v2.cosi"
    say "PASS power cut: staging again after the cut completed, v2 booted from B and committed"
    if [ "$step" != none ]; then
        local watch
        watch=$(ab_all timer-watch | tr '\n' ';')
        check_no_failure
        expect "the update timer started trident-stage.service" "$watch" "*stage=activating*"
        # The finalize window fires right after the stage (faster than the guest's
        # watch polls): systemd's own status lines on the console show both.
        local console
        console=$(tr -d '\r' < "$LOG" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g')
        grep -q "Finished trident-stage\.ser" <<< "$console" || { show; fail "boot $BOOT: trident-stage.service did not finish"; }
        grep -q "Finished trident-finalize\." <<< "$console" || { show; fail "boot $BOOT: trident-finalize.service did not run"; }
        rebooted
        say "  the timers staged v5 and the finalize window rebooted (${watch%;})"
    fi
}
# 11: trial boot of A (v5), the timers' update: committed.
boot11() {
    boot none "$REPORT_END" "$TIMEOUT"
    check_booted v5 a
    check_committed
    expect "history" "$(history 1)" "commit-ab-update ab-update-finalized->provisioned"
    expect "history" "$(history 2)" "finalize-ab-update ab-update-staged->ab-update-finalized"
    expect "history" "$(history 3)" "stage-ab-update provisioned->ab-update-staged"
    expect "image" "$(ab image-url)" "*/v5.cosi"
    say "PASS timer: the update timer staged v5, the finalize timer rebooted into it, committed on A"
}

last=1
wants update && last=3
wants rollback && last=4
wants failed && last=6
wants broken-os && last=8
wants power-cut && last=10
wants timer && last=11
BOOT=$((FIRST_BOOT - 1))
for n in $(seq "$FIRST_BOOT" "$last"); do "boot$n"; done

say "PASS: ${SCENARIOS} (boots $FIRST_BOOT-$BOOT, $((SECONDS - T0)) s)"
if [ "${TRIDENT_E2E_KEEP:-0}" = 1 ] || [ -n "${TRIDENT_E2E_WORK:-}" ]; then
    say "work directory kept: $WORK"
else
    rm -rf "$WORK"
fi
