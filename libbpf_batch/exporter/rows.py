"""Keys and values as fields, a whole buffer at a time, and their text.

The fields come from the map's compiled BTF plan (``btf.Plan.fields``: the exporter does not
walk BTF itself), from a user's ``--key-format``/``--value-format``, or, without either, from
the element's size (an unsigned int of 1/2/4/8 bytes, else its bytes). A buffer of elements
reads as one tuple per row (``Rows.read``) or one list per field (``Rows.columns``), and a
column becomes label or sample text in one pass (:func:`label_column`, :func:`value_column`).
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..btf import Field, Plan
from ..errors import BpfError
from ..maps import Map
from . import text
from .config import ConfigError

log = logging.getLogger("libbpf_batch.exporter")

_UINT = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FORMAT_KINDS = {"?": "bool", "f": "float", "d": "float", "e": "float"}
INT_KINDS = frozenset({"uint", "int", "bool"})  # str(v) is their sample text


_Read = Callable[[Any, int], list[tuple[Any, ...]]]


class Rows:
    """How to read a buffer of keys or values: ``fields``, one tuple per row (``read``, or
    lazily ``iter_rows``) or one list per field (``columns``); rows are ``size`` bytes apart."""

    def __init__(
        self,
        fields: Sequence[Field],
        size: int,
        read: _Read,
        columns: Callable[[Any, int], list[list[Any]]] | None = None,
        iter_rows: Callable[[Any, int], Iterable[tuple[Any, ...]]] | None = None,
    ) -> None:
        self.fields = list(fields)
        self.names = [f.name for f in self.fields]
        self.size = size
        self.read = read
        self.iter_rows = iter_rows or read
        self._columns = columns

    def columns(self, buf: Any, count: int) -> list[list[Any]]:
        if self._columns is not None:
            return self._columns(buf, count)
        rows = self.read(buf, count)
        return [list(c) for c in zip(*rows)] if rows else [[] for _ in self.fields]


def read_rows(m: Map, what: str, size: int, fmt: str | None, use_btf: bool) -> tuple[Rows, bool]:
    """The Rows of keys or values (``size`` bytes apart) and whether they came from BTF."""
    part_size = m.key_size if what == "key" else m.value_size
    if fmt is not None:
        st = struct.Struct(fmt)
        if st.size != part_size:
            raise ConfigError(
                f"--{what}-format {fmt!r} is {st.size} bytes, the map's {what}s are {part_size}"
            )
        padded = struct.Struct(st.format + f"{size - st.size}x") if size > st.size else st
        return Rows(format_fields(fmt, what), size, *_unpackers(padded)), False
    plan = _plan(m, what) if use_btf else None
    if plan is not None and plan.fields:
        fields = [f if f.name else Field(what, *_rest(f)) for f in plan.fields]
        return Rows(fields, size, plan.field_values, plan.field_columns, plan.field_rows), True
    code = _UINT.get(part_size)
    if code is None:
        st = struct.Struct(f"{part_size}s{size - part_size}x")
        return Rows([Field(what, 0, part_size, "bytes")], size, *_unpackers(st)), False
    st = struct.Struct(f"<{code}{size - part_size}x")
    return Rows([Field(what, 0, part_size, "uint")], size, *_unpackers(st)), False


def _rest(f: Field) -> tuple[Any, ...]:
    return (f.offset, f.size, f.kind, f.signed, f.enumerators)


def _unpackers(st: struct.Struct) -> tuple[_Read, None, Any]:
    """(read, columns, iter_rows) of a struct format."""
    size = st.size
    return (
        lambda buf, count: list(st.iter_unpack(buf[: count * size])),
        None,
        lambda buf, count: st.iter_unpack(buf[: count * size]),
    )


def _plan(m: Map, what: str) -> Plan | None:
    """The map's compiled plan for its key or value; None without BTF for it."""
    if not m.info.btf_id:
        return None
    try:
        dec = m.decoder()
    except BpfError as e:
        if e.errno != errno.EPERM:
            raise
        # BPF_BTF_GET_FD_BY_ID wants CAP_SYS_ADMIN; with CAP_BPF alone, do without BTF
        log.warning("map %r: no BTF without CAP_SYS_ADMIN (%s); reading it untyped", m.name, e)
        return None
    return dec.key_plan if what == "key" else dec.value_plan


