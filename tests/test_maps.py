"""The Map façade: constructors, attributes, lifecycle, per-key calls and single batch calls."""

from __future__ import annotations

import errno
import gc
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ARRAY_TYPES,
    COVERED_TYPES,
    HASH_TYPES,
    MAP_OF_MAPS_TYPES,
    contents,
    element_key,
    element_value,
    lpm_key,
    lru_room,
    type_id,
    u32,
    u64,
    where,
)

from libbpf_batch import (
    Batch,
    BatchNotSupportedError,
    BpfError,
    BpfNotFoundError,
    BpfPermissionError,
    Map,
    MapFlags,
    MapInfo,
    MapType,
    _bindings,
)
from libbpf_batch.errors import ENOTSUPP

MakeMap = Callable[..., Map]
MakeFilled = Callable[..., "tuple[Map, dict[bytes, bytes]]"]
PERCPU_TYPES = [MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH, MapType.PERCPU_ARRAY]
# Types whose per-key delete works (arrays have no delete at all).
DELETABLE_TYPES = HASH_TYPES + [MapType.LPM_TRIE] + MAP_OF_MAPS_TYPES


def make_typed(
    make_map: MakeMap, map_type: MapType, max_entries: int = 8, name: str | None = None
) -> Map:
    """One map of ``map_type`` with 8-byte values (4-byte for map-of-maps), empty."""
    if map_type in MAP_OF_MAPS_TYPES:
        inner = make_map(MapType.HASH, 4, 4, 1)
        return make_map(map_type, 4, 4, max_entries, name=name, inner_map=inner)
    key_size = 8 if map_type == MapType.LPM_TRIE else 4
    return make_map(map_type, key_size, 8, max_entries, name=name)


def new_value(make_map: MakeMap, m: Map, i: int) -> tuple[Any, bytes]:
    """(what to pass to update, what lookup then returns) for a value not yet in ``m``."""
    if m.type in MAP_OF_MAPS_TYPES:
        inner = make_map(MapType.HASH, 4, 4, 1)
        return inner, u32(inner.id)
    v = element_value(m, 1000 + i)
    return v, v


# -- MapType --------------------------------------------------------------------------------
UAPI_MAP_TYPES = {
    "UNSPEC": 0,
    "HASH": 1,
    "ARRAY": 2,
    "PROG_ARRAY": 3,
    "PERF_EVENT_ARRAY": 4,
    "PERCPU_HASH": 5,
    "PERCPU_ARRAY": 6,
    "STACK_TRACE": 7,
    "CGROUP_ARRAY": 8,
    "LRU_HASH": 9,
    "LRU_PERCPU_HASH": 10,
    "LPM_TRIE": 11,
    "ARRAY_OF_MAPS": 12,
    "HASH_OF_MAPS": 13,
    "DEVMAP": 14,
    "SOCKMAP": 15,
    "CPUMAP": 16,
    "XSKMAP": 17,
    "SOCKHASH": 18,
    "CGROUP_STORAGE": 19,
    "REUSEPORT_SOCKARRAY": 20,
    "PERCPU_CGROUP_STORAGE": 21,
    "QUEUE": 22,
    "STACK": 23,
    "SK_STORAGE": 24,
    "DEVMAP_HASH": 25,
    "STRUCT_OPS": 26,
    "RINGBUF": 27,
    "INODE_STORAGE": 28,
    "TASK_STORAGE": 29,
    "BLOOM_FILTER": 30,
    "USER_RINGBUF": 31,
    "CGRP_STORAGE": 32,
}


@pytest.mark.parametrize(
    ("name", "number"), UAPI_MAP_TYPES.items(), ids=[n.lower() for n in UAPI_MAP_TYPES]
)
def test_map_type_has_the_uapi_number(name: str, number: int) -> None:
    assert MapType[name] == number
    assert MapType(number).name == name


def test_map_type_has_no_unknown_member() -> None:
    extra = {t.name for t in MapType} - set(UAPI_MAP_TYPES)
    assert extra <= {"ARENA"}  # 33 since Linux 6.9, newer than the pinned headers
    assert MapType.ARENA == 33


