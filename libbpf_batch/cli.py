"""The ``libbpf-batch`` command: list, show, dump, drain, watch and export BPF maps, batched.

Maps are named as bpftool names them: ``id 42``, ``pinned /sys/fs/bpf/counts``, ``name counts``.
Exit codes: 0 success, 1 operational error (one line naming the map and the errno), 2 usage
error; 130 when interrupted (except watch and export, where Ctrl-C is the way out and exits 0).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from .errors import BpfError
from .maps import UNDELETABLE_TYPES, Map, MapInfo, map_ids

PROG = "libbpf-batch"
SPEC_KINDS = ("id", "pinned", "name")
FORMATS = ("table", "json", "csv", "jsonl")
DEFAULT_LISTEN = "127.0.0.1:9435"


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


# -- map specifiers -----------------------------------------------------------------------
def parse_spec(kind: str, value: str) -> tuple[str, Any]:
    """Check a ``KIND VALUE`` map specifier; raises UsageError when it is malformed."""
    if kind not in SPEC_KINDS:
        raise UsageError(f"bad map specifier {kind!r} {value!r}: expected 'id N', "
                         "'pinned PATH' or 'name NAME'")
    if kind == "id":
        try:
            map_id = int(value, 0)
        except ValueError:
            raise UsageError(f"bad map id {value!r}: expected a number") from None
        if not 0 < map_id < 2**32:
            raise UsageError(f"bad map id {value!r}: out of range")
        return kind, map_id
    if not value:
        raise UsageError(f"bad map specifier: empty {kind}")
    return kind, value


def open_map(kind: str, value: Any) -> Map:
    """Open the map a (checked) specifier names; a name must match exactly one map."""
    if kind == "id":
        return Map.from_id(value)
    if kind == "pinned":
        return Map.open_pinned(value)
    matches = [info for info in _all_maps() if info.name == value]
    if not matches:
        raise CliError(f"no map named {value!r}")
    if len(matches) > 1:
        listed = ", ".join(f"id {i.id} ({i.type_name})" for i in matches)
        raise CliError(f"map name {value!r} is ambiguous: {listed}; use 'id N'")
    return Map.from_id(matches[0].id)


def _all_maps() -> Iterator[MapInfo]:
    """The info of every map on the host; maps freed while we look are skipped."""
    for map_id in map_ids():
        try:
            with Map.from_id(map_id) as m:
                yield m.info
        except FileNotFoundError:
            continue


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

    def __init__(self, m: Map, key_format: str | None = None,
                 value_format: str | None = None, btf: bool = True) -> None:
        self.map = m
        self.key_size, self.value_size = m.key_size, m.value_size
        self.percpu, self.ncpus = m.is_percpu, m.ncpus
        self.slot = (m.value_size + 7) & ~7 if m.is_percpu else m.value_size
        self.key_struct = self._struct(key_format, m.key_size, "--key-format", "key")
        self.value_struct = self._struct(value_format, m.value_size, "--value-format", "value")
        self.decoder: Any = None
        if btf and m.info.btf_id and not (self.key_struct and self.value_struct):
            try:
                self.decoder = m.decoder()
            except (BpfError, ValueError) as e:  # no permission for the BTF, or odd BTF
                print(f"{PROG}: warning: map {m.name!r} (id {m.id}): BTF not decoded: {e}",
                      file=sys.stderr)

    @staticmethod
    def _struct(fmt: str | None, size: int, option: str, what: str) -> struct.Struct | None:
        if fmt is None:
            return None
        s = struct.Struct(fmt)
        if s.size > size:
            raise UsageError(f"{option} {fmt!r} needs {s.size} bytes, the map's {what}s "
                             f"have {size}")
        return s

    def _unpack(self, s: struct.Struct, data: bytes) -> Any:
        fields = s.unpack_from(data)
        return _plain(fields[0] if len(fields) == 1 else fields)

    def slots(self, value: bytes) -> list[bytes]:
        """Per-CPU: each CPU's value_size bytes; otherwise [value]."""
        if not self.percpu:
            return [value]
        return [value[i * self.slot: i * self.slot + self.value_size]
                for i in range(self.ncpus)]

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
            out["values"] = [{"cpu": i, "value": hex_list(s)}
                             for i, s in enumerate(self.slots(value))]
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
                self.f.decoder is not None and self.f.decoder.has_key_type)
            has_value = self.f.value_struct is not None or (
                self.f.decoder is not None and self.f.decoder.has_value_type)
            self._decoded = (has_key, has_value)
            header += ["key_decoded"] * has_key + ["value_decoded"] * has_value
            self._csv.writerow(header)

    def write(self, key: bytes, value: bytes) -> None:
        fmt = self.fmt
        if fmt in ("json", "jsonl"):
            text = json.dumps(self.f.entry(key, value), separators=(",", ":"),
                              ensure_ascii=False)
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
            value_text = "  ".join(f"cpu{i}: {s.hex(' ')}"
                                   for i, s in enumerate(self.f.slots(value)))
        else:
            value_text = value.hex(" ")
        self.out.write(f"key: {key_text}  value: {value_text}\n")

    def finish(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")
        elif self.fmt == "table":
            self.out.write(f"Found {self.count} element{'s' * (self.count != 1)}\n")
        self.out.flush()


# -- subcommands --------------------------------------------------------------------------
def _map_from_args(args: argparse.Namespace) -> Map:
    kind, value = parse_spec(args.map_kind, args.map_value)
    return open_map(kind, value)


def _flags_text(flags: int) -> str:
    return f"{flags:#x}"


def _info_dict(info: MapInfo) -> dict[str, Any]:
    return {"id": info.id, "type": info.type_name, "name": info.name,
            "key_size": info.key_size, "value_size": info.value_size,
            "max_entries": info.max_entries, "flags": info.map_flags, "btf_id": info.btf_id}


def _count_entries(m: Map, progress: Progress) -> int | None:
    try:
        total = 0
        for batch in m.batches(copy=False):
            total += batch.count
            progress.add(batch.count)
        return total
    except (BpfError, ValueError):  # a type user space can't read (ringbuf, queue, ...)
        return None


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    progress = Progress("counted", args.quiet)
    for map_id in map_ids():
        try:
            m = Map.from_id(map_id)
        except FileNotFoundError:
            continue  # freed since bpf_map_get_next_id
        with m:
            row = _info_dict(m.info)
            if args.count:
                row["entries"] = _count_entries(m, progress)
        rows.append(row)
    progress.done()
    out = sys.stdout
    if args.format == "json":
        json.dump(rows, out)
        out.write("\n")
        return 0
    cols = ["id", "type", "name", "key_size", "value_size", "max_entries", "flags"]
    cols += ["entries"] if args.count else []
    heads = ["ID", "TYPE", "NAME", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS", "ENTRIES"]
    table = [[("-" if r[c] is None else _flags_text(r[c]) if c == "flags" else str(r[c]))
              for c in cols] for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads[:len(cols)])]
    for line in [heads[:len(cols)]] + table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _map_from_args(args) as m:
        info = m.info
        data = _info_dict(info)
        data.update(btf_key_type_id=info.btf_key_type_id,
                    btf_value_type_id=info.btf_value_type_id, map_extra=info.map_extra,
                    value_stride=m.value_stride, ncpus=m.ncpus)
        key_type = value_type = None
        if info.btf_id:
            try:
                decoder = m.decoder()
                key_type, value_type = decoder.key_type_name, decoder.value_type_name
            except (BpfError, ValueError):
                pass
        data.update(key_type=key_type, value_type=value_type)
        if args.count:
            data["entries"] = _count_entries(m, Progress("counted", args.quiet))
    out = sys.stdout
    if args.format == "json":
        json.dump(data, out)
        out.write("\n")
        return 0
    out.write(f"{info.id}: {info.type_name}  name {info.name}  flags "
              f"{_flags_text(info.map_flags)}\n")
    out.write(f"\tkey {info.key_size}B  value {info.value_size}B  max_entries "
              f"{info.max_entries}")
    if m.is_percpu:
        out.write(f"  ({m.ncpus} CPUs, {m.value_stride}B per element)")
    out.write("\n")
    if info.btf_id:
        out.write(f"\tbtf_id {info.btf_id}")
        if key_type or value_type:
            out.write(f"  key_type {key_type or '-'}  value_type {value_type or '-'}")
        out.write("\n")
    if args.count:
        entries = data["entries"]
        out.write(f"\tentries {'-' if entries is None else entries}\n")
    return 0


def _dump(args: argparse.Namespace, drain: bool) -> int:
    with _map_from_args(args) as m:
        if drain and m.type in UNDELETABLE_TYPES:
            raise CliError(f"drain: map {m.name!r} (id {m.id}) is a {m.info.type_name}: its "
                           "elements can't be deleted; use dump")
        f = EntryFormatter(m, args.key_format, args.value_format, btf=not args.no_btf)
        writer = Writer(args.format, f, sys.stdout)
        progress = Progress("drained" if drain else "read", args.quiet)
        batches = (m.drain(args.batch_size, copy=False) if drain
                   else m.batches(args.batch_size, copy=False))
        try:
            # the first batch before any output: a map that can't be read prints nothing
            first = next(batches, None)
            writer.start()
            for batch in itertools.chain([first] if first else [], batches):
                for key, value in batch:
                    writer.write(key, value)
                progress.add(batch.count)
        finally:
            progress.done()
        writer.finish()
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    return _dump(args, drain=False)


def cmd_drain(args: argparse.Namespace) -> int:
    return _dump(args, drain=True)


def _read_numbers(m: Map, f: EntryFormatter, drain: bool,
                  batch_size: int | None) -> dict[bytes, dict[str, int | float]]:
    batches = m.drain(batch_size, copy=False) if drain else m.batches(batch_size, copy=False)
    return {bytes(k): f.numbers(v) for batch in batches for k, v in batch}


def _watch_rows(cur: dict[bytes, dict[str, int | float]],
                prev: dict[bytes, dict[str, int | float]] | None, dt: float | None,
                drain: bool) -> list[dict[str, Any]]:
    rows = []
    for key, fields in cur.items():
        rates: dict[str, float | None] = {}
        for name, n in fields.items():
            if dt is None or dt <= 0:
                rates[name] = None
            elif drain:  # a drained value is what accumulated since the previous drain
                rates[name] = n / dt
            elif prev is not None and name in prev.get(key, {}):
                rates[name] = (n - prev[key][name]) / dt
            else:
                rates[name] = None
        rows.append({"key": key, "fields": fields, "rates": rates})
    return rows


def _sort_rows(rows: list[dict[str, Any]], sort: str, field: str | None) -> None:
    if sort == "key":
        rows.sort(key=lambda r: r["key"])
        return
    part = "fields" if sort == "value" else "rates"

    def rank(r: dict[str, Any]) -> tuple[int, float]:
        values = r[part]
        name = field if field is not None else next(iter(r["fields"]), None)
        v = values.get(name) if name is not None else None
        return (0, -v) if v is not None else (1, 0.0)

    rows.sort(key=rank)


def _fmt_number(n: float | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, float):
        return f"{n:,.1f}"
    return f"{n:,}"


def cmd_watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    if args.top <= 0:
        raise UsageError("--top must be positive")
    iterations = 1 if args.once else args.count
    out = sys.stdout
    clear = out.isatty() and not args.once and args.format == "table"
    with _map_from_args(args) as m:
        if args.drain and m.type in UNDELETABLE_TYPES:
            raise CliError(f"watch --drain: map {m.name!r} (id {m.id}) is a "
                           f"{m.info.type_name}: its elements can't be deleted")
        f = EntryFormatter(m, args.key_format, args.value_format, btf=not args.no_btf)
        prev: dict[bytes, dict[str, int | float]] | None = None
        last: float | None = None
        done = 0
        try:
            while True:
                now = time.monotonic()
                cur = _read_numbers(m, f, args.drain, args.batch_size)
                dt = None if last is None else now - last
                rows = _watch_rows(cur, prev, dt, args.drain)
                if args.field is not None and rows and not any(
                        args.field in r["fields"] for r in rows):
                    names = sorted({n for r in rows for n in r["fields"]})
                    raise UsageError(f"--field {args.field!r}: no such numeric field; the "
                                     f"values have {', '.join(names) or 'none'}")
                _sort_rows(rows, args.sort, args.field)
                top = rows[: args.top]
                if args.format == "json":
                    out.write(json.dumps({
                        "time": time.time(), "map": {"id": m.id, "name": m.name},
                        "entries": len(rows), "interval": dt,
                        "top": [{"key": hex_list(r["key"]), "key_text": f.key_text(r["key"]),
                                 "fields": r["fields"], "rates": r["rates"]} for r in top],
                    }) + "\n")
                else:
                    if clear:
                        out.write("\x1b[H\x1b[2J")
                    self_desc = "drained" if args.drain else "read"
                    out.write(f"{m.name} (id {m.id}, {m.info.type_name}): {len(rows)} entries "
                              f"{self_desc} at {time.strftime('%H:%M:%S')}"
                              + (f", {dt:.2f}s since the last read" if dt else "") + "\n")
                    _watch_table(out, f, top)
                out.flush()
                prev, last = cur, now
                done += 1
                if iterations is not None and done >= iterations:
                    return 0
                time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
        except KeyboardInterrupt:
            return 0


def _watch_table(out: IO[str], f: EntryFormatter, rows: list[dict[str, Any]]) -> None:
    names: list[str] = []
    for r in rows:
        names += [n for n in r["fields"] if n not in names]
    heads = ["KEY"] + [h for n in names for h in (n.upper(), f"{n.upper()}/s")]
    table = [[f.key_text(r["key"])] + [c for n in names for c in (
        _fmt_number(r["fields"].get(n)), _fmt_number(r["rates"].get(n)))] for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads)]
    for line in [heads] + table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        out.write("  ".join(cells).rstrip() + "\n")


