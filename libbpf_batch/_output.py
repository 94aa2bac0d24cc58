"""Entries as the CLI prints them: decoding, bpftool-shaped JSON, CSV, tables and progress."""

from __future__ import annotations

import json
import struct
import sys
import time
from typing import IO, Any

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
class Progress:
    """'read N entries' on stderr, only when it is a terminal and not --quiet."""

    def __init__(self, verb: str, quiet: bool, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.verb = verb
        self.count = 0
        self._last = 0.0

    def add(self, n: int) -> None:
        self.count += n
        if self.enabled and time.monotonic() - self._last > 0.2:
            self._last = time.monotonic()
            self.stream.write(f"\r{PROG}: {self.verb} {self.count:,} entries")
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
    """Turns one map's raw entries into bpftool-shaped dicts, decoded values and numbers.

    Struct formats (``--key-format``/``--value-format``) win over BTF; without either a part
    decodes to MISSING and only its hex is shown.
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

    @staticmethod
    def _struct(fmt: str | None, size: int, option: str, what: str) -> struct.Struct | None:
        if fmt is None:
            return None
        s = struct.Struct(fmt)
        if s.size > size:
            raise UsageError(
                f"{option} {fmt!r} needs {s.size} bytes, the map's {what}s have {size}"
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

    def entry(self, key: bytes, value: bytes) -> dict[str, Any]:
        """One element as ``bpftool -j map dump`` spells it, with ``formatted`` if decoded."""
        out: dict[str, Any] = {"key": hex_list(key)}
        if self.percpu:
            out["values"] = [
                {"cpu": i, "value": hex_list(s)} for i, s in enumerate(self.slots(value))
            ]
        else:
            out["value"] = hex_list(value)
        k, v = self.key(key), self.value(value)
        formatted: dict[str, Any] = {}
        if k is not MISSING:
            formatted["key"] = k
        if v is not MISSING:
            if self.percpu:
                formatted["values"] = [{"cpu": i, "value": x} for i, x in enumerate(v)]
            else:
                formatted["value"] = v
        if formatted:
            out["formatted"] = formatted
        return out

    def numbers(self, value: bytes) -> dict[str, int | float]:
        """The value's numeric fields (per-CPU: summed over CPUs); raw ints as a fallback."""
        decoded = self.value(value)
        if decoded is MISSING:
            if self.value_size not in (1, 2, 4, 8):
                return {}
            return {"value": sum(int.from_bytes(s, "little") for s in self.slots(value))}
        if not self.percpu:
            return numeric_fields(decoded)
        total: dict[str, int | float] = {}
        for cpu_value in decoded:
            for name, n in numeric_fields(cpu_value).items():
                total[name] = total.get(name, 0) + n
        return total

    def key_text(self, key: bytes) -> str:
        k = self.key(key)
        return key.hex(" ") if k is MISSING else _compact(k)


def _compact(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


# -- output writers -----------------------------------------------------------------------
class Writer:
    """Streams entries to ``out`` in one of FORMATS; nothing is held in memory."""

    def __init__(self, fmt: str, f: EntryFormatter, out: IO[str]) -> None:
        self.fmt, self.f, self.out = fmt, f, out
        self.count = 0
        self._csv: Any = None

    def start(self) -> None:
        if self.fmt == "json":
            self.out.write("[")
        elif self.fmt == "csv":
            import csv

            self._csv = csv.writer(self.out, lineterminator="\n")
            header = ["key", "cpu", "value"] if self.f.percpu else ["key", "value"]
            has_key = self.f.key_struct is not None or (
                self.f.decoder is not None and self.f.decoder.has_key_type
            )
            has_value = self.f.value_struct is not None or (
                self.f.decoder is not None and self.f.decoder.has_value_type
            )
            self._decoded = (has_key, has_value)
            header += ["key_decoded"] * has_key + ["value_decoded"] * has_value
            self._csv.writerow(header)

    def write(self, key: bytes, value: bytes) -> None:
        fmt = self.fmt
        if fmt in ("json", "jsonl"):
            text = json.dumps(self.f.entry(key, value), separators=(",", ":"), ensure_ascii=False)
            if fmt == "json":
                self.out.write(("\n" if self.count == 0 else ",\n") + text)
            else:
                self.out.write(text + "\n")
        elif fmt == "csv":
            self._write_csv(key, value)
        else:
            self._write_table(key, value)
        self.count += 1

    def _write_csv(self, key: bytes, value: bytes) -> None:
        has_key, has_value = self._decoded
        k = [_compact(self.f.key(key))] if has_key else []
        if not self.f.percpu:
            v = [_compact(self.f.value(value))] if has_value else []
            self._csv.writerow([key.hex(), value.hex()] + k + v)
            return
        decoded = self.f.value(value) if has_value else None
        for cpu, s in enumerate(self.f.slots(value)):
            v = [_compact(decoded[cpu])] if decoded is not None else []
            self._csv.writerow([key.hex(), cpu, s.hex()] + k + v)

    def _write_table(self, key: bytes, value: bytes) -> None:
        k = self.f.key(key)
        key_text = key.hex(" ") if k is MISSING else _compact(k)
        v = self.f.value(value)
        if v is not MISSING:
            if self.f.percpu:
                value_text = "  ".join(f"cpu{i}: {_compact(x)}" for i, x in enumerate(v))
            else:
                value_text = _compact(v)
        elif self.f.percpu:
            value_text = "  ".join(
                f"cpu{i}: {s.hex(' ')}" for i, s in enumerate(self.f.slots(value))
            )
        else:
            value_text = value.hex(" ")
        self.out.write(f"key: {key_text}  value: {value_text}\n")

    def finish(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "table":
            self.out.write(f"Found {self.count} element{'s' * (self.count != 1)}\n")
        self.out.flush()