# -- create and attributes ------------------------------------------------------------------
@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_create_reports_what_was_asked(make_map: MakeMap, map_type: MapType) -> None:
    m = make_typed(make_map, map_type, max_entries=16, name="made_here")
    assert m.type is map_type
    expected_key_size = 8 if map_type == MapType.LPM_TRIE else 4
    expected_value_size = 4 if map_type in MAP_OF_MAPS_TYPES else 8
    assert (m.key_size, m.value_size, m.max_entries, m.name) == (
        expected_key_size,
        expected_value_size,
        16,
        "made_here",
    )
    assert m.id > 0
    assert isinstance(m.fd, int) and m.fd >= 0
    assert os.readlink(f"/proc/self/fd/{m.fd}") == "anon_inode:bpf-map"


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_info_matches_the_attributes(make_map: MakeMap, map_type: MapType) -> None:
    m = make_typed(make_map, map_type, max_entries=16, name="info")
    assert isinstance(m.info, MapInfo)
    assert (
        m.info.id,
        m.info.name,
        m.info.type,
        m.info.key_size,
        m.info.value_size,
        m.info.max_entries,
        m.info.map_flags,
    ) == (m.id, "info", map_type, m.key_size, m.value_size, 16, m.flags)
    assert m.info.type_name == map_type.name.lower()


def test_lpm_trie_gets_no_prealloc(make_map: MakeMap) -> None:
    m = make_map(MapType.LPM_TRIE, 8, 8, 4)
    assert m.flags & MapFlags.NO_PREALLOC


def test_create_passes_flags(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4, flags=MapFlags.NO_PREALLOC)
    assert m.flags == MapFlags.NO_PREALLOC


