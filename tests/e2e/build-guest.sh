#!/bin/bash
# Build (once per machine) the small Debian 12 guest root the VM suite boots, cached as a
# tar.zst keyed on a hash of this recipe (this whole script, which holds the package
# list and every post-install step).
#
# Usage: tests/e2e/build-guest.sh            -> prints the path of the cached tar.zst
#        tests/e2e/build-guest.sh --extract DIR
#                                           -> extracts the cached root into DIR (new or
#                                              empty) and prints DIR
#        source tests/e2e/build-guest.sh --lib -> only defines layer_staging (see below)
# Env:   TRIDENT_E2E_CACHE  (default /var/cache/trident-e2e)
#        TRIDENT_E2E_MIRROR (default: the first Debian URI in the apt sources)
# Needs: root, debootstrap, zstd, tar.
#
# The guest never contains the project binaries: a run layers them on top of an
# extracted copy with layer_staging (e.g. after `make install DESTDIR=$stage`).
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,linux-image-amd64,udev,kmod,efibootmgr,util-linux,systemd-boot,e2fsprogs
# Kernel modules kept (plus their dependencies and the crypto API modules); all others
# are deleted. dm-crypt and dm-verity look up ciphers and hashes at run time, which is
# why kernel/crypto and arch/x86/crypto stay whole.
KEEP_MODULES="virtio_pci virtio_blk ext4 vfat nls_cp437 nls_ascii efivarfs md_mod raid1 dm_mod dm_crypt dm_verity"
# Modules the initramfs carries (MODULES=list): just enough to find and mount the root.
INITRAMFS_MODULES="virtio_pci virtio_blk ext4"

# layer_staging STAGE ROOT: copy a staging tree (the output of `make install
# DESTDIR=STAGE`, or any overlay of files) over a guest root, keeping owners and modes.
layer_staging() {
    local stage=$1 root=$2
    [ -d "$stage" ] || { echo "layer_staging: no staging directory $stage" >&2; return 1; }
    [ -d "$root/etc" ] || { echo "layer_staging: $root is not a guest root" >&2; return 1; }
    tar -C "$stage" --numeric-owner -cf - . | tar -C "$root" --numeric-owner -xf -
}

if [ "${1:-}" = "--lib" ]; then
    # shellcheck disable=SC2317 # exit when executed rather than sourced
    return 0 2>/dev/null || exit 0
fi

CACHE=${TRIDENT_E2E_CACHE:-/var/cache/trident-e2e}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { echo "build-guest: $*" >&2; }

mirror() {
    if [ -n "${TRIDENT_E2E_MIRROR:-}" ]; then echo "$TRIDENT_E2E_MIRROR"; return; fi
    local uri
    uri=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v security | head -1 | awk '{print $2}') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

# The unit and script that report each boot on the serial console.
write_report_unit() {
    local root=$1
    mkdir -p "$root/usr/lib/trident-e2e" "$root/var/lib/trident-e2e"
    cat > "$root/usr/lib/trident-e2e/report" <<'EOF'
#!/bin/sh
# Reports this boot on the serial console for the VM suite (tests/e2e), then powers off
# unless the kernel command line has trident.e2e.stay.
efivar() { # name: a systemd-boot (LoaderInfo vendor GUID) UTF-16 string variable
    f=/sys/firmware/efi/efivars/$1-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
    # efivarfs files cannot seek: read them whole.
    [ -r "$f" ] && cat "$f" | tail -c +5 | tr -d '\000' || echo "-"
}
version=$(cat /etc/os-version 2>/dev/null || echo unknown)
{
    echo "TRIDENT-E2E: booted $version root=$(findmnt -no SOURCE /) entry=$(efivar LoaderEntrySelected)"
    echo "TRIDENT-E2E: cmdline $(cat /proc/cmdline)"
    if [ -s /var/lib/trident-e2e/results ]; then
        sed 's/^/TRIDENT-E2E: result /' /var/lib/trident-e2e/results
    fi
    echo "TRIDENT-E2E: end"
} > /dev/ttyS0 2>&1
grep -qw trident.e2e.stay /proc/cmdline || systemctl --no-block poweroff
EOF
    chmod 0755 "$root/usr/lib/trident-e2e/report"
    cat > "$root/usr/lib/systemd/system/trident-e2e-report.service" <<'EOF'
[Unit]
Description=Report this boot to the VM test harness (serial console)
After=multi-user.target boot-complete.target
Wants=boot-complete.target

[Service]
Type=oneshot
ExecStart=/usr/lib/trident-e2e/report

[Install]
WantedBy=multi-user.target
EOF
    ln -sf /usr/lib/systemd/system/trident-e2e-report.service \
        "$root/etc/systemd/system/multi-user.target.wants/trident-e2e-report.service"
}

