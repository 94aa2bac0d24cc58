#!/usr/bin/env bash
# Obtain a pinned source tarball from Debian's source archive and check its sha256.
#
# Usage: vendor/fetch.sh COMPONENT [DEST_DIR]     (COMPONENT: libbpf, elfutils or zlib; the
#        Debian source package of the same name. DEST_DIR defaults to build/.)
# Prints the tarball's path. vendor/COMPONENT/ holds the pin: VERSION, DEBIAN_VERSION, SHA256.
# For libbpf, LIBBPF_TARBALL=/path skips the download (offline builds).
set -euo pipefail

vendor=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
component=${1:?usage: vendor/fetch.sh COMPONENT [DEST_DIR]}
here=$vendor/$component
[ -f "$here/SHA256" ] || { echo "vendor/fetch.sh: no pin in vendor/$component" >&2; exit 2; }
dest_arg=${2:-$vendor/../build}
dest=$(mkdir -p "$dest_arg" && cd "$dest_arg" && pwd)
deb_version=$(cat "$here/DEBIAN_VERSION")
read -r want_sha tarball_name < "$here/SHA256"
tarball="$dest/$tarball_name"

die() { echo "vendor/$component: $*" >&2; exit 1; }

check_sha() {  # $1: file
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$want_sha" ] || die "sha256 mismatch for $1: got $got, want $want_sha;" \
        "delete it and run vendor/fetch.sh $component"
}

if [ "$component" = libbpf ] && [ -n "${LIBBPF_TARBALL:-}" ]; then
    [ -f "$LIBBPF_TARBALL" ] || die "LIBBPF_TARBALL=$LIBBPF_TARBALL does not exist"
    check_sha "$LIBBPF_TARBALL"
    [ "$(readlink -f "$LIBBPF_TARBALL")" = "$(readlink -f "$tarball")" ] || cp "$LIBBPF_TARBALL" "$tarball"
    echo "$tarball"
    exit 0
fi

# Already here: this directory (an sdist carries the tarballs in vendor/COMPONENT/) or DEST.
for candidate in "$here/$tarball_name" "$tarball"; do
    if [ -f "$candidate" ]; then
        check_sha "$candidate"
        echo "$candidate"
        exit 0
    fi
done

command -v apt-get >/dev/null || die "apt-get not found: cannot download $tarball_name"

# shellcheck source=vendor/apt-private.sh
. "$vendor/apt-private.sh"
private_apt "$dest/apt-src" deb-src
apt-get "${apt_opts[@]}" update >&2 || die "apt-get update (deb-src) failed"
( cd "$dest" && apt-get "${apt_opts[@]}" source --download-only "$component=$deb_version" >&2 ) \
    || die "apt-get source $component=$deb_version failed (this machine's apt has no Debian 12 sources?)"
[ -f "$tarball" ] || die "apt-get source did not produce $tarball_name"
check_sha "$tarball"
echo "$tarball"
