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
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

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
from ._watch import build_rows, read_numbers, sort_rows, write_json, write_view
from .errors import BpfError
from .maps import KEYLESS_TYPES, UNDELETABLE_TYPES, Map, MapInfo, map_ids

SPEC_KINDS = ("id", "pinned", "name")
DEFAULT_LISTEN = "127.0.0.1:9435"


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


# -- subcommands --------------------------------------------------------------------------
def _map_from_args(args: argparse.Namespace) -> Map:
    kind, value = parse_spec(args.map_kind, args.map_value)
    return open_map(kind, value)


def _formatter(m: Map, args: argparse.Namespace) -> EntryFormatter:
    return EntryFormatter(m, args.key_format, args.value_format, btf=not args.no_btf)


def _flags_text(flags: int) -> str:
    return f"{flags:#x}"


def _info_dict(info: MapInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "type": info.type_name,
        "name": info.name,
        "key_size": info.key_size,
        "value_size": info.value_size,
        "max_entries": info.max_entries,
        "flags": info.map_flags,
        "btf_id": info.btf_id,
    }


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
    table = [
        [("-" if r[c] is None else _flags_text(r[c]) if c == "flags" else str(r[c])) for c in cols]
        for r in rows
    ]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads[: len(cols)])]
    for line in [heads[: len(cols)]] + table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _map_from_args(args) as m:
        info = m.info
        data = _info_dict(info)
        data.update(
            btf_key_type_id=info.btf_key_type_id,
            btf_value_type_id=info.btf_value_type_id,
            map_extra=info.map_extra,
            value_stride=m.value_stride,
            ncpus=m.ncpus,
        )
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


def _dump(args: argparse.Namespace, drain: bool) -> int:
    with _map_from_args(args) as m:
        _require_keys(m, "drain" if drain else "dump")
        if drain and m.type in UNDELETABLE_TYPES:
            raise CliError(
                f"drain: map {m.name!r} (id {m.id}) is a {m.info.type_name}: its "
                "elements can't be deleted; use dump"
            )
        f = _formatter(m, args)
        writer = Writer(args.format, f, sys.stdout)
        progress = Progress("drained" if drain else "read", args.quiet)
        batches = (
            m.drain(args.batch_size, copy=False)
            if drain
            else m.batches(args.batch_size, copy=False)
        )
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


def cmd_watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    if args.top <= 0:
        raise UsageError("--top must be positive")
    iterations = 1 if args.once else args.count
    out = sys.stdout
    clear = out.isatty() and not args.once and args.format == "table"
    with _map_from_args(args) as m:
        _require_keys(m, "watch")
        if args.drain and m.type in UNDELETABLE_TYPES:
            raise CliError(
                f"watch --drain: map {m.name!r} (id {m.id}) is a "
                f"{m.info.type_name}: its elements can't be deleted"
            )
        f = _formatter(m, args)
        prev: dict[bytes, dict[str, int | float]] | None = None
        last: float | None = None
        done = 0
        try:
            while True:
                now = time.monotonic()
                cur = read_numbers(m, f, args.drain, args.batch_size)
                dt = None if last is None else now - last
                rows = build_rows(cur, prev, dt, args.drain)
                if (
                    args.field is not None
                    and rows
                    and not any(args.field in r["fields"] for r in rows)
                ):
                    names = sorted({n for r in rows for n in r["fields"]})
                    raise UsageError(
                        f"--field {args.field!r}: no such numeric field; the "
                        f"values have {', '.join(names) or 'none'}"
                    )
                sort_rows(rows, args.sort, args.field)
                top = rows[: args.top]
                if args.format == "json":
                    write_json(out, m, f, top, len(rows), dt)
                else:
                    write_view(out, m, f, top, len(rows), dt, drained=args.drain, clear=clear)
                out.flush()
                prev, last = cur, now
                done += 1
                if iterations is not None and done >= iterations:
                    return 0
                time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
        except KeyboardInterrupt:
            return 0


# -- export -------------------------------------------------------------------------------
def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def cmd_export(args: argparse.Namespace) -> int:
    try:  # lazy: prometheus_client is an extra, and only export needs it
        from . import _export
    except ImportError:
        raise CliError(
            "export needs prometheus_client: pip install 'libbpf-batch[prometheus]'"
        ) from None

    with _map_from_args(args) as m:
        f = _formatter(m, args)
        metric = args.metric or _export.label_name(f"bpf_map_{m.name}")
        collector = _export.MapCollector(m, f, metric, args.type, args.batch_size)
        host, port = args.listen
        try:
            server = _export.metrics_server(collector, host, port, args.max_scrapes)
        except OSError as e:
            raise CliError(f"listen {host}:{port}: {e.strerror or e}") from None
        bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
        if not args.quiet:
            print(
                f"{PROG}: serving map {m.name!r} (id {m.id}) as {metric} on "
                f"http://{bound_host}:{bound_port}/metrics",
                file=sys.stderr,
                flush=True,
            )
        _export.serve_until_stopped(server)
    return 0


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
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress or status on stderr"
    )

    map_arg = argparse.ArgumentParser(add_help=False)
    map_arg.add_argument(
        "map_kind",
        choices=SPEC_KINDS,
        metavar="{id,pinned,name}",
        help="how VALUE names the map: 'id N', 'pinned PATH' or 'name NAME'",
    )
    map_arg.add_argument("map_value", metavar="VALUE", help="the map's id, pin path or name")
    map_arg.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="elements per batch call (default: the library's)",
    )

    decode = argparse.ArgumentParser(add_help=False)
    decode.add_argument(
        "--key-format",
        type=_struct_format,
        metavar="FMT",
        help="decode keys with this struct format (e.g. '<I'); wins over BTF",
    )
    decode.add_argument(
        "--value-format",
        type=_struct_format,
        metavar="FMT",
        help="decode values with this struct format (e.g. '<Q', '16s')",
    )
    decode.add_argument("--no-btf", action="store_true", help="don't decode with the map's BTF")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read and drain eBPF maps with libbpf's batch calls.",
        epilog="maps are named as in bpftool: 'id 42', 'pinned /sys/fs/bpf/x', 'name counts'",
    )
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

    for name, func, text in (
        ("dump", cmd_dump, "every entry, by batch lookup"),
        ("drain", cmd_drain, "every entry, deleting as it reads"),
    ):
        p = sub.add_parser(name, parents=[common, map_arg, decode], help=text)
        p.add_argument(
            "--format",
            choices=FORMATS,
            default="table",
            help="json matches bpftool -j map dump (default: table)",
        )
        p.set_defaults(func=func)

    p = sub.add_parser(
        "watch",
        parents=[common, map_arg, decode],
        help="a live view of the biggest entries and their rates",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    p.add_argument("--top", type=int, default=20, help="entries shown (default 20)")
    p.add_argument("--sort", choices=("value", "rate", "key"), default="value")
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

    p = sub.add_parser(
        "export", parents=[common, map_arg, decode], help="serve the map to Prometheus"
    )
    p.add_argument(
        "--listen",
        type=_parse_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default {DEFAULT_LISTEN}; port 0: any)",
    )
    p.add_argument("--metric", help="metric name (default: bpf_map_<map name>)")
    p.add_argument("--type", choices=("gauge", "counter"), default="gauge")
    p.add_argument(
        "--max-scrapes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="exit after serving N scrapes",
    )
    p.set_defaults(func=cmd_export)

    sub.add_parser(
        "bench",
        add_help=False,
        help="the batch vs per-key benchmark (arguments go to libbpf_batch.bench)",
    )
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
