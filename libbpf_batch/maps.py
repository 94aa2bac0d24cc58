"""Map, MapType, MapInfo: open, create, close, element and batch operations."""

from __future__ import annotations

import enum
import errno
import fcntl
import itertools
import mmap as mmap_module
import operator
import os
import sys
import threading
import warnings
from array import array
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import _bindings
from ._cdata import (
    BufferLike,
    BytesLike,
    Layout,
    batch_opts,
    c_string,
    check_uint,
    create_opts,
    element,
    join_elements,
    percpu_slot,
    read_map_info,
)
from ._libbpf import ffi, lib
from .batch import (
    Batch,
    Hold,
    MapAccess,
    batch_capacity,
    lookup_batches,
    one_batch,
    put_back,
)
from .btf import MapDecoder
from .errors import (
    ENOTSUPP,
    BatchNotSupportedError,
    BpfError,
    NotAMapError,
    error_from_errno,
    named_call,
)

T = TypeVar("T")


class MapType(enum.IntEnum):
    """BPF map types, numbered as in the kernel's uapi (``BPF_MAP_TYPE_*``)."""

    UNSPEC = lib.BPF_MAP_TYPE_UNSPEC
    HASH = lib.BPF_MAP_TYPE_HASH
    ARRAY = lib.BPF_MAP_TYPE_ARRAY
    PROG_ARRAY = lib.BPF_MAP_TYPE_PROG_ARRAY
    PERF_EVENT_ARRAY = lib.BPF_MAP_TYPE_PERF_EVENT_ARRAY
    PERCPU_HASH = lib.BPF_MAP_TYPE_PERCPU_HASH
    PERCPU_ARRAY = lib.BPF_MAP_TYPE_PERCPU_ARRAY
    STACK_TRACE = lib.BPF_MAP_TYPE_STACK_TRACE
    CGROUP_ARRAY = lib.BPF_MAP_TYPE_CGROUP_ARRAY
    LRU_HASH = lib.BPF_MAP_TYPE_LRU_HASH
    LRU_PERCPU_HASH = lib.BPF_MAP_TYPE_LRU_PERCPU_HASH
    LPM_TRIE = lib.BPF_MAP_TYPE_LPM_TRIE
    ARRAY_OF_MAPS = lib.BPF_MAP_TYPE_ARRAY_OF_MAPS
    HASH_OF_MAPS = lib.BPF_MAP_TYPE_HASH_OF_MAPS
    DEVMAP = lib.BPF_MAP_TYPE_DEVMAP
    SOCKMAP = lib.BPF_MAP_TYPE_SOCKMAP
    CPUMAP = lib.BPF_MAP_TYPE_CPUMAP
    XSKMAP = lib.BPF_MAP_TYPE_XSKMAP
    SOCKHASH = lib.BPF_MAP_TYPE_SOCKHASH
    CGROUP_STORAGE = lib.BPF_MAP_TYPE_CGROUP_STORAGE
    REUSEPORT_SOCKARRAY = lib.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY
    PERCPU_CGROUP_STORAGE = lib.BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    QUEUE = lib.BPF_MAP_TYPE_QUEUE
    STACK = lib.BPF_MAP_TYPE_STACK
    SK_STORAGE = lib.BPF_MAP_TYPE_SK_STORAGE
    DEVMAP_HASH = lib.BPF_MAP_TYPE_DEVMAP_HASH
    STRUCT_OPS = lib.BPF_MAP_TYPE_STRUCT_OPS
    RINGBUF = lib.BPF_MAP_TYPE_RINGBUF
    INODE_STORAGE = lib.BPF_MAP_TYPE_INODE_STORAGE
    TASK_STORAGE = lib.BPF_MAP_TYPE_TASK_STORAGE
    BLOOM_FILTER = lib.BPF_MAP_TYPE_BLOOM_FILTER
    USER_RINGBUF = lib.BPF_MAP_TYPE_USER_RINGBUF
    # Numbered here, not read from headers: a build against the system's libbpf uses the
    # distribution's uapi headers, which may predate them (Debian 12's are Linux 6.1).
    CGRP_STORAGE = 32  # Linux 6.2
    ARENA = 33  # Linux 6.9, newer than the pinned libbpf 1.1.2 headers


class ElemFlags(enum.IntFlag):
    """Per-element flags (``elem_flags`` / update ``flags``)."""

    ANY = lib.BPF_ANY
    NOEXIST = lib.BPF_NOEXIST
    EXIST = lib.BPF_EXIST
    LOCK = lib.BPF_F_LOCK


class MapFlags(enum.IntFlag):
    """Map creation flags (``BPF_F_*``)."""

    NO_PREALLOC = lib.BPF_F_NO_PREALLOC
    NO_COMMON_LRU = lib.BPF_F_NO_COMMON_LRU
    NUMA_NODE = lib.BPF_F_NUMA_NODE
    RDONLY = lib.BPF_F_RDONLY
    WRONLY = lib.BPF_F_WRONLY
    STACK_BUILD_ID = lib.BPF_F_STACK_BUILD_ID
    ZERO_SEED = lib.BPF_F_ZERO_SEED
    RDONLY_PROG = lib.BPF_F_RDONLY_PROG
    WRONLY_PROG = lib.BPF_F_WRONLY_PROG
    CLONE = lib.BPF_F_CLONE
    MMAPABLE = lib.BPF_F_MMAPABLE
    PRESERVE_ELEMS = lib.BPF_F_PRESERVE_ELEMS
    INNER_MAP = lib.BPF_F_INNER_MAP