prune_modules() {
    local root=$1 kver=$2 m
    local keep="$root/.keep-modules"
    : > "$keep"
    for m in $KEEP_MODULES; do
        # Built-in modules print "builtin NAME"; modules print "insmod PATH".
        chroot "$root" modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}' >> "$keep"
    done
    (cd "$root" && find "lib/modules/$kver/kernel/crypto" "lib/modules/$kver/kernel/arch/x86/crypto" \
        "lib/modules/$kver/kernel/lib" -name '*.ko*' -printf '/%p\n') >> "$keep"
    find "$root/lib/modules/$kver/kernel" -name '*.ko*' -printf '/%P\n' | sed "s|^|/lib/modules/$kver/kernel|" \
        | sort -u | comm -23 - <(sort -u "$keep") | sed "s|^|$root|" | xargs -r rm -f
    find "$root/lib/modules/$kver/kernel" -type d -empty -delete
    rm -f "$keep"
    chroot "$root" depmod "$kver"
}

post_install() {
    local root=$1 kver
    kver=$(basename "$(ls -d "$root"/lib/modules/*)")
    mount -t proc proc "$root/proc" # unmounted here or by build()'s EXIT trap

    prune_modules "$root" "$kver"
    # gzip: the guest has no zstd binary. The systemd-boot kernel hook complains that
    # there is no ESP to copy the initrd to; make-disk.sh puts it on the ESP.
    sed -i 's/^MODULES=.*/MODULES=list/; s/^#\? *COMPRESS=.*/COMPRESS=gzip/' \
        "$root/etc/initramfs-tools/initramfs.conf"
    # shellcheck disable=SC2086 # one module per word
    printf '%s\n' $INITRAMFS_MODULES > "$root/etc/initramfs-tools/modules"
    local out
    out=$(chroot "$root" update-initramfs -u -k "$kver" 2>&1) || { echo "$out" >&2; log "update-initramfs failed"; exit 1; }
    umount "$root/proc"

    # Locked root, a login on the serial console, no network to wait for.
    chroot "$root" passwd -q -l root
    ln -sf /usr/lib/systemd/system/serial-getty@.service \
        "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
    echo trident-e2e > "$root/etc/hostname"
    echo "debian-12-base" > "$root/etc/os-version"
    write_report_unit "$root"

    # Shrink: documentation, locales, package caches.
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
        "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
}

# Unmount whatever an interrupted debootstrap or chroot left mounted below $1.
unmount_under() {
    findmnt -rn -o TARGET | grep "^$1/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

build() {
    local work
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    # shellcheck disable=SC2064
    trap "unmount_under '$work'; rm -rf '$work'" EXIT
    log "building $tarball (debootstrap $SUITE from $(mirror))"
    local t0=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$(mirror)" \
        > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
    log "debootstrap done in $((SECONDS - t0)) s; pruning"
    post_install "$work/root"
    log "guest root is $(du -sh "$work/root" | cut -f1); packing"
    tar -C "$work/root" --numeric-owner --xattrs -cf - . | zstd -q -T2 -10 -o "$work/guest.tar.zst"
    mv "$work/guest.tar.zst" "$tarball"
    # Older recipes' guests are never used again.
    find "$CACHE" -maxdepth 1 -name 'guest-*.tar.zst' ! -name "${tarball##*/}" -delete
    rm -rf "$work"
    trap - EXIT
    log "built in $((SECONDS - t0)) s"
}

[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }
mkdir -p "$CACHE"
key=$(sha256sum "$SELF" | cut -c1-16)
tarball="$CACHE/guest-$key.tar.zst"

# One builder per machine; others wait and reuse.
exec 9> "$CACHE/.lock"
flock 9
[ -s "$tarball" ] || build
exec 9>&-

if [ "${1:-}" = "--extract" ]; then
    dir=${2:?usage: build-guest.sh --extract DIR}
    mkdir -p "$dir"
    [ -z "$(ls -A "$dir")" ] || { log "$dir is not empty"; exit 1; }
    zstd -q -dc "$tarball" | tar -C "$dir" --numeric-owner --xattrs -xf -
    echo "$dir"
else
    echo "$tarball"
fi
