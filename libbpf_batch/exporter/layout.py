"""What a map's keys and values hold, as flat fields: the exporter's one reader of BTF.

:func:`btf_leaves` is the single adapter between the exporter and ``btf.py``: it walks the key or
value type once (today's ``Btf.resolve``/``type`` API) and returns its leaves, each with the
:mod:`struct` code that reads it. Rows are then decoded a whole batch at a time with
``struct.iter_unpack`` (:func:`row_struct`), never type by type per element. Bitfields have no
struct code; :func:`slow_decoder` decodes such maps element by element with ``MapDecoder``.
"""

from __future__ import annotations

import errno
import logging
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import btf as _btf
from ..errors import BpfError
from ..maps import Map

log = logging.getLogger("libbpf_batch.exporter")

_UINT = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SINT = {1: "b", 2: "h", 4: "i", 8: "q"}
_FLOAT = {4: "f", 8: "d"}
ORDER = "<" if sys.byteorder == "little" else ">"
_MAX_LEAVES = 4096  # a huge array value is not a set of metrics


@dataclass(frozen=True)
class Leaf:
    """One field: its flattened name ('' for a scalar), offset, size, kind and struct code.

    ``kind`` is uint, int, bool, float, enum, string, pointer, union or bitfield; ``code`` is
    '' where :mod:`struct` can't read it (bitfield).
    """

    name: str
    offset: int
    size: int
    kind: str
    code: str
    enumerators: tuple[tuple[str, int], ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind in ("uint", "int", "bool", "float", "enum")

    @property
    def signed(self) -> bool:
        return self.code in ("b", "h", "i", "q", "f", "d")


def btf_leaves(m: Map, what: str) -> list[Leaf] | None:
    """The leaves of the map's key (``what='key'``) or value type; None without BTF for it."""
    info = m.info
    type_id = info.btf_key_type_id if what == "key" else info.btf_value_type_id
    if not info.btf_id or not type_id:
        return None
    try:
        b = _btf.load_btf(info.btf_id)
    except BpfError as e:
        if e.errno != errno.EPERM:
            raise
        # BPF_BTF_GET_FD_BY_ID wants CAP_SYS_ADMIN; with CAP_BPF alone, do without BTF
        log.warning("map %r: no BTF without CAP_SYS_ADMIN (%s); reading it untyped", m.name, e)
        return None
    out: list[Leaf] = []
    _walk(b, type_id, "", 0, out, 0)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix and name else prefix or name


def _walk(b: _btf.Btf, type_id: int, name: str, offset: int, out: list[Leaf], depth: int) -> None:
    if depth > 32 or len(out) > _MAX_LEAVES:
        raise _btf.BtfError(f"type {type_id}: too deeply nested or too many fields to export")
    t = b.resolve(type_id)
    if t.kind == _btf.KIND_INT:
        if t.encoding & _btf.INT_BOOL:
            out.append(Leaf(name, offset, t.size, "bool", "?" if t.size == 1 else _UINT[t.size]))
        elif t.size in _UINT and t.int_offset == 0 and t.bits == 8 * t.size:
            signed = bool(t.encoding & _btf.INT_SIGNED)
            code = (_SINT if signed else _UINT)[t.size]
            out.append(Leaf(name, offset, t.size, "int" if signed else "uint", code))
        else:
            out.append(Leaf(name, offset, t.size, "bitfield", ""))
    elif t.kind in (_btf.KIND_ENUM, _btf.KIND_ENUM64):
        code = (_SINT if t.kind_flag else _UINT).get(t.size, "")
        out.append(Leaf(name, offset, t.size, "enum", code, t.enumerators))
    elif t.kind == _btf.KIND_FLOAT:
        out.append(Leaf(name, offset, t.size, "float", _FLOAT.get(t.size, "")))
    elif t.kind == _btf.KIND_PTR:
        out.append(Leaf(name, offset, 8, "pointer", "Q"))
    elif t.kind == _btf.KIND_ARRAY:
        elem = b.resolve(t.elem_type)
        esize = b.size(t.elem_type)
        is_char = (
            elem.kind == _btf.KIND_INT
            and elem.size == 1
            and (bool(elem.encoding & _btf.INT_CHAR) or elem.name in ("char", "signed char"))
        )
        if is_char:
            out.append(Leaf(name, offset, t.nelems, "string", f"{t.nelems}s"))
        else:
            for i in range(t.nelems):
                _walk(b, t.elem_type, _join(name, str(i)), offset + i * esize, out, depth + 1)
    elif t.kind == _btf.KIND_STRUCT:
        for mem in t.members:
            sub = _join(name, mem.name)
            if mem.bitfield_size or mem.bit_offset % 8:
                out.append(Leaf(sub, offset + mem.bit_offset // 8, 0, "bitfield", ""))
            else:
                _walk(b, mem.type_id, sub, offset + mem.bit_offset // 8, out, depth + 1)
    elif t.kind == _btf.KIND_UNION:
        out.append(Leaf(name, offset, t.size, "union", f"{t.size}s"))
    else:
        out.append(Leaf(name, offset, b.size(type_id), "union", f"{b.size(type_id)}s"))


def row_struct(leaves: Sequence[Leaf], size: int) -> struct.Struct | None:
    """A Struct reading ``leaves`` (in this order) from a ``size``-byte row; None if it can't."""
    order = sorted(range(len(leaves)), key=lambda i: leaves[i].offset)
    if order != list(range(len(leaves))):
        return None
    fmt, pos = ORDER, 0
    for leaf in leaves:
        if not leaf.code or leaf.offset < pos:
            return None
        if leaf.offset > pos:
            fmt += f"{leaf.offset - pos}x"
        fmt += leaf.code
        pos = leaf.offset + struct.calcsize(ORDER + leaf.code)
    if pos > size:
        return None
    if pos < size:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt)


def scalar_leaf(size: int, name: str = "") -> Leaf | None:
    """The leaf of an unsigned integer of ``size`` bytes (maps without BTF); None if no such int."""
    code = _UINT.get(size)
    return Leaf(name, 0, size, "uint", code) if code else None


def format_leaves(fmt: str, name: str) -> list[Leaf]:
    """Leaves for a user's struct format (``--key-format``/``--value-format``), in order.

    Their offsets are only an order: read them with ``struct.Struct(fmt)`` itself.
    """
    s = struct.Struct(fmt)
    out = []
    for i, code in enumerate(_codes(s.format)):
        kind = {"?": "bool", "f": "float", "d": "float", "e": "float"}.get(code[-1])
        if kind is None:
            kind = "string" if code[-1] in "sp" else ("int" if code[-1].islower() else "uint")
        out.append(Leaf(name, i, 0, kind, code))
    if len(out) > 1:
        out = [Leaf(f"{name}{i}", x.offset, 0, x.kind, x.code) for i, x in enumerate(out)]
    return out


def _codes(fmt: str) -> list[str]:
    """The codes that produce a value: '2I' is two 'I', '16s' one, 'x' none."""
    out, count = [], ""
    for c in fmt.lstrip("<>=!@"):
        if c.isdigit():
            count += c
            continue
        if c in "sp":
            out.append(f"{count}{c}")
        elif c != "x":
            out.extend(c * int(count or 1))
        count = ""
    return out


def slow_decoder(m: Map, what: str) -> Callable[[bytes], Any]:
    """Decode one key or one value (one CPU's slot) with ``MapDecoder``: for bitfields."""
    dec = m.decoder()
    if what == "key":
        return dec.decode_key
    btf, type_id = dec.btf, dec.value_type_id
    assert btf is not None
    return lambda data: btf.decode(type_id, data)


__all__ = ["Leaf", "btf_leaves", "format_leaves", "row_struct", "scalar_leaf", "slow_decoder"]
