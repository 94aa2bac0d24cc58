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

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
            elem = self.resolve(t.elem_type)
            esize = self.size(t.elem_type)
            if esize == 0:
                return []
            if _is_char(elem):
                return _c_string(bytes(data[: t.nelems]))
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


def _is_char(t: BtfType) -> bool:
    """A 1-byte int spelled 'char' (or marked CHAR): its arrays are strings."""
    return (
        t.kind == KIND_INT
        and t.size == 1
        and (bool(t.encoding & INT_CHAR) or t.name in ("char", "signed char"))
    )


def _c_string(raw: bytes) -> str:
    """A char array as text: up to the first NUL, undecodable bytes escaped."""
    end = raw.find(b"\0")
    return raw[: end if end >= 0 else None].decode("utf-8", errors="backslashreplace")


def load_btf(btf_id: int) -> Btf:
    """Fetch BTF object ``btf_id`` from the kernel (btf__load_from_kernel_by_id) and parse it."""
    handle = _bindings.btf__load_from_kernel_by_id(btf_id)
    try:
        raw = _bindings.btf__raw_data(handle)
    finally:
        _bindings.btf__free(handle)
    return Btf(raw)


class MapDecoder:
    """Decodes one map's keys and values with its BTF; None where the map has no BTF type.

    ``decode_value`` on a per-CPU map takes the whole ``value_stride`` bytes and returns one
    decoded value per possible CPU.
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
        self._slot = percpu_slot(value_size)

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
        return bool(self.key_type_id)

    @property
    def has_value_type(self) -> bool:
        """True when values decode (the map has a BTF value type)."""
        return bool(self.value_type_id)

    @property
    def key_type_name(self) -> str | None:
        return self.btf.type_name(self.key_type_id) if self.btf and self.key_type_id else None

    @property
    def value_type_name(self) -> str | None:
        return self.btf.type_name(self.value_type_id) if self.btf and self.value_type_id else None

    def decode_key(self, key: bytes | memoryview) -> Any:
        """The key as a Python value, or None when the map has no BTF key type."""
        if self.btf is None or not self.key_type_id:
            return None
        return self.btf.decode(self.key_type_id, key)

    def decode_value(self, value: bytes | memoryview) -> Any:
        """The value as a Python value (per-CPU: a list, one per CPU), or None without BTF."""
        if self.btf is None or not self.value_type_id:
            return None
        if not self.percpu:
            return self.btf.decode(self.value_type_id, value)
        view = memoryview(value).cast("B")
        return [
            self.btf.decode(self.value_type_id, view[i * self._slot :]) for i in range(self.ncpus)
        ]

    def decode_values(self, values: Sequence[bytes]) -> list[Any]:
        """decode_value() for each."""
        return [self.decode_value(v) for v in values]


__all__ = ["Btf", "BtfError", "BtfType", "MapDecoder", "Member", "load_btf"]
