"""Benchmark section: parallel walks (``workers=``) and mmapable arrays, against C.

In one run, on the very same 1,000,000-entry HASH (4 B keys, 8 B values, batch 4096):
- drain and lookup-only read by the library with workers = 1 .. the CPUs this process may use;
- bench/c_drain.c's single-threaded loop, and its loop split among as many pthreads;
- an mmapable ARRAY of as many 8-byte values read through Map.mmap() against a
  bpf_map_lookup_batch loop.
Repetitions interleave every row, so a noisy neighbour hits them alike; each row reports the
median and the spread (min..max). Every walk is checked: element count, key sum, every value,
and an empty map after a drain.

Standalone: ``python bench/workers_bench.py [--quick] [--json FILE]``; the benchmark runner
calls ``run(args)`` and reads the returned dict (``summary``, ``targets``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from libbpf_batch import Batch, Map, MapFlags, MapType

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "bench" / "c_drain.c"
LIBBPF_PREFIX = ROOT / "build" / "libbpf" / "install"
C_BINARY = ROOT / "build" / "bench" / "c_drain_threads"

TARGET_SPEEDUP_TIME = 0.6  # 2 workers: <= 0.6x the single C loop's time
TARGET_VS_PARALLEL_C = 1.1  # <= 1.1x the same split in C
TARGET_MMAP_SPEEDUP = 50.0  # mmap read >= 50x faster than lookup_batch


class BenchError(RuntimeError):
    """A self-check failed: the numbers would mean nothing."""


def c_program(cc: str = "gcc") -> Path:
    """bench/c_drain.c (with pthreads) built into build/bench/ when missing or stale."""
    lib = LIBBPF_PREFIX / "lib" / "libbpf.a"
    for need in (C_SOURCE, lib):
        if not need.is_file():
            raise BenchError(f"{need} is missing: run `make build` in the source tree")
    newest = max(C_SOURCE.stat().st_mtime, lib.stat().st_mtime)
    if C_BINARY.is_file() and C_BINARY.stat().st_mtime >= newest:
        return C_BINARY
    if shutil.which(cc) is None:
        raise BenchError(f"C compiler {cc!r} not found")
    C_BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = C_BINARY.with_name(f"{C_BINARY.name}.{os.getpid()}.tmp")
    include = str(LIBBPF_PREFIX / "include")
    cmd = [cc, "-O2", "-Wall", "-pthread", "-I", include, str(C_SOURCE), str(lib)]
    cmd += ["-lelf", "-lz", "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(tmp, C_BINARY)  # atomic: others may run the benchmark at the same time
    return C_BINARY


def run_c(binary: Path, m: Map, threads: int, batch_size: int) -> dict[str, float]:
    """One lookup_batch + drain_batch by c_drain on ``m`` (empty; left empty): ns/entry."""
    cmd = [str(binary), "--fd", str(m.fd), "--reps", "1", "--batch-size", str(batch_size)]
    cmd += ["--threads", str(threads), "--scenarios", "lookup_batch,drain_batch"]
    done = subprocess.run(cmd, capture_output=True, text=True, pass_fds=(m.fd,), check=False)
    if done.returncode:
        raise BenchError(f"C reference failed ({' '.join(cmd)}): {done.stderr.strip()}")
    out = json.loads(done.stdout)
    return {name: float(s["ns_per_entry"][0]) for name, s in out["scenarios"].items()}


class Workload:
    """Keys 0..n-1 (u32), value of key i = i + 1 (u64), as c_drain.c writes them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.keys = array("I", range(n)).tobytes()
        self.values = array("Q", range(1, n + 1)).tobytes()
        self.key_sum = n * (n - 1) // 2

    def fill(self, m: Map) -> None:
        if m.update_batch(self.keys, self.values) != self.n:
            raise BenchError("update_batch did not apply every element")

    def check(self, what: str, batches: list[Batch]) -> None:
        count = sum(b.count for b in batches)
        keys = array("I", b"".join(bytes(b.keys) for b in batches))
        values = array("Q", b"".join(bytes(b.values) for b in batches))
        if count != self.n or len(keys) != self.n:
            raise BenchError(f"{what}: {count} elements, expected {self.n}")
        if sum(keys) != self.key_sum or len(set(keys)) != self.n:
            raise BenchError(f"{what}: keys differ from those written (or repeat)")
        if any(v != k + 1 for k, v in zip(keys, values)):
            raise BenchError(f"{what}: a value does not match its key")


