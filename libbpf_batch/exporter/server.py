"""The /metrics server: streams every metric then the exporter's own, reloads on SIGHUP.

One scrape runs at a time (a drain must not race another, and a reload swaps the metrics
between scrapes). The body is streamed without Content-Length (HTTP/1.0, closed at the end), so
its size never has to be known, or held, up front. ``HEAD`` answers the headers only and reads
nothing. ``Accept: application/openmetrics-text`` gets OpenMetrics 1.0.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .. import __version__
from .._bindings import libbpf_version_string
from . import text
from .sources import Loaded

log = logging.getLogger("libbpf_batch.exporter")

_WRITE_BYTES = 1 << 16  # text is written to the socket in pieces of about this size


class Exporter:
    """The loaded configuration and its scrape; ``reload`` swaps in a new one."""

    def __init__(self, build: Callable[[], Loaded]) -> None:
        self.build = build
        self.loaded = build()
        self.lock = threading.Lock()
        self.reloads = {"success": 0, "failure": 0}

    def reload(self) -> bool:
        """Build the configuration anew; on failure keep the old one. True if it was swapped."""
        try:
            new = self.build()
        except Exception as e:  # noqa: BLE001 - a bad config must not take the exporter down
            log.error("reload failed, keeping the running configuration: %s", e)
            with self.lock:
                self.reloads["failure"] += 1
            return False
        with self.lock:
            old, self.loaded = self.loaded, new
            self.reloads["success"] += 1
        old.close()
        log.info("configuration reloaded")
        return True

    def close(self) -> None:
        with self.lock:
            self.loaded.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scrape(self, om: bool) -> Generator[str, None, None]:
        """The whole exposition, in chunks; holds the scrape lock while it runs."""
        with self.lock:
            for metric in self.loaded.metrics:
                try:
                    yield from metric.collect(om)
                except Exception:  # one map's bug must not end every scrape
                    metric.read_errors += 1
                    log.exception("%s: scrape failed", metric.where)
            yield from self._self_metrics(om)
            if om:
                yield "# EOF\n"

    def _self_metrics(self, om: bool) -> Iterator[str]:
        L = text.labels_text
        out = [text.header("libbpf_batch_exporter_build", "info", "Exporter build", om)]
        out.append(
            "libbpf_batch_exporter_build_info"
            + L(("version", "libbpf_version"), (__version__, libbpf_version_string()))
            + " 1\n"
        )
        per_map: list[tuple[str, str, str, Callable[[Any], str]]] = [
            (
                "scrape_duration_seconds",
                "gauge",
                "Seconds the last scrape spent on the map",
                lambda m: text.number(m.duration),
            ),
            (
                "map_entries",
                "gauge",
                "Entries read from the map in the last scrape",
                lambda m: str(m.entries),
            ),
            (
                "decode_errors",
                "counter",
                "Rows left out because their key or value didn't decode",
                lambda m: str(m.decode_errors),
            ),
            (
                "read_errors",
                "counter",
                "Scrapes where reading the map failed (nothing exported)",
                lambda m: str(m.read_errors),
            ),
        ]
        for name, kind, help_text, get in per_map:
            family = f"libbpf_batch_exporter_{name}"
            out.append(text.header(family, kind, help_text, om))
            sample = text.sample_name(family, kind)
            for m in self.loaded.metrics:
                out.append(f"{sample}{L(('metric', 'map'), (m.spec.name, m.map_name))} {get(m)}\n")
        programs = self.loaded.programs
        out.append(text.header("libbpf_batch_exporter_program", "info", "Loaded programs", om))
        for p in programs:
            labels = L(
                ("config", "program", "section", "id", "tag"),
                (p.config, p.name, p.section, str(p.id), p.tag),
            )
            out.append(f"libbpf_batch_exporter_program_info{labels} 1\n")
        out.append(
            text.header(
                "libbpf_batch_exporter_program_attached",
                "gauge",
                "1 if the program is attached",
                om,
            )
        )
        for p in programs:
            labels = L(("config", "program"), (p.config, p.name))
            out.append(f"libbpf_batch_exporter_program_attached{labels} {int(p.attached)}\n")
        out.append(
            text.header(
                "libbpf_batch_exporter_config_reloads",
                "counter",
                "Configuration reloads (SIGHUP)",
                om,
            )
        )
        for result, n in self.reloads.items():
            out.append(
                f"libbpf_batch_exporter_config_reloads_total{L(('result',), (result,))} {n}\n"
            )
        yield "".join(out)


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics (and doesn't refuse it with q=0)."""
    for part in accept.split(","):
        media, *params = (x.strip() for x in part.split(";"))
        if media == "application/openmetrics-text":
            return not any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params)
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # many Prometheus servers may scrape at once

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # '::' takes IPv4 too, as ':PORT' does for Go exporters
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Server6(_Server):
    address_family = socket.AF_INET6


def metrics_server(
    exporter: Exporter, host: str, port: int, max_scrapes: int | None = None
) -> ThreadingHTTPServer:
    """A bound server for ``exporter``; host '' is every interface (IPv6 and IPv4)."""
    served = [0]

    class Handler(BaseHTTPRequestHandler):
        def _headers(self) -> bool:
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404)
                return False
            self.om = wants_openmetrics(self.headers.get("Accept", ""))
            self.send_response(200)
            self.send_header("Content-Type", text.OPENMETRICS_TYPE if self.om else text.TEXT_TYPE)
            self.end_headers()
            return True

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            if not self._headers():
                return
            pending: list[bytes] = []
            size = 0
            chunks = exporter.scrape(self.om)
            try:
                for chunk in chunks:
                    data = chunk.encode()
                    pending.append(data)
                    size += len(data)
                    if size >= _WRITE_BYTES:
                        self.wfile.write(b"".join(pending))
                        pending, size = [], 0
                self.wfile.write(b"".join(pending))
            except (BrokenPipeError, ConnectionResetError):
                log.info("a scrape's client went away before the end of the body")
            finally:
                chunks.close()  # releases the scrape lock at once
            served[0] += 1
            if max_scrapes and served[0] >= max_scrapes:
                threading.Thread(target=self.server.shutdown, daemon=True).start()

        def log_message(self, format: str, *a: Any) -> None:
            pass

    if ":" in host:
        return _Server6((host, port), Handler)
    if host == "" and socket.has_ipv6:
        try:
            return _Server6(("::", port), Handler)
        except OSError as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise  # e.g. EADDRINUSE: the same on IPv4
            # a kernel without IPv6: every IPv4 interface
    return _Server((host or "0.0.0.0", port), Handler)


def serve_until_stopped(server: ThreadingHTTPServer, exporter: Exporter) -> None:
    """Serve until shut down, Ctrl-C or SIGTERM; SIGHUP reloads. Then close both."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def hup(signum: int, frame: Any) -> None:
        threading.Thread(target=exporter.reload, daemon=True).start()

    main = threading.current_thread() is threading.main_thread()
    old = (signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGHUP, hup)) if main else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old[0])
            signal.signal(signal.SIGHUP, old[1])
        server.server_close()
        exporter.close()


__all__ = ["Exporter", "metrics_server", "serve_until_stopped", "wants_openmetrics"]
