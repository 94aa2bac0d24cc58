"""Shared fixtures: real maps on the real kernel, closed after each test.

Where BPF is unavailable the BPF tests skip with the reason; LIBBPF_BATCH_REQUIRE_BPF=1 (set by
.ci/run) turns every such skip into a failure.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import struct
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from bpf.build import Unavailable
from bpf.build import bpffs as mounted_bpffs

from libbpf_batch import BatchNotSupportedError, BpfError, Map, MapType

REQUIRE_BPF = os.environ.get("LIBBPF_BATCH_REQUIRE_BPF") == "1"

HASH_TYPES = [MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH]


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), or a failure under LIBBPF_BATCH_REQUIRE_BPF=1."""
    if REQUIRE_BPF:
        pytest.fail(f"LIBBPF_BATCH_REQUIRE_BPF=1 but {reason}")
    pytest.skip(reason)


def require_module(name: str) -> Any:
    """Import an optional extra the test needs; skip without it (fail under REQUIRE_BPF)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"{name} is not installed (make test installs it in .venv)")
        raise  # unreachable: skip_or_fail raises


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Yield ``proc``; afterwards kill it if it still runs, wait for it, close its pipes."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def where(m: Map) -> str:
    """How error messages name a map, as a regular expression."""
    return re.escape(f"map {m.name!r} (id {m.id})")


def open_fds() -> int:
    """The number of fds this process has open (checked around calls for leaks)."""
    return len(os.listdir("/proc/self/fd"))


def exactly_once(pairs: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The pairs as a dict, after checking that no key came twice."""
    pairs = list(pairs)
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key was returned twice"
    return dict(pairs)


@pytest.fixture(scope="module")
def bpf_fs() -> Iterator[Path]:
    """A private bpffs mounted on a fresh temporary directory, unmounted (with its pins) after
    the test module."""
    try:
        with mounted_bpffs() as path:
            yield path
    except Unavailable as e:
        skip_or_fail(str(e))


def _bpf_unavailable() -> str | None:
    try:
        Map.create(MapType.HASH, 4, 4, 1).close()
    except BpfError as e:
        return f"cannot create a BPF map here ({e}); run as root or with CAP_BPF"
    return None


_UNAVAILABLE: list[str | None] = []

# Fixtures that need this checkout (build_ffi.py, bench/c_drain.c), not just the package:
# `make wheel-test` runs the suite against an installed wheel with `-m "not source_tree"`.
SOURCE_TREE_FIXTURES = {"build_ffi", "c_binary"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SOURCE_TREE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.source_tree)


@pytest.fixture
def bpf() -> None:
    """Skip (or fail under LIBBPF_BATCH_REQUIRE_BPF=1) when BPF maps can't be created."""
    if not _UNAVAILABLE:
        _UNAVAILABLE.append(_bpf_unavailable())
    if _UNAVAILABLE[0]:
        skip_or_fail(_UNAVAILABLE[0])


@pytest.fixture
def make_map(bpf: None) -> Iterator[Callable[..., Map]]:
    """Map.create(...) that closes every map it made when the test ends."""
    made: list[Map] = []

    def make(
        map_type: MapType,
        key_size: int = 4,
        value_size: int = 8,
        max_entries: int = 1024,
        **kw: object,
    ) -> Map:
        try:
            m = Map.create(map_type, key_size, value_size, max_entries, **kw)  # type: ignore[arg-type]
        except BatchNotSupportedError as e:
            skip_or_fail(f"{map_type.name} not supported by this kernel: {e}")
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def skip_if_not_supported(e: BatchNotSupportedError) -> None:
    """Turn a missing kernel feature into a skip (a failure under REQUIRE_BPF)."""
    skip_or_fail(f"kernel lacks this operation: {e}")


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


def u64(i: int) -> bytes:
    return struct.pack("<Q", i)


def fill(m: Map, n: int, value: Callable[[int], bytes] | None = None) -> dict[bytes, bytes]:
    """Put keys 0..n-1 (little-endian, key_size bytes) into ``m``; returns what was written.

    Values default to the key's number + 1, repeated per CPU for per-CPU maps.
    """
    ks = m.key_size
    if value is None:

        def value(i: int) -> bytes:
            slot = (i + 1).to_bytes(8, "little")[: m.value_size].ljust(m.layout.slot, b"\0")
            return (
                slot * m.ncpus
                if m.is_percpu
                else (i + 1).to_bytes(8, "little")[: m.value_size].ljust(m.value_size, b"\0")
            )

    expected = {i.to_bytes(ks, "little"): value(i) for i in range(n)}
    if expected:
        m.update_batch(list(expected), list(expected.values()))
    return expected