PERCPU_TYPES = frozenset(
    {
        MapType.PERCPU_HASH,
        MapType.LRU_PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.PERCPU_CGROUP_STORAGE,
    }
)
MAP_OF_MAPS_TYPES = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})
# hashtab.c: a batch cursor that is a bucket index, so a walk can be split among threads.
PARALLEL_TYPES = frozenset(
    {MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH}
)
# Plain arrays have no delete at all (arraymap.c), so they can't be drained.
UNDELETABLE_TYPES = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY})
# No keys (key_size 0): the kernel refuses get_next_key and batch ops; pop/peek/push instead.
KEYLESS_TYPES = frozenset({MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER})
_QUEUE_TYPES = frozenset({MapType.QUEUE, MapType.STACK})

_NCPUS: int | None = None


def possible_cpus() -> int:
    """libbpf_num_possible_cpus(), cached: the per-CPU slot count of per-CPU map values."""
    global _NCPUS
    if _NCPUS is None:
        _NCPUS = _bindings.libbpf_num_possible_cpus()
    return _NCPUS


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports for a map (``struct bpf_map_info``)."""

    id: int
    name: str
    type: MapType | int  # an int for types newer than this library
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    map_extra: int = 0
    ifindex: int = 0

    @property
    def type_name(self) -> str:
        """The type's uapi name without BPF_MAP_TYPE_ (e.g. 'hash'), or 'type N'."""
        return self.type.name.lower() if isinstance(self.type, MapType) else f"type {self.type}"


def _fd_kind(fd: int) -> str:
    """What /proc says the fd is: 'anon_inode:bpf-map' for a map."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _read_only_fd(fd: int) -> bool:
    """True for an fd opened read-only: the kernel gives MapFlags.RDONLY maps one."""
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY


def _require_map_fd(fd: int, op: str, what: str) -> None:
    try:
        kind = _fd_kind(fd)
    except FileNotFoundError:
        raise error_from_errno(errno.EBADF, op, what) from None
    if kind != "anon_inode:bpf-map":
        raise NotAMapError(errno.EINVAL, f"{op}: {what} is not a BPF map (it is {kind})")


def map_info(fd: int) -> MapInfo:
    """bpf_obj_get_info_by_fd() for a map fd, as a MapInfo."""
    info = read_map_info(fd)
    try:
        map_type: MapType | int = MapType(info.type)
    except ValueError:
        map_type = info.type
    return MapInfo(
        id=info.id,
        name=c_string(info.name),
        type=map_type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        map_flags=info.map_flags,
        btf_id=info.btf_id,
        btf_key_type_id=info.btf_key_type_id,
        btf_value_type_id=info.btf_value_type_id,
        map_extra=info.map_extra,
        ifindex=info.ifindex,
    )


def map_ids() -> Iterator[int]:
    """Every map id on the host, ascending (bpf_map_get_next_id); needs CAP_SYS_ADMIN."""
    next_id = ffi.new("__u32 *")
    current = 0
    while _bindings.bpf_map_get_next_id(current, next_id):
        current = next_id[0]
        yield current


def _check_name(name: str | None) -> bytes:
    if name is None:
        return b""
    if not isinstance(name, str):
        raise TypeError(f"create: map name must be a str or None, not {type(name).__name__}")
    raw = name.encode()
    if len(raw) >= 16 or not all(c.isalnum() or c in "_." for c in name) or not name.isascii():
        raise ValueError(f"map name {name!r}: at most 15 ASCII letters, digits, '_' or '.'")
    return raw


def _pin_path(path: str | bytes, where: str) -> bytes:
    """``path`` as bytes for libbpf; a NUL would silently cut it short (os.open refuses too)."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"{where}: path {path!r} contains a NUL byte")
    return raw


BPF_FS_MAGIC = 0xCAFE4A11  # include/uapi/linux/magic.h: statfs().f_type of a bpffs


def _fs_magic(path: bytes) -> int | None:
    """statfs(path).f_type (of the parent while ``path`` does not exist); None if unknown."""
    import ctypes  # only on this error path

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct statfs: f_type (a C long) first
    for candidate in (path, os.path.dirname(path) or b"."):
        if libc.statfs(candidate, buf) == 0:
            return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return None


def _pin_hint(e: BpfError, path: bytes) -> str:
    # Outside a bpffs the kernel answers EACCES (bpf_obj_get) or EPERM (bpf_obj_pin), which
    # read like a permission problem: say what is wrong when statfs() can tell.
    if e.errno in (errno.EPERM, errno.EACCES):
        magic = _fs_magic(path)
        if magic is not None and magic != BPF_FS_MAGIC:
            return "(the path is not on a bpffs; mount one: mount -t bpf bpf DIR)"
    if e.errno == errno.EPERM:
        return "(root or CAP_BPF needed, and the path must be on a bpffs: mount -t bpf bpf DIR)"
    return ""


