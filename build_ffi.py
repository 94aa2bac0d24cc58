"""CFFI build module: the cdef of what libbpf-batch calls, and how to get the libbpf it links.

cffi executes this file (``__name__ == "__cffi__"``) and ``setup.py`` imports it, so the top level
only declares; libbpf is built by :func:`build_vendored_libbpf`, which the build hook calls.

Environment:
  LIBBPF_BATCH_USE_SYSTEM=1   link the system's libbpf (pkg-config libbpf, at least
                              MIN_SYSTEM_LIBBPF) instead of the pin
  LIBBPF_TARBALL=/path        use this libbpf tarball instead of downloading it (offline builds)
  LIBBPF_BATCH_PREFIX=/dir    libbpf.a, libelf and zlib already built there (vendor/manylinux.sh
                              sets it for the release wheels); nothing is built here
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent
VENDOR = ROOT / "vendor" / "libbpf"
BUILD = ROOT / "build"
PREFIX = Path(os.environ.get("LIBBPF_BATCH_PREFIX") or BUILD / "libbpf" / "install")
EXPORTS = VENDOR.parent / "exports.map"  # the extension exports PyInit__libbpf, nothing else
# libbpf 1.0 returns -errno from every call (older ones only in strict mode): the bindings need it.
MIN_SYSTEM_LIBBPF = "1.0.0"
# setuptools refuses py_limited_api on free-threaded CPython (3.13t, 3.14t), which has no stable
# ABI yet: there the extension is built for that one interpreter instead.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

CDEF = """
typedef int... __u32;
typedef int... __u64;

/* uapi linux/bpf.h: the compiler fills in the values */
enum bpf_map_type {
    BPF_MAP_TYPE_UNSPEC, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY,
    BPF_MAP_TYPE_PERF_EVENT_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_STACK_TRACE, BPF_MAP_TYPE_CGROUP_ARRAY, BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_ARRAY_OF_MAPS,
    BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_SOCKMAP, BPF_MAP_TYPE_CPUMAP,
    BPF_MAP_TYPE_XSKMAP, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_CGROUP_STORAGE,
    BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE, BPF_MAP_TYPE_QUEUE,
    BPF_MAP_TYPE_STACK, BPF_MAP_TYPE_SK_STORAGE, BPF_MAP_TYPE_DEVMAP_HASH,
    BPF_MAP_TYPE_STRUCT_OPS, BPF_MAP_TYPE_RINGBUF, BPF_MAP_TYPE_INODE_STORAGE,
    BPF_MAP_TYPE_TASK_STORAGE, BPF_MAP_TYPE_BLOOM_FILTER, BPF_MAP_TYPE_USER_RINGBUF, ...
};  /* newer types (CGRP_STORAGE, 6.2) are numbered in maps.py: Debian's 6.1 uapi lacks them */

#define BPF_ANY ...
#define BPF_NOEXIST ...
#define BPF_EXIST ...
#define BPF_F_LOCK ...

#define BPF_F_NO_PREALLOC ...
#define BPF_F_NO_COMMON_LRU ...
#define BPF_F_NUMA_NODE ...
#define BPF_F_RDONLY ...
#define BPF_F_WRONLY ...
#define BPF_F_STACK_BUILD_ID ...
#define BPF_F_ZERO_SEED ...
#define BPF_F_RDONLY_PROG ...
#define BPF_F_WRONLY_PROG ...
#define BPF_F_CLONE ...
#define BPF_F_MMAPABLE ...
#define BPF_F_PRESERVE_ELEMS ...
#define BPF_F_INNER_MAP ...
#define BPF_OBJ_NAME_LEN ...

struct bpf_map_info {
    __u32 type;
    __u32 id;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
    char name[16];
    __u32 ifindex;
    __u32 btf_vmlinux_value_type_id;
    __u64 netns_dev;
    __u64 netns_ino;
    __u32 btf_id;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u64 map_extra;
    ...;
};

/* bpf.h */
struct bpf_map_create_opts {
    size_t sz;
    __u32 btf_fd;
    __u32 btf_key_type_id;
    __u32 btf_value_type_id;
    __u32 btf_vmlinux_value_type_id;
    __u32 inner_map_fd;
    __u32 map_flags;
    __u64 map_extra;
    __u32 numa_node;
    __u32 map_ifindex;
    ...;  /* newer libbpf versions append fields: a system libbpf's layout is the one used */
};
int bpf_map_create(enum bpf_map_type map_type, const char *map_name, __u32 key_size,
                   __u32 value_size, __u32 max_entries, const struct bpf_map_create_opts *opts);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_lookup_elem_flags(int fd, const void *key, void *value, __u64 flags);
