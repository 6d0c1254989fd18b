#!/usr/bin/env bash
# The built-in demo: no real disk needed. Run through `make demo`.
#  1. validate every example Host Configuration and print its servicing plan;
#  2. build two OS images (v1, v2) from fixture disk images into COSI files, inspect and
#     verify them;
#  3. (root) install v1 onto a disk image file through a loop device, commit its first
#     boot, A/B-update it to v2 (stage, finalize, commit on the new volume), show the
#     status and history, and check a manual rollback. Firmware variables live in a
#     directory and "which volume booted" is told with --booted-root: everything else
#     (partitioning, streaming, ESP, boot entries, datastore) is the real thing.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIDENT=${TRIDENT:-target/release/trident}
DEMO_DIR=${DEMO_DIR:-target/demo}
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

for hc in examples/*.yaml; do
  say "trident validate $hc"
  "$TRIDENT" validate "$hc" && echo "valid"
  say "trident plan $hc"
  "$TRIDENT" plan "$hc"
done

for v in v1 v2; do
  say "build OS image $v: fixture disk image -> COSI"
  ESP_MB=40 ROOT_MB=64 VAR_MB=0 tests/fixtures/make-disk-image.sh "$DEMO_DIR/$v.img" "$v" >/dev/null
  "$TRIDENT" cosi build "$DEMO_DIR/$v.img" -o "$DEMO_DIR/$v.cosi" --force
  rm -f "$DEMO_DIR/$v.img"
done

say "trident cosi inspect $DEMO_DIR/v2.cosi"
"$TRIDENT" cosi inspect "$DEMO_DIR/v2.cosi"
say "trident cosi verify $DEMO_DIR/v2.cosi"
"$TRIDENT" cosi verify "$DEMO_DIR/v2.cosi"

say "trident get status (a host Trident has never touched)"
"$TRIDENT" get status --datastore "$DEMO_DIR/none.sqlite"

if [ "$(id -u)" != 0 ]; then
  say "skipping the install and update part: it needs root (loop devices)"
  exit 0
fi

HOST=$DEMO_DIR/host
rm -rf "$HOST"
mkdir -p "$HOST/efivars" "$HOST/root/etc" "$HOST/work"
echo 0123456789abcdef0123456789abcdef > "$HOST/root/etc/machine-id"
truncate -s 320M "$HOST/disk.img"
LOOP=$(losetup --find --show "$HOST/disk.img")
cleanup() {
  # A failed step may leave the work directory's mounts behind.
  grep -o " $HOST/work[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | xargs -r umount 2>/dev/null || true
  partx -d "$LOOP" 2>/dev/null || true   # the partition nodes the install added (BLKPG)
  losetup -d "$LOOP" 2>/dev/null || true
}
trap cleanup EXIT

hc() { # IMAGE
  cat <<EOF
storage:
  disks:
  - id: os
    device: $LOOP
    partitions:
    - { id: esp, type: esp, size: 40M }
    - { id: root-a, type: root, size: 80M }
    - { id: root-b, type: root, size: 80M }
    - { id: trident, type: linux-generic, size: 16M }
  abUpdate:
    volumePairs:
    - { id: root, volumeAId: root-a, volumeBId: root-b }
  filesystems:
  - deviceId: esp
    mountPoint: { path: /boot/efi, options: umask=0077 }
  - deviceId: root
    mountPoint: /
  - deviceId: trident
    source: new
    mountPoint: /var/lib/trident
image:
  url: file://$DEMO_DIR/$1.cosi
  sha384: ignored
os:
  hostname: demo-host
EOF
}
hc v1 > "$HOST/v1.yaml"
hc v2 > "$HOST/v2.yaml"
ENGINE=(--datastore "$HOST/datastore.sqlite" --efivars "$HOST/efivars" --host-root "$HOST/root" --work-dir "$HOST/work" --no-reboot)
part() { echo "${LOOP}p$1"; }

say "trident install $HOST/v1.yaml   (onto $LOOP, a loop device over $HOST/disk.img)"
"$TRIDENT" install "$HOST/v1.yaml" "${ENGINE[@]}"
say "first boot of volume A: trident commit"
"$TRIDENT" commit "${ENGINE[@]}" --booted-root "$(part 2)"
"$TRIDENT" get status --format summary --datastore "$HOST/datastore.sqlite"

say "A/B update to v2: trident update $HOST/v2.yaml --allowed-operations stage"
"$TRIDENT" update "$HOST/v2.yaml" --allowed-operations stage "${ENGINE[@]}" --booted-root "$(part 2)"
say "trident finalize   (one-shot boot entry for volume B; --no-reboot)"
"$TRIDENT" finalize "${ENGINE[@]}" --booted-root "$(part 2)"
say "trial boot of volume B: trident commit"
"$TRIDENT" commit "${ENGINE[@]}" --booted-root "$(part 3)"
"$TRIDENT" get status --format summary --datastore "$HOST/datastore.sqlite"
say "trident get history"
"$TRIDENT" get history --format summary --datastore "$HOST/datastore.sqlite"
say "trident rollback --ab --check   (what a manual rollback would do)"
"$TRIDENT" rollback --ab --check "${ENGINE[@]}" --booted-root "$(part 3)"
