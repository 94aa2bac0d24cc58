"""_bindings: one libbpf call per function, on real maps; errno kept, ENOENT as an answer."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import contents, u32, u64

from libbpf_batch import (
    BatchNotSupportedError,
    BpfError,
    BpfNotFoundError,
    BpfPermissionError,
    Map,
    MapType,
    _bindings,
)
from libbpf_batch._cdata import batch_opts
from libbpf_batch._libbpf import ffi, lib
from libbpf_batch.errors import ENOTSUPP

MakeMap = Callable[..., Map]


def buf(data: bytes) -> Any:
    return ffi.new(f"char[{len(data)}]", data)  # "char[]" would add a NUL


def out(size: int) -> Any:
    return ffi.new("char[]", size)


def raw(cdata: Any) -> bytes:
    return ffi.buffer(cdata)[:]


def counter(n: int) -> Any:
    return ffi.new("__u32 *", n)


@pytest.fixture
def hash3(make_map: MakeMap) -> Map:
    """A HASH (4-byte keys, 8-byte values) holding 1 -> 10, 2 -> 20, 3 -> 30."""
    m = make_map(MapType.HASH, 4, 8, 16)
    for k in (1, 2, 3):
        m.update(u32(k), u64(10 * k))
    return m


# -- errors keep the kernel's errno --------------------------------------------------------
def test_error_is_an_oserror_with_the_errno_and_the_call(hash3: Map) -> None:
    with pytest.raises(BpfError) as info:
        _bindings.bpf_map_update_elem(hash3.fd, buf(u32(1)), buf(u64(0)), lib.BPF_NOEXIST)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EEXIST
    assert info.value.op == "bpf_map_update_elem"
    assert str(info.value).startswith("[Errno 17] bpf_map_update_elem: File exists")


def test_not_found_error_is_also_a_file_not_found_error(bpf: None) -> None:
    with pytest.raises(BpfNotFoundError) as info:
        _bindings.bpf_obj_get(b"/sys/fs/bpf/libbpf-batch-test-no-such-pin")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.errno == errno.ENOENT


def test_permission_error_is_also_a_permission_error(hash3: Map, tmp_path: Path) -> None:
    # Pinning anywhere but a bpffs is EPERM.
    with pytest.raises(BpfPermissionError) as info:
        _bindings.bpf_obj_pin(hash3.fd, os.fsencode(tmp_path / "pin"))
    assert isinstance(info.value, PermissionError)
    assert info.value.errno == errno.EPERM
    assert not (tmp_path / "pin").exists()


def test_a_closed_fd_is_ebadf(bpf: None) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(BpfError) as info:
        _bindings.bpf_map_lookup_elem(r, buf(u32(0)), out(8))
    assert info.value.errno == errno.EBADF


def test_a_non_map_fd_is_einval(bpf: None) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(BpfError) as info:
            _bindings.bpf_map_lookup_elem(r, buf(u32(0)), out(8))
    finally:
        os.close(r)
        os.close(w)
    assert info.value.errno == errno.EINVAL


# -- map creation and info ------------------------------------------------------------------
def test_map_create_returns_an_fd_the_info_describes(bpf: None) -> None:
    fd = _bindings.bpf_map_create(lib.BPF_MAP_TYPE_HASH, b"bind_create", 4, 8, 32)
    try:
        info = ffi.new("struct bpf_map_info *")
        size = counter(ffi.sizeof("struct bpf_map_info"))
        _bindings.bpf_obj_get_info_by_fd(fd, info, size)
        assert (info.type, info.key_size, info.value_size, info.max_entries) == (
            lib.BPF_MAP_TYPE_HASH,
            4,
            8,
            32,
        )
        assert ffi.string(info.name) == b"bind_create"
        assert info.id > 0
        assert 0 < size[0] <= ffi.sizeof("struct bpf_map_info")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("map_type", "key_size"),
    [(lib.BPF_MAP_TYPE_UNSPEC, 4), (lib.BPF_MAP_TYPE_HASH, 0)],
    ids=["unspec-type", "zero-key-size"],
)
def test_map_create_refused_is_einval(bpf: None, map_type: int, key_size: int) -> None:
    with pytest.raises(BpfError) as info:
        _bindings.bpf_map_create(map_type, b"", key_size, 4, 4)
    assert info.value.errno == errno.EINVAL
    assert info.value.op == "bpf_map_create"


def test_num_possible_cpus_counts_the_possible_mask() -> None:
    ranges = Path("/sys/devices/system/cpu/possible").read_text().strip().split(",")
    expected = 0
    for r in ranges:
        lo, _, hi = r.partition("-")
        expected += int(hi or lo) - int(lo) + 1
    assert _bindings.libbpf_num_possible_cpus() == expected


def test_get_fd_by_id_opens_the_same_map(hash3: Map) -> None:
    fd = _bindings.bpf_map_get_fd_by_id(hash3.id)
    try:
        value = out(8)
        assert _bindings.bpf_map_lookup_elem(fd, buf(u32(2)), value)
        assert raw(value) == u64(20)
    finally:
        os.close(fd)


def test_get_fd_by_unknown_id_is_enoent(bpf: None) -> None:
    with pytest.raises(BpfNotFoundError):
        _bindings.bpf_map_get_fd_by_id(0xFFFFFFFF)


def test_get_next_id_finds_an_existing_map(hash3: Map) -> None:
    next_id = ffi.new("__u32 *")
    assert _bindings.bpf_map_get_next_id(hash3.id - 1, next_id) is True
    assert next_id[0] == hash3.id


def test_get_next_id_after_the_last_is_false(bpf: None) -> None:
    # syscall.c refuses start ids >= INT_MAX; ids are allocated far below it.
    assert _bindings.bpf_map_get_next_id(0x7FFFFFFE, ffi.new("__u32 *")) is False


# -- one key --------------------------------------------------------------------------------
def test_lookup_elem_present_fills_the_value(hash3: Map) -> None:
    value = out(8)
    assert _bindings.bpf_map_lookup_elem(hash3.fd, buf(u32(3)), value) is True
    assert raw(value) == u64(30)


def test_lookup_elem_missing_is_false(hash3: Map) -> None:
    value = buf(b"\xee" * 8)
    assert _bindings.bpf_map_lookup_elem(hash3.fd, buf(u32(4)), value) is False
    assert raw(value) == b"\xee" * 8


def test_lookup_elem_percpu_fills_one_slot_per_possible_cpu(make_map: MakeMap) -> None:
    m = make_map(MapType.PERCPU_HASH, 4, 4, 4)
    ncpus = _bindings.libbpf_num_possible_cpus()
    written = b"".join(u32(100 + cpu) + b"\0" * 4 for cpu in range(ncpus))  # 8-byte slots
    _bindings.bpf_map_update_elem(m.fd, buf(u32(7)), buf(written), lib.BPF_ANY)
    value = out(8 * ncpus)
    assert _bindings.bpf_map_lookup_elem(m.fd, buf(u32(7)), value)
    assert raw(value) == written


def test_update_elem_then_lookup_elem_flags(hash3: Map) -> None:
    _bindings.bpf_map_update_elem(hash3.fd, buf(u32(9)), buf(u64(99)), lib.BPF_NOEXIST)
    value = out(8)
    assert _bindings.bpf_map_lookup_elem_flags(hash3.fd, buf(u32(9)), value, 0) is True
    assert raw(value) == u64(99)


def test_delete_elem_present_is_true_and_removes(hash3: Map) -> None:
    assert _bindings.bpf_map_delete_elem(hash3.fd, buf(u32(2))) is True
    assert contents(hash3) == {u32(1): u64(10), u32(3): u64(30)}


def test_delete_elem_missing_is_false(hash3: Map) -> None:
    assert _bindings.bpf_map_delete_elem(hash3.fd, buf(u32(5))) is False
    assert len(contents(hash3)) == 3


def test_lookup_and_delete_elem_present(hash3: Map) -> None:
    value = out(8)
    assert _bindings.bpf_map_lookup_and_delete_elem(hash3.fd, buf(u32(1)), value) is True
    assert raw(value) == u64(10)
    assert contents(hash3) == {u32(2): u64(20), u32(3): u64(30)}


def test_lookup_and_delete_elem_missing_is_false(hash3: Map) -> None:
    assert _bindings.bpf_map_lookup_and_delete_elem(hash3.fd, buf(u32(8)), out(8)) is False
    assert len(contents(hash3)) == 3


def test_get_next_key_walks_every_key_then_is_false(hash3: Map) -> None:
    key, nxt = out(4), out(4)
    assert _bindings.bpf_map_get_next_key(hash3.fd, _bindings.NULL, key) is True
    seen = [raw(key)]
    while _bindings.bpf_map_get_next_key(hash3.fd, key, nxt):
        seen.append(raw(nxt))
        key, nxt = nxt, key
    assert sorted(seen) == [u32(1), u32(2), u32(3)]


def test_get_next_key_of_an_empty_map_is_false(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4)
    assert _bindings.bpf_map_get_next_key(m.fd, _bindings.NULL, out(4)) is False


# -- batches --------------------------------------------------------------------------------
def test_lookup_batch_at_end_is_true_with_the_count_set(hash3: Map) -> None:
    keys, values, cursor, count = out(4 * 16), out(8 * 16), out(4), counter(16)
    done = _bindings.bpf_map_lookup_batch(hash3.fd, _bindings.NULL, cursor, keys, values, count)
    assert done is True
    assert count[0] == 3
    got = {raw(keys)[4 * i : 4 * i + 4]: raw(values)[8 * i : 8 * i + 8] for i in range(3)}
    assert got == {u32(1): u64(10), u32(2): u64(20), u32(3): u64(30)}
    assert len(contents(hash3)) == 3  # lookup only


def test_lookup_batch_past_the_end_is_true_with_count_zero(hash3: Map) -> None:
    keys, values, cursor, count = out(4 * 16), out(8 * 16), out(4), counter(16)
    assert _bindings.bpf_map_lookup_batch(hash3.fd, _bindings.NULL, cursor, keys, values, count)
    count[0] = 16
    assert _bindings.bpf_map_lookup_batch(hash3.fd, cursor, cursor, keys, values, count)
    assert count[0] == 0


def test_lookup_batch_not_at_end_is_false(make_map: MakeMap) -> None:
    m = make_map(MapType.ARRAY, 4, 8, 10)
    keys, values, cursor, count = out(4 * 4), out(8 * 4), out(4), counter(4)
    assert (
        _bindings.bpf_map_lookup_batch(m.fd, _bindings.NULL, cursor, keys, values, count) is False
    )
    assert count[0] == 4
    assert raw(keys) == u32(0) + u32(1) + u32(2) + u32(3)
    assert raw(cursor) == u32(3)  # generic maps: the last key returned


def test_lookup_and_delete_batch_at_end_returns_and_deletes(hash3: Map) -> None:
    keys, values, cursor, count = out(4 * 16), out(8 * 16), out(4), counter(16)
    done = _bindings.bpf_map_lookup_and_delete_batch(
        hash3.fd, _bindings.NULL, cursor, keys, values, count
    )
    assert done is True
    assert count[0] == 3
    assert sorted(raw(keys)[4 * i : 4 * i + 4] for i in range(3)) == [u32(1), u32(2), u32(3)]
    assert contents(hash3) == {}


def test_lookup_batch_count_zero_silently_reads_nothing(hash3: Map) -> None:
    # Why the façade refuses count 0: the kernel "succeeds" without reading (hashtab.c).
    keys, values, cursor, count = out(4 * 4), out(8 * 4), buf(b"\xee" * 4), counter(0)
    done = _bindings.bpf_map_lookup_and_delete_batch(
        hash3.fd, _bindings.NULL, cursor, keys, values, count
    )
    assert done is False
    assert count[0] == 0
    assert raw(cursor) == b"\xee" * 4
    assert len(contents(hash3)) == 3


def test_lookup_batch_with_flags_on_a_hash_is_einval(hash3: Map) -> None:
    keys, values, cursor, count = out(4 * 4), out(8 * 4), out(4), counter(4)
    with pytest.raises(BpfError) as info:
        _bindings.bpf_map_lookup_batch(
            hash3.fd, _bindings.NULL, cursor, keys, values, count, batch_opts(0, 1, "test")
        )
    assert info.value.errno == errno.EINVAL
    assert info.value.op == "bpf_map_lookup_batch"


@pytest.mark.parametrize(
    "map_type", [MapType.ARRAY, MapType.PERCPU_ARRAY], ids=lambda t: t.name.lower()
)
def test_lookup_and_delete_batch_on_an_array_is_enotsupp(
    make_map: MakeMap, map_type: MapType
) -> None:
    m = make_map(map_type, 4, 8, 4)
    keys, values, cursor = out(4 * 4), out(m.value_stride * 4), out(4)
    with pytest.raises(BatchNotSupportedError) as info:
        _bindings.bpf_map_lookup_and_delete_batch(
            m.fd, _bindings.NULL, cursor, keys, values, counter(4)
        )
    assert info.value.errno == ENOTSUPP == 524
    assert "Unknown error" not in str(info.value)
    assert "bpf_map_lookup_and_delete_batch" in str(info.value)


def test_delete_batch_on_an_array_is_enotsupp(make_map: MakeMap) -> None:
    m = make_map(MapType.ARRAY, 4, 8, 4)
    with pytest.raises(BatchNotSupportedError) as info:
        _bindings.bpf_map_delete_batch(m.fd, buf(u32(0)), counter(1))
    assert info.value.errno == ENOTSUPP
    assert "Unknown error" not in str(info.value)


def test_update_batch_applies_every_element(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 8)
    count = counter(3)
    _bindings.bpf_map_update_batch(
        m.fd, buf(u32(1) + u32(2) + u32(3)), buf(u64(5) + u64(6) + u64(7)), count
    )
    assert count[0] == 3
    assert contents(m) == {u32(1): u64(5), u32(2): u64(6), u32(3): u64(7)}


def test_update_batch_failing_midway_counts_what_it_applied(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 2)  # room for two: the third is E2BIG
    count = counter(3)
    with pytest.raises(BpfError) as info:
        _bindings.bpf_map_update_batch(
            m.fd, buf(u32(1) + u32(2) + u32(3)), buf(u64(5) + u64(6) + u64(7)), count
        )
    assert info.value.errno == errno.E2BIG
    assert count[0] == 2
    assert contents(m) == {u32(1): u64(5), u32(2): u64(6)}


def test_delete_batch_deletes_every_key(hash3: Map) -> None:
    count = counter(2)
    _bindings.bpf_map_delete_batch(hash3.fd, buf(u32(1) + u32(3)), count)
    assert count[0] == 2
    assert contents(hash3) == {u32(2): u64(20)}


def test_delete_batch_stops_at_a_missing_key_with_the_count(hash3: Map) -> None:
    count = counter(3)
    with pytest.raises(BpfNotFoundError) as info:
        _bindings.bpf_map_delete_batch(hash3.fd, buf(u32(1) + u32(9) + u32(3)), count)
    assert info.value.errno == errno.ENOENT
    assert count[0] == 1
    assert contents(hash3) == {u32(2): u64(20), u32(3): u64(30)}
