"""BTF decoding: map keys and values as Python values, using the kernel's BTF for the map.

A map created with BTF (every map a libbpf object loads) carries ``btf_id``,
``btf_key_type_id`` and ``btf_value_type_id``. :func:`load_btf` fetches that BTF from the kernel
(``btf__load_from_kernel_by_id``) and parses its raw blob here in Python;
:class:`MapDecoder` turns key and value bytes into ints, dicts (structs and unions), lists
(arrays), strings (char arrays) and enum names. Where the map has no BTF it decodes to None, so
callers fall back to hex.

This module imports nothing above ``_cdata``; ``Map.decoder()`` builds one per map.
"""

from __future__ import annotations

import array
import itertools
import json
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from dataclasses import field as _default
from typing import Any, Callable, Union

from . import _bindings
from ._cdata import Layout, percpu_slot

# uapi linux/btf.h
BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = range(1, 8)
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO = range(8, 14)
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(14, 20)
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4

KIND_NAMES = {
    0: "void",
    KIND_INT: "int",
    KIND_PTR: "ptr",
    KIND_ARRAY: "array",
    KIND_STRUCT: "struct",
    KIND_UNION: "union",
    KIND_ENUM: "enum",
    KIND_FWD: "fwd",
    KIND_TYPEDEF: "typedef",
    KIND_VOLATILE: "volatile",
    KIND_CONST: "const",
    KIND_RESTRICT: "restrict",
    KIND_FUNC: "func",
    KIND_FUNC_PROTO: "func_proto",
    KIND_VAR: "var",
    KIND_DATASEC: "datasec",
    KIND_FLOAT: "float",
    KIND_DECL_TAG: "decl_tag",
    KIND_TYPE_TAG: "type_tag",
    KIND_ENUM64: "enum64",
}
# Modifiers that change nothing about the bytes: skipped when decoding.
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})

_MAX_DEPTH = 64  # a malformed (cyclic) type graph stops here instead of recursing forever


class BtfError(ValueError):
    """The BTF blob is malformed, or a type can't be decoded.

    Not a BpfError: no kernel call failed and there is no errno; the bytes the kernel gave are
    not what this decoder understands, a bad value as ValueError means. A kernel error while
    fetching BTF (no such id, no permission) is raised as the BpfError it is.
    """


