"""Every public entry point, fed bad input and faults: the documented error, and nothing changed.

One table: each row calls one entry point the wrong way and names what must come out. Bad
arguments are ValueError/TypeError before any syscall; kernel refusals are BpfError subclasses
carrying the kernel's errno. Either way the message names the operation (and the map, where
there is one), no fd leaks, and the maps' contents are the same before and after.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import contents, open_fds, skip_or_fail, u32, u64

import libbpf_batch
from libbpf_batch import (
    BatchNotSupportedError,
    BpfError,
    BpfNotFoundError,
    BpfPermissionError,
    ElemFlags,
    Map,
    MapFlags,
    MapType,
    NotAMapError,
    _bindings,
)
from libbpf_batch.errors import ENOTSUPP

# -- a BPF program fd for "not a map": the raw bpf(2) syscall, no libbpf involved -------------
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1


def load_socket_filter() -> int:
    """A trivial socket filter (r0 = 0; exit) loaded with bpf(BPF_PROG_LOAD); its fd."""
    if SYS_BPF is None:
        skip_or_fail(f"no bpf(2) syscall number known for {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(
        struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0), 16
    )
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(
        struct.pack(
            "<IIQQIIQII16s",
            BPF_PROG_TYPE_SOCKET_FILTER,
            2,
            ctypes.addressof(insns),
            ctypes.addressof(license),
            0,
            0,
            0,
            0,
            0,
            b"bad_input",
        ),
        128,
    )
    fd = libc.syscall(
        ctypes.c_long(SYS_BPF),
        ctypes.c_int(BPF_PROG_LOAD),
        attr,
        ctypes.c_uint(ctypes.sizeof(attr)),
    )
    if fd < 0:
        skip_or_fail(f"BPF_PROG_LOAD failed: {os.strerror(ctypes.get_errno())}")
    return int(fd)


@dataclass
class World:
    """Everything the table needs, made once per module and checked around every row."""

    m: Map  # HASH 'victim': 4-byte keys, 8-byte values, keys 1..5
    arr: Map  # ARRAY 'victim_arr' (no delete, no drain)
    full: Map  # HASH 'full' with max_entries 2, full
    ro: Map  # HASH 'read_only': user space may not write (BPF_F_RDONLY)
    wo: Map  # HASH 'write_only': user space may not read (BPF_F_WRONLY)
    closed: Map  # closed HASH 'gone'
    pipe_r: int
    regular_fd: int
    prog_fd: int
    closed_fd: int  # an fd number that is not open
    stale_id: int  # the id of a map that no longer exists
    bpffs: Path  # a private bpffs: pinned map 'victim' at bpffs/victim, prog at bpffs/prog
    tmp: Path  # a directory that is not on a bpffs, with a regular file 'file'
    queue: Map  # QUEUE 'victim_q' holding 7 (no keys: pop/peek/push only)
    bloom: Map  # BLOOM_FILTER 'victim_bloom' holding 7

    def snapshot(self) -> tuple[object, ...]:
        return (
            contents(self.m),
            contents(self.arr),
            contents(self.full),
            contents(self.ro),
            self.queue.peek(),
            self.bloom.peek(u64(7)),
        )


@pytest.fixture(scope="module")
def world(bpf_fs: Path) -> Iterator[World]:
    try:
        Map.create(MapType.HASH, 4, 4, 1).close()
    except BpfError as e:
        skip_or_fail(f"cannot create a BPF map here ({e})")
    made: list[Map] = []

    def make(*args: Any, **kw: Any) -> Map:
        made.append(Map.create(*args, **kw))
        return made[-1]

    bpffs = bpf_fs
    tmp = Path(tempfile.mkdtemp(prefix="bad_input."))
    fds: list[int] = []
    try:
        m = make(MapType.HASH, 4, 8, 16, name="victim")
        m.update_batch([u32(i) for i in range(1, 6)], [u64(10 * i) for i in range(1, 6)])
        m.pin(bpffs / "victim")
        arr = make(MapType.ARRAY, 4, 8, 4, name="victim_arr")
        arr.update_batch([u32(i) for i in range(4)], [u64(i + 100) for i in range(4)])
        full = make(MapType.HASH, 4, 8, 2, name="full")
        full.update_batch([u32(1), u32(2)], [u64(1), u64(2)])
        ro = make(MapType.HASH, 4, 8, 4, name="read_only", flags=MapFlags.RDONLY)
        wo = make(MapType.HASH, 4, 8, 4, name="write_only", flags=MapFlags.WRONLY)
        wo.update(u32(1), u64(1))
        closed = Map.create(MapType.HASH, 4, 8, 4, name="gone")
        closed.close()
        with Map.create(MapType.HASH, 4, 8, 4, name="stale") as stale:
            stale_id = stale.id
        pipe_r, pipe_w = os.pipe()
        (tmp / "file").write_bytes(b"not a map")
        regular_fd = os.open(tmp / "file", os.O_RDONLY)
        prog_fd = load_socket_filter()
        fds += [pipe_r, pipe_w, regular_fd, prog_fd]
        _bindings.bpf_obj_pin(prog_fd, os.fsencode(bpffs / "prog"))
        queue = make(MapType.QUEUE, 0, 8, 4, name="victim_q")
        queue.push(u64(7))
        bloom = make(MapType.BLOOM_FILTER, 0, 8, 4, name="victim_bloom")
        bloom.push(u64(7))
        closed_fd = os.open(os.devnull, os.O_RDONLY)
        os.close(closed_fd)  # a number that was an fd a moment ago
        yield World(
            m,
            arr,
            full,
            ro,
            wo,
            closed,
            pipe_r,
            regular_fd,
            prog_fd,
            closed_fd,
            stale_id,
            bpffs,
            tmp,
            queue,
            bloom,
        )
    finally:
        for mm in made:
            mm.close()
        for fd in fds:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the table -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[World], object]
    exc: type[BaseException]
    errno: int | None = None  # the kernel's errno, for BpfError rows
    op: str = ""  # must appear in the message
    map: str | None = "m"  # the World map the message must name (None: no map)


K, V = u32(1), u64(1)  # a key and a value of the right sizes for 'victim'
LOCK, NOEXIST = ElemFlags.LOCK, ElemFlags.NOEXIST
LB, LADB = "bpf_map_lookup_batch", "bpf_map_lookup_and_delete_batch"
UB, DB = "bpf_map_update_batch", "bpf_map_delete_batch"

ROWS = [
    # Map.create
    Row(
        "create/type-unknown",
        lambda w: Map.create(999, 4, 8, 4),
        ValueError,
        op="MapType",
        map=None,
    ),
    Row(
        "create/type-str",
        lambda w: Map.create("hash", 4, 8, 4),  # type: ignore[arg-type]
        TypeError,
        op="create: map_type",
        map=None,
    ),
    Row(
        "create/key_size-str",
        lambda w: Map.create(MapType.HASH, "4", 8, 4),  # type: ignore[arg-type]
        TypeError,
        op="create: key_size",
        map=None,
    ),
    Row(
        "create/key_size-negative",
        lambda w: Map.create(MapType.HASH, -4, 8, 4),
        ValueError,
        op="create: key_size",
        map=None,
    ),
    Row(
        "create/max_entries-huge",
        lambda w: Map.create(MapType.HASH, 4, 8, 2**32),
        ValueError,
        op="create: max_entries",
        map=None,
    ),
    Row(
        "create/name-too-long",
        lambda w: Map.create(MapType.HASH, 4, 8, 4, name="x" * 16),
        ValueError,
        op="map name",
        map=None,
    ),
    Row(
        "create/name-int",
        lambda w: Map.create(MapType.HASH, 4, 8, 4, name=7),  # type: ignore[arg-type]
        TypeError,
        op="create: map name",
        map=None,
    ),
    Row(
        "create/flags-negative",
        lambda w: Map.create(MapType.HASH, 4, 8, 4, flags=-1),
        ValueError,
        op="create: flags",
        map=None,
    ),
    Row(
        "create/inner_map-str",
        lambda w: Map.create(MapType.HASH_OF_MAPS, 4, 4, 4, inner_map="m"),  # type: ignore[arg-type]
        TypeError,
        op="create: inner_map",
        map=None,
    ),
    Row(
        "create/map-of-maps-without-inner",
        lambda w: Map.create(MapType.HASH_OF_MAPS, 4, 4, 4),
        ValueError,
        op="inner_map",
        map=None,
    ),
    Row(
        "create/key_size-0",
        lambda w: Map.create(MapType.HASH, 0, 8, 4, name="zero_key"),
        BpfError,
        errno.EINVAL,
        "bpf_map_create: HASH 'zero_key'",
        None,
    ),
    Row(
        "create/max_entries-0",
        lambda w: Map.create(MapType.HASH, 4, 8, 0, name="empty"),
        BpfError,
        errno.EINVAL,
        "bpf_map_create: HASH 'empty'",
        None,
    ),
    Row(
        "create/flags-unknown",
        lambda w: Map.create(MapType.HASH, 4, 8, 4, name="f", flags=1 << 30),
        BpfError,
        errno.EINVAL,
        "bpf_map_create: HASH 'f'",
        None,
    ),
    Row(
        "create/inner_map-pipe",
        lambda w: Map.create(MapType.HASH_OF_MAPS, 4, 4, 4, name="outer", inner_map=w.pipe_r),
        BpfError,
        errno.EINVAL,
        "bpf_map_create: HASH_OF_MAPS 'outer'",
        None,
    ),
    # Map.from_fd
    Row(
        "from_fd/str",
        lambda w: Map.from_fd("3"),
        TypeError,
        op="from_fd",  # type: ignore[arg-type]
        map=None,
    ),
    Row("from_fd/negative", lambda w: Map.from_fd(-1), ValueError, op="from_fd", map=None),
    Row("from_fd/bool", lambda w: Map.from_fd(True), TypeError, op="from_fd", map=None),
    Row(
        "from_fd/pipe", lambda w: Map.from_fd(w.pipe_r), NotAMapError, errno.EINVAL, "from_fd", None
    ),
    Row(
        "from_fd/regular-file",
        lambda w: Map.from_fd(w.regular_fd),
        NotAMapError,
        errno.EINVAL,
        "from_fd",
        None,
    ),
    Row(
        "from_fd/prog",
        lambda w: Map.from_fd(w.prog_fd),
        NotAMapError,
        errno.EINVAL,
        "bpf-prog",
        None,
    ),
    Row(
        "from_fd/closed-fd",
        lambda w: Map.from_fd(w.closed_fd),
        BpfError,
        errno.EBADF,
        "from_fd",
        None,
    ),
    # Map.from_id
    Row(
        "from_id/stale",
        lambda w: Map.from_id(w.stale_id),
        BpfNotFoundError,
        errno.ENOENT,
        "bpf_map_get_fd_by_id: id",
        None,
    ),
    Row("from_id/negative", lambda w: Map.from_id(-1), ValueError, op="from_id", map=None),
    Row("from_id/huge", lambda w: Map.from_id(2**32), ValueError, op="from_id", map=None),
    Row(
        "from_id/str",
        lambda w: Map.from_id("1"),  # type: ignore[arg-type]
        TypeError,
        op="from_id",  # type: ignore[arg-type]
        map=None,
    ),
    # Map.open_pinned
    Row(
        "open_pinned/not-on-bpffs",
        lambda w: Map.open_pinned(w.tmp / "file"),
        BpfPermissionError,
        errno.EACCES,
        "the path is not on a bpffs",
        None,
    ),
    Row(
        "open_pinned/bpffs-directory",
        lambda w: Map.open_pinned(w.bpffs),
        BpfPermissionError,
        errno.EACCES,
        "bpf_obj_get",
        None,
    ),
    Row(
        "open_pinned/missing",
        lambda w: Map.open_pinned(w.bpffs / "nothing"),
        BpfNotFoundError,
        errno.ENOENT,
        "bpf_obj_get",
        None,
    ),
    Row(
        "open_pinned/a-prog",
        lambda w: Map.open_pinned(w.bpffs / "prog"),
        NotAMapError,
        errno.EINVAL,
        "open_pinned",
        None,
    ),
    Row(
        "open_pinned/nul",
        lambda w: Map.open_pinned(f"{w.bpffs}/victim\0x"),
        ValueError,
        op="open_pinned",
        map=None,
    ),
    Row("open_pinned/int", lambda w: Map.open_pinned(3), TypeError, map=None),  # type: ignore[arg-type]
    # Map.pin
    Row(
        "pin/not-on-bpffs",
        lambda w: w.m.pin(w.tmp / "pin"),
        BpfPermissionError,
        errno.EPERM,
        "the path is not on a bpffs",
    ),
    Row("pin/exists", lambda w: w.m.pin(w.bpffs / "victim"), BpfError, errno.EEXIST, "bpf_obj_pin"),
    Row(
        "pin/no-such-directory",
        lambda w: w.m.pin(w.bpffs / "no" / "pin"),
        BpfNotFoundError,
        errno.ENOENT,
        "bpf_obj_pin",
    ),
    Row("pin/nul", lambda w: w.m.pin(f"{w.bpffs}/x\0y"), ValueError, op="bpf_obj_pin"),
    Row("pin/int", lambda w: w.m.pin(3), TypeError, map=None),  # type: ignore[arg-type]
    Row(
        "pin/closed",
        lambda w: w.closed.pin(w.bpffs / "gone"),
        ValueError,
        op="bpf_obj_pin",
        map="closed",
    ),
    # lookup
    Row(
        "lookup/key-str",
        lambda w: w.m.lookup("abcd"),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_lookup_elem",
    ),
    Row(
        "lookup/key-none",
        lambda w: w.m.lookup(None),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_lookup_elem",
    ),
    Row("lookup/key-short", lambda w: w.m.lookup(b"\1"), ValueError, op="bpf_map_lookup_elem"),
    Row(
        "lookup/flags-negative",
        lambda w: w.m.lookup(K, flags=-1),
        ValueError,
        op="bpf_map_lookup_elem",
    ),
    Row(
        "lookup/lock-without-spin-lock",
        lambda w: w.m.lookup(K, flags=LOCK),
        BpfError,
        errno.EINVAL,
        "bpf_map_lookup_elem_flags",
    ),
    Row(
        "lookup/write-only-map",
        lambda w: w.wo.lookup(K),
        BpfPermissionError,
        errno.EPERM,
        "bpf_map_lookup_elem",
        "wo",
    ),
    Row(
        "lookup/closed",
        lambda w: w.closed.lookup(K),
        ValueError,
        op="bpf_map_lookup_elem",
        map="closed",
    ),
    # update
    Row(
        "update/key-int",
        lambda w: w.m.update(1, V),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_update_elem",
    ),
    Row("update/value-short", lambda w: w.m.update(K, b"\1"), ValueError, op="bpf_map_update_elem"),
    Row(
        "update/value-str",
        lambda w: w.m.update(K, "12345678"),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_update_elem",
    ),
    Row(
        "update/flags-huge", lambda w: w.m.update(K, V, 2**64), ValueError, op="bpf_map_update_elem"
    ),
    Row(
        "update/flags-str",
        lambda w: w.m.update(K, V, "any"),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_update_elem",
    ),
    Row(
        "update/flags-unknown",
        lambda w: w.m.update(K, V, 99),
        BpfError,
        errno.EINVAL,
        "bpf_map_update_elem",
    ),
    Row(
        "update/lock-without-spin-lock",
        lambda w: w.m.update(K, V, LOCK),
        BpfError,
        errno.EINVAL,
        "bpf_map_update_elem",
    ),
    Row(
        "update/noexist-on-existing",
        lambda w: w.m.update(K, V, NOEXIST),
        BpfError,
        errno.EEXIST,
        "bpf_map_update_elem",
    ),
    Row(
        "update/exist-on-missing",
        lambda w: w.m.update(u32(99), V, ElemFlags.EXIST),
        BpfNotFoundError,
        errno.ENOENT,
        "bpf_map_update_elem",
    ),
    Row(
        "update/map-full",
        lambda w: w.full.update(u32(3), V),
        BpfError,
        errno.E2BIG,
        "bpf_map_update_elem",
        "full",
    ),
    Row(
        "update/read-only-map",
        lambda w: w.ro.update(K, V),
        BpfPermissionError,
        errno.EPERM,
        "bpf_map_update_elem",
        "ro",
    ),
    Row(
        "update/closed",
        lambda w: w.closed.update(K, V),
        ValueError,
        op="bpf_map_update_elem",
        map="closed",
    ),
    # delete
    Row("delete/key-short", lambda w: w.m.delete(b"\1\2"), ValueError, op="bpf_map_delete_elem"),
    Row(
        "delete/key-list",
        lambda w: w.m.delete([1, 0, 0, 0]),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_delete_elem",
    ),
    Row(
        "delete/array",
        lambda w: w.arr.delete(u32(0)),
        BpfError,
        errno.EINVAL,
        "bpf_map_delete_elem",
        "arr",
    ),
    Row(
        "delete/read-only-map",
        lambda w: w.ro.delete(K),
        BpfPermissionError,
        errno.EPERM,
        "bpf_map_delete_elem",
        "ro",
    ),
    Row(
        "delete/closed",
        lambda w: w.closed.delete(K),
        ValueError,
        op="bpf_map_delete_elem",
        map="closed",
    ),
    # next_key
    Row(
        "next_key/key-long", lambda w: w.m.next_key(b"12345"), ValueError, op="bpf_map_get_next_key"
    ),
    Row(
        "next_key/key-float",
        lambda w: w.m.next_key(1.0),
        TypeError,  # type: ignore[arg-type]
        op="bpf_map_get_next_key",
    ),
    Row(
        "next_key/write-only-map",
        lambda w: w.wo.next_key(),
        BpfPermissionError,
        errno.EPERM,
        "bpf_map_get_next_key",
        "wo",
    ),
    Row(
        "next_key/closed",
        lambda w: w.closed.next_key(),
        ValueError,
        op="bpf_map_get_next_key",
        map="closed",
    ),
    # lookup_and_delete
    Row(
        "lookup_and_delete/key-short",
        lambda w: w.m.lookup_and_delete(b""),
        ValueError,
        op="bpf_map_lookup_and_delete_elem",
    ),
    Row(
        "lookup_and_delete/array",
        lambda w: w.arr.lookup_and_delete(u32(0)),
        BatchNotSupportedError,
        ENOTSUPP,
        "bpf_map_lookup_and_delete_elem",
        "arr",
    ),
    Row(
        "lookup_and_delete/read-only-map",
        lambda w: w.ro.lookup_and_delete(K),
        BpfPermissionError,
        errno.EPERM,
        "bpf_map_lookup_and_delete_elem",
        "ro",
    ),
    Row(
        "lookup_and_delete/closed",
        lambda w: w.closed.lookup_and_delete(K),
        ValueError,
        op="bpf_map_lookup_and_delete_elem",
        map="closed",
    ),
]

# lookup_batch and lookup_and_delete_batch take the same arguments
for _name, _op in (("lookup_batch", LB), ("lookup_and_delete_batch", LADB)):

    def _call(name: str, *args: Any, target: str = "m", **kw: Any) -> Callable[[World], object]:
        return lambda w: getattr(getattr(w, target), name)(*args, **kw)

    ROWS += [
        Row(f"{_name}/count-0", _call(_name, 0), ValueError, op=_op),
        Row(f"{_name}/count-negative", _call(_name, -1), ValueError, op=_op),
        Row(f"{_name}/count-huge", _call(_name, 2**32), ValueError, op=_op),
        Row(f"{_name}/count-str", _call(_name, "4"), TypeError, op=_op),
        Row(f"{_name}/count-float", _call(_name, 4.0), TypeError, op=_op),
        Row(f"{_name}/count-bool", _call(_name, True), TypeError, op=_op),
        Row(f"{_name}/cursor-short", _call(_name, 4, b"\0"), ValueError, op=_op),
        Row(f"{_name}/cursor-str", _call(_name, 4, "abcd"), TypeError, op=_op),
        Row(f"{_name}/elem_flags-negative", _call(_name, 4, elem_flags=-1), ValueError, op=_op),
        Row(f"{_name}/elem_flags-str", _call(_name, 4, elem_flags="lock"), TypeError, op=_op),
        Row(f"{_name}/flags-huge", _call(_name, 4, flags=2**64), ValueError, op=_op),
        Row(
            f"{_name}/lock-without-spin-lock",
            _call(_name, 4, elem_flags=LOCK),
            BpfError,
            errno.EINVAL,
            _op,
        ),
        Row(
            f"{_name}/elem_flags-noexist",
            _call(_name, 4, elem_flags=NOEXIST),
            BpfError,
            errno.EINVAL,
            _op,
        ),
        Row(
            f"{_name}/flags-nonzero-on-hash", _call(_name, 4, flags=1), BpfError, errno.EINVAL, _op
        ),
        Row(
            f"{_name}/write-only-map",
            _call(_name, 4, target="wo"),
            BpfPermissionError,
            errno.EPERM,
            _op,
            "wo",
        ),
        Row(f"{_name}/closed", _call(_name, 4, target="closed"), ValueError, op=_op, map="closed"),
    ]
ROWS += [
    Row(
        "lookup_and_delete_batch/array",
        lambda w: w.arr.lookup_and_delete_batch(4),
        BatchNotSupportedError,
        ENOTSUPP,
        LADB,
        "arr",
    ),
    Row(
        "lookup_and_delete_batch/read-only-map",
        lambda w: w.ro.lookup_and_delete_batch(4),
        BpfPermissionError,
        errno.EPERM,
        LADB,
        "ro",
    ),
    # update_batch
    Row("update_batch/keys-int", lambda w: w.m.update_batch(1, [V]), TypeError, op=UB),  # type: ignore[arg-type]
    Row("update_batch/keys-str", lambda w: w.m.update_batch("abcd", [V]), TypeError, op=UB),  # type: ignore[arg-type]
    Row("update_batch/keys-ints", lambda w: w.m.update_batch([1], [V]), TypeError, op=UB),  # type: ignore[list-item]
    Row(
        "update_batch/keys-generator",
        lambda w: w.m.update_batch((k for k in [K]), [V]),  # type: ignore[arg-type]
        TypeError,
        op=UB,
    ),
    Row(
        "update_batch/key-short", lambda w: w.m.update_batch([K, b"\1"], [V, V]), ValueError, op=UB
    ),
    Row(
        "update_batch/keys-buffer-ragged",
        lambda w: w.m.update_batch(b"\0" * 6, V),
        ValueError,
        op=UB,
    ),
    Row("update_batch/value-long", lambda w: w.m.update_batch([K], [V + b"\0"]), ValueError, op=UB),
    Row(
        "update_batch/more-keys-than-values",
        lambda w: w.m.update_batch([K, u32(2)], [V]),
        ValueError,
        op=UB,
    ),
    Row(
        "update_batch/elem_flags-negative",
        lambda w: w.m.update_batch([K], [V], elem_flags=-1),
        ValueError,
        op=UB,
    ),
    Row(
        "update_batch/noexist",
        lambda w: w.m.update_batch([u32(9)], [V], elem_flags=NOEXIST),
        BpfError,
        errno.EINVAL,
        UB,
    ),
    Row(
        "update_batch/lock-without-spin-lock",
        lambda w: w.m.update_batch([u32(9)], [V], elem_flags=LOCK),
        BpfError,
        errno.EINVAL,
        UB,
    ),
    Row(
        "update_batch/map-full",
        lambda w: w.full.update_batch([u32(3), u32(4)], [V, V]),
        BpfError,
        errno.E2BIG,
        UB,
        "full",
    ),
    Row(
        "update_batch/read-only-map",
        lambda w: w.ro.update_batch([K], [V]),
        BpfPermissionError,
        errno.EPERM,
        UB,
        "ro",
    ),
    Row(
        "update_batch/closed",
        lambda w: w.closed.update_batch([K], [V]),
        ValueError,
        op=UB,
        map="closed",
    ),
    # delete_batch
    Row("delete_batch/keys-none", lambda w: w.m.delete_batch(None), TypeError, op=DB),  # type: ignore[arg-type]
    Row("delete_batch/key-long", lambda w: w.m.delete_batch([K, b"12345"]), ValueError, op=DB),
    Row(
        "delete_batch/keys-buffer-ragged",
        lambda w: w.m.delete_batch(b"\1\0\0\0\2"),
        ValueError,
        op=DB,
    ),
    Row(
        "delete_batch/flags-str",
        lambda w: w.m.delete_batch([K], flags="x"),
        TypeError,  # type: ignore[arg-type]
        op=DB,
    ),
    Row(
        "delete_batch/lock-without-spin-lock",
        lambda w: w.m.delete_batch([K], elem_flags=LOCK),
        BpfError,
        errno.EINVAL,
        DB,
    ),
    Row(
        "delete_batch/noexist",
        lambda w: w.m.delete_batch([K], elem_flags=NOEXIST),
        BpfError,
        errno.EINVAL,
        DB,
    ),
    Row(
        "delete_batch/array",
        lambda w: w.arr.delete_batch([u32(0)]),
        BatchNotSupportedError,
        ENOTSUPP,
        DB,
        "arr",
    ),
    Row(
        "delete_batch/read-only-map",
        lambda w: w.ro.delete_batch([K]),
        BpfPermissionError,
        errno.EPERM,
        DB,
        "ro",
    ),
    Row(
        "delete_batch/closed", lambda w: w.closed.delete_batch([K]), ValueError, op=DB, map="closed"
    ),
    # Map.fd
    Row("fd/closed", lambda w: w.closed.fd, ValueError, op="fd: ", map="closed"),
]

# The whole-map iterators: errors come out of the first next()
ITERATORS = {
    "drain": LADB,
    "batches": LB,
    "items": LB,
    "keys": LB,
    "values": LB,
    "drain_items": LADB,
}
for _name, _op in ITERATORS.items():

    def _it(name: str, target: str = "m", *args: Any, **kw: Any) -> Callable[[World], object]:
        return lambda w: getattr(getattr(w, target), name)(*args, **kw)

    ROWS += [
        Row(f"{_name}/batch_size-0", _it(_name, "m", 0), ValueError, op=_op),
        Row(f"{_name}/batch_size-negative", _it(_name, "m", -8), ValueError, op=_op),
        Row(f"{_name}/batch_size-str", _it(_name, "m", "8"), TypeError, op=_op),
        Row(f"{_name}/batch_size-float", _it(_name, "m", 8.0), TypeError, op=_op),
        Row(f"{_name}/batch_size-bool", _it(_name, "m", True), TypeError, op=_op),
        Row(f"{_name}/closed", _it(_name, "closed"), ValueError, op=_op, map="closed"),
    ]
    if _op == LADB:
        ROWS += [
            Row(f"{_name}/array", _it(_name, "arr"), BatchNotSupportedError, ENOTSUPP, _op, "arr"),
            Row(
                f"{_name}/read-only-map",
                _it(_name, "ro"),
                BpfPermissionError,
                errno.EPERM,
                _op,
                "ro",
            ),
        ]
    else:
        ROWS += [
            Row(
                f"{_name}/write-only-map",
                _it(_name, "wo"),
                BpfPermissionError,
                errno.EPERM,
                _op,
                "wo",
            )
        ]
    if _name in ("drain", "batches"):
        ROWS += [
            Row(
                f"{_name}/lock-without-spin-lock",
                _it(_name, "m", elem_flags=LOCK),
                BpfError,
                errno.EINVAL,
                _op,
            ),
            Row(
                f"{_name}/elem_flags-noexist",
                _it(_name, "m", elem_flags=NOEXIST),
                BpfError,
                errno.EINVAL,
                _op,
            ),
            Row(
                f"{_name}/flags-nonzero-on-hash",
                _it(_name, "m", flags=1),
                BpfError,
                errno.EINVAL,
                _op,
            ),
            Row(f"{_name}/elem_flags-negative", _it(_name, "m", elem_flags=-1), ValueError, op=_op),
        ]


# QUEUE, STACK, BLOOM_FILTER have no keys: every walk is refused before any syscall (it used to
# be "bpf_map_get_next_key: Invalid argument"); their own operations are pop/peek/push.
STRIDED = memoryview(bytearray(16))[::2]  # 8 bytes, not contiguous
NO_KEYS = "has no keys to walk; use pop(), peek() and push()"
for _name, _args in {
    **{name: () for name in ITERATORS},
    "clear": (),
    "next_key": (),
    "lookup_batch": (4,),
    "lookup_and_delete_batch": (4,),
}.items():
    for _target in ("queue", "bloom"):
        ROWS.append(
            Row(
                f"{_name}/{_target}-has-no-keys",
                _it(_name, _target, *_args),
                ValueError,
                op=NO_KEYS,
                map=_target,
            )
        )
ROWS += [
    Row(
        "lookup_batch/cursor-strided",
        lambda w: w.m.lookup_batch(4, STRIDED),
        ValueError,
        op=f"{LB}: map 'victim' (id",
    ),
    Row(
        "lookup/key-strided",
        lambda w: w.m.lookup(STRIDED[:4]),
        ValueError,
        op="bpf_map_lookup_elem",
    ),
    Row(
        "update_batch/values-strided",
        lambda w: w.m.update_batch([K], STRIDED),
        ValueError,
        op=UB,
    ),
    Row(
        "pop/not-a-queue",
        lambda w: w.m.pop(),
        ValueError,
        op="bpf_map_lookup_and_delete_elem",
    ),
    Row(
        "peek/bloom-without-value",
        lambda w: w.bloom.peek(),
        TypeError,
        op="bpf_map_lookup_elem",
        map="bloom",
    ),
    Row(
        "peek/queue-with-value",
        lambda w: w.queue.peek(V),
        TypeError,
        op="bpf_map_lookup_elem",
        map="queue",
    ),
    Row("push/not-keyless", lambda w: w.m.push(V), ValueError, op="bpf_map_update_elem"),
    Row(
        "push/value-short",
        lambda w: w.queue.push(b"\1"),
        ValueError,
        op="bpf_map_update_elem",
        map="queue",
    ),
]


def test_the_table_covers_every_public_entry_point() -> None:
    covered = {row.id.split("/")[0] for row in ROWS}
    public = {
        "create",
        "from_fd",
        "from_id",
        "open_pinned",
        "pin",
        "lookup",
        "update",
        "delete",
        "next_key",
        "lookup_and_delete",
        "lookup_batch",
        "lookup_and_delete_batch",
        "update_batch",
        "delete_batch",
        "drain",
        "batches",
        "items",
        "keys",
        "values",
        "drain_items",
        "clear",
        "pop",
        "peek",
        "push",
    }
    assert public <= covered, public - covered
    assert len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gives_the_documented_error_and_changes_nothing(world: World, row: Row) -> None:
    before = world.snapshot()
    fds = open_fds()
    with pytest.raises(row.exc) as info:
        result = row.call(world)
        if isinstance(result, Iterable) and not isinstance(result, Map):
            for _ in result:  # generators raise from their first next()
                pass
        elif isinstance(result, Map):
            result.close()
    e = info.value
    message = str(e)
    if issubclass(row.exc, BpfError):
        assert isinstance(e, BpfError)
        assert e.errno == row.errno, message
        assert message.startswith(f"[Errno {row.errno}] ")
        assert "Unknown error" not in message
    else:
        assert not isinstance(e, BpfError), "refused by the kernel, not before the syscall"
    assert row.op in message
    if row.map is not None:
        m = getattr(world, row.map)
        assert f"map {m.name!r} (id {m.id})" in message
    if row.id.endswith("/closed"):
        assert message.endswith(" is closed")
    assert open_fds() == fds, "an fd leaked on the error path"
    assert world.snapshot() == before


# -- faults that are not one bad argument ----------------------------------------------------
def test_update_batch_failing_midway_reports_how_many_were_applied(
    make_map: Callable[..., Map],
) -> None:
    m = make_map(MapType.HASH, 4, 8, 2, name="two")
    m.update(u32(1), u64(1))
    with pytest.raises(BpfError) as info:  # key 1 is replaced, 2 fits, 3 does not: E2BIG
        m.update_batch([u32(1), u32(2), u32(3), u32(4)], [u64(10), u64(20), u64(30), u64(40)])
    assert info.value.errno == errno.E2BIG
    assert info.value.count == 2
    assert contents(m) == {u32(1): u64(10), u32(2): u64(20)}


@pytest.mark.parametrize("map_type", [MapType.QUEUE, MapType.STACK], ids=lambda t: t.name.lower())
def test_queue_and_stack_work_through_pop_peek_push(
    make_map: Callable[..., Map], map_type: MapType
) -> None:
    q = make_map(map_type, 0, 8, 3)
    for i in range(3):
        q.push(u64(i))
    with pytest.raises(BpfError) as info:  # full
        q.push(u64(9))
    assert info.value.errno == errno.E2BIG
    order = [u64(i) for i in (range(3) if map_type == MapType.QUEUE else range(2, -1, -1))]
    assert q.peek() == order[0]
    assert [q.pop() for _ in range(4)] == [*order, None]
    assert q.peek() is None


def test_bloom_filter_works_through_push_and_peek(make_map: Callable[..., Map]) -> None:
    b = make_map(MapType.BLOOM_FILTER, 0, 8, 100)
    b.push(u64(7))
    assert b.peek(u64(7)) == u64(7)
    assert sum(b.peek(u64(i)) is not None for i in range(1000, 1100)) < 20  # false positives


def test_huge_batch_size_is_capped_at_max_entries(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 64)
    m.update_batch([u32(i) for i in range(40)], [u64(i) for i in range(40)])
    assert [b.count for b in m.drain(2**40)] == [40]
    assert contents(m) == {}


NO_CAPS = r"""
import json, sys
from libbpf_batch import BpfError, Map, MapType
out = {}
for name, call in [("create", lambda: Map.create(MapType.HASH, 4, 8, 4, name="nocaps")),
                   ("from_id", lambda: Map.from_id(int(sys.argv[1]))),
                   ("open_pinned", lambda: Map.open_pinned(sys.argv[2]))]:
    try:
        call().close()
        out[name] = "opened"
    except BpfError as e:
        out[name] = [type(e).__name__, e.errno, str(e)]