def format_fields(fmt: str, name: str) -> list[Field]:
    """Fields for a user's struct format (``--key-format``/``--value-format``), in order.

    Their offsets are only an order: read them with ``struct.Struct(fmt)`` itself.
    """
    out = []
    for i, code in enumerate(_codes(struct.Struct(fmt).format)):
        kind = _FORMAT_KINDS.get(code[-1])
        if kind is None:
            kind = "string" if code[-1] in "sp" else ("int" if code[-1].islower() else "uint")
        signed = kind == "float" or (kind == "int" and code[-1] != "?")
        out.append(Field(name, i, 0, kind, signed))
    if len(out) > 1:
        out = [Field(f"{name}{i}", *_rest(x)) for i, x in enumerate(out)]
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


# -- text ---------------------------------------------------------------------------------
def label_text(f: Field, v: Any) -> str:
    """One field's value as a label value (not yet escaped)."""
    if f.kind == "enum":
        for name, value in f.enumerators:
            if value == v:
                return name
    if isinstance(v, bytes):
        if f.kind == "string":
            end = v.find(b"\0")
            return v[: end if end >= 0 else None].decode("utf-8", errors="backslashreplace")
        return v.hex()
    if isinstance(v, bool):
        return "1" if v else "0"
    if f.kind == "pointer":
        return f"0x{v:x}"
    return str(v)


def value_column(f: Field, column: list[Any]) -> list[str]:
    """A column of one value field as sample values."""
    if f.kind in INT_KINDS or f.kind == "enum":
        return list(map(str, map(int, column))) if f.kind == "bool" else list(map(str, column))
    return list(map(text.number, column))


def label_writer(
    fields: Sequence[Field], names: Sequence[str], order: Sequence[int]
) -> Callable[[Iterable[tuple[Any, ...]]], list[str]]:
    """A function turning rows of key fields into label texts ``{name="value",...} `` (with
    the space before the sample value), labels in ``order``: one generated f-string per row,
    each field's text by its kind. ``names`` are checked label names (they can't break out
    of the generated code); only char arrays need escaping."""
    ns: dict[str, Any] = {"_esc": text.escape_label, "_label": label_text, "_fields": fields}
    parts = []
    for i in order:
        f, v = fields[i], f"k{i}"
        if f.kind in ("uint", "int"):
            value = f"{{{v}}}"
        elif f.kind == "bool":
            value = f"{{{v}:d}}"
        elif f.kind == "pointer":
            value = f"0x{{{v}:x}}"
        elif f.kind == "enum":
            ns[f"_e{i}"] = {n: name for name, n in reversed(f.enumerators)}  # the first name
            value = f"{{_e{i}.get({v}, {v})}}"
        elif f.kind in ("union", "bytes"):
            value = f"{{{v}.hex()}}"
        else:  # strings, floats
            value = f"{{_esc(_label(_fields[{i}], {v}))}}"
        parts.append(f'{names[i]}="{value}"')
    body = "{{" + ",".join(parts) + "}} " if parts else " "
    target = "(" + "".join(f"k{i}, " for i in range(len(fields))) + ")"
    src = f"def labels(rows):\n    return [f'{body}' for {target} in rows]\n"
    exec(compile(src, "<exporter labels>", "exec"), ns)  # noqa: S102
    writer: Callable[[Iterable[tuple[Any, ...]]], list[str]] = ns["labels"]
    return writer


def sample_lines(sample: str, labels: list[str], values: list[str]) -> str:
    """``sample`` + label text + value, one line per row: laid out with slice assignments
    and joined once (no Python step per row). ``labels`` as label_writer makes them."""
    n = len(values)
    if not n:
        return ""
    parts = [""] * (3 * n)
    parts[0::3] = ["\n" + sample] * n  # each line's newline starts the next
    parts[1::3] = labels
    parts[2::3] = values
    parts[0] = sample
    parts.append("\n")
    return "".join(parts)


__all__ = [
    "INT_KINDS",
    "Rows",
    "format_fields",
    "label_text",
    "label_writer",
    "read_rows",
    "sample_lines",
    "value_column",
]
