"""The exporter's scrape cost, measured: ``run(entries=1_000_000) -> dict``, or run this file.

1. A HASH map of ``entries`` elements ``{u32 pid; u16 port; u8 proto}`` -> ``{u64 packets;
   u64 bytes}``, created with BTF (the source is generated here, built with clang) and filled
   with update_batch. ``scrapes`` scrapes of it over HTTP (default 3): the exporter runs in a
   fresh child process (so its peak RSS is the scrapes' own) on a loopback port, and this
   process reads each body in 1 MiB pieces into a file. Reported (medians, and every run):
   seconds (request to last byte), the exporter's CPU time, how long its batch reads took;
   body bytes, its peak RSS (VmHWM) and its RSS before the scrapes; then every line of the last
   body is checked (count, sums of both values).
2. The C per-key reader (bench/export_perkey.c: get_next_key + lookup_elem per key, as
   ebpf_exporter walks a map), on the same map in the same run, as many times; once walking
   only, once also formatting the text lines in C; wall and CPU time (medians). Ratios: its
   walk / our scrape (wall, and CPU) and its walk / our batch reads.
3. A 10,000-entry histogram map (100 label sets x 100 linear buckets, ebpf_exporter labels with
   uint decoders): one scrape, timed (median of 5).

Needs root (CAP_SYS_ADMIN: the child opens the map by id), clang and gcc; the C reader is built against the pinned
libbpf in build/libbpf/install (``make build``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIBBPF = ROOT / "build" / "libbpf" / "install"
C_SOURCE = ROOT / "bench" / "export_perkey.c"
C_BINARY = ROOT / "build" / "bench" / "export_perkey"

MAPS_SOURCE = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct flow_key { __u32 pid; __u16 port; __u8 proto; };
struct flow_stats { __u64 packets; __u64 bytes; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, %(entries)d);
         __type(key, struct flow_key); __type(value, struct flow_stats); } flows SEC(".maps");
struct hist_key { __u32 set; __u32 bucket; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 10000);
         __type(key, struct hist_key); __type(value, __u64); } latency SEC(".maps");
"""

HIST_CONFIG = {
    "metrics": {
        "histograms": [
            {
                "name": "latency",
                "help": "bench histogram",
                "bucket_type": "linear",
                "bucket_min": 0,
                "bucket_max": 98,  # key 99 is the sum, as ebpf_exporter reads it
                "bucket_multiplier": 0.001,
                "labels": [
                    {"name": "set", "size": 4, "decoders": [{"name": "uint"}]},
                    {"name": "bucket", "size": 4, "decoders": [{"name": "uint"}]},
                ],
            }
        ]
    }
}

# The exporter, in the child: open the map by id, serve one scrape, then report on itself.
CHILD = r"""
import json, resource, sys, time
from libbpf_batch.maps import Map
from libbpf_batch.exporter.config import MapRef, MetricSpec
from libbpf_batch.exporter.decoders import DecoderSet
from libbpf_batch.exporter.server import Exporter, metrics_server
from libbpf_batch.exporter.sources import load

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

map_id, scrapes = int(sys.argv[1]), int(sys.argv[2])
spec = MetricSpec(kind="counter", name="flows", help="bench", map=MapRef("id", map_id))
exporter = Exporter(lambda: load([], DecoderSet(), extra=[(spec, Map.from_id(map_id), {})]))
server = metrics_server(exporter, "127.0.0.1", 0, max_scrapes=1)
metric = exporter.loaded.metrics[0]
before = hwm()
print(server.server_address[1], flush=True)
for _ in range(scrapes):  # one scrape per serve_forever(); its CPU time and read time
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server.serve_forever()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu_seconds": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime
                      - cpu0.ru_stime, "read_seconds": metric.read_duration,
                      "server_seconds": metric.duration}), flush=True)
print(json.dumps({"peak_rss": hwm(), "rss_before": before, "entries": metric.entries,
                  "fast_path": metric.fast}), flush=True)
server.server_close(); exporter.close()
"""


