"""Entries as the CLI prints them: decoding, bpftool-shaped JSON, CSV, tables and progress."""

from __future__ import annotations

import binascii
import csv
import io
import json
import os
import struct
import sys
import time
from typing import IO, Any, Union

from .batch import Batch
from .btf import json_text
from .errors import BpfError
from .maps import Map

PROG = "libbpf-batch"
FORMATS = ("table", "json", "csv", "jsonl")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""

    status = 1


class UsageError(CliError):
    """A bad argument found after parsing (it needed the map): exit status 2."""

    status = 2


class _Missing:
    """No decoding for this part (no BTF type and no struct format)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# -- progress -----------------------------------------------------------------------------
def same_terminal(a: IO[str], b: IO[str]) -> bool:
    """True when both streams are the same terminal (a shell's default)."""
    try:
        if not (a.isatty() and b.isatty()):
            return False
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


class Progress:
    """'read N entries' on stderr: only when it is a terminal, the data does not go to that
    same terminal (the two would mix on screen), and not --quiet."""

    def __init__(
        self, verb: str, quiet: bool, stream: IO[str] | None = None, data: IO[str] | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        data = data or sys.stdout
        self.enabled = not quiet and self.stream.isatty() and not same_terminal(self.stream, data)
        self.verb = verb
        self.count = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        self.count += n
        if self.enabled and time.monotonic() - self._last > 0.2:
            self._last = time.monotonic()
            self.stream.write(f"\r{PROG}: {self.verb} {self.count:,} entries\x1b[K")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- decoding entries ---------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """A struct-module value made JSON-friendly: bytes as C strings, tuples as lists."""
    if isinstance(v, bytes):
        end = v.find(b"\0")
        return v[: end if end >= 0 else None].decode("utf-8", errors="backslashreplace")
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def hex_list(data: bytes) -> list[str]:
    """bpftool's JSON spelling of bytes: ["0x01", "0x00", ...]."""
    return [f"0x{b:02x}" for b in data]


def numeric_fields(v: Any, prefix: str = "") -> dict[str, int | float]:
    """The numbers in a decoded value, by dotted path ('value' for a bare number)."""
    if isinstance(v, bool):
        return {prefix or "value": int(v)}
    if isinstance(v, (int, float)):
        return {prefix or "value": v}
    out: dict[str, int | float] = {}
    if isinstance(v, dict):
        for k, sub in v.items():
            out.update(numeric_fields(sub, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(v, (list, tuple)):
        for i, sub in enumerate(v):
            out.update(numeric_fields(sub, f"{prefix}.{i}" if prefix else str(i)))
    return out  # strings (char arrays, enum names) are not numbers


class EntryFormatter:
    """One map's entries as bpftool-shaped text, decoded values and numbers.

    Struct formats (``--key-format``/``--value-format``) win over BTF; without either a part
    decodes to MISSING and only its hex is shown. The per-entry methods (``key``, ``value``,
    ``numbers``, ``key_text``) serve watch's top rows and the exporter; whole batches go
    through ``key_texts``/``value_texts``/``batch_numbers``.
    """

    def __init__(
        self,
        m: Map,
        key_format: str | None = None,
        value_format: str | None = None,
        btf: bool = True,
    ) -> None:
        self.map = m
        self.key_size, self.value_size = m.key_size, m.value_size
        self.percpu, self.ncpus = m.is_percpu, m.ncpus
        self.slot = m.layout.slot
        self.key_struct = self._struct(key_format, m.key_size, "--key-format", "key")
        self.value_struct = self._struct(value_format, m.value_size, "--value-format", "value")
        self.decoder: Any = None
        if btf and m.info.btf_id and not (self.key_struct and self.value_struct):
            try:
                self.decoder = m.decoder()
            except (BpfError, ValueError) as e:  # no permission for the BTF, or odd BTF
                print(
                    f"{PROG}: warning: map {m.name!r} (id {m.id}): BTF not decoded: {e}",
                    file=sys.stderr,
                )
        self.has_key = self.key_struct is not None or bool(
            self.decoder is not None and self.decoder.has_key_type
        )
        self.has_value = self.value_struct is not None or bool(
            self.decoder is not None and self.decoder.has_value_type
        )
        self._raw_decoder: Any = None

    @staticmethod
    def _struct(fmt: str | None, size: int, option: str, what: str) -> struct.Struct | None:
        if fmt is None:
            return None
        s = struct.Struct(fmt)
        if s.size > size:
            raise UsageError(
                f"{option} {fmt!r} needs {s.size} bytes, the map's {what}s have {size}"
            )
        if s.size < size:  # a short format would silently show part of each element
            raise UsageError(
                f"{option} {fmt!r} covers {s.size} bytes, the map's {what}s have {size} "
                f"(pad with 'x' to skip bytes: {fmt + f'{size - s.size}x'!r})"
            )
        return s

    def _unpack(self, s: struct.Struct, data: bytes) -> Any:
        fields = s.unpack_from(data)
        return _plain(fields[0] if len(fields) == 1 else fields)

    def slots(self, value: bytes) -> list[bytes]:
        """Per-CPU: each CPU's value_size bytes; otherwise [value]."""
        if not self.percpu:
            return [value]
        return [value[i * self.slot : i * self.slot + self.value_size] for i in range(self.ncpus)]

    # -- one entry -----------------------------------------------------------------------
    def key(self, key: bytes) -> Any:
        if self.key_struct is not None:
            return self._unpack(self.key_struct, key)
        if self.decoder is not None and self.decoder.has_key_type:
            return self.decoder.decode_key(key)
        return MISSING

    def value(self, value: bytes) -> Any:
        """The decoded value (per-CPU: a list, one per CPU), or MISSING."""
        if self.value_struct is not None:
            decoded = [self._unpack(self.value_struct, s) for s in self.slots(value)]
            return decoded if self.percpu else decoded[0]
        if self.decoder is not None and self.decoder.has_value_type:
            return self.decoder.decode_value(value)
        return MISSING

    def numbers(self, value: bytes) -> dict[str, int | float]:
        """The value's numeric fields (per-CPU: summed over CPUs); raw ints as a fallback."""
        names = self.number_names()
        if self.value_struct is None:
            return dict(zip(names, self.batch_numbers(value, 1)[0]))
        decoded = self.value(value)
        if not self.percpu:
            return numeric_fields(decoded)
        total: dict[str, int | float] = {}
        for cpu_value in decoded:
            for name, n in numeric_fields(cpu_value).items():
                total[name] = total.get(name, 0) + n
        return total

    def key_text(self, key: bytes) -> str:
        """The key as the table shows it: decoded (compact JSON, text bare) or hex."""
        k = self.key(key)
        return key.hex(" ") if k is MISSING else _compact(k)

    # -- whole batches -------------------------------------------------------------------
    def key_texts(self, batch: Batch) -> list[str] | None:
        """Each key decoded, as compact JSON; None when keys don't decode."""
        if self.key_struct is not None:
            return [json_text(self._unpack(self.key_struct, k)) for k in batch.key_list()]
        if self.decoder is not None and self.decoder.has_key_type:
            texts: list[str] = self.decoder.json_keys(batch.keys, batch.count)
            return texts
        return None

    def value_texts(self, batch: Batch) -> list[Any] | None:
        """Each value decoded, as compact JSON (per-CPU: a tuple of one text per CPU); None
        when values don't decode."""
        if self.value_struct is not None:
            decoded = [self.value(v) for v in batch.value_list()]
            if self.percpu:
                return [tuple(map(json_text, cpus)) for cpus in decoded]
            return [json_text(v) for v in decoded]
        if self.decoder is not None and self.decoder.has_value_type:
            if self.percpu:
                slots: list[Any] = self.decoder.json_value_slots(batch.values, batch.count)
                return slots
            texts: list[Any] = self.decoder.json_values(batch.values, batch.count)
            return texts
        return None

    def number_names(self) -> tuple[str, ...]:
        """The names of the value's numbers (batch_numbers' tuple order)."""
        if self.value_struct is None and self.decoder is not None and self.has_value:
            names: tuple[str, ...] = self.decoder.value_number_names
            return names
        if self.value_struct is None:
            return ("value",) if self.value_size in (1, 2, 4, 8) else ()
        zero = self.value(bytes(self.map.value_stride))
        return tuple(numeric_fields(zero[0] if self.percpu else zero))

    def batch_numbers(self, values: Any, count: int) -> list[tuple[int | float, ...]]:
        """Each value's numbers, a tuple in number_names() order (per-CPU: summed)."""
        if self.value_struct is not None:
            names = self.number_names()
            stride = self.map.value_stride
            view = memoryview(values).cast("B")
            rows = [self.numbers(bytes(view[i * stride : (i + 1) * stride])) for i in range(count)]
            return [tuple(r.get(n, 0) for n in names) for r in rows]
        decoder = self.decoder if self.has_value else self._raw()
        rows_: list[tuple[int | float, ...]] = decoder.value_numbers(values, count)
        return rows_

    def key_values(self, batch: Batch) -> list[Any]:
        """Each key as a Python value (undecoded: an int for 1/2/4/8 bytes, else bytes)."""
        if self.key_struct is not None:
            return [self._unpack(self.key_struct, k) for k in batch.key_list()]
        decoder = self.decoder if self.decoder is not None and self.has_key else self._raw()
        keys: list[Any] = decoder.decode_keys(batch.keys, batch.count)
        return keys

    def _raw(self) -> Any:
        """A decoder without BTF: little-endian ints or bytes."""
        if self._raw_decoder is None:
            from .btf import MapDecoder

            self._raw_decoder = MapDecoder(
                None,
                0,
                0,
                key_size=self.key_size,
                value_size=self.value_size,
                ncpus=self.ncpus,
                percpu=self.percpu,
            )
        return self._raw_decoder


def _compact(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json_text(v)


# -- output writers -----------------------------------------------------------------------
_Part = Union[str, tuple[int, int]]  # literal text, or (0 key / 1 value, byte index)


class HexTemplate:
    """Fixed-width text for every entry of a batch at once.

    An entry's text is literal text with the two hex digits of chosen key and value bytes at
    fixed places, so a batch renders as the template repeated ``count`` times with each
    digit column filled by one strided copy from ``hexlify(buffer)``: a few C-level copies
    per batch, none per entry.
    """

    def __init__(self, parts: list[_Part], key_size: int, value_stride: int) -> None:
        template = bytearray()
        self.slots: list[tuple[int, int, int]] = []
        for p in parts:
            if isinstance(p, str):
                template += p.encode()
            else:
                self.slots.append((len(template), p[0], p[1]))
                template += b"00"
        self.template = bytes(template)
        self.width = len(template)
        self.strides = (key_size, value_stride)

    def render(self, keys: Any, values: Any, count: int) -> bytearray:
        ks, vs = self.strides
        hexes = (binascii.hexlify(keys[: count * ks]), binascii.hexlify(values[: count * vs]))
        out = bytearray(self.template) * count
        w = self.width
        for pos, src, j in self.slots:
            h, step = hexes[src], 2 * self.strides[src]
            out[pos::w] = h[2 * j :: step]
            out[pos + 1 :: w] = h[2 * j + 1 :: step]
        return out


_CSV_MARKS = ("\x01", "\x02", "\x03")


def _hex_items(src: int, start: int, n: int) -> list[_Part]:
    """bpftool's hex list items: "0x01","0x02" (without the brackets)."""
    parts: list[_Part] = []
    for j in range(n):
        parts += ['"0x' if j == 0 else '","0x', (src, start + j)]
    return parts + ['"'] if n else []


def _hex_spaced(src: int, start: int, n: int) -> list[_Part]:
    parts: list[_Part] = []
    for j in range(n):
        parts += ([" "] if j else []) + [(src, start + j)]
    return parts


def _hex_plain(src: int, start: int, n: int) -> list[_Part]:
    return [(src, start + j) for j in range(n)]


def _value_parts(f: EntryFormatter, sep: str) -> list[_Part]:
    """A value as spaced hex; per-CPU: ``cpu0: .. <sep>cpu1: ..``."""
    if not f.percpu:
        return _hex_spaced(1, 0, f.value_size)
    parts: list[_Part] = []
    for c in range(f.ncpus):
        parts += [f"{sep if c else ''}cpu{c}: "] + _hex_spaced(1, c * f.slot, f.value_size)
    return parts


def _entry_parts(fmt: str, f: EntryFormatter) -> list[_Part]:
    """One entry's fixed-width text in ``fmt``. Decoded entries (json, jsonl) stop after the
    hex, at a newline to split on, for "formatted" to follow."""
    ks, vs, slot = f.key_size, f.value_size, f.slot
    cpus = range(f.ncpus) if f.percpu else range(0)
    decoded = f.has_key or f.has_value
    parts: list[_Part] = []
    if fmt in ("json", "jsonl"):
        if fmt == "json" and not decoded:  # entries after the first follow a comma
            parts.append(",\n")
        parts += ['{"key":['] + _hex_items(0, 0, ks)
        if f.percpu:
            parts.append('],"values":[')
            for c in cpus:
                parts += [("," if c else "") + f'{{"cpu":{c},"value":[']
                parts += _hex_items(1, c * slot, vs) + ["]}"]
            parts.append("]")
        else:
            parts += ['],"value":['] + _hex_items(1, 0, vs) + ["]"]
        parts.append("\n" if decoded else "}\n" if fmt == "jsonl" else "}")
    elif fmt == "csv":
        for c in cpus:
            parts += _hex_plain(0, 0, ks) + [f",{c},"] + _hex_plain(1, c * slot, vs) + ["\n"]
        if not f.percpu:
            parts += _hex_plain(0, 0, ks) + [","] + _hex_plain(1, 0, vs) + ["\n"]
    else:
        parts += ["key: "] + _hex_spaced(0, 0, ks) + ["  value: "] + _value_parts(f, "  ")
        parts.append("\n")
    return parts


class Writer:
    """Streams batches to ``out`` in one of FORMATS, formatting each batch as a whole.

    Memory is bounded by the batch: each batch's text is written before the next is read.
    """

    def __init__(self, fmt: str, f: EntryFormatter, out: IO[str], pretty: bool = False) -> None:
        self.fmt, self.f, self.out = fmt, f, out
        self.pretty = pretty and fmt == "json"  # -p: for people, not for speed
        self.count = 0
        self._raw: IO[bytes] | None = getattr(out, "buffer", None)
        ks, stride = f.key_size, f.map.value_stride
        self._template = HexTemplate(_entry_parts(fmt, f), ks, stride)
        self._key_hex = HexTemplate(_hex_spaced(0, 0, ks) + ["\n"], ks, stride)
        self._value_hex = HexTemplate(_value_parts(f, "  ") + ["\n"], ks, stride)

    def _write(self, data: bytes | bytearray) -> None:
        if self._raw is not None:
            self._raw.write(data)
        else:
            self.out.write(data.decode())

    def start(self) -> None:
        self.out.flush()  # text written before (none, normally) comes first
        if self.fmt == "json":
            self._write(b"[")
        elif self.fmt == "csv":
            header = ["key", "cpu", "value"] if self.f.percpu else ["key", "value"]
            header += ["key_decoded"] * self.f.has_key + ["value_decoded"] * self.f.has_value
            self._write((",".join(header) + "\n").encode())

    def write_batch(self, batch: Batch) -> None:
        """Format and write every entry of ``batch``."""
        if not batch.count:
            return
        if not self.pretty:
            self._write_batch(batch)
            return
        raw, self._raw = self._raw, io.BytesIO()
        try:
            self._write_batch(batch)
            text = self._raw.getvalue().decode()
        finally:
            self._raw = raw
        entries = json.loads("[" + text.lstrip(",\n") + "]")
        lead = ",\n" if self.count > batch.count else "\n"
        self._write((lead + ",\n".join(json.dumps(e, indent=4) for e in entries)).encode())

    def render(self, batch: Batch) -> bytes:
        """What write_batch() would write for ``batch``, returned instead (drain writes it
        with a counted write, see entries_within)."""
        raw, self._raw = self._raw, io.BytesIO()
        try:
            self.write_batch(batch)
            return self._raw.getvalue()
        finally:
            self._raw = raw

    def entries_within(self, batch: Batch, count_before: int, nbytes: int) -> int:
        """How many of ``batch``'s entries the first ``nbytes`` of its render() hold whole.

        Rendered again entry by entry (as they were after ``count_before`` entries), which
        gives the same text: only for the rare write that a reader or a signal cut short.
        """
        saved, self.count = self.count, count_before
        ks, vs = batch.key_size, batch.value_stride
        keys, values = memoryview(batch.keys).cast("B"), memoryview(batch.values).cast("B")
        try:
            size = 0
            for i in range(batch.count):
                one = Batch(batch.layout, 1, keys[i * ks : (i + 1) * ks],
                            values[i * vs : (i + 1) * vs], decoder=batch.decoder)  # fmt: skip
                size += len(self.render(one))
                if size > nbytes:
                    return i
            return batch.count
        finally:
            self.count = saved

    def _write_batch(self, batch: Batch) -> None:
        n = batch.count
        f = self.f
        if not (f.has_key or f.has_value):
            text = self._template.render(batch.keys, batch.values, n)
            if self.fmt == "json" and self.count == 0:
                del text[0]  # the first entry follows "[" with no comma
            self._write(text)
        elif self.fmt in ("json", "jsonl"):
            self._write_json(batch)
        elif self.fmt == "csv":
            self._write_csv(batch)
        else:
            self._write_table(batch)
        self.count += n

    def _fixed(self, template: HexTemplate, batch: Batch) -> list[str]:
        """Each entry's fixed text from a template ending in a newline, one str per entry."""
        return template.render(batch.keys, batch.values, batch.count).decode().split("\n")[:-1]

    def _formatted_values(self, batch: Batch) -> list[str] | None:
        texts = self.f.value_texts(batch)
        if texts is None or not self.f.percpu:
            return texts
        cpus = ",".join(f'{{"cpu":{c},"value":%s}}' for c in range(self.f.ncpus))
        return list(map(f"[{cpus}]".__mod__, texts))

    def _joint(self) -> Any:
        """The decoder, when BTF decodes both key and value of a map that isn't per-CPU:
        then each entry's text is made in one step (MapDecoder.json_lines)."""
        f = self.f
        if f.key_struct or f.value_struct or f.percpu or f.decoder is None:
            return None
        return f.decoder if f.decoder.has_key_type and f.decoder.has_value_type else None

    def _write_json(self, batch: Batch) -> None:
        fixed = self._fixed(self._template, batch)
        joint = self._joint()
        if joint is not None:
            between = (',"formatted":{"key":', ',"value":', "}}")
            lines: Any = joint.json_lines(fixed, batch.keys, batch.values, batch.count, between)
            if self.fmt == "jsonl":
                self._write(("\n".join(lines) + "\n").encode())
            else:
                self._write(((",\n" if self.count else "\n") + ",\n".join(lines)).encode())
            return
        keys, values = self.f.key_texts(batch), self._formatted_values(batch)
        vname = "values" if self.f.percpu else "value"
        if keys is not None and values is not None:
            lines = map(
                f'%s,"formatted":{{"key":%s,"{vname}":%s}}}}'.__mod__, zip(fixed, keys, values)
            )
        elif keys is not None:
            lines = map('%s,"formatted":{"key":%s}}'.__mod__, zip(fixed, keys))
        else:
            assert values is not None
            lines = map(f'%s,"formatted":{{"{vname}":%s}}}}'.__mod__, zip(fixed, values))
        if self.fmt == "jsonl":
            self._write(("\n".join(lines) + "\n").encode())
        else:
            self._write(((",\n" if self.count else "\n") + ",\n".join(lines)).encode())

    def _write_csv(self, batch: Batch) -> None:
        f, n = self.f, batch.count
        joint = self._joint()
        if joint is not None:
            # Both decoded columns are JSON, quoted for CSV by doubling every quote in one
            # pass over the batch's text: the columns are joined with control characters
            # JSON never holds raw (json.dumps escapes them), swapped for the quoted
            # separators afterwards.
            fixed = self._fixed(self._template, batch)
            lines = joint.json_lines(fixed, batch.keys, batch.values, n, _CSV_MARKS)
            text = "".join(lines).replace('"', '""')
            for mark, sep in zip(_CSV_MARKS, (',"', '","', '"\n')):
                text = text.replace(mark, sep)
            self._write(text.encode())
            return
        keys = f.key_texts(batch) if f.has_key else None
        values = f.value_texts(batch) if f.has_value else None
        key_hex = batch.keys[: n * f.key_size].hex(" ", f.key_size).split(" ")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not f.percpu:
            value_hex = batch.values[: n * f.value_size].hex(" ", f.value_size).split(" ")
            columns: list[Any] = [key_hex, value_hex]
            columns += [keys] if keys is not None else []
            columns += [values] if values is not None else []
            w.writerows(zip(*columns))
        else:
            stride, slot, vs = f.map.value_stride, f.slot, f.value_size
            for i in range(n):
                for c in range(f.ncpus):
                    at = i * stride + c * slot
                    row = [key_hex[i], c, batch.values[at : at + vs].hex()]
                    row += [keys[i]] if keys is not None else []
                    row += [values[i][c]] if values is not None else []
                    w.writerow(row)
        self._write(buf.getvalue().encode())

    def _write_table(self, batch: Batch) -> None:
        f = self.f
        joint = self._joint()
        if joint is not None:
            between = ("key: ", "  value: ", "\n")
            lines = joint.json_lines(None, batch.keys, batch.values, batch.count, between)
            self._write("".join(lines).encode())
            return
        keys = f.key_texts(batch) or self._fixed(self._key_hex, batch)
        texts = f.value_texts(batch)
        if texts is None:
            values = self._fixed(self._value_hex, batch)
        elif f.percpu:
            cpus = "  ".join(f"cpu{c}: %s" for c in range(f.ncpus))
            values = list(map(cpus.__mod__, texts))
        else:
            values = texts
        self._write(("".join(map("key: %s  value: %s\n".__mod__, zip(keys, values)))).encode())

    def finish(self) -> None:
        if self.fmt == "json":
            self._write(b"\n]\n" if self.count else b"]\n")
        elif self.fmt == "table":
            self._write(f"Found {self.count} element{'s' * (self.count != 1)}\n".encode())
        if self._raw is not None:
            self._raw.flush()
        self.out.flush()
