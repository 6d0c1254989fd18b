#!/bin/bash
# Streaming pipeline benchmark (not a test). Needs root (loop device, mount).
#
# Builds a 2 GiB ext4 image filled with real files (a slice of /usr), compresses it with
# `zstd -3`, attaches a loop device over a file in /dev/shm, and measures in one run:
#   (a) zstd -dc IMAGE > /dev/null                      (decompression alone)
#   (b) zstd -dc IMAGE | dd of=LOOP bs=4M conv=fsync    (decompress + write, no hash)
#   (c) stream_bench (stream_image: read + SHA-384 + zstd + write + fsync) into LOOP,
#       with peak RSS from /usr/bin/time -v
# Each measurement runs BENCH_REPEAT times (default 2); the best run is reported.
# Goal: (c) >= 0.9 x (a), peak RSS <= 256 MiB.
#
# Environment: BENCH_SIZE_MIB (default 2048), BENCH_FILL_MIB (default 85% of it),
# BENCH_REPEAT, CARGO_TARGET_DIR.
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-2048}
FILL_MIB=${BENCH_FILL_MIB:-$((SIZE_MIB * 85 / 100))}
REPEAT=${BENCH_REPEAT:-2}

[ "$(id -u)" = 0 ] || { echo "bench-stream: needs root (loop devices, mount)" >&2; exit 1; }
for t in zstd mkfs.ext4 losetup mount /usr/bin/time dd sha384sum cargo tar; do
    command -v "$t" >/dev/null || { echo "bench-stream: missing $t" >&2; exit 1; }
done

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}
echo "== building examples/stream_bench (release)"
cargo build --release --example stream_bench >&2
BENCH="$TARGET_DIR/release/examples/stream_bench"

WORK=$(mktemp -d /dev/shm/trident-bench.XXXXXX)
MNT="$WORK/mnt"
LOOP=""
cleanup() {
    set +e
    mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building a ${SIZE_MIB} MiB ext4 image with ~${FILL_MIB} MiB of files from /usr"
truncate -s "${SIZE_MIB}M" "$WORK/image.raw"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$WORK/image.raw"
mkdir -p "$MNT"
mount -o loop "$WORK/image.raw" "$MNT"
# A tar stream of /usr cut at FILL_MIB: real files, and the last one is partial. The
# extracting tar reports the cut stream; that is expected here.
(tar -C /usr -cf - . 2>/dev/null | head -c "$((FILL_MIB * 1024 * 1024))" | tar -C "$MNT" -xf - 2>/dev/null) || true
df -h "$MNT" | tail -1
umount "$MNT"

echo "== compressing with zstd -3"
zstd -q -3 -T0 "$WORK/image.raw" -o "$WORK/image.zst"
RAW_SIZE=$(stat -c %s "$WORK/image.raw")
COMP_SIZE=$(stat -c %s "$WORK/image.zst")
SHA=$(sha384sum "$WORK/image.zst" | cut -d' ' -f1)
rm -f "$WORK/image.raw"
echo "raw=${RAW_SIZE} compressed=${COMP_SIZE}"

truncate -s "$RAW_SIZE" "$WORK/target"
LOOP=$(losetup -f --show "$WORK/target")
echo "target loop device: $LOOP (over $WORK/target)"

now() { date +%s.%N; }
rate() { awk -v b="$RAW_SIZE" -v t0="$1" -v t1="$2" 'BEGIN { printf "%.1f", b / (t1 - t0) / 1e6 }'; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

cpu() { awk '/User time/ { u = $NF } /System time/ { s = $NF } END { printf "%.2f", u + s }' "$1"; }

A=(); B=(); C=(); RSS=(); ACPU=(); CCPU=()
for i in $(seq "$REPEAT"); do
    t0=$(now)
    /usr/bin/time -v -o "$WORK/time-a.txt" zstd -q -dc "$WORK/image.zst" > /dev/null
    t1=$(now)
    A+=("$(rate "$t0" "$t1")")
    ACPU+=("$(cpu "$WORK/time-a.txt")")

    t0=$(now)
    zstd -q -dc "$WORK/image.zst" | dd of="$LOOP" bs=4M iflag=fullblock conv=fsync status=none
    t1=$(now)
    B+=("$(rate "$t0" "$t1")")

    /usr/bin/time -v -o "$WORK/time.txt" "$BENCH" "$WORK/image.zst" 0 "$COMP_SIZE" "$SHA" \
        "$RAW_SIZE" "$LOOP" > "$WORK/bench.txt"
    C+=("$(sed -n 's/.*mb_per_s=\([0-9.]*\).*/\1/p' "$WORK/bench.txt")")
    RSS+=("$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$WORK/time.txt")")
    CCPU+=("$(cpu "$WORK/time.txt")")
    echo "run $i: (a) ${A[-1]} MB/s (${ACPU[-1]} CPU-s)  (b) ${B[-1]} MB/s  (c) ${C[-1]} MB/s" \
        "(${CCPU[-1]} CPU-s), peak RSS ${RSS[-1]} KiB"
done

# Check the last pipeline run wrote the right bytes.
zstd -q -dc "$WORK/image.zst" | cmp - "$LOOP" && echo "target content verified"

A_BEST=$(best "${A[@]}"); B_BEST=$(best "${B[@]}"); C_BEST=$(best "${C[@]}")
RSS_MAX=$(printf '%s\n' "${RSS[@]}" | sort -n | tail -1)
RATIO=$(awk -v c="$C_BEST" -v a="$A_BEST" 'BEGIN { printf "%.2f", c / a }')
echo
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores, $(awk '/model name/ { sub(/.*: /, ""); print; exit }' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "image:   ${RAW_SIZE} bytes raw, ${COMP_SIZE} bytes zstd -3"
echo "(a) zstd -dc > /dev/null:          ${A_BEST} MB/s ($(printf '%s\n' "${ACPU[@]}" | sort -g | head -1) CPU-s)"
echo "(b) zstd -dc | dd of=LOOP bs=4M:   ${B_BEST} MB/s"
echo "(c) stream_image (hash+write):     ${C_BEST} MB/s ($(printf '%s\n' "${CCPU[@]}" | sort -g | head -1) CPU-s), peak RSS $((RSS_MAX / 1024)) MiB"
echo "(c)/(a) = ${RATIO} (goal >= 0.90); peak RSS goal <= 256 MiB"