class Map:
    """An open BPF map: one file descriptor and the attributes the kernel reported for it.

    Use it as a context manager or call :meth:`close`; a map collected while open warns with
    ResourceWarning, as files do. Keys and values are bytes-like; per-CPU maps take and return
    values of ``value_stride`` bytes (one 8-byte-aligned slot per possible CPU).
    """

    def __init__(self, fd: int, info: MapInfo | None = None) -> None:
        """Take ownership of ``fd`` (a map fd); most callers want a classmethod instead."""
        self._fd = fd
        self._lock = threading.Lock()  # close() vs dup(): no dup of a reused fd number
        try:
            self.info = info if info is not None else map_info(fd)
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise
        percpu = self.info.type in PERCPU_TYPES
        self.layout = Layout(
            self.info.key_size, self.info.value_size, possible_cpus() if percpu else 1, percpu
        )
        self._where = f"map {self.info.name!r} (id {self.info.id})"
        self._decoder: MapDecoder | None = None
        self._mapping: mmap_module.mmap | None = None
        self._view: memoryview | None = None
        self._index_keys: bytes | None = None

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        map_type: MapType | int,
        key_size: int,
        value_size: int,
        max_entries: int,
        name: str | None = None,
        flags: int = 0,
        inner_map: Map | int | None = None,
        *,
        numa_node: int | None = None,
        map_extra: int = 0,
        btf: tuple[int, int, int] | None = None,
    ) -> Map:
        """Create a map (bpf_map_create). LPM_TRIE always gets NO_PREALLOC, which it requires.

        ``inner_map`` (a Map or fd) is the template for HASH_OF_MAPS / ARRAY_OF_MAPS. ``btf``
        is ``(btf_fd, btf_key_type_id, btf_value_type_id)`` for a map whose elements have BTF
        types (needed for special fields such as spin locks; also what decoders read).
        """
        map_type = MapType(check_uint(map_type, "map_type", 32, "create"))
        raw_name = _check_name(name)
        for what, v in (
            ("key_size", key_size),
            ("value_size", value_size),
            ("max_entries", max_entries),
        ):
            check_uint(v, what, 32, "create")
        if map_type in MAP_OF_MAPS_TYPES and inner_map is None:
            raise ValueError(f"create: {map_type.name} needs inner_map (a Map or map fd)")
        check_uint(flags, "flags", 32, "create")
        check_uint(map_extra, "map_extra", 64, "create")
        if numa_node is not None:
            check_uint(numa_node, "numa_node", 32, "create")
        if inner_map is not None and not isinstance(inner_map, Map):
            check_uint(inner_map, "inner_map (a Map or map fd)", 31, "create")
        if map_type == MapType.LPM_TRIE:
            flags |= MapFlags.NO_PREALLOC
        inner_fd = inner_map.fd if isinstance(inner_map, Map) else inner_map
        if btf is not None:
            for what, v in zip(("btf_fd", "btf_key_type_id", "btf_value_type_id"), btf):
                check_uint(v, what, 31 if what == "btf_fd" else 32, "create")
        opts = create_opts(flags, map_extra, inner_fd, numa_node, btf)
        fd = named_call(
            f"{map_type.name} {name or ''!r}",
            _bindings.bpf_map_create,
            int(map_type),
            raw_name,
            key_size,
            value_size,
            max_entries,
            opts,
        )
        return cls(fd)

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        """A Map on a duplicate of ``fd``; the caller keeps (and closes) its own."""
        check_uint(fd, "fd", 31, "from_fd")
        _require_map_fd(fd, "from_fd", f"fd {fd}")
        return cls(os.dup(fd))

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> Map:
        """Open the map pinned at ``path`` on a bpffs (bpf_obj_get)."""
        where = os.fspath(path)
        raw = _pin_path(where, "open_pinned")
        try:
            fd = _bindings.bpf_obj_get(raw)
        except BpfError as e:
            raise e.at(repr(where), _pin_hint(e, raw)) from None
        try:
            _require_map_fd(fd, "open_pinned", repr(where))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open the map with this kernel id (bpf_map_get_fd_by_id)."""
        check_uint(map_id, "map id", 32, "from_id")
        return cls(named_call(f"id {map_id}", _bindings.bpf_map_get_fd_by_id, map_id))

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the map at ``path``, which must be on a bpffs (bpf_obj_pin)."""
        fd = self._checked_fd("bpf_obj_pin")
        raw = _pin_path(os.fspath(path), f"bpf_obj_pin: {self._where}")
        try:
            _bindings.bpf_obj_pin(fd, raw)
        except BpfError as e:
            hint = _pin_hint(e, raw)
            raise e.at(self._where, f"path {os.fspath(path)!r} {hint}".rstrip()) from None

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the map's fd and release its mmap(); further operations raise ValueError.

        An iterator running in another thread finishes the call it is in on this map (it has
        its own duplicate of the fd), then raises ValueError; drain_items() still puts back
        the rest of its batch.
        """
        self._unmap()
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    def _dup(self, op: str) -> int:
        """A duplicate of the fd, made under the lock close() takes (ValueError when closed)."""
        with self._lock:
            return os.dup(self._checked_fd(op))

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._fd < 0

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return (
            f"<Map {self.info.type_name} {self.info.name!r} id={self.info.id} {state} "
            f"key_size={self.key_size} value_size={self.value_size} "
            f"max_entries={self.max_entries}>"
        )

    # -- attributes --------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The map's file descriptor (owned by this object)."""
        return self._checked_fd("fd")

    @property
    def key_size(self) -> int:
        return self.info.key_size

    @property
    def value_size(self) -> int:
        return self.info.value_size

    @property
    def max_entries(self) -> int:
        return self.info.max_entries

    @property
    def type(self) -> MapType | int:
        return self.info.type

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def flags(self) -> int:
        return self.info.map_flags

    @property
    def is_percpu(self) -> bool:
        """True for per-CPU maps, whose values hold one slot per possible CPU."""
        return self.layout.percpu

    @property
    def ncpus(self) -> int:
        """Slots per value: the possible CPUs for per-CPU maps, else 1."""
        return self.layout.ncpus

    @property
    def value_stride(self) -> int:
        """Bytes per value in and out: value_size, or round_up(value_size, 8) x ncpus."""
        return self.layout.value_stride

    @property
    def access(self) -> MapAccess:
        """What the batch loop (``libbpf_batch.batch``) needs of this map: fd, Layout, name.

        Made per use, not kept: it holds the map (an iterator keeps its map open), and a map
        holding it back would be a reference cycle that delays closing a dropped map.
        """
        return MapAccess(
            self._checked_fd,
            self.layout,
            self.info.max_entries,
            self._where,
            self._dup,
            int(self.info.type),
            self.decoder,
        )

    def decoder(self) -> MapDecoder:
        """This map's BTF decoder, loaded on first use and kept (see :mod:`libbpf_batch.btf`).

        Its ``decode_key``/``decode_value`` return None where the map has no BTF type.
        """
        if self._decoder is None:
            info = self.info
            self._decoder = MapDecoder.for_map(
                info.btf_id, info.btf_key_type_id, info.btf_value_type_id, self.layout
            )
        return self._decoder

    # -- the fd, checks and error context, for every operation --------------------------
    def _checked_fd(self, op: str) -> int:
        if self._fd < 0:
            raise ValueError(f"{op}: {self._where} is closed")
        return self._fd

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a BpfError it raises naming this map."""
        return named_call(self._where, fn, *args)

    def _check_keyed(self, op: str) -> None:
        if self.info.type in KEYLESS_TYPES:
            raise ValueError(
                f"{op}: {self._where} is a {self.info.type_name}: it has no keys to walk; "
                "use pop(), peek() and push()"
            )

    def _check_deletable(self, op: str) -> None:
        if self.info.type in UNDELETABLE_TYPES:
            raise BatchNotSupportedError(
                ENOTSUPP,
                f"{op}: {self._where}: {self.info.type_name} elements can't be "
                "deleted, so it can't be drained; read it with items() or batches()",
            )

    def _key(self, key: BytesLike, op: str) -> Any:
        return element(
            key,
            self.key_size,
            "key",
            f"{op}: {self._where}",
            " (the map's key_size)",
        )

    def _value(self, value: BytesLike | Map | int, op: str) -> Any:
        where = f"{op}: {self._where}"
        if self.info.type in MAP_OF_MAPS_TYPES and isinstance(value, (Map, int)):
            fd = (
                value.fd if isinstance(value, Map) else check_uint(value, "inner map fd", 31, where)
            )
            return ffi.new("__u32 *", fd)
        hint = f" (round_up({self.value_size}, 8) x {self.ncpus} CPUs)" if self.is_percpu else ""
        return element(value, self.value_stride, "value", where, hint)

    # -- mmapable arrays: read and written with no syscall ------------------------------
    @property
    def is_mmapable(self) -> bool:
        """True for an ARRAY created with MapFlags.MMAPABLE: mmap() works on it."""
        return self.info.type == MapType.ARRAY and bool(self.flags & MapFlags.MMAPABLE)

    def mmap(self) -> memoryview:
        """The values of an mmapable ARRAY, mapped: element i at i * round_up(value_size, 8).

        ``max_entries * round_up(value_size, 8)`` bytes, read and written with no syscall
        (no BPF_F_LOCK: a value can be caught mid-write). Writable unless the map is read-only
        for user space (MapFlags.RDONLY, a read-only fd, or frozen). One mapping per Map, valid
        while it is open; close() releases it (a view derived from it, such as a slice or a
        numpy array, keeps the memory mapped until that view is released).
        """
        op = "mmap"
        fd = self._checked_fd(op)
        if not self.is_mmapable:
            what = self.info.type_name if self.info.type != MapType.ARRAY else "array without it"
            raise ValueError(
                f"{op}: {self._where}: only an ARRAY created with MapFlags.MMAPABLE can be "
                f"mapped (this is a {what})"
            )
        if self._view is None:
            size = self.max_entries * percpu_slot(self.value_size)
            length = -(-size // mmap_module.PAGESIZE) * mmap_module.PAGESIZE
            # bpf_map_mmap(): a writable mapping of a frozen map is EPERM, of a program-read-only
            # map EACCES: map it read-only instead. A MapFlags.RDONLY map's fd is read-only,
            # which makes any shared mapping private, and the kernel refuses those (EINVAL).
            for mode in (mmap_module.ACCESS_WRITE, mmap_module.ACCESS_READ):
                try:
                    self._mapping = mmap_module.mmap(fd, length, access=mode)
                    break
                except OSError as e:
                    if mode == mmap_module.ACCESS_WRITE and e.errno in (errno.EPERM, errno.EACCES):
                        continue
                    hint = ""
                    if _read_only_fd(fd):
                        hint = "its fd is read-only (MapFlags.RDONLY): read it with items()"
                    err = error_from_errno(e.errno or errno.EINVAL, op, self._where)
                    raise err.at(self._where, hint) if hint else err from None
            assert self._mapping is not None
            self._view = memoryview(self._mapping)[:size]
        return self._view

    def mmap_batch(self, start: int = 0, count: int | None = None) -> Batch:
        """Elements [start, start + count) of an mmapable ARRAY as a Batch, with no syscall.

        Values are views of the mapping (live: a BPF program's writes show) when value_size
        is a multiple of 8, else copies without the padding; keys are the u32 indices. So
        ``m.mmap_batch().to_numpy()`` reads the whole array in numpy.
        """
        view = self.mmap()
        where = f"mmap_batch: {self._where}"
        check_uint(start, "start", 32, where)
        if count is None:
            count = self.max_entries - min(start, self.max_entries)
        check_uint(count, "count", 32, where)
        if start + count > self.max_entries:
            raise ValueError(
                f"{where}: elements [{start}, {start + count}) are past max_entries "
                f"{self.max_entries}"
            )
        return self._mapped(view, start, count, copy=False)

    def _mapped(self, view: memoryview, start: int, count: int, copy: bool) -> Batch:
        size, slot = self.value_size, percpu_slot(self.value_size)
        area = view[start * slot : (start + count) * slot]
        values: BytesLike = area
        if slot != size:  # drop the padding: a Batch holds value_size bytes per value
            packed = bytearray(count * size)
            for j in range(size):
                packed[j::size] = area[j::slot]
            values = packed
        elif copy:
            values = area.tobytes()
        keys = memoryview(self._indices())[start * 4 : (start + count) * 4]
        last = start + count - 1
        cursor = last.to_bytes(4, sys.byteorder) if count else b""
        done = start + count >= self.max_entries
        k = keys.tobytes() if copy else keys
        return Batch(self.layout, count, k, values, cursor, done, self.decoder)

    def _indices(self) -> bytes:
        """Every array index as a u32 key, made once per map (the keys never change)."""
        if self._index_keys is None:
            self._index_keys = array("I", range(self.max_entries)).tobytes()
        return self._index_keys

    def _mapped_batches(self, view: memoryview, capacity: int, copy: bool) -> Iterator[Batch]:
        """batches() of an mmapable array: slices of the mapping, no syscall per batch."""
        for start in range(0, self.max_entries, capacity):
            count = min(capacity, self.max_entries - start)
            yield self._mapped(view, start, count, copy)

    def _mappable(self, elem_flags: int, flags: int) -> bool:
        # BPF_F_LOCK (or any flag) asks for the syscall's semantics, which a mapping lacks.
        return self.is_mmapable and not elem_flags and not flags and array("I").itemsize == 4

    def _unmap(self) -> None:
        view, mapping = self._view, self._mapping
        self._view = self._mapping = None
        try:
            if view is not None:
                view.release()
            if mapping is not None:
                mapping.close()
        except BufferError:
            pass  # a view the caller derived still uses it: unmapped once that is released

    # -- one key, one syscall ----------------------------------------------------------
    def lookup(self, key: BytesLike, *, flags: int = 0) -> bytes | None:
        """The key's value, or None when the key is missing. ``flags``: ElemFlags.LOCK."""
        fd = self._checked_fd("bpf_map_lookup_elem")
        k = self._key(key, "bpf_map_lookup_elem")
        check_uint(flags, "flags", 64, f"bpf_map_lookup_elem: {self._where}")
        value = ffi.new("char[]", self.value_stride)
        if flags:
            found = self._call(_bindings.bpf_map_lookup_elem_flags, fd, k, value, flags)
        else:
            found = self._call(_bindings.bpf_map_lookup_elem, fd, k, value)
        return ffi.buffer(value)[:] if found else None

    def update(self, key: BytesLike, value: BytesLike | Map | int, flags: int = 0) -> None:
        """Set the key's value. ``flags``: ElemFlags ANY (default), NOEXIST, EXIST, LOCK.

        For map-of-maps, ``value`` may be the inner Map or its fd.
        """
        fd = self._checked_fd("bpf_map_update_elem")
        k = self._key(key, "bpf_map_update_elem")
        v = self._value(value, "bpf_map_update_elem")
        check_uint(flags, "flags", 64, f"bpf_map_update_elem: {self._where}")
        self._call(_bindings.bpf_map_update_elem, fd, k, v, flags)

    def delete(self, key: BytesLike) -> bool:
        """Delete the key; False when it was missing."""
        fd = self._checked_fd("bpf_map_delete_elem")
        k = self._key(key, "bpf_map_delete_elem")
        return self._call(_bindings.bpf_map_delete_elem, fd, k)

    def next_key(self, key: BytesLike | None = None) -> bytes | None:
        """The key after ``key`` (None: the first key); None at the end of the map."""
        fd = self._checked_fd("bpf_map_get_next_key")
        self._check_keyed("bpf_map_get_next_key")
        k = _bindings.NULL if key is None else self._key(key, "bpf_map_get_next_key")
        out = ffi.new("char[]", self.key_size)
        found = self._call(_bindings.bpf_map_get_next_key, fd, k, out)
        return ffi.buffer(out)[:] if found else None

    def lookup_and_delete(self, key: BytesLike) -> bytes | None:
        """Atomically read and delete the key's value; None when the key is missing."""
        fd = self._checked_fd("bpf_map_lookup_and_delete_elem")
        k = self._key(key, "bpf_map_lookup_and_delete_elem")
        value = ffi.new("char[]", self.value_stride)
        found = self._call(_bindings.bpf_map_lookup_and_delete_elem, fd, k, value)
        return ffi.buffer(value)[:] if found else None

    def __contains__(self, key: BytesLike) -> bool:
        return self.lookup(key) is not None

    # -- QUEUE, STACK, BLOOM_FILTER: values without keys ---------------------------------
    def _keyless(self, op: str, types: frozenset[MapType]) -> int:
        fd = self._checked_fd(op)
        if self.info.type not in types:
            names = "/".join(sorted(t.name for t in types))
            raise ValueError(f"{op}: {self._where} is a {self.info.type_name}, not a {names}")
        return fd

    def push(self, value: BytesLike, flags: int = 0) -> None:
        """QUEUE/STACK: add ``value`` (``ElemFlags.EXIST``: drop the oldest when full);
        BLOOM_FILTER: add ``value`` to the set."""
        op = "bpf_map_update_elem"
        fd = self._keyless(op, KEYLESS_TYPES)
        v = self._value(value, op)
        check_uint(flags, "flags", 64, f"{op}: {self._where}")
        self._call(_bindings.bpf_map_update_elem, fd, _bindings.NULL, v, flags)

    def pop(self) -> bytes | None:
        """QUEUE/STACK: take the next value (queue: oldest, stack: newest); None when empty."""
        op = "bpf_map_lookup_and_delete_elem"
        fd = self._keyless(op, _QUEUE_TYPES)
        value = ffi.new("char[]", self.value_stride)
        found = self._call(_bindings.bpf_map_lookup_and_delete_elem, fd, _bindings.NULL, value)
        return ffi.buffer(value)[:] if found else None

    def peek(self, value: BytesLike | None = None) -> bytes | None:
        """QUEUE/STACK: the next value without taking it; None when empty.

        BLOOM_FILTER: ``value`` when it may be in the set, None when it is certainly not.
        """
        op = "bpf_map_lookup_elem"
        fd = self._keyless(op, KEYLESS_TYPES)
        if self.info.type == MapType.BLOOM_FILTER:
            if value is None:
                raise TypeError(f"{op}: {self._where}: a bloom filter's peek() takes a value")
            v = self._value(value, op)
            found = self._call(_bindings.bpf_map_lookup_elem, fd, _bindings.NULL, v)
            return bytes(value) if found else None
        if value is not None:
            raise TypeError(f"{op}: {self._where}: peek() of a {self.info.type_name} takes none")
        out = ffi.new("char[]", self.value_stride)
        found = self._call(_bindings.bpf_map_lookup_elem, fd, _bindings.NULL, out)
        return ffi.buffer(out)[:] if found else None

    # -- one batch, one syscall --------------------------------------------------------
    def lookup_batch(
        self, count: int, cursor: bytes | None = None, *, elem_flags: int = 0, flags: int = 0
    ) -> Batch:
        """Up to ``count`` elements from ``cursor`` (None: the start) in one call.

        A batch may be short without being the last (hash maps return whole buckets);
        ``done`` says the walk is over. ENOSPC means the next hash bucket holds more than
        ``count`` elements: retry from the same cursor with a larger count.
        """
        self._check_keyed("bpf_map_lookup_batch")
        return one_batch(self.access, False, count, cursor, elem_flags, flags)

    def lookup_and_delete_batch(
        self, count: int, cursor: bytes | None = None, *, elem_flags: int = 0, flags: int = 0
    ) -> Batch:
        """Like lookup_batch(), deleting what it returns (hash-family maps only).

        If the kernel fails after deleting elements, the error's ``batch`` holds them; if
        something else raises (a signal handler) before they are returned, they are put back.
        """
        self._check_keyed("bpf_map_lookup_and_delete_batch")
        return one_batch(self.access, True, count, cursor, elem_flags, flags)

    def update_batch(
        self,
        keys: BufferLike | Sequence[BufferLike],
        values: BufferLike | Sequence[BufferLike],
        *,
        elem_flags: int = 0,
        flags: int = 0,
    ) -> int:
        """Set many elements in one call; returns how many were applied (all of them).

        ``keys`` is one buffer of n*key_size bytes or a sequence of keys; ``values`` likewise
        with value_stride. Not atomic: on error, the exception's ``count`` elements were
        applied. The kernel accepts elem_flags 0 or ElemFlags.LOCK only.
        """
        op = "bpf_map_update_batch"
        where = f"{op}: {self._where}"
        fd = self._checked_fd(op)
        k, nk = join_elements(keys, self.key_size, "keys", where)
        v, nv = join_elements(values, self.value_stride, "values", where)
        if nk != nv:
            raise ValueError(f"{where}: {nk} keys but {nv} values")
        opts = batch_opts(elem_flags, flags, where)
        if nk == 0:
            return 0
        count = ffi.new("__u32 *", nk)
        try:
            _bindings.bpf_map_update_batch(fd, k, v, count, opts)
        except BpfError as e:
            err = e.at(self._where)
            # count == nk means the kernel refused before applying anything (flag checks)
            err.count = count[0] if count[0] < nk else 0
            raise err from None
        return nk

    def delete_batch(
        self, keys: BufferLike | Sequence[BufferLike], *, elem_flags: int = 0, flags: int = 0
    ) -> int:
        """Delete many keys; returns how many were deleted. Missing keys are skipped.

        The kernel stops at the first missing key (ENOENT); this goes on after it, so one
        call per missing key is made.
        """
        op = "bpf_map_delete_batch"
        where = f"{op}: {self._where}"
        fd = self._checked_fd(op)
        k, n = join_elements(keys, self.key_size, "keys", where)
        opts = batch_opts(elem_flags, flags, where)
        count = ffi.new("__u32 *")
        deleted = offset = 0
        while offset < n:
            remaining = n - offset
            count[0] = remaining
            try:
                _bindings.bpf_map_delete_batch(fd, k + offset * self.key_size, count, opts)
            except BpfError as e:
                done = count[0] if count[0] < remaining else 0
                if e.errno == errno.ENOENT and count[0] < remaining:
                    deleted += done
                    offset += done + 1  # skip the missing key
                    continue
                err = e.at(self._where)
                err.count = deleted + done
                raise err from None
            deleted += remaining
            break
        return deleted

    # -- whole map, batch by batch -----------------------------------------------------
    def batches(
        self,
        batch_size: int | None = None,
        *,
        elem_flags: int = 0,
        flags: int = 0,
        copy: bool = True,
        workers: int = 1,
    ) -> Iterator[Batch]:
        """Yield the map's elements batch by batch (lookup only).

        Batches may be short without being the last; the walk ends after the batch with
        ``done``. Under concurrent updates a hash map walk never returns a key twice, but
        keys added to buckets already visited are missed. ``copy=False`` yields batches whose
        buffers the next step reuses.

        What a walk racing writers can see: hash maps are read a whole bucket at a time under
        the bucket's lock, so a key comes at most once, a key deleted after its bucket was
        read is still returned, and a value written by an update call is never torn (a BPF
        program writing through a looked-up pointer can be caught mid-write, as with any
        lookup). Every batch moves past at least one bucket, so the walk ends within
        roundup_pow_of_two(max_entries) batches. Other maps walk key by key: an array
        returns each index once; an LPM trie whose cursor key is deleted restarts from its
        first key, so keys may repeat. An mmapable ARRAY (without flags) is read through
        mmap(), with no syscall: ``copy=False`` batches are live views of the mapping.

        ``workers`` threads (0: one per CPU this process may run on) split a hash-family map's
        buckets among them (see PARALLEL_TYPES; other types walk in one thread). Batches then
        come in no defined order, always as copies, and no key comes twice.
        """
        op = "bpf_map_lookup_batch"
        self._check_keyed(op)
        threads = self._workers(workers, op)
        if self._mappable(elem_flags, flags):
            capacity = batch_capacity(batch_size, self.max_entries, f"{op}: {self._where}")
            try:
                view = self.mmap()
            except BpfError:
                pass  # not mappable by this fd (write-only): the syscalls say why
            else:
                return self._mapped_batches(view, capacity, copy)
        return lookup_batches(
            self.access,
            delete=False,
            batch_size=batch_size,
            elem_flags=elem_flags,
            flags=flags,
            copy=copy,
            workers=threads,
            n_buckets=self._bucket_count(),
        )

    def drain(
        self,
        batch_size: int | None = None,
        *,
        elem_flags: int = 0,
        flags: int = 0,
        copy: bool = True,
        workers: int = 1,
    ) -> Iterator[Batch]:
        """Yield the map's elements batch by batch, deleting each batch as it is read.

        Every element is delivered exactly once; inserts made meanwhile into buckets already
        drained stay in the map. Stopping early leaves the rest in the map. Interrupted
        anywhere (a signal handler that raises, close() from another thread), a batch the
        kernel deleted and that was not yet yielded goes back into the map before the
        exception propagates (see README, "Exactly once").

        ``workers`` (0: one per CPU this process may run on) drains a hash-family map's
        buckets in that many threads, batches in no defined order; closing or dropping the
        iterator early puts back what the workers had deleted and not delivered.
        """
        op = "bpf_map_lookup_and_delete_batch"
        self._checked_fd(op)
        threads = self._workers(workers, op)
        self._check_keyed(op)
        self._check_deletable(op)
        return lookup_batches(
            self.access,
            delete=True,
            batch_size=batch_size,
            elem_flags=elem_flags,
            flags=flags,
            copy=copy,
            workers=threads,
            n_buckets=self._bucket_count(),
        )

    def _workers(self, workers: int, op: str) -> int:
        """``workers`` checked; 0 becomes one per CPU in this process's affinity mask."""
        check_uint(workers, "workers", 16, f"{op}: {self._where}")
        return workers or len(os.sched_getaffinity(0))

    def _bucket_count(self) -> int:
        """hashtab.c's n_buckets: roundup_pow_of_two(max_entries); 0 for other types.

        The kernel reports max_entries already rounded for BPF_F_NO_COMMON_LRU (to a multiple
        of the possible CPUs). Only the split depends on it: the last worker runs to ENOENT.
        """
        if self.info.type not in PARALLEL_TYPES:
            return 0
        return 1 << (max(self.max_entries, 1) - 1).bit_length()

    # items/keys/values/drain_items chain each batch's C-level iterator (Batch.__iter__) so
    # no Python frame runs per element; a batch's iterator is used up before the next batch
    # overwrites the shared buffers. Like generators, they start reading at the first next().
    def items(
        self, batch_size: int | None = None, *, workers: int = 1
    ) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)``, read in batches (``workers``: see batches())."""
        return itertools.chain.from_iterable(self.batches(batch_size, copy=False, workers=workers))

    def keys(self, batch_size: int | None = None, *, workers: int = 1) -> Iterator[bytes]:
        """Every key, read in batches (``workers``: see batches())."""
        return itertools.chain.from_iterable(
            map(Batch.key_list, self.batches(batch_size, copy=False, workers=workers))
        )

    def values(self, batch_size: int | None = None, *, workers: int = 1) -> Iterator[bytes]:
        """Every value, read in batches (``workers``: see batches())."""
        return itertools.chain.from_iterable(
            map(Batch.value_list, self.batches(batch_size, copy=False, workers=workers))
        )

    def drain_items(
        self, batch_size: int | None = None, *, workers: int = 1
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """Every ``(key, value)``, deleting as it reads (see drain()); a generator.

        Elements are deleted a batch at a time. Stopping in the middle of a batch (break, an
        exception or a signal in the consumer, close(), dropping the generator, the Map closed
        first) puts the elements of it not yet taken back into the map, where their key is
        still absent: a key re-created meanwhile keeps its new value. After fork(), only the
        process that took a batch puts it back.
        """
        op = "bpf_map_lookup_and_delete_batch"
        self._checked_fd(op)
        threads = self._workers(workers, op)
        self._check_keyed(op)
        self._check_deletable(op)
        # checked now, not at the first next(), as drain() does
        batch_capacity(batch_size, self.max_entries, f"{op}: {self._where}")
        return self._take_pairs(self.access, batch_size, threads, self._bucket_count())

    @staticmethod
    def _take_pairs(
        access: MapAccess, batch_size: int | None, workers: int = 1, n_buckets: int = 0
    ) -> Generator[tuple[bytes, bytes], None, None]:
        # `yield from` over the batch's C-level iterator: no Python frame per element and no
        # point where a signal can be raised between taking a pair and yielding it. Whatever
        # stops us, the pairs not yet yielded are the iterator's length_hint.
        op = "bpf_map_lookup_and_delete_batch"
        hold = Hold(access, op)  # the put-back needs this map even if it is closed meanwhile
        taken: list[Batch] = []
        pairs: Iterator[tuple[bytes, bytes]] | None = None
        batches: Iterator[Batch] | None = None
        taker = os.getpid()
        try:
            batches = lookup_batches(
                access,
                delete=True,
                batch_size=batch_size,
                copy=False,
                hold=hold,
                workers=workers,
                n_buckets=n_buckets,
            )
            # map() appends each batch to ``taken`` in C as the walk yields it: a for loop's
            # own binding can be split by a signal on Python < 3.11. ``taken`` is emptied
            # once the batch is all delivered, before ``pairs`` is.
            for _ in map(taken.append, batches):
                taker = os.getpid()
                it = iter(taken[-1])
                pairs = it if hasattr(it, "__length_hint__") else iter(list(it))
                yield from pairs
                taken.clear()
                pairs = None
        except BaseException:
            if taken and taker == os.getpid():  # a fork's child never
                batch = taken[-1]
                rest = batch.count if pairs is None else operator.length_hint(pairs)
                put_back(access, batch, batch.count - rest, hold=hold)
            raise
        finally:
            # a parallel walk's workers stop and put back now, not when a traceback lets go
            getattr(batches, "close", lambda: None)()
            hold.close()

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def clear(self) -> int:
        """Delete every element; returns how many were deleted."""
        return sum(batch.count for batch in self.drain(copy=False))
