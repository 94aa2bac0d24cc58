"""The compiled BTF plans against the recursive reference decoder (Btf.decode).

Hypothesis draws random type graphs (ints of every size and signedness, bools, chars, enums,
floats, pointers, typedefs, nested structs, unions, arrays, char arrays, bitfields), writes
them as a real BTF blob, and random bytes for them: the compiled plan must give exactly what
the reference gives, as Python values and as JSON text, for every element of a batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import require_module

from libbpf_batch.btf import BTF_MAGIC, Btf, MapDecoder, Plan, joint_json, json_text

hypothesis = require_module("hypothesis")
st = require_module("hypothesis.strategies")
given, settings = hypothesis.given, hypothesis.settings


@dataclass
class Blob:
    """Types and strings of a BTF blob being written; ids from 1."""

    types: list[bytes] = field(default_factory=list)
    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    sizes: dict[int, int] = field(default_factory=dict)

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, raw: bytes, size: int) -> int:
        self.types.append(raw)
        self.sizes[len(self.types)] = size
        return len(self.types)

    def raw(self) -> bytes:
        types = b"".join(self.types)
        header = struct.pack(
            "<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strings)
        )
        return header + types + bytes(self.strings)


def info(kind: int, vlen: int = 0, kflag: bool = False) -> int:
    return (kflag << 31) | (kind << 24) | vlen


def int_type(b: Blob, size: int, signed: bool, name: str = "", boolean: bool = False) -> int:
    bits = 8 * size
    enc = (signed * 1 | boolean * 4) << 24 | bits
    return b.add(struct.pack("<IIII", b.name(name or f"i{size}"), info(1), size, enc), size)


@st.composite
def btf_type(draw: st.DrawFn, b: Blob, depth: int = 0) -> int:
    choices = ["int", "bool", "enum", "float", "ptr", "typedef"]
    if depth < 3:
        choices += ["struct", "struct", "union", "array", "chars", "bitfields"]
    kind = draw(st.sampled_from(choices))
    if kind == "int":
        return int_type(b, draw(st.sampled_from([1, 2, 4, 8, 16])), draw(st.booleans()))
    if kind == "bool":
        return int_type(b, 1, False, "_Bool", boolean=True)
    if kind == "enum":
        size = draw(st.sampled_from([1, 2, 4, 8]))
        signed = draw(st.booleans())
        bits = min(8 * size, 32)
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        values = draw(st.lists(st.integers(lo, hi) | st.integers(0, 2), max_size=4))
        body = b"".join(
            struct.pack("<Ii" if signed else "<II", b.name(f"E{i}"), v)
            for i, v in enumerate(values)
        )
        head = struct.pack("<III", b.name("e"), info(6, len(values), signed), size)
        return b.add(head + body, size)
    if kind == "float":
        size = draw(st.sampled_from([4, 8, 16]))
        return b.add(struct.pack("<III", b.name(f"f{size}"), info(16), size), size)
    if kind == "ptr":
        return b.add(struct.pack("<III", 0, info(2), 0), 8)
    if kind == "typedef":
        target = draw(btf_type(b, depth + 1))
        return b.add(struct.pack("<III", b.name("t"), info(8), target), b.sizes[target])
    if kind == "array":
        elem = draw(btf_type(b, depth + 1))
        n = draw(st.sampled_from([0, 1, 2, 3, 300]))
        index = int_type(b, 4, False)
        raw = struct.pack("<III", 0, info(3), 0) + struct.pack("<III", elem, index, n)
        return b.add(raw, n * b.sizes[elem])
    if kind == "chars":
        char = int_type(b, 1, draw(st.booleans()), "char")
        n = draw(st.integers(1, 8))
        raw = struct.pack("<III", 0, info(3), 0) + struct.pack("<III", char, char, n)
        return b.add(raw, n)
    if kind == "bitfields":  # struct { u32/s32 a: w0; ...} packed into 4 or 8 bytes
        unit = draw(st.sampled_from([4, 8]))
        base = int_type(b, unit, draw(st.booleans()))
        widths = draw(st.lists(st.integers(1, 16), min_size=1, max_size=4))
        members, bit = [], 0
        for i, w in enumerate(widths):
            if bit + w > 8 * unit:
                break
            members.append(struct.pack("<III", b.name(f"b{i}"), base, (w << 24) | bit))
            bit += w + draw(st.integers(0, 2))
        head = struct.pack("<III", b.name("bits"), info(4, len(members), True), unit)
        return b.add(head + b"".join(members), unit)
    # struct or union: members one after another (union: all at 0), no alignment needed
    union = kind == "union"
    member_types = draw(st.lists(btf_type(b, depth + 1), max_size=4))
    members, off, size = [], 0, 0
    for i, t in enumerate(member_types):
        name = "" if draw(st.integers(0, 5)) == 0 else f"m{i}"  # anonymous now and then
        members.append(struct.pack("<III", b.name(name), t, 0 if union else 8 * off))
        size = max(size, b.sizes[t]) if union else off + b.sizes[t]
        off = size if not union else 0
    head = struct.pack("<III", b.name("s"), info(5 if union else 4, len(members)), size)
    return b.add(head + b"".join(members), size)


@st.composite
def layout_and_data(draw: st.DrawFn) -> tuple[Btf, int, int, int, bytes]:
    b = Blob()
    top = draw(btf_type(b))
    size = b.sizes[top]
    stride = size + draw(st.sampled_from([0, 0, 3, 8]))
    count = draw(st.integers(1, 4))
    data = draw(st.binary(min_size=count * stride, max_size=count * stride))
    return Btf(b.raw()), top, stride, count, data


@settings(max_examples=300, deadline=None)
@given(layout_and_data())
def test_compiled_plan_agrees_with_the_reference_decoder(
    case: tuple[Btf, int, int, int, bytes],
) -> None:
    btf, top, stride, count, data = case
    plan = Plan(btf, top, stride)
    reference = [btf.decode(top, data[i * stride :]) for i in range(count)]
    # repr: NaN floats compare unequal to themselves, their reprs don't
    assert repr(plan.decode(data, count)) == repr(reference)
    assert plan.json(data, count) == [json_text(v) for v in reference]
    # key and value in one text per element, as the command writes them ('%' is literal)
    both = joint_json(
        Plan(btf, top, stride, "k"), Plan(btf, top, stride, "v"), ("<", "|", "%>"), True
    )
    heads = [f"h{i}%s" for i in range(count)]
    assert both(heads, data, data, count) == [
        f"h{i}%s<{json_text(v)}|{json_text(v)}%>" for i, v in enumerate(reference)
    ]


_ANONYMOUS = object()


def _at(value: Any, path: str) -> Any:
    """The value at a field's dotted path; _ANONYMOUS where an anonymous scalar or array
    member (no C compiler makes one; the generator does) hides it in the reference."""
    for part in path.split(".") if path else []:
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value and "" not in value:
            value = value[part]
        else:
            return _ANONYMOUS
    return _ANONYMOUS if isinstance(value, (dict, list)) else value


@settings(max_examples=300, deadline=None)
@given(layout_and_data())
def test_plan_fields_agree_with_the_reference_decoder(
    case: tuple[Btf, int, int, int, bytes],
) -> None:
    btf, top, stride, count, data = case
    plan = Plan(btf, top, stride)
    rows = plan.field_values(data, count)
    assert len(rows) == count and all(len(r) == len(plan.fields) for r in rows)
    assert plan.field_columns(data, count) == [list(c) for c in zip(*rows)] or not rows[0]
    assert list(plan.field_rows(data, count)) == rows
    names = [f.name for f in plan.fields]
    for i in range(count):
        element = data[i * stride : (i + 1) * stride]
        reference = btf.decode(top, element)
        for f, got in zip(plan.fields, rows[i]):
            if f.kind in ("string", "union", "bytes"):  # raw bytes: no member is the value
                assert got == element[f.offset : f.offset + f.size]
                continue
            if names.count(f.name) > 1:  # anonymous members merged: the reference keeps one
                continue
            want = _at(reference, f.name)
            if want is _ANONYMOUS:
                continue
            if f.kind == "enum":
                want = dict(f.enumerators).get(want, want)
            assert repr(got) == repr(int(want) if isinstance(want, bool) else want), f


@settings(max_examples=100, deadline=None)
@given(layout_and_data(), st.integers(1, 4))
def test_percpu_values_decode_one_per_cpu_slot(
    case: tuple[Btf, int, int, int, bytes], ncpus: int
) -> None:
    btf, top, _stride, count, _data = case
    size = btf.size(top)
    slot = (size + 7) & ~7
    data = bytes((i * 37 + 11) % 256 for i in range(count * ncpus * slot))
    d = MapDecoder(btf, top, top, key_size=size, value_size=size, ncpus=ncpus, percpu=True)
    expected = [
        [btf.decode(top, data[(i * ncpus + c) * slot :]) for c in range(ncpus)]
        for i in range(count)
    ]
    assert repr(d.decode_values(data, count)) == repr(expected)
    assert d.json_values(data, count) == [
        "[" + ",".join(json_text(v) for v in cpus) + "]" for cpus in expected
    ]


def test_a_union_decodes_every_member_from_the_same_bytes() -> None:
    b = Blob()
    u32 = int_type(b, 4, False)
    u8 = int_type(b, 1, False)
    arr = b.add(struct.pack("<III", 0, info(3), 0) + struct.pack("<III", u8, u32, 4), 4)
    members = struct.pack("<III", b.name("word"), u32, 0) + struct.pack(
        "<III", b.name("bytes"), arr, 0
    )
    union = b.add(struct.pack("<III", b.name("u"), info(5, 2), 4) + members, 4)
    btf = Btf(b.raw())
    plan = Plan(btf, union, 4)
    data = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert plan.decode(data, 2) == [
        {"word": 0x04030201, "bytes": [1, 2, 3, 4]},
        {"word": 0x08070605, "bytes": [5, 6, 7, 8]},
    ]
    assert plan.json(data, 1) == ['{"word":67305985,"bytes":[1,2,3,4]}']
    assert plan.number_names == ("word", "bytes.0", "bytes.1", "bytes.2", "bytes.3")
    assert plan.numbers(data, 1) == [(0x04030201, 1, 2, 3, 4)]


def test_a_big_array_decodes_through_its_element_plan() -> None:
    b = Blob()
    u16 = int_type(b, 2, True)
    arr = b.add(struct.pack("<III", 0, info(3), 0) + struct.pack("<III", u16, u16, 1000), 2000)
    btf = Btf(b.raw())
    plan = Plan(btf, arr, 2000)
    assert len(plan.leaves) == 1  # one byte run, not 1000 leaves
    values = list(range(-500, 500))
    data = struct.pack("<1000h", *values)
    assert plan.decode(data, 1) == [values]
    assert plan.json(data, 1) == ["[" + ",".join(map(str, values)) + "]"]


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"ok\0\0", '"ok"'),
        (b'a"b\0', '"a\\"b"'),
        (b"a\\\0\0", '"a\\\\"'),
        (b"abcd", "[97,98,99,100]"),
    ],
)
def test_char_array_json_escapes_text(raw: bytes, text: str) -> None:
    b = Blob()
    char = int_type(b, 1, True, "char")
    arr = b.add(struct.pack("<III", 0, info(3), 0) + struct.pack("<III", char, char, 4), 4)
    assert Plan(Btf(b.raw()), arr, 4).json(raw, 1) == [text]