print(json.dumps(out))
"""


def test_without_cap_bpf_and_cap_sys_admin_opening_is_refused(world: World) -> None:
    capsh = shutil.which("capsh")
    if capsh is None:
        skip_or_fail("capsh not found: install libcap2-bin (`make deps`)")
    pin = world.bpffs / "victim"
    before, mode = world.snapshot(), pin.stat().st_mode
    os.chmod(pin, 0)  # without CAP_DAC_OVERRIDE, not even root may open it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(
            None, [str(Path(libbpf_batch.__file__).resolve().parent.parent), env.get("PYTHONPATH")]
        )
    )
    try:
        r = subprocess.run(
            [
                capsh,
                (
                    "--drop=cap_bpf,cap_sys_admin,cap_perfmon,cap_net_admin,cap_dac_override,"
                    "cap_dac_read_search,cap_fowner"
                ),
                "--",
                "-c",
                'exec "$0" "$@"',
                sys.executable,
                "-c",
                NO_CAPS,
                str(world.m.id),
                str(pin),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.chmod(pin, mode)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["create"] == [
        "BpfPermissionError",
        errno.EPERM,
        "[Errno 1] bpf_map_create: HASH 'nocaps': Operation not permitted",
    ]
    assert out["from_id"] == [
        "BpfPermissionError",
        errno.EPERM,
        (f"[Errno 1] bpf_map_get_fd_by_id: id {world.m.id}: Operation not permitted"),
    ]
    assert out["open_pinned"] == [
        "BpfPermissionError",
        errno.EACCES,
        f"[Errno 13] bpf_obj_get: {str(pin)!r}: Permission denied",
    ]
    assert world.snapshot() == before
