"""``libbpf-batch export``: one map given on the command line, or ``--config`` files, or both."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from ..maps import Map
from .config import ConfigError, MapRef, MetricSpec, check_metric_name, load_file, sanitize
from .decoders import DecoderSet
from .server import Exporter, metrics_server, serve_until_stopped
from .sources import Loaded, load

DEFAULT_PREFIX = "ebpf_exporter_"  # what ebpf_exporter puts before a config's metric names


def metric_name(text: str) -> str:
    """argparse type for --metric: a valid metric name, or a usage error saying why."""
    try:
        return check_metric_name(text, "--metric")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--metric: ")) from None


def run(args: argparse.Namespace, open_map: Callable[[], Map], prog: str) -> int:
    """Serve until stopped; ConfigError for a bad configuration or an unusable address."""
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    if not args.config and args.map_kind is None:
        raise ConfigError("export: name a map (id N, pinned PATH, name NAME) or give --config")
    if args.map_kind is not None and args.map_value is None:
        raise ConfigError(f"export: {args.map_kind} what? (e.g. '{args.map_kind} 42')")
    decoders = DecoderSet()

    def build() -> Loaded:
        files = [
            load_file(path, drain=args.drain, workers=args.workers) for path in args.config or ()
        ]
        extra: list[tuple[MetricSpec, Map, dict[str, Any]]] = []
        if args.map_kind is not None:
            m = open_map()
            spec = MetricSpec(
                kind=args.type,
                name=args.metric or sanitize(f"bpf_map_{m.name}"),
                help="",
                map=MapRef("id", m.id),
                percpu=args.percpu,
                drain=args.drain,
                workers=args.workers,
            )
            options = {
                "key_format": args.key_format,
                "value_format": args.value_format,
                "use_btf": not args.no_btf,
            }
            extra.append((spec, m, options))
        return load(files, decoders, prefix=args.prefix, batch_size=args.batch_size, extra=extra)

    exporter = Exporter(build)
    host, port = args.listen
    try:
        server = metrics_server(exporter, host, port, args.max_scrapes)
    except OSError as e:
        exporter.close()
        raise ConfigError(f"listen {host or '*'}:{port}: {e.strerror or e}") from None
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    if not args.quiet:
        metrics = exporter.loaded.metrics
        names = ", ".join(f.name for m in metrics for f in m.families)
        print(
            f"{prog}: serving {names} from {len(metrics)} map(s) on "
            f"http://{bound_host}:{bound_port}/metrics",
            file=sys.stderr,
            flush=True,
        )
    serve_until_stopped(server, exporter)
    return 0


__all__ = ["DEFAULT_PREFIX", "metric_name", "run"]