# -- every map type the core covers, filled with distinct keys and values --------------------
COVERED_TYPES = HASH_TYPES + [
    MapType.ARRAY,
    MapType.PERCPU_ARRAY,
    MapType.LPM_TRIE,
    MapType.HASH_OF_MAPS,
    MapType.ARRAY_OF_MAPS,
]
ARRAY_TYPES = [MapType.ARRAY, MapType.PERCPU_ARRAY]
MAP_OF_MAPS_TYPES = [MapType.HASH_OF_MAPS, MapType.ARRAY_OF_MAPS]


def type_id(map_type: MapType) -> str:
    """Readable pytest id for a map type: 'lru_percpu_hash'."""
    return map_type.name.lower()


def lpm_key(i: int, prefix: int = 32) -> bytes:
    """An 8-byte LPM_TRIE key: prefix length, then the IPv4 address 10.0.0.0 + i."""
    return struct.pack("<I", prefix) + (0x0A000000 + i).to_bytes(4, "big")


def lru_room(map_type: MapType, n: int) -> int:
    """max_entries for a map of ``map_type`` to hold ``n`` elements without LRU eviction.

    bpf_lru_list.c: each CPU's local free list takes up to 128 (LOCAL_FREE_TARGET) nodes at a
    time, and a refill that finds fewer free in the global list evicts, even in a map far
    from full when a thread moved between CPUs. 0 for other types.
    """
    if map_type not in (MapType.LRU_HASH, MapType.LRU_PERCPU_HASH):
        return 0
    from libbpf_batch import possible_cpus

    return n + 128 * (possible_cpus() + 1)


def contents(m: Map) -> dict[bytes, bytes]:
    """Every element, read per key with next_key/lookup (independent of the batch calls).

    ARRAY_OF_MAPS slots that hold no map are keys without a value: left out.
    """
    found = {}
    key = m.next_key()
    while key is not None:
        value = m.lookup(key)
        if value is not None:
            found[key] = value
        key = m.next_key(key)
    return found


def element_key(map_type: MapType, i: int) -> bytes:
    """Key number ``i`` for maps made by ``make_filled``."""
    return lpm_key(i) if map_type == MapType.LPM_TRIE else u32(i)


def element_value(m: Map, i: int) -> bytes:
    """Value number ``i`` for an 8-byte-value map: distinct per element and per CPU slot."""
    return b"".join(u64(((i + 1) << 8) | cpu) for cpu in range(m.ncpus))


@pytest.fixture
def make_filled(make_map: Callable[..., Map]) -> Callable[..., tuple[Map, dict[bytes, bytes]]]:
    """make_filled(map_type, n) -> (map, {key: value as lookups return it}) with n elements.

    Arrays (and ARRAY_OF_MAPS) get max_entries = n so every slot is an element; hash maps get
    room to spare (an LRU map near full evicts). Map-of-maps hold n inner HASH maps, written
    by fd, read back as their ids.
    """

    def make(
        map_type: MapType, n: int, max_entries: int | None = None
    ) -> tuple[Map, dict[bytes, bytes]]:
        if max_entries is None:
            fixed = map_type in ARRAY_TYPES or map_type == MapType.ARRAY_OF_MAPS
            max_entries = n if fixed else max(4 * n, 64, lru_room(map_type, n))
        key_size = 8 if map_type == MapType.LPM_TRIE else 4
        keys = [element_key(map_type, i) for i in range(n)]
        if map_type in MAP_OF_MAPS_TYPES:
            inner = [make_map(MapType.HASH, 4, 4, 1) for _ in range(max(n, 1))]
            m = make_map(map_type, key_size, 4, max_entries, inner_map=inner[0])
            written = [u32(inner[i].fd) for i in range(n)]
            expected = {k: u32(inner[i].id) for i, k in enumerate(keys)}
        else:
            m = make_map(map_type, key_size, 8, max_entries)
            written = [element_value(m, i) for i in range(n)]
            expected = dict(zip(keys, written))
        if n:
            assert m.update_batch(keys, written) == n
        return m, expected

    return make
