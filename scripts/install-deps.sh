#!/usr/bin/env bash
# Installs the Debian packages Trident's build, demo and tests need (idempotent; root).
set -euo pipefail
PKGS=(
  fdisk gdisk util-linux e2fsprogs xfsprogs dosfstools mtools zstd sqlite3 openssl time
  nginx-light docker-registry systemd-boot-efi systemd-boot efibootmgr python3-jsonschema
  debootstrap systemd-container squashfs-tools
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages (install them as root): ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
