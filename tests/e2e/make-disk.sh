#!/bin/bash
# Turn a guest root directory into a bootable raw GPT disk image, without loop devices
# or mounts: the ESP is a FAT image built with mtools, each root volume an ext4 image
# built with `mke2fs -d`, both copied into a sparse file partitioned with sgdisk.
#
# Usage: tests/e2e/make-disk.sh [options] ROOTDIR OUTPUT
#   --volume NAME[=VERSION]  a root volume: partition "root-NAME", boot entry NAME.conf,
#                            /etc/os-version = VERSION (default: NAME). Repeatable;
#                            default: one volume "a".
#   --default NAME           `default NAME.conf` in loader.conf (default: the first volume;
#                            "none" writes no default line, leaving it to sort order)
#   --esp-mb N               ESP size in MiB (default 128)
#   --root-mb N              size of each root partition in MiB (default 768)
#   --spare-mb N             unpartitioned space left at the end in MiB (default 0)
#   --cmdline "..."          extra kernel command line (appended)
# Prints one line per volume: "volume NAME partuuid=UUID entry=NAME.conf version=VERSION".
# Reading ROOTDIR needs whatever rights its files need (root for a debootstrapped tree).
set -euo pipefail

ESP_MB=128 ROOT_MB=768 SPARE_MB=0 DEFAULT='' EXTRA_CMDLINE=''
VOLUMES=()
die() { echo "make-disk: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --volume) VOLUMES+=("$2"); shift 2 ;;
        --default) DEFAULT=$2; shift 2 ;;
        --esp-mb) ESP_MB=$2; shift 2 ;;
        --root-mb) ROOT_MB=$2; shift 2 ;;
        --spare-mb) SPARE_MB=$2; shift 2 ;;
        --cmdline) EXTRA_CMDLINE=$2; shift 2 ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || die "usage: make-disk.sh [options] ROOTDIR OUTPUT"
ROOT=$1 OUT=$2
[ ${#VOLUMES[@]} -gt 0 ] || VOLUMES=(a)
[ -d "$ROOT/etc" ] || die "$ROOT is not a root directory"
for tool in sgdisk mkfs.vfat mcopy mmd mke2fs debugfs; do
    command -v "$tool" > /dev/null || die "missing $tool (apt-get install gdisk dosfstools mtools e2fsprogs)"
done

# The guest's single kernel, initrd and systemd-boot.
shopt -s nullglob
kernels=("$ROOT"/boot/vmlinuz-*)
[ ${#kernels[@]} -eq 1 ] || die "expected one kernel in $ROOT/boot, found ${#kernels[@]}"
kernel=${kernels[0]}
kver=${kernel##*/vmlinuz-}
initrd=$ROOT/boot/initrd.img-$kver
[ -f "$initrd" ] || die "no initrd $initrd"
sdboot=$ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[ -f "$sdboot" ] || die "no systemd-boot at $sdboot (package systemd-boot-efi)"

work=$(mktemp -d "${OUT}.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- partition table --------------------------------------------------------------
names=() versions=() uuids=()
for v in "${VOLUMES[@]}"; do
    name=${v%%=*}
    [[ $name =~ ^[a-z0-9_-]+$ ]] || die "bad volume name '$name'"
    names+=("$name")
    if [[ $v == *=* ]]; then versions+=("${v#*=}"); else versions+=("$name"); fi
    uuids+=("$(cat /proc/sys/kernel/random/uuid)")
done
[ -n "$DEFAULT" ] || DEFAULT=${names[0]}

total_mb=$((1 + ESP_MB + ${#names[@]} * ROOT_MB + SPARE_MB + 1))
rm -f "$OUT"
truncate -s "${total_mb}M" "$OUT"
sgdisk_args=(-o -n "1:1M:+${ESP_MB}M" -t 1:EF00 -c 1:esp)
for i in "${!names[@]}"; do
    p=$((i + 2))
    # 8304: Linux x86-64 root (the Discoverable Partitions type).
    sgdisk_args+=(-n "$p:0:+${ROOT_MB}M" -t "$p:8304" -c "$p:root-${names[$i]}" -u "$p:${uuids[$i]}")
done
sgdisk "${sgdisk_args[@]}" "$OUT" > /dev/null

# Start of partition N in bytes, from the table just written.
part_start() {
    local sector
    sector=$(sgdisk -i "$1" "$OUT" | awk '/^First sector:/ {print $3}')
    echo $((sector * 512))
}

# --- ESP ----------------------------------------------------------------------------
esp=$work/esp.img
mkfs.vfat -C -F 32 -n ESP "$esp" $((ESP_MB * 1024)) > /dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries
mcopy -i "$esp" "$sdboot" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$sdboot" ::/EFI/systemd/systemd-bootx64.efi
{
    [ "$DEFAULT" = none ] || echo "default $DEFAULT.conf"
    echo "timeout 0"
    echo "editor no"
} > "$work/loader.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
for i in "${!names[@]}"; do
    name=${names[$i]}
    # Each volume owns its kernel and initrd, as after an A/B update.
    mmd -i "$esp" "::/$name"
    mcopy -i "$esp" "$kernel" "::/$name/vmlinuz"
    mcopy -i "$esp" "$initrd" "::/$name/initrd.img"
    cat > "$work/$name.conf" <<EOF
title Trident E2E $name (${versions[$i]})
version ${versions[$i]}
linux /$name/vmlinuz
initrd /$name/initrd.img
options root=PARTUUID=${uuids[$i]} rw console=ttyS0 panic=10 ${EXTRA_CMDLINE}
EOF
    mcopy -i "$esp" "$work/$name.conf" "::/loader/entries/$name.conf"
done
dd if="$esp" of="$OUT" bs=1M seek=$(($(part_start 1) / 1048576)) conv=notrunc,sparse status=none

# --- root volumes -------------------------------------------------------------------
for i in "${!names[@]}"; do
    name=${names[$i]}
    img=$work/root-$name.img
    truncate -s "${ROOT_MB}M" "$img"
    mke2fs -q -F -t ext4 -L "root-$name" -d "$ROOT" "$img" "${ROOT_MB}M" \
        || die "mke2fs of volume $name failed (is --root-mb $ROOT_MB big enough?)"
    # The per-volume variant: /etc/os-version, written into the image with debugfs.
    printf '%s\n' "${versions[$i]}" > "$work/os-version"
    debugfs -w -f - "$img" > "$work/debugfs.log" 2>&1 <<EOF
cd /etc
rm os-version
write $work/os-version os-version
sif os-version mode 0100644
sif os-version uid 0
sif os-version gid 0
EOF
    grep -q "Allocated inode" "$work/debugfs.log" || { cat "$work/debugfs.log" >&2; die "debugfs write failed"; }
    dd if="$img" of="$OUT" bs=1M seek=$(($(part_start $((i + 2))) / 1048576)) conv=notrunc,sparse status=none
    rm -f "$img"
    echo "volume $name partuuid=${uuids[$i]} entry=$name.conf version=${versions[$i]}"
done
