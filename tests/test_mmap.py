"""Map.mmap() on BPF_F_MMAPABLE arrays: the mapping, its Batch access, and items() through it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
from conftest import require_module, skip_or_fail, u32

from libbpf_batch import Batch, BpfError, Map, MapFlags, MapType

MakeMap = Callable[..., Map]
VALUE_SIZES = [1, 3, 4, 8, 12, 16]


def slot(value_size: int) -> int:
    return (value_size + 7) & ~7


def value(i: int, size: int) -> bytes:
    return bytes((i * 7 + j) % 251 + 1 for j in range(size))


def mmapable(
    make_map: MakeMap, value_size: int, n: int, flags: int = 0
) -> tuple[Map, dict[bytes, bytes]]:
    m = make_map(MapType.ARRAY, 4, value_size, n, flags=MapFlags.MMAPABLE | flags)
    expected = {u32(i): value(i, value_size) for i in range(n)}
    if not flags & MapFlags.RDONLY_PROG:
        m.update_batch(list(expected), list(expected.values()))
    return m, expected


@pytest.mark.parametrize("value_size", VALUE_SIZES)
def test_mapping_holds_each_value_at_its_8_byte_aligned_slot(
    make_map: MakeMap, value_size: int
) -> None:
    m, expected = mmapable(make_map, value_size, 1000)
    view = m.mmap()
    assert len(view) == 1000 * slot(value_size)
    assert not view.readonly
    for i in range(1000):
        at = i * slot(value_size)
        assert view[at : at + value_size].tobytes() == expected[u32(i)]
    assert m.mmap() is view  # one mapping per map


@pytest.mark.parametrize("value_size", VALUE_SIZES)
def test_writes_through_the_mapping_are_what_lookups_return(
    make_map: MakeMap, value_size: int
) -> None:
    m, _ = mmapable(make_map, value_size, 64)
    view = m.mmap()
    for i in range(64):
        at = i * slot(value_size)
        view[at : at + value_size] = value(i + 1000, value_size)
    assert {k: m.lookup(k) for k in map(u32, range(64))} == {
        u32(i): value(i + 1000, value_size) for i in range(64)
    }


@pytest.mark.parametrize("batch_size", [None, 1, 7, 1 << 20], ids=["default", "1", "7", "huge"])
@pytest.mark.parametrize("value_size", VALUE_SIZES)
def test_items_values_and_batches_read_through_the_mapping(
    make_map: MakeMap, value_size: int, batch_size: int | None
) -> None:
    m, expected = mmapable(make_map, value_size, 2000)
    items = list(m.items(batch_size))
    assert items == sorted(expected.items(), key=lambda kv: int.from_bytes(kv[0], "little"))
    assert list(m.values(batch_size)) == list(expected.values())
    assert list(m.keys(batch_size)) == list(expected)
    batches = list(m.batches(batch_size))
    assert [b.done for b in batches] == [False] * (len(batches) - 1) + [True]
    assert sum(b.count for b in batches) == 2000
    # the same elements the syscalls return
    cursor, via_syscalls = None, {}
    while True:
        b = m.lookup_batch(1000, cursor)
        via_syscalls.update(b.to_dict())
        if b.done:
            break
        cursor = b.cursor
    assert dict(items) == via_syscalls


def test_batches_without_copy_are_live_views_of_the_mapping(make_map: MakeMap) -> None:
    m, _ = mmapable(make_map, 8, 100)
    first = next(m.batches(10, copy=False))
    m.update(u32(3), b"\xff" * 8)
    assert first.value_list()[3] == b"\xff" * 8
    copied = next(m.batches(10))
    m.update(u32(3), b"\xee" * 8)
    assert copied.value_list()[3] == b"\xff" * 8


@pytest.mark.parametrize("value_size", [4, 8, 12])
def test_mmap_batch_and_to_numpy_read_the_whole_array(make_map: MakeMap, value_size: int) -> None:
    np = require_module("numpy")
    m, expected = mmapable(make_map, value_size, 3000)
    batch = m.mmap_batch()
    assert isinstance(batch, Batch) and batch.count == 3000 and batch.done
    assert batch.to_dict() == expected
    keys, values = batch.to_numpy(value_dtype=np.dtype(f"V{value_size}"))
    assert keys.tolist() == list(range(3000))
    assert [bytes(v) for v in values] == list(expected.values())
    part = m.mmap_batch(100, 50)
    assert part.to_dict() == {u32(i): expected[u32(i)] for i in range(100, 150)}
    with pytest.raises(ValueError, match=r"mmap_batch: .*\[2990, 3010\) are past max_entries"):
        m.mmap_batch(2990, 20)


def test_maps_that_cant_be_mapped_are_refused_before_any_call(make_map: MakeMap) -> None:
    for m in (make_map(MapType.HASH, 4, 8, 10), make_map(MapType.ARRAY, 4, 8, 10)):
        with pytest.raises(ValueError, match=rf"mmap: map {m.name!r} \(id {m.id}\): only an ARRAY"):
            m.mmap()
        assert not m.is_mmapable


def test_program_read_only_map_is_mapped_read_only(make_map: MakeMap) -> None:
    m, _ = mmapable(make_map, 8, 16, flags=MapFlags.RDONLY_PROG)
    m.update(u32(5), b"\x05" * 8)
    view = m.mmap()
    assert view.readonly
    assert view[40:48].tobytes() == b"\x05" * 8
    with pytest.raises(TypeError):
        view[0:8] = b"\1" * 8


def test_frozen_map_is_mapped_read_only(make_map: MakeMap) -> None:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        skip_or_fail("bpftool is not installed (apt-get install bpftool)")
    m, expected = mmapable(make_map, 8, 16)
    subprocess.run([bpftool, "map", "freeze", "id", str(m.id)], check=True, timeout=30)
    view = m.mmap()
    assert view.readonly
    assert dict(m.items()) == expected


def test_user_read_only_map_says_why_and_items_still_read_it(make_map: MakeMap) -> None:
    m = make_map(MapType.ARRAY, 4, 8, 16, flags=MapFlags.MMAPABLE | MapFlags.RDONLY)
    with pytest.raises(BpfError, match=r"fd is read-only") as e:
        m.mmap()
    assert e.value.errno == 22  # EINVAL: bpf_map_mmap() refuses a private mapping
    assert dict(m.items()) == {u32(i): bytes(8) for i in range(16)}


def test_close_releases_the_mapping(make_map: MakeMap) -> None:
    m, expected = mmapable(make_map, 8, 100)
    view = m.mmap()
    kept = view[8:16]  # a view the caller derived keeps the memory mapped
    m.close()
    with pytest.raises(ValueError, match="released"):
        view.tobytes()
    assert kept.tobytes() == expected[u32(1)]
    kept.release()
    with pytest.raises(ValueError, match="closed"):
        m.mmap()