int bpf_map_lookup_and_delete_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
    ...;
};
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys,
                                    void *values, __u32 *count,
                                    const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_map_get_next_id(__u32 start_id, __u32 *next_id);
int bpf_map_get_fd_by_id(__u32 id);
int bpf_btf_get_fd_by_id(__u32 id);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);

/* libbpf.h */
const char *libbpf_version_string(void);
int libbpf_num_possible_cpus(void);

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct bpf_object_open_opts;
struct bpf_object *bpf_object__open_file(const char *path,
                                         const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_map__fd(const struct bpf_map *map);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
int bpf_link__destroy(struct bpf_link *link);

/* btf.h */
struct btf;
struct btf *btf__load_from_kernel_by_id(__u32 id);
void btf__free(struct btf *btf);
const void *btf__raw_data(const struct btf *btf, __u32 *size);

/* ours (SOURCE below): loops that must not return to Python half-way */
int lbb_put_back(int fd, const char *keys, const char *values, __u32 key_size,
                 __u32 value_stride, __u32 n, int mode, int *errs);
int lbb_per_key_batch(int fd, void *key, void *next_key, int *state, int delete_,
                      char *keys, char *values, __u32 key_size, __u32 value_stride,
                      __u32 max_count, __u32 *count);
void lbb_close_fd(int *fd);
long lbb_write(int fd, const char *buf, size_t len, long *written);
"""

SOURCE = r"""
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

/* Put back n elements a drain deleted but did not deliver, one bpf_map_update_elem each:
   batch update takes no BPF_NOEXIST (only BPF_F_LOCK), and a key written again meanwhile
   must keep its newer value. One C call, so a Python signal handler can't stop it half-way.
   mode 0: BPF_NOEXIST; 1: values are inner map ids, written as fds (HASH_OF_MAPS);
   2: as 1, only into an empty slot (ARRAY_OF_MAPS: arrays refuse BPF_NOEXIST).
   errs[i] is 0 (back in the map), EEXIST (the key is there again) or the errno.
   Returns how many went back. */
int lbb_put_back(int fd, const char *keys, const char *values, __u32 key_size,
                 __u32 value_stride, __u32 n, int mode, int *errs)
{
    int restored = 0;
    for (__u32 i = 0; i < n; i++) {
        const char *key = keys + (size_t)i * key_size;
        const void *value = values + (size_t)i * value_stride;
        __u32 inner_fd, inner_id;
        int rc;
        if (mode == 0) {
            rc = bpf_map_update_elem(fd, key, value, BPF_NOEXIST);
        } else {
            memcpy(&inner_id, value, sizeof(inner_id));
            if (mode == 2 && bpf_map_lookup_elem(fd, key, &inner_fd) == 0) {
                errs[i] = EEXIST;
                continue;
            }
            rc = bpf_map_get_fd_by_id(inner_id);
            if (rc >= 0) {
                inner_fd = (__u32)rc;
                rc = bpf_map_update_elem(fd, key, &inner_fd, mode == 2 ? BPF_ANY : BPF_NOEXIST);
                close((int)inner_fd);
            }
        }
        errs[i] = rc < 0 ? -rc : 0;
        restored += rc >= 0;
    }
    return restored;
}

/* Close *fd once (a cffi gc destructor too): no Python frame, so no signal handler can
   raise half-way, as one could in a __del__ (where the exception would be swallowed). */
void lbb_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* One write(2), its result (bytes, or -errno) stored in *written before Python runs again:
   a signal handler raising right after can't hide how much went out. No retry on EINTR, so
   Ctrl-C still interrupts a write to a reader that stopped reading. */
long lbb_write(int fd, const char *buf, size_t len, long *written)
{
    ssize_t n = write(fd, buf, len);
    *written = n < 0 ? -errno : (long)n;
    return *written;
}

/* One batch of the per-key walk, for maps without batch lookup(-and-delete): what the batch
   call does, in one C call, so that what it deleted is always in keys/values and *count when
   Python sees it. The next key is taken before the current one is deleted (a deleted cursor
   can't be followed); a key deleted by someone else in between is skipped. *state: 0 not
   started, 1 key holds the next key to take, 2 the walk is over. Returns 1 at the end,
   0 when there may be more, -errno on error (*count elements were still taken). */
int lbb_per_key_batch(int fd, void *key, void *next_key, int *state, int delete_,
                      char *keys, char *values, __u32 key_size, __u32 value_stride,
                      __u32 max_count, __u32 *count)
{
    int rc;
    if (*state == 0) {
        rc = bpf_map_get_next_key(fd, NULL, key);
        if (rc == -ENOENT)
            *state = 2;
        else if (rc < 0)
            return rc;
        else
            *state = 1;
    }
    while (*state == 1 && *count < max_count) {
        char *value = values + (size_t)*count * value_stride;
        int more;
        rc = bpf_map_get_next_key(fd, key, next_key);
        if (rc < 0 && rc != -ENOENT)
            return rc;
        more = rc == 0;
        rc = bpf_map_lookup_elem(fd, key, value);
        if (rc == 0 && delete_)
            rc = bpf_map_delete_elem(fd, key);
        if (rc == 0) {
            memcpy(keys + (size_t)*count * key_size, key, key_size);
            *count += 1;
        } else if (rc != -ENOENT) {
            return rc;
        }
        memcpy(key, next_key, key_size);
        if (!more)
            *state = 2;
    }
    return *state == 2;
}
"""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pin(vendor: Path = VENDOR) -> tuple[str, str, str]:
    """The pinned (version, sha256, tarball name) from vendor/libbpf (or another vendor/ pin)."""
    version = (vendor / "VERSION").read_text().strip()
    sha, name = (vendor / "SHA256").read_text().split()
    return version, sha, name


def check_tarball(path: Path, want_sha: str) -> None:
    """Raise RuntimeError unless ``path`` has the pinned sha256."""
    got = sha256_of(path)
    if got != want_sha:
        raise RuntimeError(
            f"vendor/libbpf: sha256 mismatch for {path}: got {got}, want {want_sha}; "
            "delete it and run vendor/libbpf/fetch.sh, or set LIBBPF_BATCH_USE_SYSTEM=1"
        )


def use_system_libbpf(environ: dict[str, str] | None = None) -> bool:
    """True when LIBBPF_BATCH_USE_SYSTEM=1 asks for the system's libbpf."""
    env = os.environ if environ is None else environ
    return env.get("LIBBPF_BATCH_USE_SYSTEM", "") == "1"


def no_source_message(reason: str, vendor: Path = VENDOR) -> str:
    """What to do when the pinned libbpf source can't be had: the three ways out."""
    version, sha, _ = read_pin(vendor)
    return f"""\
libbpf-batch: cannot obtain the libbpf {version} source: {reason}
Three ways to build anyway:
  1. LIBBPF_TARBALL=/path/to/libbpf-{version}.tar.gz: libbpf's upstream release archive
     of tag v{version} (libbpf-{version}.tar.gz; Debian's libbpf_{version}.orig.tar.gz is the same
     file), sha256 {sha}
  2. LIBBPF_BATCH_USE_SYSTEM=1, linking the system's libbpf (>= {MIN_SYSTEM_LIBBPF}) found by
     pkg-config; install it first:
       Fedora/RHEL:   dnf install libbpf-devel pkgconf-pkg-config
       Alpine:        apk add libbpf-dev pkgconf
       Arch:          pacman -S libbpf pkgconf
       Debian/Ubuntu: apt-get install libbpf-dev pkg-config
  3. pip install libbpf-batch: a wheel, or the sdist, which carries the pinned sources"""


def find_tarball() -> Path:
    """The pinned tarball: LIBBPF_TARBALL, one shipped in the sdist (vendor/libbpf), or fetched.

    Exits with :func:`no_source_message` (no traceback) when none of them works.
    """
    _, sha, name = read_pin()
    given = os.environ.get("LIBBPF_TARBALL")
    candidates = [Path(given)] if given else [VENDOR / name, BUILD / name]
    if given and not candidates[0].is_file():
        raise SystemExit(no_source_message(f"LIBBPF_TARBALL={given} is not a file"))
    for candidate in candidates:
        if candidate.is_file():
            try:
                check_tarball(candidate, sha)
            except RuntimeError as e:
                raise SystemExit(no_source_message(str(e))) from None
            return candidate
    proc = subprocess.run(
        ["bash", str(VENDOR.parent / "fetch.sh"), "libbpf", str(BUILD)],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"vendor/fetch.sh exited {proc.returncode}"]
        raise SystemExit(no_source_message(lines[-1]))
    return Path(proc.stdout.strip().splitlines()[-1])


def build_vendored_libbpf() -> None:
    """Build the pinned libbpf as a static PIC archive under build/libbpf (idempotent).

    Does nothing with LIBBPF_BATCH_USE_SYSTEM=1 or LIBBPF_BATCH_PREFIX (built elsewhere).
    """
    if use_system_libbpf() or os.environ.get("LIBBPF_BATCH_PREFIX"):
        return
    version, _, _ = read_pin()
    archive = PREFIX / "lib" / "libbpf.a"
    stamp = PREFIX / "VERSION"
    if archive.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        return
    tarball = find_tarball()
    src_root = BUILD / "src"
    shutil.rmtree(src_root, ignore_errors=True)
    shutil.rmtree(PREFIX.parent, ignore_errors=True)
    src_root.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        # The "data" filter refuses links out of the tree; older Pythons don't have it.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(src_root, **safe)  # type: ignore[arg-type]
    (src,) = [p / "src" for p in src_root.iterdir() if (p / "src" / "Makefile").is_file()]
    obj = PREFIX.parent / "obj"
    obj.mkdir(parents=True)
    cmd = [
        "make",
        "-C",
        str(src),
        f"-j{os.cpu_count() or 1}",
        "BUILD_STATIC_ONLY=1",
        # Debian's gcc defaults to PIE objects that can't go into a shared extension;
        # EXTRA_CFLAGS keeps libbpf's own CFLAGS (CFLAGS= would replace them).
        "EXTRA_CFLAGS=-fPIC",
        f"OBJDIR={obj}",
        f"DESTDIR={PREFIX}",
        "PREFIX=",
        "LIBDIR=/lib",
        "install",
        "install_uapi_headers",
    ]
    print("building libbpf:", shlex.join(cmd), file=sys.stderr)
    try:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            f"vendor/libbpf: building libbpf {version} failed ({e}); it needs make, a C compiler, "
            "libelf and zlib headers and pkg-config (`make deps` installs them on Debian)"
        ) from e
    stamp.write_text(version + "\n")