@pytest.mark.parametrize("map_type", PERCPU_TYPES, ids=type_id)
@pytest.mark.parametrize("value_size", [1, 4, 8, 12])
def test_percpu_value_stride_is_rounded_slot_times_ncpus(
    make_map: MakeMap, map_type: MapType, value_size: int
) -> None:
    m = make_map(map_type, 4, value_size, 4)
    assert m.ncpus == _bindings.libbpf_num_possible_cpus()
    assert m.value_stride == ((value_size + 7) // 8 * 8) * m.ncpus


@pytest.mark.parametrize("map_type", [MapType.HASH, MapType.LRU_HASH, MapType.ARRAY], ids=type_id)
@pytest.mark.parametrize("value_size", [1, 4, 12])
def test_value_stride_is_value_size_for_shared_maps(
    make_map: MakeMap, map_type: MapType, value_size: int
) -> None:
    m = make_map(map_type, 4, value_size, 4)
    assert (m.ncpus, m.value_stride) == (1, value_size)


@pytest.mark.parametrize("name", ["sixteen_chars_xx", "has space", "dash-ed", "é"])
def test_create_refuses_a_bad_name(bpf: None, name: str) -> None:
    with pytest.raises(ValueError, match="map name"):
        Map.create(MapType.HASH, 4, 4, 4, name=name)


@pytest.mark.parametrize("map_type", MAP_OF_MAPS_TYPES, ids=type_id)
def test_create_map_of_maps_needs_inner_map(bpf: None, map_type: MapType) -> None:
    with pytest.raises(ValueError, match="inner_map"):
        Map.create(map_type, 4, 4, 4)


# -- from_fd, from_id, pin, open_pinned ----------------------------------------------------
def test_from_fd_opens_the_same_map_on_a_new_fd(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4, name="orig")
    m.update(u32(1), u64(11))
    with Map.from_fd(m.fd) as other:
        assert other.fd != m.fd
        assert (other.id, other.name, other.type) == (m.id, "orig", MapType.HASH)
        assert other.lookup(u32(1)) == u64(11)


def test_closing_a_map_from_fd_leaves_the_callers_fd_open(bpf: None) -> None:
    fd = _bindings.bpf_map_create(int(MapType.HASH), b"caller", 4, 8, 4)
    try:
        Map.from_fd(fd).close()
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-map"
        with Map.from_fd(fd) as again:
            again.update(u32(2), u64(22))
            assert again.lookup(u32(2)) == u64(22)
    finally:
        os.close(fd)


def test_from_id_opens_the_same_map(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4, name="by_id")
    m.update(u32(3), u64(33))
    with Map.from_id(m.id) as other:
        assert other.fd != m.fd
        assert (other.id, other.name) == (m.id, "by_id")
        assert other.lookup(u32(3)) == u64(33)


def test_pin_then_open_pinned_is_the_same_map(make_map: MakeMap, bpf_fs: Path) -> None:
    m = make_map(MapType.HASH, 4, 8, 4, name="pinned")
    m.update(u32(4), u64(44))
    m.pin(bpf_fs / "counts")
    assert (bpf_fs / "counts").exists()
    with Map.open_pinned(bpf_fs / "counts") as other:
        assert (other.id, other.name) == (m.id, "pinned")
        assert other.lookup(u32(4)) == u64(44)


def test_open_pinned_accepts_a_str_path(make_map: MakeMap, bpf_fs: Path) -> None:
    m = make_map(MapType.ARRAY, 4, 8, 4)
    m.pin(str(bpf_fs / "arr"))
    with Map.open_pinned(str(bpf_fs / "arr")) as other:
        assert other.id == m.id


def test_pin_outside_a_bpffs_is_eperm_naming_map_and_path(
    make_map: MakeMap, tmp_path: Path
) -> None:
    m = make_map(MapType.HASH, 4, 8, 4, name="nopin")
    with pytest.raises(BpfPermissionError) as info:
        m.pin(tmp_path / "x")
    assert info.value.errno == errno.EPERM
    assert re.search(where(m), str(info.value))
    assert str(tmp_path / "x") in str(info.value)


def test_open_pinned_missing_is_not_found_naming_the_path(bpf: None, bpf_fs: Path) -> None:
    with pytest.raises(BpfNotFoundError, match=re.escape(str(bpf_fs / "nothing"))):
        Map.open_pinned(bpf_fs / "nothing")


# -- lifecycle ------------------------------------------------------------------------------
def test_close_is_idempotent_and_closes_the_fd(bpf: None) -> None:
    m = Map.create(MapType.HASH, 4, 4, 4)
    fd = m.fd
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_context_manager_closes(bpf: None) -> None:
    with Map.create(MapType.HASH, 4, 4, 4) as m:
        assert not m.closed
        m.update(u32(1), u32(1))
    assert m.closed
    assert "closed" in repr(m)


def test_unclosed_map_warns_when_collected(bpf: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded here, not through pytest.warns: whatever goes wrong inside __del__ must fail
    # this test, not become an unraisable-exception warning.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    m = Map.create(MapType.HASH, 4, 4, 4, name="leaky")
    fd, text = m.fd, f"unclosed {m!r}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del m  # the last reference
        gc.collect()
    assert unraisable == []
    assert [(w.category, str(w.message)) for w in caught] == [(ResourceWarning, text)]
    assert text.startswith("unclosed <Map hash 'leaky'")
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        kind = "closed"
    assert kind != "anon_inode:bpf-map"


def test_closed_map_does_not_warn(bpf: None) -> None:
    m = Map.create(MapType.HASH, 4, 4, 4)
    m.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del m
        gc.collect()


# -- one key, one syscall, every covered type -----------------------------------------------
@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_lookup_returns_each_value_exactly(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 6)
    assert {k: m.lookup(k) for k in expected} == expected
    assert all(len(v) == m.value_stride for v in expected.values())


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_lookup_missing_is_none(make_filled: MakeFilled, map_type: MapType) -> None:
    m, _ = make_filled(map_type, 6)
    missing = element_key(map_type, 6)  # arrays: index == max_entries
    assert m.lookup(missing) is None
    assert missing not in m
    assert element_key(map_type, 0) in m


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_update_replaces_only_that_value(
    make_map: MakeMap, make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 6)
    given, read_back = new_value(make_map, m, 3)
    m.update(element_key(map_type, 3), given)
    expected[element_key(map_type, 3)] = read_back
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", DELETABLE_TYPES, ids=type_id)
def test_delete_present_is_true_and_removes_only_it(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 6)
    assert m.delete(element_key(map_type, 2)) is True
    del expected[element_key(map_type, 2)]
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", DELETABLE_TYPES, ids=type_id)
def test_delete_missing_is_false(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 6)
    m.delete(element_key(map_type, 2))
    assert m.delete(element_key(map_type, 2)) is False
    del expected[element_key(map_type, 2)]
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", ARRAY_TYPES, ids=type_id)
def test_delete_on_an_array_is_einval_naming_the_map(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 4)
    with pytest.raises(BpfError, match="bpf_map_delete_elem: " + where(m)) as info:
        m.delete(u32(1))
    assert info.value.errno == errno.EINVAL
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_next_key_walks_every_key_once(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 6)
    walked = []
    key = m.next_key()
    while key is not None:
        walked.append(key)
        key = m.next_key(key)
    assert sorted(walked) == sorted(expected)


@pytest.mark.parametrize("map_type", ARRAY_TYPES, ids=type_id)
def test_next_key_of_an_array_is_the_next_index(make_filled: MakeFilled, map_type: MapType) -> None:
    m, _ = make_filled(map_type, 3)
    assert [m.next_key(), m.next_key(u32(0)), m.next_key(u32(1)), m.next_key(u32(2))] == [
        u32(0),
        u32(1),
        u32(2),
        None,
    ]


@pytest.mark.parametrize(
    "map_type", HASH_TYPES + [MapType.LPM_TRIE, MapType.HASH_OF_MAPS], ids=type_id
)
def test_next_key_of_an_empty_map_is_none(make_filled: MakeFilled, map_type: MapType) -> None:
    m, _ = make_filled(map_type, 0)  # (arrays always have every index as a key)
    assert m.next_key() is None


@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_lookup_and_delete_returns_the_value_and_removes_it(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 6)
    key = element_key(map_type, 4)
    assert m.lookup_and_delete(key) == expected.pop(key)
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_lookup_and_delete_missing_is_none(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 6)
    assert m.lookup_and_delete(element_key(map_type, 40)) is None
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", [t for t in COVERED_TYPES if t not in HASH_TYPES], ids=type_id)
def test_lookup_and_delete_elsewhere_is_enotsupp(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 4)
    with pytest.raises(
        BatchNotSupportedError, match="bpf_map_lookup_and_delete_elem: " + where(m)
    ) as info:
        m.lookup_and_delete(element_key(map_type, 1))
    assert info.value.errno == ENOTSUPP
    assert contents(m) == expected


def test_lpm_lookup_is_longest_prefix_match(make_map: MakeMap) -> None:
    m = make_map(MapType.LPM_TRIE, 8, 8, 4)
    m.update(lpm_key(0, prefix=8), u64(8))  # 10.0.0.0/8
    m.update(lpm_key(5, prefix=32), u64(32))  # 10.0.0.5/32
    assert m.lookup(lpm_key(5)) == u64(32)
    assert m.lookup(lpm_key(6)) == u64(8)


# -- per-CPU values -------------------------------------------------------------------------
@pytest.mark.parametrize("map_type", PERCPU_TYPES, ids=type_id)
def test_percpu_update_and_lookup_use_one_slot_per_cpu(
    make_map: MakeMap, map_type: MapType
) -> None:
    m = make_map(map_type, 4, 4, 4)  # 4-byte values in 8-byte slots
    value = b"".join(u32(0xC0DE0000 + cpu) + bytes([cpu, 1, 2, 3]) for cpu in range(m.ncpus))
    m.update(u32(1), value)
    got = m.lookup(u32(1))
    assert got is not None and len(got) == m.value_stride == 8 * m.ncpus
    assert [got[8 * c : 8 * c + 4] for c in range(m.ncpus)] == [
        u32(0xC0DE0000 + c) for c in range(m.ncpus)
    ]


@pytest.mark.parametrize("map_type", PERCPU_TYPES, ids=type_id)
def test_percpu_update_refuses_a_value_of_value_size(make_map: MakeMap, map_type: MapType) -> None:
    m = make_map(map_type, 4, 4, 4)
    with pytest.raises(ValueError, match=rf"value is 4 bytes, expected {m.value_stride}"):
        m.update(u32(1), u32(7))
    assert m.lookup(u32(1)) in (None, bytes(m.value_stride))  # arrays hold zeros


# -- map-of-maps: fds in, ids out -----------------------------------------------------------
@pytest.mark.parametrize("map_type", MAP_OF_MAPS_TYPES, ids=type_id)
@pytest.mark.parametrize("as_fd", [False, True], ids=["map", "fd"])
def test_map_of_maps_update_takes_an_inner_map_lookup_gives_its_id(
    make_map: MakeMap, map_type: MapType, as_fd: bool
) -> None:
    inner = make_map(MapType.HASH, 4, 4, 1)
    inner.update(u32(0), u32(0xABCD))
    outer = make_map(map_type, 4, 4, 4, inner_map=inner)
    outer.update(u32(2), inner.fd if as_fd else inner)
    assert outer.lookup(u32(2)) == u32(inner.id)
    with Map.from_id(int.from_bytes(outer.lookup(u32(2)) or b"", "little")) as again:
        assert again.lookup(u32(0)) == u32(0xABCD)


@pytest.mark.parametrize("map_type", MAP_OF_MAPS_TYPES, ids=type_id)
def test_map_of_maps_update_with_a_non_map_fd_fails(make_map: MakeMap, map_type: MapType) -> None:
    inner = make_map(MapType.HASH, 4, 4, 1)
    outer = make_map(map_type, 4, 4, 4, inner_map=inner, name="outer")
    r, w = os.pipe()
    try:
        with pytest.raises(BpfError, match="bpf_map_update_elem: " + where(outer)) as info:
            outer.update(u32(1), r)
    finally:
        os.close(r)
        os.close(w)
    assert info.value.errno in (errno.EBADF, errno.EINVAL)
    assert outer.lookup(u32(1)) is None


@pytest.mark.parametrize("fd", [-1, 2**31, 2**40], ids=["negative", "too-big", "huge"])
@pytest.mark.parametrize("map_type", MAP_OF_MAPS_TYPES, ids=type_id)
def test_map_of_maps_update_with_an_impossible_fd_is_value_error(
    make_map: MakeMap, map_type: MapType, fd: int
) -> None:
    inner = make_map(MapType.HASH, 4, 4, 1)
    outer = make_map(map_type, 4, 4, 4, inner_map=inner, name="outer")
    with pytest.raises(ValueError, match=rf"bpf_map_update_elem: {where(outer)}: inner map fd"):
        outer.update(u32(1), fd)
    assert outer.lookup(u32(1)) is None


# -- bad input, refused before the syscall ---------------------------------------------------
@pytest.mark.parametrize("key", [b"\0" * 3, b"\0" * 5, b""], ids=["short", "long", "empty"])
@pytest.mark.parametrize("op", ["lookup", "delete", "next_key", "lookup_and_delete", "update"])
def test_wrong_key_length_is_value_error_naming_op_and_map(
    make_filled: MakeFilled, op: str, key: bytes
) -> None:
    m, expected = make_filled(MapType.HASH, 3)
    call = getattr(m, op)
    args = (key, u64(0)) if op == "update" else (key,)
    with pytest.raises(
        ValueError,
        match=rf"bpf_map_\w+: {where(m)}: key is {len(key)} bytes, expected 4 "
        r"\(the map's key_size\)",
    ):
        call(*args)
    assert contents(m) == expected


@pytest.mark.parametrize("key", ["abcd", 1, None, [0, 0, 0, 0]], ids=["str", "int", "none", "list"])
@pytest.mark.parametrize("op", ["lookup", "delete", "lookup_and_delete", "update"])
def test_non_bytes_key_is_type_error_naming_op_and_map(
    make_filled: MakeFilled, op: str, key: Any
) -> None:
    m, expected = make_filled(MapType.HASH, 3)
    args = (key, u64(0)) if op == "update" else (key,)
    with pytest.raises(TypeError, match=rf"bpf_map_\w+: {where(m)}: key must be bytes-like"):
        getattr(m, op)(*args)
    assert contents(m) == expected


def test_bytes_like_keys_and_values_are_accepted(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4)
    m.update(bytearray(u32(1)), memoryview(u64(5)))
    assert m.lookup(memoryview(u32(1))) == u64(5)


@pytest.mark.parametrize(
    "value", [b"\0" * 7, b"\0" * 9, "12345678", 12345678], ids=["short", "long", "str", "int"]
)
def test_bad_value_is_refused_naming_op_and_map(make_filled: MakeFilled, value: Any) -> None:
    m, expected = make_filled(MapType.HASH, 3)
    with pytest.raises((ValueError, TypeError), match=rf"bpf_map_update_elem: {where(m)}: value"):
        m.update(u32(1), value)
    assert contents(m) == expected


# -- update_batch / delete_batch -------------------------------------------------------------
@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_update_batch_returns_the_count_and_applies_exactly_those(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 7)  # make_filled uses update_batch with sequences
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", HASH_TYPES + [MapType.LPM_TRIE], ids=type_id)
def test_update_batch_takes_flat_buffers(make_map: MakeMap, map_type: MapType) -> None:
    m = make_typed(make_map, map_type, max_entries=max(64, lru_room(map_type, 5)))
    keys = [element_key(map_type, i) for i in range(5)]
    values = [element_value(m, i) for i in range(5)]
    assert m.update_batch(b"".join(keys), bytearray(b"".join(values))) == 5
    assert contents(m) == dict(zip(keys, values))


def test_update_batch_on_map_of_maps_takes_inner_fds(make_map: MakeMap) -> None:
    inners = [make_map(MapType.ARRAY, 4, 4, 1) for _ in range(3)]
    outer = make_map(MapType.HASH_OF_MAPS, 4, 4, 8, inner_map=inners[0])
    assert outer.update_batch([u32(10), u32(11), u32(12)], [u32(i.fd) for i in inners]) == 3
    assert contents(outer) == {u32(10 + n): u32(i.id) for n, i in enumerate(inners)}


def test_update_batch_of_nothing_is_zero(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4)
    assert m.update_batch([], []) == 0
    assert m.update_batch(b"", b"") == 0
    assert contents(m) == {}


@pytest.mark.parametrize(
    ("keys", "values", "exc", "message"),
    [
        ([u32(1)], [b"\0" * 4], ValueError, r"values\[0\] is 4 bytes, expected 8"),
        (b"\0" * 8, b"\0" * 12, ValueError, r"values buffer is 12 bytes, not a multiple of 8"),
        ([u32(1), "abcd"], [u64(1), u64(2)], TypeError, r"keys\[1\] must be bytes-like"),
        ([u32(1)], 5, TypeError, r"values must be bytes-like"),
    ],
    ids=[
        "short-value",
        "ragged-values",
        "str-key-item",
        "int-values",
    ],
)
def test_update_batch_bad_input_is_refused_naming_op_and_map(
    make_filled: MakeFilled, keys: Any, values: Any, exc: type, message: str
) -> None:
    m, expected = make_filled(MapType.HASH, 3)
    with pytest.raises(exc, match=rf"bpf_map_update_batch: {where(m)}: {message}"):
        m.update_batch(keys, values)
    assert contents(m) == expected


@pytest.mark.parametrize(
    "map_type", HASH_TYPES + [MapType.LPM_TRIE, MapType.HASH_OF_MAPS], ids=type_id
)
def test_delete_batch_returns_the_count_and_deletes_exactly_those(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 8)
    gone = [element_key(map_type, i) for i in (0, 3, 7)]
    assert m.delete_batch(gone) == 3
    assert contents(m) == {k: v for k, v in expected.items() if k not in gone}


def test_delete_batch_skips_missing_keys(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.HASH, 8)
    asked = [u32(50), u32(1), u32(51), u32(52), u32(2), u32(53)]
    assert m.delete_batch(b"".join(asked)) == 2
    assert contents(m) == {k: v for k, v in expected.items() if k not in (u32(1), u32(2))}


def test_delete_batch_of_only_missing_keys_is_zero(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.HASH, 4)
    assert m.delete_batch([u32(70), u32(71)]) == 0
    assert m.delete_batch([]) == 0
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", ARRAY_TYPES, ids=type_id)
def test_delete_batch_on_an_array_is_not_supported(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 4)
    with pytest.raises(BatchNotSupportedError, match="bpf_map_delete_batch: " + where(m)):
        m.delete_batch([u32(1)])
    assert contents(m) == expected


# -- lookup_batch / lookup_and_delete_batch: one call each -----------------------------------
def test_lookup_batch_walks_an_array_by_cursor(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.ARRAY, 10)
    first = m.lookup_batch(4)
    second = m.lookup_batch(4, first.cursor)
    last = m.lookup_batch(4, second.cursor)
    assert [(b.count, b.done, b.key_list()) for b in (first, second, last)] == [
        (4, False, [u32(i) for i in range(4)]),
        (4, False, [u32(i) for i in range(4, 8)]),
        (2, True, [u32(8), u32(9)]),
    ]
    assert first.cursor == u32(3) and second.cursor == u32(7)
    assert [v for b in (first, second, last) for v in b.value_list()] == list(expected.values())


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_lookup_batch_cursor_walk_returns_each_element_once(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 10)
    seen: list[tuple[bytes, bytes]] = []
    batch = m.lookup_batch(m.max_entries)  # a whole map always fits
    seen += list(batch)
    while not batch.done:
        batch = m.lookup_batch(m.max_entries, batch.cursor)
        seen += list(batch)
    assert len(seen) == len(expected)
    assert dict(seen) == expected
    assert contents(m) == expected  # lookup only


@pytest.mark.parametrize("map_type", HASH_TYPES + [MapType.HASH_OF_MAPS], ids=type_id)
def test_lookup_and_delete_batch_deletes_exactly_what_it_returns(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 10)
    batch = m.lookup_and_delete_batch(m.max_entries)
    returned = dict(iter(batch))  # dict(batch) would call batch.keys
    assert batch.done and batch.count == 10
    assert returned == expected
    assert contents(m) == {}


def first_bucket_size(m: Map) -> int:
    """The elements in a hash map's first non-empty bucket: the smallest count a lookup_batch
    from the start accepts (the kernel returns whole buckets; a smaller count is ENOSPC)."""
    for count in range(1, m.max_entries + 1):
        try:
            m.lookup_batch(count)
        except BpfError as e:
            assert e.errno == errno.ENOSPC, e
            continue
        return count
    raise AssertionError("every count up to max_entries was ENOSPC")


@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_lookup_and_delete_batch_short_call_leaves_the_rest(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 30, max_entries=max(128, lru_room(map_type, 30)))
    count = max(5, first_bucket_size(m))  # room for the first bucket: never ENOSPC
    batch = m.lookup_and_delete_batch(count)
    returned = dict(iter(batch))  # dict(batch) would call batch.keys
    assert 0 < batch.count <= count < len(expected) and not batch.done
    assert returned.items() <= expected.items()
    assert contents(m) == {k: v for k, v in expected.items() if k not in returned}


def test_lookup_batch_refuses_a_cursor_of_the_wrong_size(make_filled: MakeFilled) -> None:
    m, _ = make_filled(MapType.LPM_TRIE, 4)
    with pytest.raises(
        ValueError,
        match=rf"bpf_map_lookup_batch: {where(m)}: cursor is 4 "
        r"bytes, expected 8",
    ):
        m.lookup_batch(2, u32(0))


def test_lookup_batch_returns_a_batch(make_filled: MakeFilled) -> None:
    m, _ = make_filled(MapType.PERCPU_HASH, 3)
    batch = m.lookup_batch(16)
    assert isinstance(batch, Batch)
    assert (batch.count, len(batch), batch.done) == (3, 3, True)
    assert len(batch.keys) == 3 * 4 and len(batch.values) == 3 * m.value_stride
