#!/usr/bin/env bash
# An arm64 tree of Debian 12 packages, downloaded and unpacked (never installed): the aarch64
# wheel's build takes Python's pyconfig.h from it, and the aarch64 smoke test runs its Python
# under qemu-user with it as the root (.ci/aarch64-smoke).
#
# Usage: vendor/arm64-sysroot.sh DEST      Prints DEST/root. Done once; DEST/root/.done marks it.
set -euo pipefail
vendor=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=$(mkdir -p "${1:?usage: vendor/arm64-sysroot.sh DEST}" && cd "$1" && pwd)
packages=(libc6 libgcc-s1 zlib1g libexpat1 libffi8 python3.11-minimal libpython3.11-minimal
    libpython3.11-stdlib libpython3.11-dev)
if [ "$(cat "$dest/root/.done" 2>/dev/null)" = "${packages[*]}" ]; then
    echo "$dest/root"
    exit 0
fi
command -v apt-get >/dev/null || { echo "arm64-sysroot: needs apt-get (Debian)" >&2; exit 1; }
# shellcheck source=vendor/apt-private.sh
. "$vendor/apt-private.sh"
private_apt "$dest/apt" deb arm64
{
    apt-get "${apt_opts[@]}" update
    rm -rf "$dest/debs" "$dest/root"
    mkdir -p "$dest/debs" "$dest/root"
    (cd "$dest/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%/:arm64}")
} >&2 || { echo "arm64-sysroot: downloading ${packages[*]} for arm64 failed" >&2; exit 1; }
for deb in "$dest"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
done
echo "${packages[*]}" > "$dest/root/.done"
echo "$dest/root"