def timed(fn: Callable[[], list[Batch]]) -> tuple[float, list[Batch]]:
    t0 = time.perf_counter_ns()
    out = fn()
    return time.perf_counter_ns() - t0, out


class Rows:
    """ns/entry samples per row, in the order rows were first seen."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, ns_per_entry: float) -> None:
        self.samples.setdefault(name, []).append(ns_per_entry)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {
                "row": name,
                "ns_per_entry": [round(x, 2) for x in xs],
                "median": round(statistics.median(xs), 2),
                "min": round(min(xs), 2),
                "max": round(max(xs), 2),
                "spread": round((max(xs) - min(xs)) / statistics.median(xs), 3),
            }
            for name, xs in self.samples.items()
        ]


def walk(how: Callable[..., Iterator[Batch]], batch: int, workers: int) -> list[Batch]:
    return list(how(batch, workers=workers))


def hash_sweep(rows: Rows, w: Workload, binary: Path, cpus: int, batch: int) -> None:
    """One repetition: C single, C parallel, the library with 1..cpus workers."""
    with Map.create(MapType.HASH, 4, 8, w.n, "bench_workers") as m:
        for threads in sorted({1, cpus}):
            c = run_c(binary, m, threads, batch)
            label = "C loop" if threads == 1 else f"C, {threads} threads"
            rows.add(f"read: {label}", c["lookup_batch"])
            rows.add(f"drain: {label}", c["drain_batch"])
        for workers in range(1, cpus + 1):
            w.fill(m)
            ns, got = timed(partial(walk, m.batches, batch, workers))
            w.check(f"read, {workers} workers", got)
            rows.add(f"read: workers={workers}", ns / w.n)
            ns, got = timed(partial(walk, m.drain, batch, workers))
            w.check(f"drain, {workers} workers", got)
            if m.next_key() is not None:
                raise BenchError(f"drain, {workers} workers: the map is not empty after it")
            rows.add(f"drain: workers={workers}", ns / w.n)


def mmap_rows(rows: Rows, w: Workload, batch: int) -> None:
    """One repetition: a mmapable ARRAY read by lookup_batch calls and through mmap()."""
    with Map.create(MapType.ARRAY, 4, 8, w.n, "bench_mmap", flags=MapFlags.MMAPABLE) as m:
        w.fill(m)

        def lookup() -> list[Batch]:
            out, cursor = [], None
            while True:
                b = m.lookup_batch(batch, cursor)
                out.append(b)
                if b.done:
                    return out
                cursor = b.cursor

        ns, got = timed(lookup)
        w.check("array lookup_batch", got)
        rows.add("array read: lookup_batch loop", ns / w.n)
        t0 = time.perf_counter_ns()
        view = m.mmap()
        rows.add("array: mmap() itself (once per Map)", (time.perf_counter_ns() - t0) / w.n)
        t0 = time.perf_counter_ns()
        raw = view.tobytes()  # every value, copied out of the mapping in one go
        ns_copy = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        again = view.tobytes()  # the pages are mapped now: what a periodic reader pays
        rows.add("array read: mmap, copied out again", (time.perf_counter_ns() - t0) / w.n)
        if again != raw:
            raise BenchError("mmap: a second read differs from the first")
        ns, got = timed(lambda: [m.mmap_batch()])
        w.check("array mmap_batch", got)
        if raw != w.values:
            raise BenchError("mmap: the mapping holds other values than those written")
        rows.add("array read: mmap, values copied out (first read)", ns_copy / w.n)
        rows.add("array read: mmap_batch(), making index keys", ns / w.n)
        ns, got = timed(lambda: list(m.batches(batch)))
        w.check("array batches() via mmap", got)
        rows.add("array read: batches() via mmap, copies", ns / w.n)


def targets(rows: Rows, cpus: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    two = min(2, cpus)
    for op in ("drain", "read"):
        mine = rows.median(f"{op}: workers={two}")
        single = rows.median(f"{op}: C loop")
        ratio = mine / single
        out.append(
            {
                "target": f"{op}, {two} workers: <= {TARGET_SPEEDUP_TIME}x the single C loop",
                "ratio": round(ratio, 3),
                "met": ratio <= TARGET_SPEEDUP_TIME,
            }
        )
        if cpus > 1:
            par = rows.median(f"{op}: C, {cpus} threads")
            ratio = rows.median(f"{op}: workers={cpus}") / par
            out.append(
                {
                    "target": f"{op}, {cpus} workers: <= {TARGET_VS_PARALLEL_C}x C with "
                    f"{cpus} threads",
                    "ratio": round(ratio, 3),
                    "met": ratio <= TARGET_VS_PARALLEL_C,
                }
            )
    speedup = rows.median("array read: lookup_batch loop") / rows.median(
        "array read: mmap, values copied out (first read)"
    )
    out.append(
        {
            "target": f"mmap read >= {TARGET_MMAP_SPEEDUP:g}x faster than lookup_batch",
            "speedup": round(speedup, 1),
            "met": speedup >= TARGET_MMAP_SPEEDUP,
        }
    )
    return out


def run(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The section: every row measured ``reps`` times, interleaved; medians and targets."""
    quick = bool(getattr(args, "quick", False))
    n = getattr(args, "workers_entries", None) or (100_000 if quick else 1_000_000)
    reps = getattr(args, "workers_reps", None) or (3 if quick else 7)
    batch = getattr(args, "batch_size", None) or 4096
    progress = bool(getattr(args, "progress", True))
    cpus = len(os.sched_getaffinity(0))
    binary = c_program(getattr(args, "cc", None) or os.environ.get("CC", "gcc"))
    w = Workload(n)
    rows = Rows()
    load_before = os.getloadavg()
    for rep in range(reps):
        if progress:
            print(f"workers: repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
        hash_sweep(rows, w, binary, cpus, batch)
        mmap_rows(rows, w, batch)
    result: dict[str, Any] = {
        "entries": n,
        "batch_size": batch,
        "reps": reps,
        "cpus": cpus,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows.as_list(),
        "targets": targets(rows, cpus),
    }
    result["summary"] = summary(result)
    return result


def summary(result: dict[str, Any]) -> list[str]:
    head = (
        f"{result['entries']:,} entries, batch {result['batch_size']}, {result['reps']} "
        f"interleaved repetitions, {result['cpus']} CPUs; load average "
        f"{result['loadavg_before'][0]} before, {result['loadavg_after'][0]} after"
    )
    lines = [
        head,
        f"{'row':44} {'median ns/entry':>16} {'min..max':>18}",
    ]
    for r in result["rows"]:
        span = f"{r['min']:.1f}..{r['max']:.1f}"
        lines.append(f"{r['row']:44} {r['median']:16.1f} {span:>18}")
    for t in result["targets"]:
        figure = f"ratio {t['ratio']}" if "ratio" in t else f"speedup {t['speedup']}x"
        lines.append(f"{'met' if t['met'] else 'NOT met':8} {t['target']} ({figure})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100,000 entries, 3 repetitions")
    p.add_argument("--entries", dest="workers_entries", type=int, help="map size")
    p.add_argument("--reps", dest="workers_reps", type=int, help="repetitions")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--cc", default=os.environ.get("CC", "gcc"))
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    args.progress = True
    result = run(args)
    print("\n".join(result["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