def _scrape(map_id: int, body_path: Path, scrapes: int = 3) -> dict[str, Any]:
    """``scrapes`` scrapes of one child exporter, each timed from request to the body's last
    byte (the last body is kept); medians of wall, CPU and read time, and every run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(map_id), str(scrapes)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    runs = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        for _ in range(scrapes):
            start = time.perf_counter()
            size = 0
            with (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600) as r,
                open(body_path, "wb") as out,
            ):
                while piece := r.read(1 << 20):
                    out.write(piece)
                    size += len(piece)
            seconds = time.perf_counter() - start
            runs.append({"seconds": seconds, **json.loads(child.stdout.readline())})
        stats = json.loads(child.stdout.readline())
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    median = {
        k: statistics.median(r[k] for r in runs)
        for k in ("seconds", "cpu_seconds", "read_seconds", "server_seconds")
    }
    return {**median, "body_bytes": size, **stats, "runs": runs}


def _run_c(binary: Path, map_id: int, *args: str, repeat: int = 3) -> dict[str, Any]:
    """The C reader's JSON report plus the CPU time it used (user + system): medians of
    ``repeat`` runs, and every run."""
    runs = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [str(binary), "--id", str(map_id), *args], check=True, capture_output=True, text=True
        ).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        runs.append({**json.loads(out), "cpu_seconds": cpu})
    median = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu_seconds")}
    return {**runs[-1], **median, "runs": runs}


def _check_body(body_path: Path) -> tuple[int, int, int]:
    """(lines, sum of packets, sum of bytes) of a scrape body."""
    lines = packets = nbytes = 0
    with open(body_path, "rb") as f:
        for line in f:
            if line.startswith(b"flows_packets_total{"):
                packets += int(line.rsplit(b" ", 1)[1])
                lines += 1
            elif line.startswith(b"flows_bytes_total{"):
                nbytes += int(line.rsplit(b" ", 1)[1])
                lines += 1
    return lines, packets, nbytes


def _compile_maps(entries: int, out_dir: Path) -> Path:
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang is not installed (apt-get install clang llvm)")
    src = out_dir / "export_maps.bpf.c"
    src.write_text(MAPS_SOURCE % {"entries": entries})
    obj = out_dir / "export_maps.bpf.o"
    cmd = [clang, "-target", "bpf", "-g", "-O2", "-I", str(LIBBPF / "include")]
    cmd += [
        f"-idirafter{d}"
        for d in sorted(str(p.parent.parent) for p in Path("/usr/include").glob("*/asm/types.h"))
    ]
    subprocess.run([*cmd, "-c", str(src), "-o", str(obj)], check=True, capture_output=True)
    return obj


def _c_reader() -> Path:
    if not C_BINARY.exists() or C_BINARY.stat().st_mtime < C_SOURCE.stat().st_mtime:
        C_BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-I",
                str(LIBBPF / "include"),
                str(C_SOURCE),
                str(LIBBPF / "lib" / "libbpf.a"),
                "-lelf",
                "-lz",
                "-o",
                str(C_BINARY),
            ],
            check=True,
            capture_output=True,
        )
    return C_BINARY


def _fill_flows(m: Any, entries: int) -> tuple[int, int]:
    """Keys pid=i, port=i%65536, proto=6/17; packets=i+1, bytes=64*(i+1). Returns the sums."""
    step = 65536
    for lo in range(0, entries, step):
        n = min(step, entries - lo)
        keys = b"".join(
            struct.pack("<IHBx", i, i & 0xFFFF, 6 if i & 1 else 17) for i in range(lo, lo + n)
        )
        values = b"".join(struct.pack("<QQ", i + 1, 64 * (i + 1)) for i in range(lo, lo + n))
        m.update_batch(keys, values)
    total = entries * (entries + 1) // 2
    return total, 64 * total


def _histogram_scrape(obj_map: Any, tmp: Path) -> dict[str, Any]:
    from libbpf_batch.exporter.config import MapRef, parse
    from libbpf_batch.exporter.decoders import DecoderSet
    from libbpf_batch.exporter.sources import load

    keys = b"".join(struct.pack("<II", s, b) for s in range(100) for b in range(100))
    values = b"".join(struct.pack("<Q", b + 1) for s in range(100) for b in range(100))
    obj_map.update_batch(keys, values)
    cfg = parse(HIST_CONFIG, tmp / "latency.yaml")
    spec = cfg.metrics[0]
    spec = type(spec)(**{**spec.__dict__, "map": MapRef("id", obj_map.id)})
    cfg = type(cfg)(cfg.name, cfg.path, None, (spec,))
    loaded = load([cfg], DecoderSet())
    try:
        metric = loaded.metrics[0]
        times, cpu, body = [], [], ""
        for _ in range(5):
            start, start_cpu = time.perf_counter(), time.process_time()
            body = "".join(metric.collect(False))
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        series = body.count("_count{")
        assert series == 100, f"histogram: {series} label sets, expected 100"
        return {
            "entries": 10_000,
            "label_sets": series,
            "seconds_median": statistics.median(times),
            "seconds_all": times,
            "cpu_seconds_median": statistics.median(cpu),
            "body_bytes": len(body.encode()),
        }
    finally:
        loaded.close()


def run(entries: int = 1_000_000, scrapes: int = 3) -> dict[str, Any]:
    """Build the maps, scrape them, run the C per-key reader; everything in one dict (wall
    and CPU times: medians of ``scrapes`` runs of each)."""
    from libbpf_batch.objects import BpfObject

    with tempfile.TemporaryDirectory(prefix="export-bench-") as d:
        tmp = Path(d)
        obj_path = _compile_maps(entries, tmp)
        c_reader = _c_reader()
        with BpfObject.open_file(obj_path) as obj:
            obj.load()
            with obj.map("flows") as flows, obj.map("latency") as latency:
                t0 = time.perf_counter()
                want_packets, want_bytes = _fill_flows(flows, entries)
                fill_s = time.perf_counter() - t0
                scrape = _scrape(flows.id, tmp / "body.txt", scrapes)
                lines, packets, nbytes = _check_body(tmp / "body.txt")
                ok = (lines, packets, nbytes) == (2 * entries, want_packets, want_bytes)
                c_walk = _run_c(c_reader, flows.id, repeat=scrapes)
                c_fmt = _run_c(c_reader, flows.id, "--format", repeat=scrapes)
                ok = ok and c_walk["entries"] == entries and c_walk["sum"] == want_packets
                hist = _histogram_scrape(latency, tmp)
    return {
        "entries": entries,
        "fill_seconds": fill_s,
        "scrape": scrape,
        "checked": ok,
        "c_per_key_walk": c_walk,
        "c_per_key_walk_and_format": c_fmt,
        "ratio_c_walk_over_scrape": c_walk["seconds"] / scrape["seconds"],
        "ratio_c_walk_over_read": c_walk["seconds"] / scrape["read_seconds"],
        # CPU time, less at the mercy of a shared machine than wall-clock time
        "ratio_c_walk_cpu_over_scrape_cpu": c_walk["cpu_seconds"] / scrape["cpu_seconds"],
        "histogram": hist,
        "targets": {
            "scrape_under_2s": scrape["seconds"] < 2,
            "peak_rss_under_150MB": scrape["peak_rss"] < 150e6,
            "5x_faster_than_c_per_key_walk": c_walk["seconds"] / scrape["seconds"] >= 5,
            "histogram_under_50ms": hist["seconds_median"] < 0.05,
        },
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--scrapes", type=int, default=3, help="scrapes (and C walks) to time")
    p.add_argument("--json", metavar="FILE", help="write the result here too")
    args = p.parse_args(argv)
    result = run(args.entries, args.scrapes)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["checked"] else 1


if __name__ == "__main__":
    sys.exit(main())