# -- export -------------------------------------------------------------------------------
def _label_name(name: str) -> str:
    out = "".join(c if c.isalnum() and c.isascii() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else f"_{out}"


def _key_labels(f: EntryFormatter, key: bytes) -> dict[str, str]:
    k = f.key(key)
    if k is MISSING:
        return {"key": key.hex()}
    if isinstance(k, dict):
        flat = _flatten(k)
        return {_label_name(n): str(v) for n, v in flat.items()} or {"key": key.hex()}
    if isinstance(k, (list, tuple)):
        return {f"key{i}": str(v) for i, v in enumerate(k)}
    return {"key": str(k)}


def _flatten(v: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, sub in v.items():
        name = f"{prefix}_{k}" if prefix else str(k)
        if isinstance(sub, dict):
            out.update(_flatten(sub, name))
        elif isinstance(sub, list):
            out.update(_flatten({str(i): x for i, x in enumerate(sub)}, name))
        else:
            out[name] = sub
    return out


class MapCollector:
    """A prometheus_client collector: each scrape reads the map with batch lookups."""

    def __init__(self, m: Map, f: EntryFormatter, metric: str, kind: str,
                 batch_size: int | None) -> None:
        self.map, self.f, self.metric, self.kind = m, f, metric, kind
        self.batch_size = batch_size
        self.lock = threading.Lock()  # one map read at a time across scrape threads
        self.scrapes = 0

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.lock:
            rows = [(bytes(k), self.f.numbers(v))
                    for batch in self.map.batches(self.batch_size, copy=False) for k, v in batch]
            self.scrapes += 1
        families: dict[str, Any] = {}
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        for key, fields in rows:
            labels = _key_labels(self.f, key)
            for field, n in fields.items():
                name = self.metric if field == "value" else f"{self.metric}_{_label_name(field)}"
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = cls(
                        name, f"BPF map {self.map.name!r} (id {self.map.id}): {field}",
                        labels=list(labels))
                fam.add_metric(list(labels.values()), n)
        yield from families.values()
        entries = GaugeMetricFamily(f"{self.metric}_entries",
                                    f"Entries in BPF map {self.map.name!r}")
        entries.add_metric([], len(rows))
        yield entries


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        raise CliError("export needs prometheus_client: pip install 'libbpf-batch[prometheus]'"
                       ) from None
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    with _map_from_args(args) as m:
        f = EntryFormatter(m, args.key_format, args.value_format, btf=not args.no_btf)
        metric = args.metric or _label_name(f"bpf_map_{m.name}")
        collector = MapCollector(m, f, metric, args.type, args.batch_size)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        served = [0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                try:
                    body = generate_latest(registry)
                except BpfError as e:
                    self.send_error(500, str(e.strerror))
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                served[0] += 1
                if args.max_scrapes and served[0] >= args.max_scrapes:
                    threading.Thread(target=self.server.shutdown, daemon=True).start()

            def log_message(self, format: str, *a: Any) -> None:
                pass

        host, port = args.listen
        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise CliError(f"listen {host}:{port}: {e.strerror or e}") from None
        server.daemon_threads = True
        bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
        if not args.quiet:
            print(f"{PROG}: serving map {m.name!r} (id {m.id}) as {metric} on "
                  f"http://{bound_host}:{bound_port}/metrics", file=sys.stderr, flush=True)

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            server.server_close()
    return 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# -- bench --------------------------------------------------------------------------------
def cmd_bench(argv: Sequence[str]) -> int:
    import importlib

    try:  # lazy: it pulls in more than the other subcommands need
        bench = importlib.import_module(f"{__package__}.bench")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.bench":
            raise
        raise CliError("bench: this install has no libbpf_batch.bench") from None
    try:
        rc = bench.main(list(argv))
    except SystemExit as e:  # its argparse: --help (0) or a usage error (2)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) or e.code is None else 1
    return 0 if rc is None else int(rc)


# -- argument parsing ---------------------------------------------------------------------
def _struct_format(text: str) -> str:
    try:
        struct.Struct(text)
    except struct.error as e:
        raise argparse.ArgumentTypeError(f"bad struct format {text!r}: {e}") from None
    return text


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand (bench passes its arguments through)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress or status on stderr")

    map_arg = argparse.ArgumentParser(add_help=False)
    map_arg.add_argument("map_kind", choices=SPEC_KINDS, metavar="{id,pinned,name}",
                         help="how VALUE names the map: 'id N', 'pinned PATH' or 'name NAME'")
    map_arg.add_argument("map_value", metavar="VALUE", help="the map's id, pin path or name")
    map_arg.add_argument("--batch-size", type=_positive_int, default=None,
                         help="elements per batch call (default: the library's)")

    decode = argparse.ArgumentParser(add_help=False)
    decode.add_argument("--key-format", type=_struct_format, metavar="FMT",
                        help="decode keys with this struct format (e.g. '<I'); wins over BTF")
    decode.add_argument("--value-format", type=_struct_format, metavar="FMT",
                        help="decode values with this struct format (e.g. '<Q', '16s')")
    decode.add_argument("--no-btf", action="store_true", help="don't decode with the map's BTF")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Read and drain eBPF maps with libbpf's batch calls.",
        epilog="maps are named as in bpftool: 'id 42', 'pinned /sys/fs/bpf/x', 'name counts'")
    from . import __version__

    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="every map on the host")
    p.add_argument("--count", action="store_true", help="count each map's entries (reads them)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common, map_arg], help="one map's info")
    p.add_argument("--count", action="store_true", help="count the entries (reads them)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_show)

    for name, func, text in (("dump", cmd_dump, "every entry, by batch lookup"),
                             ("drain", cmd_drain, "every entry, deleting as it reads")):
        p = sub.add_parser(name, parents=[common, map_arg, decode], help=text)
        p.add_argument("--format", choices=FORMATS, default="table",
                       help="json matches bpftool -j map dump (default: table)")
        p.set_defaults(func=func)

    p = sub.add_parser("watch", parents=[common, map_arg, decode],
                       help="a live view of the biggest entries and their rates")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    p.add_argument("--top", type=int, default=20, help="entries shown (default 20)")
    p.add_argument("--sort", choices=("value", "rate", "key"), default="value")
    p.add_argument("--field", help="the numeric field to sort by (default: the first)")
    p.add_argument("--drain", action="store_true",
                   help="drain the map each time (values are then per-interval deltas)")
    p.add_argument("--once", action="store_true", help="one read, then exit (for scripts)")
    p.add_argument("--count", type=_positive_int, default=None, metavar="N",
                   help="exit after N reads")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="json: one object per read")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("export", parents=[common, map_arg, decode],
                       help="serve the map to Prometheus")
    p.add_argument("--listen", type=_parse_listen, default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve /metrics on (default {DEFAULT_LISTEN}; port 0: any)")
    p.add_argument("--metric", help="metric name (default: bpf_map_<map name>)")
    p.add_argument("--type", choices=("gauge", "counter"), default="gauge")
    p.add_argument("--max-scrapes", type=_positive_int, default=None, metavar="N",
                   help="exit after serving N scrapes")
    p.set_defaults(func=cmd_export)

    sub.add_parser("bench", add_help=False, help="the batch vs per-key benchmark "
                   "(arguments go to libbpf_batch.bench)")
    return parser


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 operational error, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:  # everything after it belongs to the benchmark
            return cmd_bench(args_list[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except SystemExit as e:  # argparse has printed usage (2) or help (0)
            return e.code if isinstance(e.code, int) else 2
        return int(args.func(args))
    except CliError as e:
        _fail(str(e))
        return e.status
    except BpfError as e:
        _fail(str(e.strerror or e))
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["EntryFormatter", "main", "numeric_fields", "open_map", "parse_spec"]

if __name__ == "__main__":
    sys.exit(main())
