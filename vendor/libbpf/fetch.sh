#!/usr/bin/env bash
# Obtain the pinned libbpf source tarball from Debian's source archive and check its sha256.
#
# Usage: vendor/libbpf/fetch.sh [DEST_DIR]     (default: build/)
# Prints the tarball's path. LIBBPF_TARBALL=/path skips the download (offline builds).
#
# apt runs on a private state (its own sources, lists and cache under DEST_DIR/apt) whose
# deb-src entries are derived from this machine's own deb entries, so /etc/apt is never changed
# and no archive host is written in this repository.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=$(mkdir -p "${1:-$here/../../build}" && cd "${1:-$here/../../build}" && pwd)
version=$(cat "$here/VERSION")
deb_version=$(cat "$here/DEBIAN_VERSION")
read -r want_sha tarball_name < "$here/SHA256"
tarball="$dest/$tarball_name"

die() { echo "vendor/libbpf: $*" >&2; exit 1; }

check_sha() {  # $1: file
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$want_sha" ] || die "sha256 mismatch for $1: got $got, want $want_sha;" \
        "delete it and run vendor/libbpf/fetch.sh, or set LIBBPF_BATCH_USE_SYSTEM=1"
}

if [ -n "${LIBBPF_TARBALL:-}" ]; then
    [ -f "$LIBBPF_TARBALL" ] || die "LIBBPF_TARBALL=$LIBBPF_TARBALL does not exist"
    check_sha "$LIBBPF_TARBALL"
    [ "$(readlink -f "$LIBBPF_TARBALL")" = "$(readlink -f "$tarball")" ] || cp "$LIBBPF_TARBALL" "$tarball"
    echo "$tarball"
    exit 0
fi

if [ -f "$tarball" ]; then
    check_sha "$tarball"
    echo "$tarball"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found; download libbpf_$version.orig.tar.gz" \
    "yourself and set LIBBPF_TARBALL=/path/to/it"

# Private apt state: deb-src twins of the machine's own deb sources.
state="$dest/apt"
mkdir -p "$state/sources.list.d" "$state/lists/partial" "$state/cache/archives/partial"
: > "$state/sources.list.d/src.sources"
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -e 's/^Types:.*\bdeb\b.*/Types: deb-src/' "$f" >> "$state/sources.list.d/src.sources"
    echo >> "$state/sources.list.d/src.sources"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n -e 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >> "$state/sources.list.d/src.list"
done
apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$state/sources.list.d"
    -o "Dir::State::Lists=$state/lists"
    -o "Dir::Cache=$state/cache"
    -o "APT::Sandbox::User=root"
    -q
)
apt-get "${apt_opts[@]}" update >&2 || die "apt-get update (deb-src) failed"
( cd "$dest" && apt-get "${apt_opts[@]}" source --download-only "libbpf=$deb_version" >&2 ) \
    || die "apt-get source libbpf=$deb_version failed; set LIBBPF_TARBALL=/path to build offline"
[ -f "$tarball" ] || die "apt-get source did not produce $tarball_name"
check_sha "$tarball"
echo "$tarball"
