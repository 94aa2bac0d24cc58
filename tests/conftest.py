"""Shared fixtures: real maps on the real kernel, closed after each test.

Where BPF is unavailable the BPF tests skip with the reason; LIBBPF_BATCH_REQUIRE_BPF=1 (set by
.ci/run) turns every such skip into a failure.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterator

import pytest

from libbpf_batch import BatchNotSupportedError, BpfError, Map, MapType

REQUIRE_BPF = os.environ.get("LIBBPF_BATCH_REQUIRE_BPF") == "1"

HASH_TYPES = [MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH]


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), or a failure under LIBBPF_BATCH_REQUIRE_BPF=1."""
    if REQUIRE_BPF:
        pytest.fail(f"LIBBPF_BATCH_REQUIRE_BPF=1 but {reason}")
    pytest.skip(reason)


def _bpf_unavailable() -> str | None:
    try:
        Map.create(MapType.HASH, 4, 4, 1).close()
    except BpfError as e:
        return f"cannot create a BPF map here ({e}); run as root or with CAP_BPF"
    return None


_UNAVAILABLE: list[str | None] = []


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

    def make(map_type: MapType, key_size: int = 4, value_size: int = 8,
             max_entries: int = 1024, **kw: object) -> Map:
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
            slot = (i + 1).to_bytes(8, "little")[: m.value_size].ljust((m.value_size + 7) & ~7,
                                                                       b"\0")
            return slot * m.ncpus if m.is_percpu else (i + 1).to_bytes(8, "little")[
                : m.value_size].ljust(m.value_size, b"\0")
    expected = {i.to_bytes(ks, "little"): value(i) for i in range(n)}
    if expected:
        m.update_batch(list(expected), list(expected.values()))
    return expected
