"""The ``libbpf-batch`` command: list, show, dump, drain, watch and export BPF maps, batched.

Maps are named as bpftool names them: ``id 42``, ``pinned /sys/fs/bpf/counts``, ``name counts``.
Exit codes: 0 success, 1 operational error (one line naming the map and the errno), 2 usage
error; 130 when interrupted (except watch and export, where Ctrl-C is the way out and exits 0),
141 when the reader of the output went away (128 + SIGPIPE), 143 when SIGTERM ends a drain.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from . import _bindings
from ._libbpf import ffi
from ._output import (
    FORMATS,
    PROG,
    CliError,
    EntryFormatter,
    Progress,
    UsageError,
    Writer,
    numeric_fields,
)
from ._watch import Reader, close_walk, write_json, write_view
from .batch import Batch, put_back
from .double_buffer import DoubleBufferedMap, is_double_buffered
from .errors import BpfError
from .maps import KEYLESS_TYPES, UNDELETABLE_TYPES, Map, MapInfo, map_ids

SPEC_KINDS = ("id", "pinned", "name")
DEFAULT_LISTEN = "127.0.0.1:9435"
MAX_WORKERS = 1 << 16  # Map.drain(workers=) takes up to a u16


# -- map specifiers -----------------------------------------------------------------------
def parse_spec(kind: str, value: str) -> tuple[str, Any]:
    """Check a ``KIND VALUE`` map specifier; raises UsageError when it is malformed."""
    if kind not in SPEC_KINDS:
        raise UsageError(
            f"bad map specifier {kind!r} {value!r}: expected 'id N', 'pinned PATH' or 'name NAME'"
        )
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
        try:
            return Map.open_pinned(value)
        except BpfError as e:
            fs = filesystem_of(value)
            if fs is not None and fs != "bpf" and not isinstance(e, FileNotFoundError):
                raise CliError(
                    f"pinned {value}: not on a bpffs (it is on {fs}); maps are pinned under "
                    "a bpf filesystem such as /sys/fs/bpf"
                ) from None
            raise
    matches = [info for info in _all_maps() if info.name == value]
    if not matches:
        raise CliError(f"no map named {value!r}")
    if len(matches) > 1:
        listed = ", ".join(f"id {i.id} ({i.type_name})" for i in matches)
        raise CliError(f"map name {value!r} is ambiguous: {listed}; use 'id N'")
    return Map.from_id(matches[0].id)


def filesystem_of(path: str) -> str | None:
    """The type of the filesystem ``path`` is on (from /proc/self/mounts), or None."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return None
    best, fstype = "", None
    for point, kind in mounts:
        point = point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _all_maps() -> Iterator[MapInfo]:
    """The info of every map on the host; maps freed while we look are skipped."""
    for map_id in map_ids():
        try:
            with Map.from_id(map_id) as m:
                yield m.info
        except FileNotFoundError:
            continue


# -- subcommands --------------------------------------------------------------------------
def _map_from_args(args: argparse.Namespace) -> Map:
    if args.map_value is None:
        raise UsageError(f"{args.command}: '{args.map_kind}' needs a VALUE")
    kind, value = parse_spec(args.map_kind, args.map_value)
    return open_map(kind, value)


def _formatter(m: Map, args: argparse.Namespace) -> EntryFormatter:
    return EntryFormatter(m, args.key_format, args.value_format, btf=not args.no_btf)


def _flags_text(flags: int) -> str:
    return f"{flags:#x}"


