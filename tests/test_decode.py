"""Decoding batches: pairs, struct formats, numpy arrays and per-CPU helpers, with exact values.

Real maps through the make_map fixture; a few hand-made Batch objects where a test needs bytes
the kernel would not produce (non-zero padding between per-CPU slots, buffer types).
"""

from __future__ import annotations

import array
import struct
from typing import Callable

import pytest
from conftest import require_module, u32, u64

from libbpf_batch import Batch, Map, MapType
from libbpf_batch._cdata import Layout

MakeMap = Callable[..., Map]


def percpu_value(m: Map, per_cpu: Callable[[int], bytes], pad: bytes = b"\0") -> bytes:
    """A per-CPU value: per_cpu(cpu) in each slot, padded to 8 bytes with ``pad``."""
    slot = m.layout.slot
    return b"".join(per_cpu(c).ljust(slot, pad) for c in range(m.ncpus))


def drained_batches(m: Map, batch_size: int = 7) -> list[Batch]:
    """Every batch of a drain, copied (so they outlive the iterator)."""
    return list(m.drain(batch_size))


def numpy_all(m: Map, **kw: object) -> tuple[object, object]:
    """(keys, values) of the whole map as numpy arrays, read with copy=False batches."""
    np = require_module("numpy")
    ks, vs = [], []
    for b in m.batches(5, copy=False):
        k, v = b.to_numpy(**kw)
        ks.append(k.copy())  # the views die with the next batch
        vs.append(v.copy())
    return np.concatenate(ks), np.concatenate(vs)


# -- pairs, key_list, value_list ---------------------------------------------------------------

# (key_size, value_size): interleaved in 4/8-byte words, in bytes (odd sizes), zipped (wide)
PAIR_SHAPES = [(4, 8), (8, 8), (16, 64), (3, 5), (1, 1), (4, 200), (40, 4)]


@pytest.mark.parametrize("ks,vs", PAIR_SHAPES, ids=lambda x: str(x))
def test_items_and_drain_items_give_exact_pairs_for_every_element_size(
    make_map: MakeMap, ks: int, vs: int
) -> None:
    m = make_map(MapType.HASH, ks, vs, 300)
    expected = {
        i.to_bytes(ks, "little") if ks > 1 else bytes([i % 256]): bytes(
            (i * 7 + j) % 256 for j in range(vs)
        )
        for i in range(min(256, 300))
    }
    m.update_batch(list(expected), list(expected.values()))
    assert dict(m.items(batch_size=7)) == expected
    assert sorted(m.keys(batch_size=7)) == sorted(expected)
    assert sorted(m.values(batch_size=7)) == sorted(expected.values())
    got = list(m.drain_items(batch_size=7))
    assert len(got) == len(expected) and dict(got) == expected
    assert m.next_key() is None


def test_batch_pairs_and_lists_match_the_flat_buffers(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 64)
    expected = {u32(i): u64(i * 1000 + 1) for i in range(50)}
    m.update_batch(list(expected), list(expected.values()))
    for b in m.batches(16):
        keys = [b.keys[i * 4 : (i + 1) * 4] for i in range(b.count)]
        values = [b.values[i * 8 : (i + 1) * 8] for i in range(b.count)]
        assert b.key_list() == keys
        assert b.value_list() == values
        assert list(b) == list(zip(keys, values))
        assert all(expected[k] == v for k, v in b)


def test_pairs_of_a_hand_made_batch_accept_any_buffer_type() -> None:
    keys = array.array("I", [1, 2, 3])  # a memoryview of it has format 'I', not 'B'
    values = bytearray(u64(10) + u64(20) + u64(30))
    b = Batch(Layout(4, 8), 3, memoryview(keys), values, b"", True)
    assert list(b) == [(u32(1), u64(10)), (u32(2), u64(20)), (u32(3), u64(30))]
    assert b.unpack("<I", "<Q") == [(1, 10), (2, 20), (3, 30)]


def test_a_batch_longer_than_its_count_yields_only_count_elements() -> None:
    b = Batch(Layout(4, 8), 2, u32(1) + u32(2) + u32(3), u64(1) + u64(2) + u64(3))
    assert list(b) == [(u32(1), u64(1)), (u32(2), u64(2))]
    assert b.unpack("<I", "<Q") == [(1, 1), (2, 2)]


def test_empty_batch_decodes_to_nothing() -> None:
    b = Batch(Layout(4, 8), 0, b"", b"", b"", True)
    assert list(b) == [] and b.key_list() == [] and b.unpack("<I", "<Q") == []


# -- unpack with struct formats ----------------------------------------------------------------


def test_unpack_u32_keys_and_u64_values_exactly(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 2000)
    m.update_batch(
        array.array("I", range(2000)), array.array("Q", [i * 2**33 + 5 for i in range(2000)])
    )
    got = [kv for b in m.batches(64) for kv in b.unpack("<I", "<Q")]
    assert dict(got) == {i: i * 2**33 + 5 for i in range(2000)}
    assert all(type(k) is int and type(v) is int for k, v in got)


