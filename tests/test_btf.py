"""BTF decoding: the kernel's BTF for maps loaded from tests/bpf/counters.bpf.c, walked in Python."""

from __future__ import annotations

import struct
from typing import Callable

import pytest
from bpf import fixtures

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
