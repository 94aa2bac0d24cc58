"""BTF decoding: the kernel's BTF for maps loaded from tests/bpf/counters.bpf.c, walked in Python."""

from __future__ import annotations

import struct
from typing import Callable

import pytest
from bpf import fixtures
from conftest import require_module

from libbpf_batch import Map, MapType
from libbpf_batch.btf import BTF_MAGIC, Btf, BtfError, load_btf
from libbpf_batch.objects import BpfObject

# the shared BPF fixtures (tests/bpf/fixtures.py), assigned so pytest finds them here
counters = fixtures.counters
counters_object = fixtures.counters_object

# struct sample in counters.bpf.c, laid out by hand (x86-64 and BPF agree: natural alignment)
SAMPLE = struct.Struct("<12sbBhH2xiI4xQqi2h2h4sII?3s4xdQ")
BITS_A, BITS_B, BITS_C, BITS_REST = 5, 17, -7, 123456
BITS = BITS_A | BITS_B << 3 | (BITS_C & 0x3F) << 8 | BITS_REST << 14


def sample(name: bytes = b"hello", color: int = 7, tail: bytes = b"ab") -> bytes:
    return SAMPLE.pack(
        name,
        -5,
        255,
        -300,
        65535,
        -40,
        0xDEADBEEF,
        2**64 - 1,
        -(2**40),
        color,
        -1,
        2,
        3,
        -4,
        bytes([9, 8, 7, 6]),
        0x04030201,
        BITS,
        True,
        tail,
        0.25,
        0xFFFF888000001000,
    )


EXPECTED_SAMPLE = {
    "name": "hello",
    "s8": -5,
    "u8": 255,
    "s16": -300,
    "u16": 65535,
    "temp": -40,
    "cv": 0xDEADBEEF,
    "big": 2**64 - 1,
    "neg": -(2**40),
    "color": "BLUE",
    "pts": [{"x": -1, "y": 2}, {"x": 3, "y": -4}],
    "raw": [9, 8, 7, 6],
    "u": {"as_u32": 0x04030201, "as_bytes": [1, 2, 3, 4]},
    "bits": {"a": BITS_A, "b": BITS_B, "c": BITS_C, "rest": BITS_REST},
    "flag": True,
    "tail": "ab",
    "ratio": 0.25,
    "ptr": 0xFFFF888000001000,
}


def test_every_kind_in_a_struct_decodes(counters: BpfObject) -> None:
    with counters.map("samples") as m:
        d = m.decoder()
        assert d.btf is not None
        assert (d.key_type_name, d.value_type_name) == ("__u32", "struct sample")
        assert d.btf.size(d.value_type_id) == m.value_size == SAMPLE.size
        m.update(struct.pack("<I", 2), sample())
        assert d.decode_key(struct.pack("<I", 2)) == 2
        assert d.decode_value(m.lookup(struct.pack("<I", 2))) == EXPECTED_SAMPLE


@pytest.mark.parametrize(
    "name, text",
    [
        (b"", ""),
        (b"abcdefghijk", "abcdefghijk"),  # NUL in the last byte
        (b"ab\0cd", "ab"),  # stops at the first NUL
        # bpftool's rule: text only when printable ASCII up to a NUL, else the ints (char is
        # signed on BPF), so bytes are never shown as text they are not
        (b"abcdefghijkl", list(b"abcdefghijkl")),  # full: no NUL at all
        (b"caf\xc3\xa9", [99, 97, 102, -61, -87, 0, 0, 0, 0, 0, 0, 0]),
        (b"a\tb", [97, 9, 98] + [0] * 9),
    ],
    ids=["empty", "nul-last", "nul", "full", "utf8", "control"],
)
def test_char_arrays_decode_as_bpftool_shows_them(
    counters: BpfObject, name: bytes, text: object
) -> None:
    with counters.map("samples") as m:
        assert m.decoder().decode_value(sample(name=name))["name"] == text


def test_enum_value_without_a_name_decodes_to_its_number(counters: BpfObject) -> None:
    with counters.map("samples") as m:
        d = m.decoder()
        assert d.decode_value(sample(color=1))["color"] == "GREEN"
        assert d.decode_value(sample(color=5))["color"] == 5


def test_percpu_values_decode_one_per_cpu(counters: BpfObject) -> None:
    with counters.map("port_packets") as m:
        assert m.type == MapType.PERCPU_HASH
        per_cpu = [1000 + cpu for cpu in range(m.ncpus)]
        m.update(struct.pack("<H", 4242), b"".join(struct.pack("<Q", v) for v in per_cpu))
        d = m.decoder()
        ((key, value),) = list(m.items())
        assert d.decode_key(key) == 4242
        assert d.decode_value(value) == per_cpu


def test_map_without_btf_decodes_to_none(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8)
    assert m.info.btf_id == 0
    d = m.decoder()
    assert not d.has_key_type and not d.has_value_type
    assert d.decode_key(b"\1\0\0\0") is None
    assert d.decode_value(bytes(8)) is None


def test_kernel_btf_parses_and_names_types(counters: BpfObject) -> None:
    with counters.map("port_counts") as m:
        btf = load_btf(m.info.btf_id)
        names = {t.name for t in btf.types.values() if t.kind_name == "struct"}
        assert {"port_key", "port_stats", "syscall_key", "syscall_stats", "sample"} <= names
        value = btf.resolve(m.info.btf_value_type_id)
        assert [mem.name for mem in value.members] == ["packets", "bytes", "last_len", "pad"]
        assert btf.type_name(m.info.btf_key_type_id) == "struct port_key"


