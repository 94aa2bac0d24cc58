"""The drain section: fill, walk and drain maps in C and in Python, side by side, and check them.

For each map shape (type, key size, value size) and size N, one map is created and, in every
repetition, filled, walked (lookup only) and drained by:

  C batch / C per key     bench/c_drain.c, built on demand against the same static libbpf and
                          run on the very same map (its fd is passed down) in each repetition
  Py per key              this library's Map.update / next_key / lookup / delete, key by key
  Py per_key_batches      the library's own per-key drain (batch.per_key_batches)
  Py update_batch         Map.update_batch() from one flat buffer (the fill)
  Py Batch copy=False     drain()/batches(copy=False): raw Batch buffers, reused
  Py Batch (copy)         drain()/batches(): raw Batch buffers, copied (the default)
  Py pairs                drain_items()/items(): one (bytes, bytes) per element
  Py to_numpy             Batch.to_numpy() on copy=False batches (needs numpy)
  Py unpack               Batch.unpack("<I", "<Q") on copy=False batches: ints

By default the first shape (hash 4/8, the one the targets name) runs at every size; the
others, and the per-key fills and lookup walks, only up to 100,000 entries (--full-up-to,
--full). A drain sweep over batch sizes follows, on the first shape at the largest size.

Every run checks its own result: element count, key sum, the sum of every per-CPU value slot,
and an empty map after a drain; a mismatch stops the benchmark with exit status 1. Each
consumer keeps what it was given (workloads.py) and the check runs after the clock stops. Each
drain, in C as in Python, starts right after its fill (the map equally warm in the caches).

Times are ns per element (median and min-max over repetitions), entries/s, and the ratio to
the C batch figure of the same map, size, operation and batch size. "RSS +" is the largest
growth of the resident set during a timed run (peak RSS reset through /proc/self/clear_refs
before it); "py peak" is tracemalloc's peak during one extra, untimed drain (Python objects
only: cffi's batch buffers are not traced). The machine is shared and noisy: compare ratios
from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from libbpf_batch import Map
from libbpf_batch.batch import per_key_batches

from . import report, workloads
from .c_reference import c_program, run_c
from .config import C_SCENARIO, IMPL_LABELS, Shape, row_batch
from .report import Row, RowKey
from .workloads import Sums, Workload


class PeakRss:
    """Growth of the resident set during a run: /proc/self/clear_refs 5 resets VmHWM."""

    def __init__(self) -> None:
        self.ok = True
        self.base = 0

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
        return out

    def start(self) -> None:
        if not self.ok:
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status()["VmRSS"]
        except (OSError, KeyError):
            self.ok = False

    def peak(self) -> int | None:
        if not self.ok:
            return None
        return max(0, self._status()["VmHWM"] - self.base)


class Bench:
    """Runs the scenarios and collects rows."""

    def __init__(self, args: argparse.Namespace, c_binary: Path | None) -> None:
        self.args = args
        self.c = c_binary
        self.rows: dict[RowKey, Row] = {}
        self.rss = PeakRss()
        self.t0 = time.monotonic()
        self.progress = args.progress

    def row(self, w: Workload, op: str, impl: str, batch: int | None, sweep: bool = False) -> Row:
        key = (w.label, w.n, op, impl, batch, sweep)
        if key not in self.rows:
            self.rows[key] = Row(w.label, w.n, op, impl, batch, sweep)
        return self.rows[key]

    def say(self, text: str) -> None:
        if self.progress:
            line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    # -- one timed Python run ---------------------------------------------------------------
    def timed(
        self,
        w: Workload,
        what: str,
        run: Callable[[], Sums],
        row: Row,
        empty_after: bool,
        checked_later: bool = False,
        before: Callable[[], object] | None = None,
    ) -> None:
        """Time ``run`` once, then check what it returned (fills: the walk after checks).

        ``before`` (a fill) runs just before the clock starts, after the housekeeping: the C
        program too starts each drain right after its fill, with the map warm in the caches.
        """
        w.reset()
        gc.collect()
        self.rss.start()
        if before is not None:
            before()
        t0 = time.perf_counter_ns()
        sums = run()
        t1 = time.perf_counter_ns()
        peak = self.rss.peak()
        if not checked_later:
            w.verify(what, sums, empty_after)
        row.ns.append((t1 - t0) / w.n)
        if peak is not None:
            row.rss.append(peak)

    # -- one map, one size -------------------------------------------------------------------
    def run_workload(self, shape: Shape, n: int) -> None:
        a = self.args
        batch = a.batch_size
        label = shape.label
        modes = workloads.batch_modes()
        with Map.create(shape.map_type, shape.key_size, shape.value_size, n, name="bench") as m:
            w = Workload(m, n, label)
            small = n <= a.full_up_to
            fill_row = self.row(w, "fill", "py_batch", None)

            def fill() -> None:
                fill_row.ns.append(w.fill())

            for rep in range(a.reps):
                per_key = rep < a.per_key_reps
                where = f"{label}, {n:,} entries, rep {rep + 1}/{a.reps}"
                if self.c is not None:
                    self.say(f"{where}: C")
                    # Three runs, so that each drain follows a fill, as the Python drains do
                    # (a drain right after a lookup walk finds a warmer cache: ~5-10% faster).
                    runs = [["fill_batch", "lookup_batch"], ["drain_batch"]]
                    if per_key:
                        runs.append(
                            ["fill_key", "lookup_key", "drain_key"] if small else ["drain_key"]
                        )
                    for scen in runs:
                        got = run_c(self.c, m, scen, batch)
                        for (op, impl), name in C_SCENARIO.items():
                            if name in got:
                                self.row(w, op, impl, row_batch(op, impl, batch)).ns.append(
                                    got[name]
                                )
                for mode in modes:
                    self.say(f"{where}: Python drain, {IMPL_LABELS[mode]}")
                    self.timed(
                        w,
                        f"drain {mode}",
                        workloads.batch_run(w, "drain", mode, batch),
                        self.row(w, "drain", mode, batch),
                        empty_after=True,
                        before=fill,
                    )
                self.say(f"{where}: Python lookups")
                for i, mode in enumerate(modes):
                    self.timed(
                        w,
                        f"lookup {mode}",
                        workloads.batch_run(w, "lookup", mode, batch),
                        self.row(w, "lookup", mode, batch),
                        empty_after=False,
                        before=None if i else fill,
                    )
                if per_key:
                    self.say(f"{where}: Python per key")
                    if small:
                        w.clear()
                        self.timed(
                            w,
                            "fill py_key",
                            lambda: workloads.py_key_fill(w),
                            self.row(w, "fill", "py_key", None),
                            empty_after=False,
                            checked_later=True,
                        )
                        self.timed(
                            w,
                            "lookup py_key",
                            lambda: workloads.py_key_walk(w, False),
                            self.row(w, "lookup", "py_key", None),
                            empty_after=False,
                        )
                    self.timed(
                        w,
                        "drain py_key",
                        lambda: workloads.py_key_walk(w, True),
                        self.row(w, "drain", "py_key", None),
                        empty_after=True,
                    )
                    self.say(f"{where}: Python per_key_batches")
                    self.timed(
                        w,
                        "drain py_key_lib",
                        lambda: workloads.consume_batches(
                            w, per_key_batches(m.access, delete=True, batch_size=batch)
                        ),
                        self.row(w, "drain", "py_key_lib", None),
                        empty_after=True,
                        before=fill,
                    )
                else:
                    w.clear()  # the next repetition starts from an empty map
            if a.tracemalloc:
                for mode in modes:
                    self.say(f"{label}, {n:,} entries: tracemalloc, drain {IMPL_LABELS[mode]}")
                    self.traced(w, mode, batch)

    def traced(self, w: Workload, mode: str, batch: int) -> None:
        """One untimed drain under tracemalloc: the peak of Python allocations."""
        w.fill()
        run = workloads.batch_run(w, "drain", mode, batch)
        w.reset()
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            sums = run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        w.verify(f"drain {mode} (tracemalloc)", sums, empty_after=True)
        self.row(w, "drain", mode, batch).py_peak = peak

    def run_sweep(self, shape: Shape, n: int) -> None:
        a = self.args
        with Map.create(
            shape.map_type, shape.key_size, shape.value_size, n, name="bench_sweep"
        ) as m:
            w = Workload(m, n, shape.label)
            for rep in range(a.sweep_reps):
                for batch in a.sweep:
                    self.say(
                        f"sweep {shape.label}, {n:,} entries, batch {batch}, "
                        f"rep {rep + 1}/{a.sweep_reps}"
                    )
                    if self.c is not None:
                        got = run_c(self.c, m, ["drain_batch"], batch)
                        self.row(w, "drain", "c_batch", batch, True).ns.append(got["drain_batch"])
                    self.timed(
                        w,
                        f"sweep drain py_view batch {batch}",
                        workloads.batch_run(w, "drain", "py_view", batch),
                        self.row(w, "drain", "py_view", batch, True),
                        empty_after=True,
                        before=w.fill,
                    )

    def run(self) -> None:
        a = self.args
        try:
            for i, shape in enumerate(a.shapes):
                for n in a.entries:
                    if i == 0 or n <= a.full_up_to:
                        self.run_workload(shape, n)
            if a.sweep:
                self.run_sweep(a.shapes[0], max(a.entries))
        finally:
            self.done()

    def report(self, c_note: str) -> dict[str, Any]:
        a = self.args
        return {
            "config": {
                "shapes": [s.label for s in a.shapes],
                "entries": a.entries,
                "reps": a.reps,
                "per_key_reps": a.per_key_reps,
                "full_up_to": a.full_up_to,
                "batch_size": a.batch_size,
                "sweep": a.sweep,
                "sweep_reps": a.sweep_reps,
                "quick": a.quick,
                "tracemalloc": a.tracemalloc,
            },
            "c_reference": self.c is not None,
            "c_note": c_note,
            "numpy": workloads.np is not None,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "rows": [
                row.as_dict(report.ratio_to_c(self.rows, row, a.batch_size))
                for row in self.rows.values()
            ],
            "targets": report.targets(self.rows, a.batch_size),
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The section: every scenario, checked; raises BenchError when a check fails."""
    c_binary, c_note = (None, "C reference skipped (--no-c)") if args.no_c else c_program(args.cc)
    if c_note:
        print(f"python -m bench: {c_note}", file=sys.stderr)
    bench = Bench(args, c_binary)
    bench.run()
    return bench.report(c_note)