@dataclass(frozen=True)
class Member:
    """A struct/union member; ``bit_offset`` from the start, ``bitfield_size`` 0 if none."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0


@dataclass(frozen=True)
class BtfType:
    """One parsed BTF type. ``size`` for sized kinds, ``type_id`` for referring kinds."""

    id: int
    kind: int
    name: str
    size: int = 0
    type_id: int = 0
    kind_flag: bool = False
    # INT: encoding, bit offset and bits
    encoding: int = 0
    int_offset: int = 0
    bits: int = 0
    # ARRAY
    elem_type: int = 0
    nelems: int = 0
    members: tuple[Member, ...] = ()
    # ENUM/ENUM64: (name, value); DATASEC: (var type id, offset, size)
    enumerators: tuple[tuple[str, int], ...] = ()
    sections: tuple[tuple[int, int, int], ...] = ()

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind {self.kind}")


class Btf:
    """The types of one BTF blob (header, type section, string section), parsed."""

    def __init__(self, raw: bytes, first_id: int = 1) -> None:
        """Parse ``raw`` (btf__raw_data()); ``first_id`` > 1 for split BTF."""
        if len(raw) < 24:
            raise BtfError(f"BTF blob is {len(raw)} bytes, shorter than its header")
        order = "<" if struct.unpack_from("<H", raw)[0] == BTF_MAGIC else ">"
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "HBBIIIII", raw
        )
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        self._order = order
        types_start = hdr_len + type_off
        self._strings = raw[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: dict[int, BtfType] = {}
        self._parse(raw[types_start : types_start + type_len], first_id)

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode(errors="replace")

    def _parse(self, data: bytes, first_id: int) -> None:
        o = self._order
        u32 = struct.Struct(o + "I")
        i32 = struct.Struct(o + "i")
        pos, tid = 0, first_id
        while pos + 12 <= len(data):
            name_off, info, size_or_type = struct.unpack_from(o + "III", data, pos)
            pos += 12
            vlen, kind, kflag = info & 0xFFFF, (info >> 24) & 0x1F, bool(info >> 31)
            name = self._str(name_off)
            kw: dict[str, Any] = {}
            if kind == KIND_INT:
                (enc,) = u32.unpack_from(data, pos)
                pos += 4
                kw.update(
                    size=size_or_type,
                    encoding=(enc >> 24) & 0x0F,
                    int_offset=(enc >> 16) & 0xFF,
                    bits=enc & 0xFF,
                )
            elif kind == KIND_ARRAY:
                elem, _index, nelems = struct.unpack_from(o + "III", data, pos)
                pos += 12
                kw.update(elem_type=elem, nelems=nelems)
            elif kind in (KIND_STRUCT, KIND_UNION):
                members = []
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from(o + "III", data, pos)
                    pos += 12
                    if kflag:  # bits 0-23 bit offset, 24-31 bitfield size
                        members.append(
                            Member(self._str(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24)
                        )
                    else:
                        members.append(Member(self._str(m_name), m_type, m_off))
                kw.update(size=size_or_type, members=tuple(members))
            elif kind == KIND_ENUM:
                vals = []
                for _ in range(vlen):
                    (e_name,) = u32.unpack_from(data, pos)
                    (val,) = (i32 if kflag else u32).unpack_from(data, pos + 4)
                    vals.append((self._str(e_name), val))
                    pos += 8
                kw.update(size=size_or_type, enumerators=tuple(vals))
            elif kind == KIND_ENUM64:
                vals = []
                for _ in range(vlen):
                    e_name, lo, hi = struct.unpack_from(o + "III", data, pos)
                    pos += 12
                    val = (hi << 32) | lo
                    if kflag and val >= 1 << 63:
                        val -= 1 << 64
                    vals.append((self._str(e_name), val))
                kw.update(size=size_or_type, enumerators=tuple(vals))
            elif kind == KIND_FUNC_PROTO:
                pos += 8 * vlen
                kw.update(type_id=size_or_type)
            elif kind == KIND_VAR:
                pos += 4
                kw.update(type_id=size_or_type)
            elif kind == KIND_DATASEC:
                secs = []
                for _ in range(vlen):
                    secs.append(struct.unpack_from(o + "III", data, pos))
                    pos += 12
                kw.update(size=size_or_type, sections=tuple(secs))
            elif kind == KIND_DECL_TAG:
                pos += 4
                kw.update(type_id=size_or_type)
            elif kind == KIND_FLOAT:
                kw.update(size=size_or_type)
            elif kind in (
                KIND_PTR,
                KIND_FWD,
                KIND_TYPEDEF,
                KIND_VOLATILE,
                KIND_CONST,
                KIND_RESTRICT,
                KIND_FUNC,
                KIND_TYPE_TAG,
            ):
                kw.update(type_id=size_or_type)
            else:
                raise BtfError(f"type {tid}: unknown BTF kind {kind}")
            self.types[tid] = BtfType(tid, kind, name, kind_flag=kflag, **kw)
            tid += 1

    # -- queries ---------------------------------------------------------------------
    def type(self, type_id: int) -> BtfType:
        """The type with this id (0 is void)."""
        if type_id == 0:
            return BtfType(0, 0, "void")
        try:
            return self.types[type_id]
        except KeyError:
            raise BtfError(f"no BTF type {type_id}") from None

    def resolve(self, type_id: int) -> BtfType:
        """The type with typedefs, const, volatile, restrict and type tags stripped."""
        for _ in range(_MAX_DEPTH):
            t = self.type(type_id)
            if t.kind not in _MODIFIERS:
                return t
            type_id = t.type_id
        raise BtfError(f"type {type_id}: modifier chain too long")

    def size(self, type_id: int, _depth: int = 0) -> int:
        """sizeof() the type, in bytes."""
        if _depth > _MAX_DEPTH:
            raise BtfError(f"type {type_id}: nesting too deep")
        t = self.resolve(type_id)
        if t.kind in (
            KIND_INT,
            KIND_STRUCT,
            KIND_UNION,
            KIND_ENUM,
            KIND_ENUM64,
            KIND_FLOAT,
            KIND_DATASEC,
        ):
            return t.size
        if t.kind == KIND_PTR:
            return 8  # BPF is a 64-bit target
        if t.kind == KIND_ARRAY:
            return t.nelems * self.size(t.elem_type, _depth + 1)
        if t.kind == KIND_VAR:
            return self.size(t.type_id, _depth + 1)
        raise BtfError(f"type {type_id}: {t.kind_name} has no size")

    def char_type(self, type_id: int) -> BtfType | None:
        """The int type if ``type_id`` is a char (bpftool's rule: const/volatile skipped, a
        typedef is not a char; 1 byte, named 'char' or encoded CHAR), else None."""
        t = self.type(type_id)
        for _ in range(_MAX_DEPTH):
            if t.kind not in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG):
                break
            t = self.type(t.type_id)
        if t.kind == KIND_INT and t.size == 1 and (t.encoding & INT_CHAR or t.name == "char"):
            return t
        return None

    def type_name(self, type_id: int) -> str:
        """A C-like spelling of the type, e.g. 'struct port_stats' or '__u64'."""
        t = self.type(type_id)
        if t.kind in (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64):
            kind = "enum" if t.kind == KIND_ENUM64 else t.kind_name
            return f"{kind} {t.name}" if t.name else f"{kind} <anon>"
        if t.kind == KIND_PTR:
            return self.type_name(t.type_id) + " *"
        if t.kind == KIND_ARRAY:
            return f"{self.type_name(t.elem_type)}[{t.nelems}]"
        if t.kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT):
            return f"{t.kind_name} {self.type_name(t.type_id)}"
        return t.name or t.kind_name

    # -- decoding --------------------------------------------------------------------
    def decode(self, type_id: int, data: bytes | memoryview) -> Any:
        """The value of type ``type_id`` held in ``data`` (at least sizeof the type).

        ints (bool for _Bool), floats, dicts for structs and unions (anonymous members merged
        into the parent, as C reads them), lists for arrays, str for char arrays, the name for
        a known enum value (else the int), an int for pointers, a dict of variables for a
        DATASEC (global data maps).
        """
        return self._decode(type_id, memoryview(data).cast("B"), 0)

    def _decode(self, type_id: int, data: memoryview, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise BtfError(f"type {type_id}: nesting too deep")
        t = self.resolve(type_id)
        kind = t.kind
        if kind == KIND_INT:
            return self._int(t, data, t.int_offset, t.bits)
        if kind in (KIND_ENUM, KIND_ENUM64):
            value = self._uint(data[: t.size])
            if t.kind_flag and value >= 1 << (8 * t.size - 1):
                value -= 1 << (8 * t.size)
            for name, v in t.enumerators:
                if v == value:
                    return name
            return value
        if kind == KIND_PTR:
            return self._uint(data[:8])
        if kind == KIND_FLOAT:
            fmt = {2: "e", 4: "f", 8: "d"}.get(t.size)
            if fmt is None:  # long double: no Python type, keep the bytes
                return "0x" + bytes(data[: t.size]).hex()
            return struct.unpack_from(self._order + fmt, data)[0]
        if kind == KIND_ARRAY:
            esize = self.size(t.elem_type)
            if esize == 0 or t.nelems == 0:
                return []
            char = self.char_type(t.elem_type)
            if char is not None:
                return char_array(bytes(data[: t.nelems]), bool(char.encoding & INT_SIGNED))
            return [
                self._decode(t.elem_type, data[i * esize :], depth + 1) for i in range(t.nelems)
            ]
        if kind in (KIND_STRUCT, KIND_UNION):
            out: dict[str, Any] = {}
            for m in t.members:
                if m.bitfield_size:
                    value = self._bitfield(m, data)
                else:
                    if m.bit_offset % 8:
                        raise BtfError(
                            f"{self.type_name(t.id)}.{m.name}: member not on a byte boundary"
                        )
                    value = self._decode(m.type_id, data[m.bit_offset // 8 :], depth + 1)
                if not m.name and isinstance(value, dict):
                    out.update(value)  # anonymous struct/union: its members are the parent's
                else:
                    out[m.name] = value
            return out
        if kind == KIND_VAR:
            return self._decode(t.type_id, data, depth + 1)
        if kind == KIND_DATASEC:
            return {
                self.type(var).name: self._decode(var, data[off:], depth + 1)
                for var, off, _size in t.sections
            }
        raise BtfError(f"type {type_id}: can't decode a {t.kind_name}")

    def _uint(self, data: memoryview) -> int:
        return int.from_bytes(data, "little" if self._order == "<" else "big")

    def _int(self, t: BtfType, data: memoryview, bit_offset: int, bits: int) -> Any:
        raw = self._uint(data[: t.size])
        if bit_offset or bits != 8 * t.size:
            raw = (raw >> bit_offset) & ((1 << bits) - 1)
        if t.encoding & INT_BOOL:
            return bool(raw)
        if t.encoding & INT_SIGNED and raw >= 1 << (bits - 1):
            raw -= 1 << bits
        return raw

    def _bitfield(self, m: Member, data: memoryview) -> Any:
        t = self.resolve(m.type_id)
        if t.kind not in (KIND_INT, KIND_ENUM, KIND_ENUM64):
            raise BtfError(f"bitfield {m.name!r} of a {t.kind_name}")
        if self._order != "<":
            raise BtfError(f"bitfield {m.name!r}: big-endian bitfields are not supported")
        first = m.bit_offset // 8
        last = (m.bit_offset + m.bitfield_size + 7) // 8
        raw = (int.from_bytes(data[first:last], "little") >> (m.bit_offset % 8)) & (
            (1 << m.bitfield_size) - 1
        )
        signed = (t.encoding & INT_SIGNED) if t.kind == KIND_INT else t.kind_flag
        if signed and raw >= 1 << (m.bitfield_size - 1):
            raw -= 1 << m.bitfield_size
        if t.kind != KIND_INT:
            for name, v in t.enumerators:
                if v == raw:
                    return name
        return raw


# bytes.translate(None, _PRINTABLE) deletes printable ASCII: what is left is not text
_PRINTABLE = bytes(range(0x20, 0x7F))


def char_array(raw: bytes, signed: bool) -> str | list[int]:
    """A char array as bpftool shows it: text when it is printable ASCII up to a NUL, else
    the list of its ints (never an escaped string that can't be told from text)."""
    end = raw.find(b"\0")
    if end >= 0 and not raw[:end].translate(None, _PRINTABLE):
        return raw[:end].decode("ascii")
    return array.array("b", raw).tolist() if signed else list(raw)


def load_btf(btf_id: int) -> Btf:
    """Fetch BTF object ``btf_id`` from the kernel (btf__load_from_kernel_by_id) and parse it."""
    handle = _bindings.btf__load_from_kernel_by_id(btf_id)
    try:
        raw = _bindings.btf__raw_data(handle)
    finally:
        _bindings.btf__free(handle)
    return Btf(raw)


# -- compiled plans ---------------------------------------------------------------------
# A type compiles once into a struct format over its leaves (the ints, floats and byte runs it
# holds) and generated comprehensions that build each element's Python value, JSON text and
# numbers from one unpacked tuple: a batch decodes with one Python-level step per element, not
# one frame per field. Btf.decode() above stays the reference the tests hold these to.

_UINT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FLOAT_CODES = {2: "e", 4: "f", 8: "d"}
_COLUMN_CODES = frozenset("BHIQbhiqfd")  # memoryview.cast formats of the struct codes
_INLINE_LEAVES = 256  # an array with more leaves than this decodes through its element's plan
_Piece = Union[str, tuple[str, str]]  # JSON text: a literal, or ('%d' | '%s', expression)


def _json_float(x: float) -> str:
    # json.dumps would write NaN/Infinity, which is not JSON (bpftool's own output breaks here)
    return repr(x) if x - x == 0 else f'"{x}"'


def _json_chars(raw: bytes, signed: bool) -> str:
    return json_text(char_array(raw, signed))


def json_text(v: Any) -> str:
    """``v`` as compact JSON, non-finite floats as strings."""
    try:
        return json.dumps(v, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(v), separators=(",", ":"))


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if v - v == 0 else str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


NUMERIC_KINDS = frozenset({"uint", "int", "bool", "float", "enum"})


@dataclass(frozen=True)
class Field:
    """One scalar of a compiled type, as :attr:`Plan.fields` lists them.

    ``name`` is its dotted path (``'stats.bytes'``, ``'addr.0'``; ``''`` for a bare scalar);
    ``offset``/``size`` its bytes in the element (a bitfield: the bytes holding it). ``kind``:
    ``uint``, ``int``, ``bool``, ``float``, ``enum`` (numbers; a bitfield is one of these),
    ``string`` (a char array, its raw bytes), ``pointer`` (an int, not a quantity), ``union``
    (its raw bytes: the members overlap, none of them is *the* value), ``bytes`` (a long
    double, an array too large to flatten). ``enumerators``: an enum's (name, value) pairs.
    """

    name: str
    offset: int
    size: int
    kind: str
    signed: bool = False
    enumerators: tuple[tuple[str, int], ...] = ()

    @property
    def numeric(self) -> bool:
        """True for a number (ints, bools, floats, enums as their value)."""
        return self.kind in NUMERIC_KINDS


_FieldCode = tuple[Field, str]  # a field and the expression of its value


@dataclass
class _Code:
    """What a type compiles to, over leaf variables: Python value, JSON text, numbers, and
    its fields (unions as one field of bytes)."""

    py: str
    js: list[_Piece]
    nums: list[tuple[str, str]]
    members: list[tuple[str, _Code]] | None = None  # structs/unions: spliced when anonymous
    fields: list[_FieldCode] = _default(default_factory=list)


class _Compiler:
    def __init__(self, btf: Btf, size: int, ns: dict[str, Any], prefix: str) -> None:
        self.btf, self.size, self.ns, self.prefix = btf, size, ns, prefix
        self.order = btf._order
        self.leaves: list[tuple[int, int, str]] = []  # (offset, size, struct code)
        self._leaf_names: dict[tuple[int, int, str], str] = {}
        # leaves only Plan.field_values reads (a union's bytes): kept out of the other
        # functions' struct formats, where they would add a layer
        self.field_leaves: list[tuple[int, int, str]] = []

    def leaf(self, offset: int, size: int, code: str) -> str:
        key = (offset, size, code)
        name = self._leaf_names.get(key)
        if name is None:
            name = self._leaf_names[key] = f"{self.prefix}v{len(self.leaves)}"
            self.leaves.append(key)
        return name

    def field_leaf(self, offset: int, size: int) -> str:
        key = (offset, size, f"{size}s")
        if key in self._leaf_names:
            return self._leaf_names[key]
        self.field_leaves.append(key)
        return f"{self.prefix}f{len(self.field_leaves) - 1}"

    def const(self, value: Any) -> str:
        name = f"_{self.prefix}c{len(self.ns)}"
        self.ns[name] = value
        return name

    def node(self, type_id: int, off: int, depth: int) -> _Code:
        if depth > _MAX_DEPTH:
            raise BtfError(f"type {type_id}: nesting too deep")
        t = self.btf.resolve(type_id)
        kind = t.kind
        if kind == KIND_INT:
            return self.integer(t, off)
        if kind in (KIND_ENUM, KIND_ENUM64):
            return self.enum(t, self.raw_int(off, t.size, t.kind_flag), off, t.size)
        if kind == KIND_PTR:
            v = self.leaf(off, 8, "Q")
            return _Code(v, [("%d", v)], [], fields=[(Field("", off, 8, "pointer"), v)])
        if kind == KIND_FLOAT:
            code = _FLOAT_CODES.get(t.size)
            if code is None:  # long double: no Python type, keep the bytes
                v = self.leaf(off, t.size, f"{t.size}s")
                f = Field("", off, t.size, "bytes")
                return _Code(
                    f"'0x' + {v}.hex()", ['"0x', ("%s", f"{v}.hex()"), '"'], [], fields=[(f, v)]
                )
            v = self.leaf(off, t.size, code)
            f = Field("", off, t.size, "float", True)
            return _Code(v, [("%s", f"_json_float({v})")], [("", v)], fields=[(f, v)])
        if kind == KIND_ARRAY:
            return self.array(t, off, depth)
        if kind in (KIND_STRUCT, KIND_UNION):
            return self.struct(t, off, depth)
        if kind == KIND_VAR:
            return self.node(t.type_id, off, depth + 1)
        if kind == KIND_DATASEC:
            return self.datasec(t, off, depth)
        raise BtfError(f"type {type_id}: can't decode a {t.kind_name}")

    def raw_int(self, off: int, size: int, signed: bool) -> str:
        code = _UINT_CODES.get(size)
        if code is None:
            v = self.leaf(off, size, f"{size}s")
            return f"_from_bytes({v}, {self.byteorder!r}, signed={signed})"
        return self.leaf(off, size, code.lower() if signed else code)

    @property
    def byteorder(self) -> str:
        return "little" if self.order == "<" else "big"

    def integer(self, t: BtfType, off: int) -> _Code:
        signed = bool(t.encoding & INT_SIGNED)
        is_bool = False  # already a Python bool (struct's "?")
        if t.int_offset or t.bits != 8 * t.size:  # an int narrower than its bytes
            v = self.bits(self.raw_int(off, t.size, False), t.int_offset, t.bits, signed)
        elif t.encoding & INT_BOOL and t.size == 1:
            v, is_bool = self.leaf(off, 1, "?"), True
        else:
            v = self.raw_int(off, t.size, signed)
        if t.encoding & INT_BOOL:
            v = v if is_bool else f"({v} != 0)"
            f = Field("", off, t.size, "bool")
            return _Code(
                v,
                [("%s", f"('true' if {v} else 'false')")],
                [("", f"int({v})")],
                fields=[(f, f"int({v})")],
            )
        f = Field("", off, t.size, "int" if signed else "uint", signed)
        return _Code(v, [("%d", v)], [("", v)], fields=[(f, v)])

    @staticmethod
    def bits(raw: str, shift: int, width: int, signed: bool) -> str:
        v = (
            f"(({raw} >> {shift}) & {(1 << width) - 1})"
            if shift
            else f"({raw} & {(1 << width) - 1})"
        )
        if signed:  # two's complement of `width` bits
            sign = 1 << (width - 1)
            v = f"(({v} ^ {sign}) - {sign})"
        return v

    def enum(self, t: BtfType, v: str, off: int, size: int) -> _Code:
        names: dict[int, str] = {}
        for name, value in t.enumerators:
            names.setdefault(value, name)  # the first name of a value, as the reference
        py = self.const(names)
        js = self.const({value: json.dumps(name) for value, name in names.items()})
        f = Field("", off, size, "enum", t.kind_flag, t.enumerators)
        return _Code(
            f"{py}.get({v}, {v})", [("%s", f"{js}.get({v}, {v})")], [("", v)], fields=[(f, v)]
        )

    def array(self, t: BtfType, off: int, depth: int) -> _Code:
        esize = self.btf.size(t.elem_type)
        n = t.nelems
        if esize == 0 or n == 0:
            return _Code("[]", ["[]"], [])
        char = self.btf.char_type(t.elem_type)
        if char is not None:
            v = self.leaf(off, n, f"{n}s")
            signed = bool(char.encoding & INT_SIGNED)
            return _Code(
                f"_char_array({v}, {signed})",
                [("%s", f"_json_chars({v}, {signed})")],
                [],
                fields=[(Field("", off, n, "string", signed), v)],
            )
        elem = Plan(self.btf, t.elem_type, esize)
        if n * max(len(elem.leaves), 1) > _INLINE_LEAVES:
            v = self.leaf(off, n * esize, f"{n * esize}s")
            py, to_json = self.const(elem.decode), self.const(elem.json)
            return _Code(
                f"{py}({v}, {n})",
                ["[", ("%s", f"','.join({to_json}({v}, {n}))"), "]"],
                [],
                fields=[(Field("", off, n * esize, "bytes"), v)],
            )
        items = [self.node(t.elem_type, off + i * esize, depth + 1) for i in range(n)]
        js: list[_Piece] = ["["]
        for i, c in enumerate(items):
            js += ([","] if i else []) + c.js
        nums = [(_dotted(str(i), name), e) for i, c in enumerate(items) for name, e in c.nums]
        fields = [(_named(str(i), f), e) for i, c in enumerate(items) for f, e in c.fields]
        return _Code("[" + ", ".join(c.py for c in items) + "]", js + ["]"], nums, fields=fields)

    def struct(self, t: BtfType, off: int, depth: int) -> _Code:
        members: dict[str, _Code] = {}
        fields: list[_FieldCode] = []
        for m in t.members:
            if m.bitfield_size:
                code = self.bitfield(m, off)
            else:
                if m.bit_offset % 8:
                    raise BtfError(
                        f"{self.btf.type_name(t.id)}.{m.name}: member not on a byte boundary"
                    )
                code = self.node(m.type_id, off + m.bit_offset // 8, depth + 1)
            if not m.name and code.members is not None:
                members.update(code.members)  # anonymous struct/union: its members are ours
                fields += [(_named(m.name, f), e) for f, e in code.fields]
            else:
                members[m.name] = code
                fields += [(_named(m.name, f), e) for f, e in code.fields]
        record = _record(list(members.items()))
        if t.kind == KIND_UNION:  # one field of bytes: no member is the value
            union = Field("", off, t.size, "union")
            record.fields = [(union, self.field_leaf(off, t.size))] if t.size else []
        else:
            record.fields = fields
        return record

    def bitfield(self, m: Member, off: int) -> _Code:
        t = self.btf.resolve(m.type_id)
        if t.kind not in (KIND_INT, KIND_ENUM, KIND_ENUM64):
            raise BtfError(f"bitfield {m.name!r} of a {t.kind_name}")
        if self.order != "<":
            raise BtfError(f"bitfield {m.name!r}: big-endian bitfields are not supported")
        first = m.bit_offset // 8
        span = (m.bit_offset + m.bitfield_size + 7) // 8 - first
        unit = next((u for u in (1, 2, 4, 8) if u >= span), 0)
        if unit and off + first + unit <= self.size:
            raw = self.leaf(off + first, unit, _UINT_CODES[unit])
        else:
            raw = f"_from_bytes({self.leaf(off + first, span, f'{span}s')}, 'little')"
        signed = bool(t.encoding & INT_SIGNED) if t.kind == KIND_INT else t.kind_flag
        v = self.bits(raw, m.bit_offset % 8, m.bitfield_size, signed)
        if t.kind == KIND_INT:
            f = Field("", off + first, unit or span, "int" if signed else "uint", signed)
            return _Code(v, [("%d", v)], [("", v)], fields=[(f, v)])
        return self.enum(t, v, off + first, unit or span)

    def datasec(self, t: BtfType, off: int, depth: int) -> _Code:
        # Python: {variable: value}; JSON as bpftool nests it: {".bss": [{"var": value}, ...]}
        variables = [
            (self.btf.type(var).name, self.node(var, off + var_off, depth + 1))
            for var, var_off, _size in t.sections
        ]
        flat = _record(variables)
        js: list[_Piece] = ["{" + json.dumps(t.name) + ":["]
        for i, (name, c) in enumerate(variables):
            js += ([","] if i else []) + ["{" + json.dumps(name) + ":"] + c.js + ["}"]
        return _Code(flat.py, js + ["]}"], flat.nums, flat.members, flat.fields)


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if name else prefix


def _named(prefix: str, f: Field) -> Field:
    return replace(f, name=_dotted(prefix, f.name)) if prefix else f


def _record(members: list[tuple[str, _Code]]) -> _Code:
    py = "{" + ", ".join(f"{name!r}: {c.py}" for name, c in members) + "}"
    js: list[_Piece] = ["{"]
    for i, (name, c) in enumerate(members):
        js += [("," if i else "") + json.dumps(name) + ":"] + c.js
    nums = [(_dotted(name, sub), e) for name, c in members for sub, e in c.nums]
    fields = [(_named(name, f), e) for name, c in members for f, e in c.fields]
    return _Code(py, js + ["}"], nums, members, fields)


def _format(pieces: list[_Piece]) -> tuple[str, list[str]]:
    """JSON pieces as one %-format and its argument expressions."""
    text, args = [], []
    for p in pieces:
        if isinstance(p, str):
            text.append(p.replace("%", "%%"))
        else:
            text.append(p[0])
            args.append(p[1])
    return "".join(text), args


def _layers(leaves: list[tuple[int, int, str]]) -> list[list[int]]:
    """Leaf indexes split into runs that don't overlap (a union's members overlap): one
    struct format each."""
    layers: list[list[int]] = []
    ends: list[int] = []
    for i in sorted(range(len(leaves)), key=lambda i: (leaves[i][0], -leaves[i][1])):
        off, size, _code = leaves[i]
        for n, end in enumerate(ends):
            if end <= off:
                layers[n].append(i)
                ends[n] = off + size
                break
        else:
            layers.append([i])
            ends.append(off + size)
    return layers


class Plan:
    """One BTF type compiled for a buffer of elements ``stride`` bytes apart.

    ``decode(buf, count)`` gives each element's Python value (as :meth:`Btf.decode` does),
    ``json(buf, count)`` its compact JSON text (as bpftool writes it: DATASEC values nested by
    section; NaN/inf floats as strings), ``numbers(buf, count)`` a tuple per element of its
    numeric fields, named by ``number_names`` (dotted paths; enums as their ints; char arrays
    and pointers are not numbers). ``buf`` holds at least ``count * stride`` bytes.

    ``fields`` lists the type's scalars as a consumer that labels or exports them wants them
    (a union as one field of bytes, not its overlapping members); ``field_values(buf, count)``
    gives each element's tuple of them (ints, floats, bytes), ``field_columns(buf, count)``
    one list per field (plain aligned ints read straight from the buffer).
    """

    def __init__(self, btf: Btf, type_id: int, stride: int, prefix: str = "") -> None:
        """``prefix`` names this plan's variables apart from another's (see joint_json)."""
        self.btf, self.type_id, self.stride, self.prefix = btf, type_id, stride, prefix
        size = btf.size(type_id)
        if size > stride:
            raise BtfError(f"{btf.type_name(type_id)} is {size} bytes, elements have {stride}")
        self.ns: dict[str, Any] = {
            "_char_array": char_array,
            "_json_chars": _json_chars,
            "_json_float": _json_float,
            "_from_bytes": int.from_bytes,
            "_repeat": itertools.repeat,
            "_zip": zip,
        }
        comp = _Compiler(btf, size, self.ns, prefix)
        code = comp.node(type_id, 0, 0)
        self.leaves = comp.leaves
        self.number_names = tuple(name or "value" for name, _e in code.nums)
        self.fields = tuple(f for f, _e in code.fields)
        self.buf = f"{prefix}buf"
        self.iterate, self.target = self._iteration(
            btf._order, self.leaves, [f"{prefix}v{i}" for i in range(len(self.leaves))], "unpack"
        )
        self._field_code = (code.fields, comp.field_leaves)
        self._field_values: Callable[[Any, int], list[tuple[Any, ...]]] | None = None
        self._field_rows: Any = None
        self._columns = [self._column(f, e) for f, e in code.fields]
        self.json_format, self.json_args = _format(code.js)
        fmt_name = f"_{prefix}json_format"
        self.ns[fmt_name] = self.json_format
        js = f"{fmt_name} % ({', '.join(self.json_args)},)" if self.json_args else fmt_name
        nums = "(" + "".join(f"{e}, " for _n, e in code.nums) + ")"
        src = "\n".join(
            f"def {name}({self.buf}, count):\n"
            f"    return [{expr} for {self.target} in {self.iterate}]\n"
            for name, expr in (("decode", code.py), ("json", js), ("numbers", nums))
        )
        exec(compile(src, f"<BTF plan: {btf.type_name(type_id)}>", "exec"), self.ns)  # noqa: S102
        self.decode: Callable[[Any, int], list[Any]] = self.ns["decode"]
        self.json: Callable[[Any, int], list[str]] = self.ns["json"]
        self.numbers: Callable[[Any, int], list[tuple[int | float, ...]]] = self.ns["numbers"]

    def field_values(self, buf: Any, count: int) -> list[tuple[Any, ...]]:
        """Each element's ``fields`` as one tuple: numbers (enums and bools as ints), raw
        bytes for strings, unions and byte runs, ints for pointers."""
        if self._field_values is None:
            fields, extra = self._field_code
            leaves = self.leaves + extra
            names = [f"{self.prefix}v{i}" for i in range(len(self.leaves))]
            names += [f"{self.prefix}f{i}" for i in range(len(extra))]
            iterate, target = self._iteration(self.btf._order, leaves, names, "funpack")
            values = "(" + "".join(f"{e}, " for _f, e in fields) + ")"
            if values == target:  # the unpacked tuples are the fields: no step per element
                rows, each = iterate, f"list({iterate})"
            else:
                each = f"[{values} for {target} in {iterate}]"
                rows = each
            src = (
                f"def field_values({self.buf}, count):\n    return {each}\n"
                f"def field_rows({self.buf}, count):\n    return {rows}\n"
            )
            exec(compile(src, "<BTF plan: fields>", "exec"), self.ns)  # noqa: S102
            self._field_values = self.ns["field_values"]
            self._field_rows = self.ns["field_rows"]
        return self._field_values(buf, count)

    def field_rows(self, buf: Any, count: int) -> Iterable[tuple[Any, ...]]:
        """``field_values`` as an iterable, read lazily where the unpacked tuples are the
        fields themselves (plain ints and floats): ``buf`` must not change meanwhile."""
        if self._field_values is None:
            self.field_values(buf, 0)
        return self._field_rows(buf, count)  # type: ignore[no-any-return]

    def field_columns(self, buf: Any, count: int) -> list[list[Any]]:
        """``field_values`` by column: one list per field, of ``count`` values. A plain int
        or float aligned in the element is read straight from the buffer (no tuple per row)."""
        view = _flat(buf)[: count * self.stride]
        rows: list[Any] | None = None
        out: list[list[Any]] = []
        for i, (code, start, step) in enumerate(self._columns):
            if code:
                out.append(view.cast(code)[start::step].tolist())  # type: ignore[call-overload]
                continue
            if rows is None:
                rows = list(zip(*self.field_values(buf, count))) or [()] * len(self._columns)
            out.append(list(rows[i]))
        return out

    def _column(self, f: Field, expr: str) -> tuple[str, int, int]:
        """(memoryview format, first item, step) reading field ``f`` straight from the
        buffer, or ('', 0, 0) when its value needs the generated code."""
        if self.btf._order != ("<" if sys.byteorder == "little" else ">"):
            return "", 0, 0
        try:
            off, size, code = self.leaves[int(expr.removeprefix(f"{self.prefix}v"))]
        except ValueError:
            return "", 0, 0  # an expression over a leaf (a bitfield, a bool), or a field leaf
        if code not in _COLUMN_CODES or off % size or self.stride % size:
            return "", 0, 0
        return code, off // size, self.stride // size

    def _iteration(
        self, order: str, leaves: list[tuple[int, int, str]], names: list[str], what: str
    ) -> tuple[str, str]:
        """The comprehension's iterable and target: one iter_unpack per layer, zipped."""
        if self.stride == 0:
            return "_repeat((), count)", "_"
        iters, targets = [], []
        for n, layer in enumerate(_layers(leaves) or [[]]):
            fmt, pos = order, 0
            for i in layer:
                off, size, code = leaves[i]
                fmt += (f"{off - pos}x" if off > pos else "") + code
                pos = off + size
            fmt += f"{self.stride - pos}x" if self.stride > pos else ""
            unpack = f"_{self.prefix}{what}{n}"
            self.ns[unpack] = struct.Struct(fmt).iter_unpack
            iters.append(f"{unpack}({self.buf}[:count * {self.stride}])")
            targets.append("(" + "".join(f"{names[i]}, " for i in layer) + ")")
        if len(iters) == 1:
            return iters[0], targets[0]
        return f"_zip({', '.join(iters)})", "(" + ", ".join(targets) + ")"


JointJson = Callable[[Any, Any, Any, int], list[str]]


def joint_json(key: Plan, value: Plan, between: tuple[str, str, str], heads: bool) -> JointJson:
    """A function ``(heads, keys, values, count) -> [text, ...]`` making each element's text
    in one step: ``heads[i]`` (when ``heads``) + between[0] + the key's JSON + between[1] +
    the value's JSON + between[2]. The plans must have different prefixes."""
    if key.prefix == value.prefix:
        raise ValueError("joint_json: the key and value plans need different prefixes")
    esc = [b.replace("%", "%%") for b in between]
    ns = {
        **key.ns,
        **value.ns,
        "_joint_format": (
            ("%s" if heads else "") + esc[0] + key.json_format + esc[1] + value.json_format + esc[2]
        ),
    }
    args = (["head"] if heads else []) + key.json_args + value.json_args
    targets = (["head"] if heads else []) + [key.target, value.target]
    iters = (["heads"] if heads else []) + [key.iterate, value.iterate]
    src = (
        f"def lines(heads, {key.buf}, {value.buf}, count):\n"
        f"    return [_joint_format % ({''.join(a + ', ' for a in args)}) "
        f"for {', '.join(targets)} in _zip({', '.join(iters)})]\n"
    )
    exec(compile(src, "<BTF plan: key and value>", "exec"), ns)  # noqa: S102
    lines: JointJson = ns["lines"]
    return lines


def numpy_dtype(btf: Btf, type_id: int, np: Any, _depth: int = 0) -> Any:
    """A numpy dtype laid out as the BTF type: structured with the member names and offsets
    (padding left out), subarrays for arrays, ``S<n>`` for char arrays, ints for enums and
    pointers. A bitfield's field is the smallest 1/2/4/8-byte little-endian unit starting
    at the byte holding its first bit: shift it right by bit_offset % 8 and mask."""
    if _depth > _MAX_DEPTH:
        raise BtfError(f"type {type_id}: nesting too deep")
    order = btf._order
    t = btf.resolve(type_id)
    if t.kind in (KIND_INT, KIND_ENUM, KIND_ENUM64):
        signed = bool(t.encoding & INT_SIGNED) if t.kind == KIND_INT else t.kind_flag
        if t.kind == KIND_INT and t.encoding & INT_BOOL and t.size == 1:
            return np.dtype("?")
        if t.size in _UINT_CODES:
            return np.dtype(f"{order}{'i' if signed else 'u'}{t.size}")
        return np.dtype(f"V{t.size}")
    if t.kind == KIND_PTR:
        return np.dtype(f"{order}u8")
    if t.kind == KIND_FLOAT:
        return np.dtype(f"{order}f{t.size}") if t.size in _FLOAT_CODES else np.dtype(f"V{t.size}")
    if t.kind == KIND_ARRAY:
        if btf.char_type(t.elem_type) is not None:
            return np.dtype(f"S{t.nelems}")
        return np.dtype((numpy_dtype(btf, t.elem_type, np, _depth + 1), (t.nelems,)))
    if t.kind == KIND_VAR:
        return numpy_dtype(btf, t.type_id, np, _depth + 1)
    if t.kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC):
        fields: dict[str, tuple[Any, int]] = {}
        if t.kind == KIND_DATASEC:
            parts = [(btf.type(v).name, v, off * 8, 0) for v, off, _s in t.sections]
        else:
            parts = [(m.name, m.type_id, m.bit_offset, m.bitfield_size) for m in t.members]
        for name, member_type, bit_offset, bitfield_size in parts:
            if bitfield_size:
                first = bit_offset // 8
                span = (bit_offset + bitfield_size + 7) // 8 - first
                unit = next((u for u in (1, 2, 4, 8) if u >= span and first + u <= t.size), 0)
                dt = np.dtype(f"<u{unit}") if unit else np.dtype(f"V{span}")
            else:
                dt = numpy_dtype(btf, member_type, np, _depth + 1)
            off = bit_offset // 8
            if not name and dt.names:  # anonymous struct/union: its members are ours
                for sub in dt.names:
                    sub_dt, sub_off = dt.fields[sub][:2]
                    fields.setdefault(sub, (sub_dt, off + sub_off))
            else:
                fields.setdefault(name or f"f{off}", (dt, off))
        return np.dtype(
            {
                "names": list(fields),
                "formats": [dt for dt, _o in fields.values()],
                "offsets": [o for _dt, o in fields.values()],
                "itemsize": t.size,
            }
        )
    raise BtfError(f"type {type_id}: no numpy dtype for a {t.kind_name}")


class MapDecoder:
    """Decodes one map's keys and values, compiled once from its BTF.

    Per element: ``decode_key``/``decode_value`` (None where the map has no BTF type for that
    part). Whole batches, without a Python frame per field:

    - ``decode_batch(batch) -> list[tuple[key, value]]``
    - ``decode_keys(keys, count) -> list``, ``decode_values(values, count) -> list``
    - ``json_keys(keys, count) -> list[str]``, ``json_values(values, count) -> list[str]``
      (per-CPU: one ``[v_cpu0,v_cpu1,...]`` JSON array per element),
      ``json_lines(heads, keys, values, count, between) -> list[str]`` (key and value JSON
      in one text per element, in one step)
    - ``value_numbers(values, count) -> list[tuple]`` named by ``value_number_names``
      (per-CPU: summed over the CPUs)
    - ``key_dtype(np)``, ``value_dtype(np)``: numpy dtypes (per-CPU: one CPU's value)

    ``keys``/``values`` are flat buffers (a Batch's ``keys``/``values``). A part without a BTF
    type decodes as an unsigned little-endian int when it is 1, 2, 4 or 8 bytes, else as bytes.
    """

    def __init__(
        self,
        btf: Btf | None,
        key_type_id: int,
        value_type_id: int,
        *,
        key_size: int,
        value_size: int,
        ncpus: int = 1,
        percpu: bool = False,
    ) -> None:
        self.btf = btf
        self.key_type_id = key_type_id if btf is not None else 0
        self.value_type_id = value_type_id if btf is not None else 0
        self.key_size = key_size
        self.value_size = value_size
        self.ncpus = ncpus
        self.percpu = percpu
        self._slot = percpu_slot(value_size) if percpu else value_size
        self.key_plan = (
            Plan(btf, self.key_type_id, key_size, "k") if btf and self.key_type_id else None
        )
        self.value_plan = (
            Plan(btf, self.value_type_id, self._slot, "v") if btf and self.value_type_id else None
        )
        self._joint: dict[tuple[tuple[str, str, str], bool], JointJson] = {}
        self.value_number_names = (
            self.value_plan.number_names
            if self.value_plan
            else ("value",)
            if value_size in _UINT_CODES
            else ()
        )
        self._raw_keys = _raw(key_size)
        self._raw_values = _raw(value_size, self._slot)

    @classmethod
    def for_map(
        cls, btf_id: int, key_type_id: int, value_type_id: int, layout: Layout
    ) -> MapDecoder:
        """A decoder for a map's BTF ids (from its MapInfo); btf_id 0: decodes to None."""
        return cls(
            load_btf(btf_id) if btf_id else None,
            key_type_id,
            value_type_id,
            key_size=layout.key_size,
            value_size=layout.value_size,
            ncpus=layout.ncpus,
            percpu=layout.percpu,
        )

    @property
    def has_key_type(self) -> bool:
        """True when keys decode (the map has a BTF key type)."""
        return self.key_plan is not None

    @property
    def has_value_type(self) -> bool:
        """True when values decode (the map has a BTF value type)."""
        return self.value_plan is not None

    @property
    def key_type_name(self) -> str | None:
        return self.btf.type_name(self.key_type_id) if self.btf and self.key_type_id else None

    @property
    def value_type_name(self) -> str | None:
        return self.btf.type_name(self.value_type_id) if self.btf and self.value_type_id else None

    # -- one element ---------------------------------------------------------------------
    def decode_key(self, key: bytes | memoryview) -> Any:
        """The key as a Python value, or None when the map has no BTF key type."""
        return self.key_plan.decode(memoryview(key).cast("B"), 1)[0] if self.key_plan else None

    def decode_value(self, value: bytes | memoryview) -> Any:
        """The value as a Python value (per-CPU: a list, one per CPU), or None without BTF."""
        if self.value_plan is None:
            return None
        view = memoryview(value).cast("B")
        if not self.percpu:
            return self.value_plan.decode(view, 1)[0]
        return self.value_plan.decode(view, self.ncpus)

    # -- whole batches -------------------------------------------------------------------
    def decode_batch(self, batch: Any) -> list[tuple[Any, Any]]:
        """``[(key, value), ...]`` for a Batch, as Python values."""
        return list(
            zip(
                self.decode_keys(batch.keys, batch.count),
                self.decode_values(batch.values, batch.count),
            )
        )

    def decode_keys(self, keys: Any, count: int) -> list[Any]:
        """``count`` keys from a flat buffer, as Python values."""
        plan = self.key_plan or self._raw_keys
        return plan.decode(_flat(keys), count)

    def decode_values(self, values: Any, count: int | None = None) -> list[Any]:
        """``count`` values from a flat buffer (per-CPU: a list per element, one per CPU).

        Given a sequence of values and no count (the old per-element form), each decoded.
        """
        if count is None:
            return [self.decode_value(v) for v in values]
        plan = self.value_plan or self._raw_values
        flat = plan.decode(_flat(values), count * self.ncpus if self.percpu else count)
        return self._per_element(flat, list)

    def json_keys(self, keys: Any, count: int) -> list[str]:
        """``count`` keys as compact JSON texts (requires a BTF key type)."""
        if self.key_plan is None:
            raise BtfError("the map has no BTF key type")
        return self.key_plan.json(_flat(keys), count)

    def json_values(self, values: Any, count: int) -> list[str]:
        """``count`` values as compact JSON texts (requires a BTF value type); per-CPU: one
        JSON array per element, a value per CPU."""
        if self.value_plan is None:
            raise BtfError("the map has no BTF value type")
        if not self.percpu:
            return self.value_plan.json(_flat(values), count)
        flat = self.value_plan.json(_flat(values), count * self.ncpus)
        return ["[" + ",".join(cpus) + "]" for cpus in zip(*[iter(flat)] * self.ncpus)]

    def json_lines(
        self,
        heads: list[str] | None,
        keys: Any,
        values: Any,
        count: int,
        between: tuple[str, str, str],
    ) -> list[str]:
        """Each element as one text: ``heads[i]`` (when given) + between[0] + the key's JSON +
        between[1] + the value's JSON + between[2], made in one step per element. Needs BTF
        key and value types; per-CPU maps use json_values()."""
        if self.key_plan is None or self.value_plan is None or self.percpu:
            raise BtfError("json_lines needs BTF key and value types and a map not per-CPU")
        lines = self._joint.get((between, heads is not None))
        if lines is None:
            lines = joint_json(self.key_plan, self.value_plan, between, heads is not None)
            self._joint[between, heads is not None] = lines
        return lines(heads, _flat(keys), _flat(values), count)

    def json_value_slots(self, values: Any, count: int) -> list[tuple[str, ...]]:
        """Per-CPU maps: each element's JSON value texts, one per CPU."""
        if self.value_plan is None:
            raise BtfError("the map has no BTF value type")
        flat = self.value_plan.json(_flat(values), count * self.ncpus)
        return list(zip(*[iter(flat)] * self.ncpus))

    def value_numbers(self, values: Any, count: int) -> list[tuple[int | float, ...]]:
        """Each value's numeric fields (``value_number_names``), per-CPU summed."""
        plan = self.value_plan or self._raw_values
        if plan is self._raw_values and not self.value_number_names:
            return [()] * count
        flat = plan.numbers(_flat(values), count * self.ncpus if self.percpu else count)
        if not self.percpu:
            return flat
        return [tuple(map(sum, zip(*cpus))) for cpus in zip(*[iter(flat)] * self.ncpus)]

    def key_dtype(self, np: Any) -> Any:
        """numpy dtype of a key: from BTF, else ``<u{n}`` (1/2/4/8 bytes) or ``V{n}``."""
        if self.btf is not None and self.key_type_id:
            return numpy_dtype(self.btf, self.key_type_id, np)
        return _raw_dtype(np, self.key_size)

    def value_dtype(self, np: Any) -> Any:
        """numpy dtype of a value (per-CPU: of one CPU's value), as key_dtype()."""
        if self.btf is not None and self.value_type_id:
            return numpy_dtype(self.btf, self.value_type_id, np)
        return _raw_dtype(np, self.value_size)

    def _per_element(self, flat: list[Any], group: Callable[[Any], Any]) -> list[Any]:
        if not self.percpu:
            return flat
        return list(map(group, zip(*[iter(flat)] * self.ncpus)))


class _RawPlan:
    """A part without BTF: unsigned little-endian ints for 1/2/4/8 bytes, else bytes."""

    def __init__(self, size: int, stride: int) -> None:
        code = _UINT_CODES.get(size, f"{size}s")
        fmt = "<" + code + (f"{stride - size}x" if stride > size else "")
        self._unpack = struct.Struct(fmt).iter_unpack if stride else None
        self.stride = stride

    def decode(self, buf: Any, count: int) -> list[Any]:
        if self._unpack is None:
            return [b""] * count
        return [v for (v,) in self._unpack(buf[: count * self.stride])]

    def numbers(self, buf: Any, count: int) -> list[tuple[int | float, ...]]:
        return [(v,) for v in self.decode(buf, count)]


def _raw(size: int, stride: int | None = None) -> _RawPlan:
    return _RawPlan(size, size if stride is None else stride)


def _raw_dtype(np: Any, size: int) -> Any:
    return np.dtype(f"<u{size}") if size in _UINT_CODES else np.dtype(f"V{size}")


def _flat(buf: Any) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


__all__ = [
    "NUMERIC_KINDS",
    "Btf",
    "BtfError",
    "BtfType",
    "Field",
    "MapDecoder",
    "Member",
    "Plan",
    "char_array",
    "joint_json",
    "json_text",
    "load_btf",
    "numpy_dtype",
]
