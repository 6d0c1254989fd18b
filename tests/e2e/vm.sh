#!/bin/bash
# Boot a raw disk image once under QEMU (TCG) with OVMF, and check its serial console.
#
# Usage: tests/e2e/vm.sh [options] DISK
#   --vars FILE      the writable OVMF VARS copy of this scenario; created from
#                    OVMF_VARS_4M.fd when missing (default: DISK.vars.fd). UEFI
#                    variables persist in it across boots.
#   --log FILE       serial console log (default: DISK.console.log; overwritten)
#   --timeout SECS   kill QEMU (by its pid) after this long (default 300)
#   --disk2 FILE     a second virtio disk (raw), e.g. an update image or install target
#   --serial ID      the first disk's virtio serial number (at most 20 characters): the
#                    guest's udev names it /dev/disk/by-id/virtio-ID
#   --expect REGEX   the boot passes only if the console log matches (grep -E)
#   --kill-on REGEX  cut the power: SIGKILL QEMU as soon as the console log matches
#                    (checked every 0.2 s); the boot then passes (exit 0) if it matched
# One boot is one QEMU process: the guest powers off after reporting (its
# trident-e2e-report unit), and -no-reboot turns a reboot or a panic into an exit.
# Exit status: 0 booted (and matched), 1 QEMU failed, 2 no match, 124 timed out.
# Prints "vm: DISK booted in N s, console log: FILE"; on failure the guest's TRIDENT-E2E
# report lines (if any) and the last 40 console lines.
# The VM never gets a network device (-nic none).
set -euo pipefail

OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS_TEMPLATE=${OVMF_VARS_TEMPLATE:-/usr/share/OVMF/OVMF_VARS_4M.fd}
VARS='' LOG='' TIMEOUT=300 DISK2='' EXPECT='' SERIAL='' KILL_ON=''
die() { echo "vm: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --vars) VARS=$2; shift 2 ;;
        --log) LOG=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --disk2) DISK2=$2; shift 2 ;;
        --expect) EXPECT=$2; shift 2 ;;
        --serial) SERIAL=$2; shift 2 ;;
        --kill-on) KILL_ON=$2; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: vm.sh [options] DISK"
DISK=$1
[ -f "$DISK" ] || die "no disk image $DISK"
[ -z "$DISK2" ] || [ -f "$DISK2" ] || die "no disk image $DISK2"
[[ $SERIAL =~ ^[A-Za-z0-9_-]{0,20}$ ]] || die "bad --serial '$SERIAL' (at most 20 of A-Z a-z 0-9 _ -)"
[ -f "$OVMF_CODE" ] || die "no $OVMF_CODE (apt-get install ovmf)"
command -v qemu-system-x86_64 > /dev/null || die "no qemu-system-x86_64 (apt-get install qemu-system-x86)"
VARS=${VARS:-$DISK.vars.fd}
LOG=${LOG:-$DISK.console.log}
[ -f "$VARS" ] || cp "$OVMF_VARS_TEMPLATE" "$VARS"

args=(
    -accel tcg -machine q35 -cpu max -smp 2 -m 1024
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
    -drive "if=pflash,format=raw,unit=1,file=$VARS"
    -nic none -nographic -monitor none -serial "file:$LOG" -no-reboot
)
if [ -n "$SERIAL" ]; then
    # The serial is a property of the device, not of -drive.
    args+=(-drive "if=none,id=disk1,format=raw,file=$DISK" -device "virtio-blk-pci,drive=disk1,serial=$SERIAL")
else
    args+=(-drive "if=virtio,format=raw,file=$DISK")
fi
[ -z "$DISK2" ] || args+=(-drive "if=virtio,format=raw,file=$DISK2")

: > "$LOG"
qemu_err=$LOG.qemu-stderr
start=$SECONDS
qemu-system-x86_64 "${args[@]}" < /dev/null > "$qemu_err" 2>&1 &
pid=$!
# Never leave our QEMU behind, whatever happens to this script.
trap 'kill "$pid" 2>/dev/null || true' EXIT INT TERM

status=0
cut=no
while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
        kill "$pid" 2>/dev/null || true
        status=124
        break
    fi
    if [ -n "$KILL_ON" ]; then
        if grep -aqE -- "$KILL_ON" "$LOG"; then
            # A power cut: no shutdown, no flush of the guest's caches.
            kill -KILL "$pid" 2>/dev/null || true
            cut=yes
            break
        fi
        sleep 0.2
    else
        sleep 1
    fi
done
if [ $cut = yes ]; then
    wait "$pid" 2>/dev/null || true
elif [ $status -eq 0 ]; then
    wait "$pid" || status=1
else
    wait "$pid" 2>/dev/null || true
fi
trap - EXIT INT TERM
elapsed=$((SECONDS - start))

if [ $status -eq 0 ] && [ -n "$EXPECT" ] && ! grep -qE -- "$EXPECT" "$LOG"; then
    status=2
fi
if [ $status -eq 0 ] && [ -n "$KILL_ON" ] && [ $cut = no ]; then
    EXPECT=$KILL_ON # QEMU ended by itself before the console matched
    status=2
fi
case $status in
    0)
        if [ $cut = yes ]; then
            echo "vm: $DISK: power cut (QEMU killed) after $elapsed s, console log: $LOG"
        else
            echo "vm: $DISK booted in $elapsed s, console log: $LOG"
        fi
        ;;
    *)
        case $status in
            124) echo "vm: $DISK timed out after $elapsed s (QEMU pid $pid killed)" >&2 ;;
            2) echo "vm: $DISK: console never matched /$EXPECT/ ($elapsed s)" >&2 ;;
            *) echo "vm: QEMU failed after $elapsed s: $(tail -5 "$qemu_err")" >&2 ;;
        esac
        if grep -qa "TRIDENT-E2E:" "$LOG"; then
            echo "vm: the guest reported:" >&2
            grep -ao "TRIDENT-E2E: .*" "$LOG" | tr -d '\r' | sed 's/^/  | /' >&2
        fi
        echo "vm: last 40 console lines ($LOG):" >&2
        tail -n 40 "$LOG" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/^/  | /' >&2
        ;;
esac
rm -f "$qemu_err"
exit $status