def vendored_libbpf() -> dict[str, list[str]]:
    """set_source() arguments for the pinned, statically linked libbpf."""
    return {
        "include_dirs": [str(PREFIX / "include")],
        "extra_objects": [str(PREFIX / "lib" / "libbpf.a")],
        # libbpf.a needs libelf and zlib: the system's, or those LIBBPF_BATCH_PREFIX holds.
        "library_dirs": [str(PREFIX / "lib")],
        "libraries": ["elf", "z"],
        # Only PyInit__libbpf is exported: libbpf's symbols stay hidden from whoever loads us
        # (a version script works with GNU ld and lld alike; zig rejects --exclude-libs).
        "extra_link_args": [f"-Wl,--version-script={EXPORTS}"],
    }


def system_libbpf() -> dict[str, list[str]]:
    """set_source() arguments for the system's shared libbpf (pkg-config libbpf)."""

    def pkg(*args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["pkg-config", *args, "libbpf"], check=False, capture_output=True, text=True
            )
        except OSError:
            raise SystemExit(
                "libbpf-batch: LIBBPF_BATCH_USE_SYSTEM=1 needs pkg-config (pkg-config or pkgconf)"
            ) from None

    if pkg("--exists").returncode != 0:
        raise SystemExit(
            no_source_message("LIBBPF_BATCH_USE_SYSTEM=1, but pkg-config finds no libbpf")
        )
    if pkg(f"--atleast-version={MIN_SYSTEM_LIBBPF}").returncode != 0:
        found = pkg("--modversion").stdout.strip()
        raise SystemExit(
            f"libbpf-batch: the system's libbpf is {found}; LIBBPF_BATCH_USE_SYSTEM=1 needs "
            f">= {MIN_SYSTEM_LIBBPF} (its calls return -errno). Unset it to build the pinned one."
        )

    def flags(flag: str) -> list[str]:
        return pkg(flag).stdout.split()

    return {
        "include_dirs": [f[2:] for f in flags("--cflags-only-I")],
        "library_dirs": [f[2:] for f in flags("--libs-only-L")],
        "libraries": [f[2:] for f in flags("--libs-only-l")],
    }


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "libbpf_batch._libbpf",
    SOURCE,
    py_limited_api=not FREE_THREADED,
    **(system_libbpf() if use_system_libbpf() else vendored_libbpf()),  # type: ignore[arg-type]
)

if __name__ == "__main__":
    build_vendored_libbpf()
    ffibuilder.compile(verbose=True)
