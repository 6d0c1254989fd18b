#!/bin/bash
# Build (once per machine) the Debian 12 root directory the container tier boots with
# systemd-nspawn, cached as a tar.zst keyed on a hash of this recipe.
#
# Usage: scripts/container-rootfs.sh            -> prints the path of the tar.zst
#        scripts/container-rootfs.sh --extract  -> prints the path of an extracted,
#                                                  never-modified root directory
# Env:   TRIDENT_CONTAINER_CACHE (default /var/cache/trident-container)
#        TRIDENT_CONTAINER_MIRROR (default: the first Debian URI in the apt sources)
# Needs: root, debootstrap, zstd. Boots use --volatile=overlay, so the cached root is
# only ever read.
set -euo pipefail

CACHE=${TRIDENT_CONTAINER_CACHE:-/var/cache/trident-container}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,util-linux,kmod

# --- recipe (everything above and below that changes the result is hashed) ---------
recipe() {
    echo "suite=$SUITE variant=minbase packages=$PACKAGES"
    # The post-install steps are part of the recipe.
    declare -f post_install
}

post_install() {
    local root=$1
    # A container has no consoles to spawn logins on, no hardware clock, no udev.
    rm -f "$root"/etc/systemd/system/getty.target.wants/*
    ln -sf /dev/null "$root"/etc/systemd/system/console-getty.service
    ln -sf /dev/null "$root"/etc/systemd/system/systemd-timesyncd.service
    # Shrink: documentation and locales are not needed.
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # An empty machine-id: systemd generates one per boot (volatile).
    : > "$root"/etc/machine-id
    echo trident-ct > "$root"/etc/hostname
}
# -------------------------------------------------------------------------------------

mirror() {
    if [ -n "${TRIDENT_CONTAINER_MIRROR:-}" ]; then echo "$TRIDENT_CONTAINER_MIRROR"; return; fi
    local uri
    uri=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v security | head -1 | awk '{print $2}') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

key=$(recipe | sha256sum | cut -c1-16)
tarball="$CACHE/rootfs-$key.tar.zst"
mkdir -p "$CACHE"

build() {
    local work
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "container-rootfs: building $tarball (debootstrap $SUITE from $(mirror))" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$(mirror)" \
        > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
    post_install "$work/root"
    tar -C "$work/root" --numeric-owner --xattrs -cf - . | zstd -q -T2 -10 -o "$work/rootfs.tar.zst"
    mv "$work/rootfs.tar.zst" "$tarball"
    rm -rf "$work"
    trap - EXIT
}

# One builder per machine; others wait and reuse.
exec 9> "$CACHE/.lock"
flock 9
[ -s "$tarball" ] || build

if [ "${1:-}" = "--extract" ]; then
    dir="$CACHE/root-$key"
    if [ ! -e "$dir/.complete" ]; then
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        zstd -q -dc "$tarball" | tar -C "$dir.tmp" --numeric-owner --xattrs -xf -
        touch "$dir.tmp/.complete"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
else
    echo "$tarball"
fi
