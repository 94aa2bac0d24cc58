"""Keys and values as tuples of their fields, a whole buffer at a time, and sample lines.

A map's keys (or values) are read with one ``struct.Struct`` built from the BTF leaves
(``layout``), a user's ``--key-format``, or an unsigned int of the key's size; only bitfields
fall back to ``MapDecoder``, element by element.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..maps import Map
from . import layout
from .config import ConfigError


class Rows:
    """How to read a buffer of keys or values into tuples, one per row, one item per leaf."""

    def __init__(
        self, leaves: Sequence[layout.Leaf], size: int, st: struct.Struct | None, slow: Any
    ) -> None:
        self.leaves = list(leaves)
        self.names = [x.name for x in leaves]
        self.size = size
        self.st = st
        self.slow = slow  # element by element, when struct can't read the fields

    def read(self, buf: Any, count: int) -> list[tuple[Any, ...]]:
        if self.st is not None:
            return list(self.st.iter_unpack(buf[: count * self.size]))
        out = []
        for i in range(count):
            flat = _flatten(self.slow(bytes(buf[i * self.size : (i + 1) * self.size])))
            out.append(tuple(flat.get(n) for n in self.names))
        return out


def _flatten(v: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for k, sub in v.items():
            out.update(_flatten(sub, f"{prefix}_{k}" if prefix and k else prefix or str(k)))
        return out
    if isinstance(v, list):
        out = {}
        for i, sub in enumerate(v):
            out.update(_flatten(sub, f"{prefix}_{i}" if prefix else str(i)))
        return out
    return {prefix: v}


def read_rows(m: Map, what: str, size: int, fmt: str | None, use_btf: bool) -> tuple[Rows, bool]:
    """The Rows of keys or values and whether they came from BTF."""
    if fmt is not None:
        st = struct.Struct(fmt)
        if st.size != (m.key_size if what == "key" else m.value_size):
            raise ConfigError(
                f"--{what}-format {fmt!r} is {st.size} bytes, the map's {what}s are "
                f"{m.key_size if what == 'key' else m.value_size}"
            )
        padded = struct.Struct(st.format + f"{size - st.size}x") if size > st.size else st
        return Rows(layout.format_leaves(fmt, what), size, padded, None), False
    leaves = layout.btf_leaves(m, what) if use_btf else None
    if leaves is not None:
        row = layout.row_struct(leaves, size)
        slow = layout.slow_decoder(m, what) if row is None else None
        leaves = [layout.Leaf(x.name or what, *_rest(x)) for x in leaves]
        return Rows(leaves, size, row, slow), True
    leaf = layout.scalar_leaf(m.key_size if what == "key" else m.value_size, what)
    if leaf is None:
        return Rows(
            [layout.Leaf(what, 0, size, "bytes", f"{size}s")], size, struct.Struct(f"{size}s"), None
        ), False
    return Rows([leaf], size, layout.row_struct([leaf], size), None), False


def _rest(x: layout.Leaf) -> tuple[Any, ...]:
    return (x.offset, x.size, x.kind, x.code, x.enumerators)


def label_text(leaf: layout.Leaf, v: Any) -> str:
    if leaf.kind == "enum" and leaf.enumerators:
        for name, value in leaf.enumerators:
            if value == v:
                return name
    if isinstance(v, bytes):
        if leaf.kind == "string":
            end = v.find(b"\0")
            return v[: end if end >= 0 else None].decode("utf-8", errors="backslashreplace")
        return v.hex()
    if isinstance(v, bool):
        return "1" if v else "0"
    if leaf.kind == "pointer":
        return f"0x{v:x}"
    return str(v)


def line_writer(
    sample: str,
    label_names: Sequence[str],
    order: Sequence[int],
    nkeys: int,
    nvals: int,
    column: int,
) -> Callable[[Iterator[tuple[Any, ...]], Iterator[tuple[Any, ...]]], str]:
    """A function writing one sample line per (key tuple, value tuple) of integers.

    Generated code: one f-string per line is the cheapest way CPython has to write text (about
    twice as fast as %-formatting a tuple). Names are validated metric/label names, so they
    can't break out of the generated string.
    """
    kvars = "".join(f"k{i}, " for i in range(nkeys))
    vvars = "".join(f"v{i}, " for i in range(nvals))
    labels = ",".join(f'{label_names[i]}="{{k{i}}}"' for i in order)
    line = f"{sample}{{{{{labels}}}}} {{v{column}}}\\n" if labels else f"{sample} {{v{column}}}\\n"
    src = (
        "def lines(krows, vrows):\n"
        f"    return ''.join([f'{line}' for ({kvars}), ({vvars}) in zip(krows, vrows)])\n"
    )
    scope: dict[str, Any] = {}
    exec(compile(src, f"<exporter lines {sample}>", "exec"), scope)  # noqa: S102
    writer: Callable[[Iterator[tuple[Any, ...]], Iterator[tuple[Any, ...]]], str] = scope["lines"]
    return writer


__all__ = ["Rows", "label_text", "line_writer", "read_rows"]