@pytest.mark.parametrize(
    "key_format,value_format,encode",
    [
        # castable fast path, signed
        ("<i", "<q", lambda i: (struct.pack("<i", -i), struct.pack("<q", -(i << 40)))),
        # standard size differs from native 'l' (8 bytes): struct path, same answer
        ("<l", "<Q", lambda i: (struct.pack("<l", -i), u64(i))),
        # big-endian
        (">I", ">Q", lambda i: (struct.pack(">I", i), struct.pack(">Q", i * 3))),
        # floats
        ("<f", "<d", lambda i: (struct.pack("<f", i / 4), struct.pack("<d", i / 8))),
    ],
    ids=["signed", "std-size-l", "big-endian", "float"],
)
def test_unpack_formats_decode_exactly(
    make_map: MakeMap,
    key_format: str,
    value_format: str,
    encode: Callable[[int], tuple[bytes, bytes]],
) -> None:
    m = make_map(MapType.HASH, 4, 8, 100)
    pairs = [encode(i) for i in range(100)]
    m.update_batch([k for k, _ in pairs], [v for _, v in pairs])
    expected = {
        struct.unpack(key_format, k)[0]: struct.unpack(value_format, v)[0] for k, v in pairs
    }
    got = dict(kv for b in m.batches(9) for kv in b.unpack(key_format, value_format))
    assert got == expected


def test_unpack_multi_field_formats_give_tuples_and_skip_trailing_bytes(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 8, 24, 100)
    keys = [struct.pack("<HHI", i, i + 1, i * 7) for i in range(100)]
    values = [struct.pack("<QIi", i << 35, i, -i) + b"\xee" * 8 for i in range(100)]
    m.update_batch(keys, values)
    got = dict(kv for b in m.batches(13) for kv in b.unpack("<HHI", "<QIi"))
    assert got == {(i, i + 1, i * 7): (i << 35, i, -i) for i in range(100)}


def test_unpack_none_leaves_bytes(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 10)
    m.update(u32(3), u64(9))
    (b,) = list(m.batches())
    assert b.unpack("<I") == [(3, u64(9))]
    assert b.unpack(None, "<Q") == [(u32(3), 9)]


def test_unpack_refuses_a_format_longer_than_the_element() -> None:
    b = Batch(Layout(4, 8), 1, u32(1), u64(1), b"", True)
    with pytest.raises(ValueError, match="needs 8 bytes, elements have 4"):
        b.unpack("<Q")


# -- per-CPU values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "map_type", [MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH], ids=lambda t: t.name.lower()
)
def test_percpu_values_and_sums_exactly(make_map: MakeMap, map_type: MapType) -> None:
    m = make_map(map_type, 4, 8, 1024)
    n = 200
    m.update_batch(
        [u32(i) for i in range(n)],
        [percpu_value(m, lambda c, i=i: u64(i * 100 + c)) for i in range(n)],
    )
    per_cpu: dict[int, list[int]] = {}
    sums: dict[int, int] = {}
    for b in m.batches(32):
        keys = b.unpack("<I")
        for (k, _), vals, total in zip(keys, b.percpu_values("<Q"), b.percpu_sums("<Q")):
            per_cpu[k] = vals
            sums[k] = total
    assert per_cpu == {i: [i * 100 + c for c in range(m.ncpus)] for i in range(n)}
    assert sums == {i: sum(i * 100 + c for c in range(m.ncpus)) for i in range(n)}


def test_percpu_unpack_gives_a_list_per_element(make_map: MakeMap) -> None:
    m = make_map(MapType.PERCPU_HASH, 4, 8, 64)
    m.update(u32(5), percpu_value(m, lambda c: u64(50 + c)))
    (b,) = list(m.batches())
    assert b.unpack("<I", "<Q") == [(5, [50 + c for c in range(m.ncpus)])]


def test_percpu_padding_is_stripped_when_decoding_4_byte_values(make_map: MakeMap) -> None:
    # value_size 4: each CPU slot is 8 bytes; the kernel stores and returns the padding bytes
    # it was given, so 0xAA in them must never show in a decoded value.
    m = make_map(MapType.PERCPU_HASH, 4, 4, 64)
    n = 40
    m.update_batch(
        [u32(i) for i in range(n)],
        [percpu_value(m, lambda c, i=i: u32(i * 10 + c), pad=b"\xaa") for i in range(n)],
    )
    assert m.value_stride == 8 * m.ncpus
    got = {k: v for b in m.batches(8) for k, v in zip(b.unpack("<I"), b.percpu_values("<I"))}
    assert {k[0]: v for k, v in got.items()} == {
        i: [i * 10 + c for c in range(m.ncpus)] for i in range(n)
    }
    sums = [s for b in m.batches(8) for s in b.percpu_sums("<I")]
    assert sorted(sums) == sorted(sum(i * 10 + c for c in range(m.ncpus)) for i in range(n))


# -- to_numpy ------------------------------------------------------------------------------


