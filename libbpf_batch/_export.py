"""A map as Prometheus metrics: the collector and the HTTP server that serves /metrics."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._output import MISSING, EntryFormatter
from .errors import BpfError
from .maps import Map


def label_name(name: str) -> str:
    """``name`` as a Prometheus metric or label name: other characters become '_'."""
    out = "".join(c if c.isalnum() and c.isascii() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else f"_{out}"


def _key_labels(f: EntryFormatter, key: bytes) -> dict[str, str]:
    k = f.key(key)
    if k is MISSING:
        return {"key": key.hex()}
    if isinstance(k, dict):
        flat = _flatten(k)
        return {label_name(n): str(v) for n, v in flat.items()} or {"key": key.hex()}
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

    def __init__(
        self, m: Map, f: EntryFormatter, metric: str, kind: str, batch_size: int | None
    ) -> None:
        self.map, self.f, self.metric, self.kind = m, f, metric, kind
        self.batch_size = batch_size
        self.lock = threading.Lock()  # one map read at a time across scrape threads
        self.scrapes = 0

    def collect(self) -> Iterator[Any]:
        with self.lock:
            rows = [
                (bytes(k), self.f.numbers(v))
                for batch in self.map.batches(self.batch_size, copy=False)
                for k, v in batch
            ]
            self.scrapes += 1
        families: dict[str, Any] = {}
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        for key, fields in rows:
            labels = _key_labels(self.f, key)
            for field, n in fields.items():
                name = self.metric if field == "value" else f"{self.metric}_{label_name(field)}"
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = cls(
                        name,
                        f"BPF map {self.map.name!r} (id {self.map.id}): {field}",
                        labels=list(labels),
                    )
                fam.add_metric(list(labels.values()), n)
        yield from families.values()
        entries = GaugeMetricFamily(
            f"{self.metric}_entries", f"Entries in BPF map {self.map.name!r}"
        )
        entries.add_metric([], len(rows))
        yield entries


def metrics_server(
    collector: MapCollector, host: str, port: int, max_scrapes: int | None
) -> ThreadingHTTPServer:
    """A bound server answering / and /metrics from ``collector``; OSError if it can't listen.

    After ``max_scrapes`` answered scrapes (if given) it shuts itself down.
    """
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
            if max_scrapes and served[0] >= max_scrapes:
                threading.Thread(target=self.server.shutdown, daemon=True).start()

        def log_message(self, format: str, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_until_stopped(server: ThreadingHTTPServer) -> None:
    """Serve until shut down, Ctrl-C or SIGTERM, then close the server."""

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


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