def _blob(types: bytes, strings: bytes) -> bytes:
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_enum64_and_signed_enums_decode() -> None:
    # Hand-made blob for kinds clang 14 doesn't emit: ENUM64 (kind 19) and a signed ENUM.
    strings = b"\0big\0HUGE\0neg\0MINUS\0"
    types = struct.pack("<III", 1, (19 << 24) | 1, 8) + struct.pack("<III", 5, 0, 1)  # HUGE=2**32
    types += struct.pack("<III", 10, (1 << 31) | (6 << 24) | 1, 4) + struct.pack("<Ii", 14, -2)
    btf = Btf(_blob(types, strings))
    assert btf.decode(1, struct.pack("<Q", 2**32)) == "HUGE"
    assert btf.decode(1, struct.pack("<Q", 3)) == 3
    assert btf.decode(2, struct.pack("<i", -2)) == "MINUS"
    assert btf.decode(2, struct.pack("<i", -3)) == -3
    assert btf.type_name(1) == "enum big"


def test_malformed_btf_is_refused() -> None:
    with pytest.raises(BtfError, match="shorter than its header"):
        Btf(b"\x9f\xeb")
    with pytest.raises(BtfError, match="bad BTF magic"):
        Btf(bytes(24))
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        Btf(_blob(struct.pack("<III", 0, 31 << 24, 0), b"\0"))
    btf = Btf(_blob(b"", b"\0"))
    with pytest.raises(BtfError, match="no BTF type 7"):
        btf.decode(7, b"")


# -- whole batches: Batch.decode(), Batch.to_numpy() and the decoder's batch methods ----------
def test_batch_decode_uses_the_maps_btf(counters: BpfObject) -> None:
    with counters.map("samples") as m:
        m.update(struct.pack("<I", 2), sample())
        m.update(struct.pack("<I", 3), sample(name=b"x", color=1))
        got = [pair for batch in m.batches(3) for pair in batch.decode()]
        zero = m.decoder().decode_value(bytes(SAMPLE.size))
        assert got == [
            (0, zero),
            (1, zero),
            (2, EXPECTED_SAMPLE),
            (3, {**EXPECTED_SAMPLE, "name": "x", "color": "GREEN"}),
        ]
        assert m.decoder() is m.decoder()  # compiled once per map


def test_batch_decode_of_a_percpu_map_gives_a_list_per_cpu(counters: BpfObject) -> None:
    with counters.map("port_packets") as m:
        m.update(struct.pack("<H", 80), b"".join(struct.pack("<Q", 7 * c) for c in range(m.ncpus)))
        (batch,) = list(m.batches())
        assert batch.decode() == [(80, [7 * c for c in range(m.ncpus)])]
        assert m.decoder().value_numbers(batch.values, 1) == [(sum(range(m.ncpus)) * 7,)]


def test_batch_decode_without_btf_gives_ints_or_bytes(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8)
    m.update(struct.pack("<I", 9), struct.pack("<Q", 2**40))
    assert [p for b in m.batches() for p in b.decode()] == [(9, 2**40)]
    wide = make_map(MapType.HASH, 3, 12)
    wide.update(b"abc", b"x" * 12)
    assert [p for b in wide.batches() for p in b.decode()] == [(b"abc", b"x" * 12)]


def test_to_numpy_takes_field_names_and_offsets_from_btf(counters: BpfObject) -> None:
    np = require_module("numpy")
    with counters.map("port_counts") as m:
        m.update(struct.pack("<HBx", 443, 17), struct.pack("<QQII", 5, 1500, 300, 0))
        (batch,) = list(m.batches())
        keys, values = batch.to_numpy()
        assert keys.dtype.names == ("port", "proto", "pad")
        assert values.dtype.names == ("packets", "bytes", "last_len", "pad")
        assert values.dtype.fields["bytes"][1] == 8 and values.dtype.itemsize == 24
        assert (int(keys["port"][0]), int(keys["proto"][0])) == (443, 17)
        assert (int(values["packets"][0]), int(values["bytes"][0])) == (5, 1500)
    with counters.map("samples") as m:
        m.update(struct.pack("<I", 0), sample())
        keys, values = next(m.batches(1)).to_numpy()
        assert keys.dtype == np.dtype("<u4")
        v = values[0]
        assert (v["name"], int(v["s16"]), v["color"], float(v["ratio"])) == (
            b"hello",
            -300,
            7,
            0.25,
        )
        assert [int(x) for x in v["pts"]["y"]] == [2, -4] and int(v["u"]["as_u32"]) == 0x04030201
        # a bitfield's field: the unit from the byte holding its first bit (c: bits 8-13)
        assert values.dtype["bits"].fields["c"][1] == 1
        assert int(v["bits"]["c"]) & 0x3F == BITS_C & 0x3F


def test_json_values_match_bpftool_spelling(counters: BpfObject) -> None:
    with counters.map(".bss") as m:
        (batch,) = list(m.batches())
        d = m.decoder()
        assert batch.decode() == [(0, {"total_packets": 0})]  # no key type: the u32 index
        # Python values stay flat by variable; JSON nests by section as bpftool does
        assert d.json_values(batch.values, 1) == ['{".bss":[{"total_packets":0}]}']
        assert d.decode_values(batch.values, 1) == [{"total_packets": 0}]


def test_to_numpy_of_a_percpu_btf_map_is_count_by_ncpus(counters: BpfObject) -> None:
    np = require_module("numpy")
    with counters.map("port_packets") as m:
        m.update(struct.pack("<H", 7), b"".join(struct.pack("<Q", 10 + c) for c in range(m.ncpus)))
        keys, values = next(m.batches()).to_numpy()
        assert keys.dtype == np.dtype("<u2") and values.shape == (1, m.ncpus)
        assert values[0].tolist() == [10 + c for c in range(m.ncpus)]