def _fdinfo(fd: int) -> dict[str, str]:
    """The kernel's /proc fdinfo lines for a map fd (memlock, frozen, ...)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _info_dict(m: Map) -> dict[str, Any]:
    """The map as ``bpftool -j map show`` spells it (btf_id only when the map has BTF;
    ncpus only on per-CPU maps)."""
    info = m.info
    fdinfo = _fdinfo(m.fd)
    data: dict[str, Any] = {
        "id": info.id,
        "type": info.type_name,
        "name": info.name,
        "flags": info.map_flags,
        "bytes_key": info.key_size,
        "bytes_value": info.value_size,
        "max_entries": info.max_entries,
    }
    if "memlock" in fdinfo:
        data["bytes_memlock"] = int(fdinfo["memlock"])
    data["frozen"] = int(fdinfo.get("frozen", "0"))
    if info.btf_id:
        data["btf_id"] = info.btf_id
    if m.is_percpu:
        data["ncpus"] = m.ncpus
    return data


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
            row = _info_dict(m)
            if args.count:
                row["entries"] = _count_entries(m, progress)
        rows.append(row)
    progress.done()
    out = sys.stdout
    if args.format == "json":
        _dump_json(rows, args, out)
        return 0
    cols = ["id", "type", "name", "bytes_key", "bytes_value", "max_entries", "flags"]
    cols += ["entries"] if args.count else []
    heads = ["ID", "TYPE", "NAME", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS", "ENTRIES"]
    table = [
        [("-" if r[c] is None else _flags_text(r[c]) if c == "flags" else str(r[c])) for c in cols]
        for r in rows
    ]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads[: len(cols)])]
    for line in [heads[: len(cols)]] + table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")
    return 0


def _dump_json(data: Any, args: argparse.Namespace, out: Any) -> None:
    if args.pretty:
        json.dump(data, out, indent=4)
    else:
        json.dump(data, out, separators=(",", ":"))
    out.write("\n")


def cmd_show(args: argparse.Namespace) -> int:
    if args.map_kind is None:  # bpftool's `map show` with no map: every map
        return cmd_list(args)
    with _map_from_args(args) as m:
        info = m.info
        data = _info_dict(m)
        if info.btf_id:
            data.update(
                btf_key_type_id=info.btf_key_type_id, btf_value_type_id=info.btf_value_type_id
            )
        if info.map_extra:
            data["map_extra"] = info.map_extra
        key_type = value_type = None
        if info.btf_id:
            try:
                decoder = m.decoder()
                key_type, value_type = decoder.key_type_name, decoder.value_type_name
            except (BpfError, ValueError):
                pass
        if info.btf_id:
            data.update(key_type=key_type, value_type=value_type)
        if args.count:
            data["entries"] = _count_entries(m, Progress("counted", args.quiet))
    out = sys.stdout
    if args.format == "json":
        _dump_json(data, args, out)
        return 0
    out.write(
        f"{info.id}: {info.type_name}  name {info.name}  flags {_flags_text(info.map_flags)}\n"
    )
    out.write(f"\tkey {info.key_size}B  value {info.value_size}B  max_entries {info.max_entries}")
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


def _require_keys(m: Map, command: str) -> None:
    if m.type in KEYLESS_TYPES:
        raise CliError(
            f"{command}: map {m.name!r} (id {m.id}) is a {m.info.type_name}: it has no keys "
            "to walk (Map.pop/peek/push in Python)"
        )


class _Terminated(BaseException):
    """SIGTERM while draining: unwinds like Ctrl-C, so drained entries go back (exit 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds(active: bool) -> Iterator[None]:
    """While draining, SIGTERM raises instead of killing the process mid-batch."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Sent:
    """drain's stdout: a batch's text goes out with write(2) counted to the byte, so the
    entries a closed pipe or a signal kept from the reader go back into the map."""

    def __init__(self, out: IO[str]) -> None:
        try:
            self.fd = out.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (main() called in-process)
            self.fd = -1
        self.out, self.done = out, 0
        self.written = ffi.new("long *")

    def send(self, data: bytes) -> None:
        """Write all of ``data``; afterwards (or on any exception) ``done`` bytes went out."""
        self.done = 0
        if self.fd < 0:
            self.out.write(data.decode())
            self.done = len(data)
            return
        buf = ffi.from_buffer(data)
        while self.done < len(data):
            self.written[0] = 0
            try:
                n = _bindings.lbb_write(
                    self.fd, buf + self.done, len(data) - self.done, self.written
                )
            finally:
                self.done += max(self.written[0], 0)
            if n < 0 and -n != errno.EINTR:
                raise OSError(-n, os.strerror(-n))


def _start(writer: Writer) -> bool:
    writer.start()
    sys.stdout.flush()  # what start() wrote goes before the batches written with send()
    return True


def _dump(args: argparse.Namespace, drain: bool) -> int:
    with _map_from_args(args) as m, _sigterm_unwinds(drain):
        _require_keys(m, "drain" if drain else "dump")
        if drain and m.type in UNDELETABLE_TYPES:
            raise CliError(
                f"drain: map {m.name!r} (id {m.id}) is {_article(m.info.type_name)}: its "
                "elements can't be deleted; use dump"
            )
        f = _formatter(m, args)
        writer = Writer(args.format, f, sys.stdout, pretty=args.pretty)
        sent = _Sent(sys.stdout)
        progress = Progress("drained" if drain else "read", args.quiet)
        read = m.drain if drain else m.batches
        batches = read(args.batch_size, copy=False, workers=args.workers)
        taken: list[Batch] = []  # the batch in hand until it is written out
        # Entries written before the batch in hand, and its bytes sent: both set before the
        # next batch is taken, so that an interruption at any point after it is taken puts
        # back all that is not out.
        before = sent.done = 0
        started = False
        try:
            # map() appends each batch to ``taken`` in C as the walk yields it (a for loop's
            # own binding can be split by a signal on Python < 3.11); output starts with the
            # first batch, so a map that can't be read prints nothing.
            for _ in map(taken.append, batches):
                batch = taken[-1]
                if not started:
                    started = _start(writer)
                if drain:  # delivered once its text is out; counted, to put back the rest
                    sent.send(writer.render(batch))
                else:
                    writer.write_batch(batch)
                progress.add(batch.count)
                taken.clear()
                before, sent.done = writer.count, 0
            if not started:
                started = _start(writer)
            writer.finish()
        except BaseException:
            if taken and drain:  # deleted, not (all) written: the rest goes back
                batch = taken[-1]
                shown = writer.entries_within(batch, before, sent.done)
                returned = put_back(m.access, batch, shown)
                _fail(f"drain: {returned} entries not written were returned to the map")
            raise
        finally:
            # a parallel drain puts back now what its workers deleted and we never received
            close_walk(batches)
            progress.done()
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    return _dump(args, drain=False)


def cmd_drain(args: argparse.Namespace) -> int:
    return _dump(args, drain=True)


def _check_field(field: str | None, f: EntryFormatter) -> str | None:
    names = f.number_names()
    if field is not None and field not in names:
        raise UsageError(
            f"--field {field!r}: no such numeric field; the values have "
            f"{', '.join(names) or 'none'}"
        )
    return field


def cmd_watch(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.interval) and 0 < args.interval <= 86400):
        raise UsageError(f"--interval must be seconds in (0, 86400], got {args.interval!r}")
    if args.top <= 0:
        raise UsageError("--top must be positive")
    iterations = 1 if args.once else args.count
    out = sys.stdout
    clear = out.isatty() and not args.once and args.format == "table"
    with _map_from_args(args) as m, _sigterm_unwinds(args.drain), contextlib.ExitStack() as stack:
        _require_keys(m, "watch")
        # the outer map of a double buffer: drained exactly by swapping (harvest), read and
        # formatted as its inner maps (both have the inner map's spec and BTF)
        dbuf = None
        if args.drain and is_double_buffered(m):
            dbuf = stack.enter_context(DoubleBufferedMap(m))
        elif args.drain and m.type in UNDELETABLE_TYPES:
            raise CliError(
                f"watch --drain: map {m.name!r} (id {m.id}) is "
                f"{_article(m.info.type_name)}: its elements can't be deleted"
            )
        inner = dbuf.current if dbuf is not None else m
        f = _formatter(inner, args)
        reader = Reader(
            inner,
            f,
            harvest=dbuf.harvest if dbuf is not None else None,
            drain=args.drain,
            batch_size=args.batch_size,
            workers=args.workers,
            sort=args.sort,
            field=_check_field(args.field, f),
            top=args.top,
            rates=iterations != 1,
        )
        last: float | None = None
        done = 0
        taken: list[Batch] = []  # drained this pass and not yet shown: put back if stopped
        try:
            while True:
                now = time.monotonic()
                dt = None if last is None else now - last
                taken = []
                top, entries = reader.read(dt, taken)
                if args.format == "json":
                    write_json(out, m, f, top, entries, dt)
                else:
                    write_view(out, m, f, top, entries, dt, drained=args.drain, clear=clear)
                out.flush()
                taken = []  # shown
                last = now
                done += 1
                if iterations is not None and done >= iterations:
                    return 0
                time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
        except (KeyboardInterrupt, _Terminated) as e:
            if taken:
                # a harvest's go back into the inner map in the slot: it outlives the command
                back = dbuf.current.access if dbuf is not None else m.access
                returned = sum(put_back(back, b) for b in taken)
                _fail(f"watch: {returned} drained entries not shown were returned to the map")
            return 0 if isinstance(e, KeyboardInterrupt) else 128 + signal.SIGTERM


# -- export -------------------------------------------------------------------------------
def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)  # ':PORT': every interface, as exporters read it


def cmd_export(args: argparse.Namespace) -> int:
    from .exporter import command, config

    try:
        return command.run(args, lambda: _map_from_args(args), PROG)
    except config.ConfigError as e:
        raise CliError(str(e)) from None


def cmd_includes(args: argparse.Namespace) -> int:
    from .double_buffer import get_include

    print(f"-I{get_include()}")
    return 0


# -- bench --------------------------------------------------------------------------------
def cmd_bench(argv: Sequence[str]) -> int:
    """The benchmark is tool code, not shipped: say where it is."""
    raise CliError(
        "bench: the benchmark lives in the source checkout: run `make bench` "
        "(or `python -m bench`) from its root"
    )


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


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n < MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected a number of threads (0: one per CPU), got {text!r}"
        )
    return n


def _workers_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="threads that split a hash map's buckets (0: one per CPU; default 1); "
        "entries then come in no defined order",
    )


def _spec_args(parser: argparse.ArgumentParser, optional: bool) -> None:
    nargs = "?" if optional else None
    parser.add_argument(
        "map_kind",
        nargs=nargs,
        choices=SPEC_KINDS,
        metavar="{id,pinned,name}",
        help="how VALUE names the map: 'id N', 'pinned PATH' or 'name NAME'"
        + (" (none: every map, as bpftool map show)" if optional else ""),
    )
    parser.add_argument(
        "map_value", nargs=nargs, metavar="VALUE", help="the map's id, pin path or name"
    )


def _json_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    # bpftool's spelling, accepted before the command and after it
    parser.add_argument(
        "-j", "--json", action="store_true", default=default, help="JSON output (--format json)"
    )
    parser.add_argument(
        "-p", "--pretty", action="store_true", default=default, help="pretty-printed JSON"
    )


COMMANDS: dict[str, str] = {
    "list": "every map on the host",
    "show": "one map's info (no map: every map)",
    "dump": "every entry, by batch lookup",
    "drain": "every entry, deleting as it reads",
    "watch": "a live view of the biggest entries and their rates",
    "export": "serve maps to Prometheus: one map, or ebpf_exporter-style --config files",
    "includes": "the -I flag for <libbpf_batch/double_buffer.bpf.h> (clang $(libbpf-batch includes))",
    "bench": "where the benchmark is (`make bench` in a source checkout)",
    "help": "help on the command, or on COMMAND",
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand (bench, taking any arguments, only points to
    the benchmark)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress or status on stderr"
    )
    _json_flags(common, argparse.SUPPRESS)  # SUPPRESS: keeps the value given before the command

    map_arg = argparse.ArgumentParser(add_help=False)
    _spec_args(map_arg, optional=False)
    map_arg.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="elements per batch call (default: the library's)",
    )
    _workers_arg(map_arg)

    decode = argparse.ArgumentParser(add_help=False)
    decode.add_argument(
        "--key-format",
        type=_struct_format,
        metavar="FMT",
        help="decode keys with this struct format (e.g. '<I'); wins over BTF; it must cover "
        "the whole key (pad with 'x')",
    )
    decode.add_argument(
        "--value-format",
        type=_struct_format,
        metavar="FMT",
        help="decode values with this struct format (e.g. '<Q', '16s'); it must cover the "
        "whole value",
    )
    decode.add_argument("--no-btf", action="store_true", help="don't decode with the map's BTF")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read and drain eBPF maps with libbpf's batch calls.",
        epilog="maps are named as in bpftool: 'id 42', 'pinned /sys/fs/bpf/x', 'name counts'",
    )
    from . import __version__
    from ._bindings import libbpf_version_string

    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (libbpf {libbpf_version_string()})",
    )
    _json_flags(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, parents: list[argparse.ArgumentParser], **kw: Any) -> Any:
        return sub.add_parser(
            name, parents=parents, help=COMMANDS[name], description=COMMANDS[name], **kw
        )

    p = add("list", [common])
    p.add_argument("--count", action="store_true", help="count each map's entries (reads them)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_list)

    p = add("show", [common])
    _spec_args(p, optional=True)
    p.add_argument("--count", action="store_true", help="count the entries (reads them)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_show)

    for name, func in (("dump", cmd_dump), ("drain", cmd_drain)):
        p = add(name, [common, map_arg, decode])
        p.add_argument(
            "--format",
            choices=FORMATS,
            default="table",
            help="json matches bpftool -j map dump (default: table)",
        )
        p.set_defaults(func=func)

    p = add("watch", [common, map_arg, decode])
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    p.add_argument("--top", type=int, default=20, help="entries shown (default 20)")
    p.add_argument(
        "--sort",
        choices=("value", "rate", "key"),
        default="value",
        help="biggest value or rate first, or by decoded key",
    )
    p.add_argument("--field", help="the numeric field to sort by (default: the first)")
    p.add_argument(
        "--drain",
        action="store_true",
        help="drain the map each time (values are then per-interval deltas)",
    )
    p.add_argument("--once", action="store_true", help="one read, then exit (for scripts)")
    p.add_argument(
        "--count", type=_positive_int, default=None, metavar="N", help="exit after N reads"
    )
    p.add_argument(
        "--format", choices=("table", "json"), default="table", help="json: one object per read"
    )
    p.set_defaults(func=cmd_watch)

    from .exporter.command import DEFAULT_PREFIX, metric_name

    p = add("export", [common, decode])
    p.add_argument("map_kind", nargs="?", choices=SPEC_KINDS, metavar="{id,pinned,name}")
    p.add_argument("map_value", nargs="?", metavar="VALUE", help="the map's id, pin path or name")
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="an ebpf_exporter-style YAML file (its object: FILE's stem + .bpf.o); repeatable",
    )
    p.add_argument(
        "--listen",
        type=_parse_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}; ':PORT' every "
        "interface; port 0: any)",
    )
    p.add_argument("--metric", type=metric_name, help="metric name (default: bpf_map_<map name>)")
    p.add_argument("--type", choices=("gauge", "counter"), default="gauge")
    p.add_argument(
        "--percpu",
        choices=("sum", "cpu"),
        default="sum",
        help="per-CPU maps: sum the CPUs, or one series per CPU (label cpu)",
    )
    p.add_argument(
        "--drain",
        action="store_true",
        help="drain the maps at each scrape (counters then add up what each scrape drained)",
    )
    p.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"put before --config metric names (default {DEFAULT_PREFIX!r}, as ebpf_exporter)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="elements per batch call")
    _workers_arg(p)
    p.add_argument(
        "--max-scrapes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="exit after serving N scrapes",
    )
    p.set_defaults(func=cmd_export)

    p = add("includes", [])
    p.set_defaults(func=cmd_includes)

    add("bench", [], add_help=False)

    p = add("help", [])
    p.add_argument("topic", nargs="?", metavar="COMMAND", choices=list(COMMANDS))
    p.set_defaults(func=lambda args: cmd_help(parser, sub, args))
    return parser


def cmd_help(parser: argparse.ArgumentParser, sub: Any, args: argparse.Namespace) -> int:
    if args.topic in (None, "help"):
        parser.print_help()
    elif args.topic == "bench":
        return cmd_bench(["--help"])
    else:
        sub.choices[args.topic].print_help()
    return 0


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
        json_flag = getattr(args, "json", False) or getattr(args, "pretty", False)
        if json_flag and hasattr(args, "format"):
            args.format = "json"
        args.pretty = getattr(args, "pretty", False)
        return int(args.func(args))
    except CliError as e:
        _fail(str(e))
        return e.status
    except BpfError as e:
        _fail(str(e.strerror or e))
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop as cat does, with SIGPIPE's status.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM


__all__ = ["EntryFormatter", "main", "numeric_fields", "open_map", "parse_spec"]

if __name__ == "__main__":
    sys.exit(main())