def test_to_numpy_gives_exact_u32_keys_and_u64_values(make_map: MakeMap) -> None:
    np = require_module("numpy")
    m = make_map(MapType.HASH, 4, 8, 3000)
    m.update_batch(
        array.array("I", range(3000)), array.array("Q", [2**63 + i for i in range(3000)])
    )
    keys, values = numpy_all(m)
    assert keys.dtype == np.dtype("<u4") and values.dtype == np.dtype("<u8")
    assert keys.shape == values.shape == (3000,)
    assert dict(zip(keys.tolist(), values.tolist())) == {i: 2**63 + i for i in range(3000)}


@pytest.mark.parametrize(
    "size,dtype", [(1, "<u1"), (2, "<u2"), (4, "<u4"), (8, "<u8"), (3, "V3"), (16, "V16")]
)
def test_to_numpy_default_dtype_follows_the_element_size(
    make_map: MakeMap, size: int, dtype: str
) -> None:
    np = require_module("numpy")
    m = make_map(MapType.HASH, size, size, 16)
    keys = [bytes([i]) * size for i in range(10)]
    m.update_batch(keys, keys)
    k, v = numpy_all(m)
    assert k.dtype == v.dtype == np.dtype(dtype)
    assert sorted(x.tobytes() for x in k) == sorted(keys)


def test_to_numpy_takes_explicit_and_structured_dtypes(make_map: MakeMap) -> None:
    np = require_module("numpy")
    m = make_map(MapType.HASH, 16, 8, 100)
    m.update_batch(
        [struct.pack("<qq", -i, i * 3) for i in range(50)],
        [struct.pack("<d", i / 2) for i in range(50)],
    )
    key_dtype = np.dtype([("a", "<i8"), ("b", "<u8")])
    keys, values = numpy_all(m, key_dtype=key_dtype, value_dtype="<f8")
    assert keys.dtype == key_dtype and values.dtype == np.dtype("<f8")
    assert {(int(k["a"]), int(k["b"])): float(v) for k, v in zip(keys, values)} == {
        (-i, i * 3): i / 2 for i in range(50)
    }


def test_to_numpy_refuses_a_dtype_of_the_wrong_size() -> None:
    require_module("numpy")
    b = Batch(Layout(4, 8), 1, u32(1), u64(1), b"", True)
    with pytest.raises(ValueError, match="key dtype uint64 is 8 bytes"):
        b.to_numpy(key_dtype="<u8")
    with pytest.raises(ValueError, match="value dtype uint32 is 4 bytes"):
        b.to_numpy(value_dtype="<u4")


@pytest.mark.parametrize("value_size", [4, 8, 12])
def test_to_numpy_percpu_values_are_count_by_ncpus_without_padding(
    make_map: MakeMap, value_size: int
) -> None:
    np = require_module("numpy")
    m = make_map(MapType.PERCPU_HASH, 4, value_size, 64)
    n = 30

    def slot(i: int, c: int) -> bytes:
        return (i * 1000 + c).to_bytes(value_size, "little")

    m.update_batch(
        [u32(i) for i in range(n)],
        [percpu_value(m, lambda c, i=i: slot(i, c), pad=b"\xbb") for i in range(n)],
    )
    keys, values = numpy_all(m)
    assert values.shape == (n, m.ncpus)
    if value_size in (4, 8):
        assert values.dtype == np.dtype(f"<u{value_size}")
        got = {int(k): row.tolist() for k, row in zip(keys, values)}
        assert got == {i: [i * 1000 + c for c in range(m.ncpus)] for i in range(n)}
    else:  # raw V12: the bytes of each slot, padding left out
        got = {int(k): [x.tobytes() for x in row] for k, row in zip(keys, values)}
        assert got == {i: [slot(i, c) for c in range(m.ncpus)] for i in range(n)}


def test_to_numpy_percpu_padding_stays_out_of_a_hand_made_batch() -> None:
    np = require_module("numpy")
    # 2 elements x 3 CPUs, 4-byte values in 8-byte slots, padding 0xff
    values = b"".join(
        struct.pack("<I", e * 10 + c) + b"\xff" * 4 for e in range(2) for c in range(3)
    )
    b = Batch(Layout(4, 4, ncpus=3, percpu=True), 2, u32(7) + u32(8), values, b"", True)
    keys, vals = b.to_numpy()
    assert keys.tolist() == [7, 8]
    assert vals.shape == (2, 3) and vals.dtype == np.dtype("<u4")
    assert vals.tolist() == [[0, 1, 2], [10, 11, 12]]
    assert b.percpu_values("<I") == [[0, 1, 2], [10, 11, 12]]
    assert b.percpu_sums("<I") == [3, 33]


def test_to_numpy_arrays_are_read_only_views(make_map: MakeMap) -> None:
    require_module("numpy")
    m = make_map(MapType.HASH, 4, 8, 16)
    m.update(u32(1), u64(2))
    for b in (next(m.batches()), next(m.batches(copy=False))):
        keys, values = b.to_numpy()
        assert not keys.flags.writeable and not values.flags.writeable
        with pytest.raises(ValueError):
            keys[0] = 5
