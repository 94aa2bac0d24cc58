#!/usr/bin/env python3
"""Double-buffered harvests: what a swap costs, how fast a harvest drains, what a drain loses.

    python bench/harvest_bench.py [--entries N] [--repeat R] [--swaps K] [--calls N] [--json F]

:func:`run` returns a JSON-able dict (``main`` prints it), measured in one run:

  swap     K swaps of an idle double-buffered map (one bpf_map_update_elem on the one-slot
           ARRAY_OF_MAPS, which returns after an RCU grace period): median, min, max in ms.
  harvest  a HASH (4 B keys, 8 B values) of N entries, R times: DoubleBufferedMap.harvest()
           (swap + drain, copy=False) against Map.drain(copy=False) of the same contents;
           medians, entries/s, their ratio and the swap's share of a harvest.
  loss     tests/bpf/double_buffer.bpf.c counts a child's getppid() calls in place in a
           double-buffered map and a plain HASH; while the child makes C calls one thread
           harvests the first and another drains the second as fast as they can. Counted and
           lost per method, swaps and drains made, swap median under load. Needs clang and
           the source tree; otherwise {"skipped": reason}.

Every figure is checked: a harvest or drain that does not return all N entries, or a
double-buffered count that is not exactly C, raises. The machine may be shared and noisy:
compare figures from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from libbpf_batch import Batch, BpfObject, DoubleBufferedMap, Map, MapType, get_include

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"  # the BPF test program, its build helper and the getppid workload


def _ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(seconds) * 1e3, 3),
        "min_ms": round(min(seconds) * 1e3, 3),
        "max_ms": round(max(seconds) * 1e3, 3),
    }


def _count(batches: Iterable[Batch]) -> int:
    return sum(b.count for b in batches)


def _fill(m: Map, n: int) -> None:
    keys = b"".join(struct.pack("<I", i) for i in range(n))
    m.update_batch(keys, bytes(8 * n))


def _double_buffered_hash(max_entries: int) -> tuple[Map, Map]:
    """A one-slot ARRAY_OF_MAPS with a HASH (4 B keys, 8 B values) in its slot."""
    inner = Map.create(MapType.HASH, 4, 8, max_entries, name="bench_inner")
    try:
        outer = Map.create(MapType.ARRAY_OF_MAPS, 4, 4, 1, name="bench_outer", inner_map=inner)
        outer.update(bytes(4), inner)
    except BaseException:
        inner.close()
        raise
    return outer, inner


def measure_swaps(swaps: int) -> dict[str, Any]:
    """``swaps`` harvests of an empty double-buffered map: the swap alone."""
    outer, inner = _double_buffered_hash(1024)
    with outer, inner, DoubleBufferedMap(outer) as db:
        times = []
        for _ in range(swaps):
            assert _count(db.harvest()) == 0
            assert db.last_swap_seconds is not None
            times.append(db.last_swap_seconds)
    return {"n": swaps, **_ms(times)}


def measure_harvest(entries: int, repeat: int) -> dict[str, Any]:
    """harvest() against drain() of the same ``entries``-entry HASH, ``repeat`` times each."""
    outer, inner = _double_buffered_hash(entries)
    harvests, drains, swaps = [], [], []
    with outer, inner, DoubleBufferedMap(outer) as db:
        for _ in range(repeat):
            _fill(db.current, entries)
            start = time.perf_counter()
            got = _count(db.harvest(copy=False))
            harvests.append(time.perf_counter() - start)
            assert db.last_swap_seconds is not None
            swaps.append(db.last_swap_seconds)
            if got != entries:
                raise RuntimeError(f"harvest returned {got:,} of {entries:,} entries")
            _fill(db.current, entries)
            start = time.perf_counter()
            got = _count(db.current.drain(copy=False))
            drains.append(time.perf_counter() - start)
            if got != entries:
                raise RuntimeError(f"drain returned {got:,} of {entries:,} entries")
    h, d, s = (statistics.median(x) for x in (harvests, drains, swaps))
    return {
        "entries": entries,
        "repeat": repeat,
        "harvest_median_s": round(h, 4),
        "drain_median_s": round(d, 4),
        "harvest_entries_per_s": round(entries / h),
        "drain_entries_per_s": round(entries / d),
        "harvest_vs_drain": round(h / d, 3),
        "swap_median_ms": round(s * 1e3, 3),
        "swap_share": round(s / h, 3),
    }


def measure_loss(calls: int) -> dict[str, Any]:
    """Plain drain against double-buffered harvests of the same in-place counts, same run."""
    sys.path.insert(0, str(TESTS))
    try:
        from bpf.build import Unavailable, compile_program
        from bpf.workload import GETPPID_NR, GetppidChild
    except ImportError as e:
        return {"skipped": f"needs the source tree's tests/bpf ({e})"}
    finally:
        sys.path.remove(str(TESTS))
    if GETPPID_NR is None:
        return {"skipped": "getppid's syscall number is only known for x86_64 and aarch64"}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = compile_program(
                TESTS / "bpf" / "double_buffer.bpf.c", Path(tmp), [get_include()]
            )
        except Unavailable as e:
            return {"skipped": str(e)}
        obj = BpfObject.open_file(path)
    with obj:
        obj.load()
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(obj.map("target"))
            plain = stack.enter_context(obj.map("plain_syscalls"))
            db = stack.enter_context(DoubleBufferedMap.from_object(obj, "db_syscalls"))
            child = stack.enter_context(GetppidChild())
            target.update(bytes(4), struct.pack("<I", child.pid))
            key = struct.pack("<II", child.pid, GETPPID_NR)
            totals = {"db": 0, "plain": 0, "drains": 0}
            swap_times: list[float] = []
            errors: list[BaseException] = []
            stop = threading.Event()

            def mine(batches: Iterable[Batch]) -> int:
                return sum(
                    int.from_bytes(v[:8], "little") for b in batches for k, v in b if k == key
                )

            def harvest_loop() -> None:
                try:
                    while not stop.is_set():
                        totals["db"] += mine(db.harvest(copy=False))
                        swap_times.append(db.last_swap_seconds or 0.0)
                except BaseException as e:  # noqa: BLE001 (re-raised below)
                    errors.append(e)

            def drain_loop() -> None:
                try:
                    while not stop.is_set():
                        totals["plain"] += mine(plain.drain(copy=False))
                        totals["drains"] += 1
                except BaseException as e:  # noqa: BLE001 (re-raised below)
                    errors.append(e)

            with obj.attach("count_syscalls"):
                threads = [threading.Thread(target=f) for f in (harvest_loop, drain_loop)]
                for t in threads:
                    t.start()
                start = time.perf_counter()
                try:
                    child.run(calls)
                finally:
                    elapsed = time.perf_counter() - start
                    stop.set()
                    for t in threads:
                        t.join()
            if errors:
                raise errors[0]
            totals["db"] += mine(db.harvest())  # the last interval, program detached
            totals["plain"] += mine(plain.drain())
            swaps = db.swaps
    if totals["db"] != calls:
        raise RuntimeError(f"double-buffered harvests counted {totals['db']:,} of {calls:,}")
    return {
        "calls": calls,
        "workload_s": round(elapsed, 3),
        "double_buffered": {
            "counted": totals["db"],
            "lost": calls - totals["db"],
            "swaps": swaps,
            "swap_under_load": _ms(swap_times),
        },
        "plain_drain": {
            "counted": totals["plain"],
            "lost": calls - totals["plain"],
            "lost_per_million": round((calls - totals["plain"]) * 1e6 / calls, 1),
            "drains": totals["drains"],
        },
    }


def run(
    entries: int = 1_000_000, repeat: int = 3, swaps: int = 20, calls: int = 5_000_000
) -> dict[str, Any]:
    """Every measurement above, as one JSON-able dict."""
    report = {
        "swap": measure_swaps(swaps),
        "harvest": measure_harvest(entries, repeat),
        "loss": measure_loss(calls) if calls else {"skipped": "--calls 0"},
    }
    report["summary"] = _summary(report)  # what `python -m bench` prints
    return report


def _summary(r: dict[str, Any]) -> list[str]:
    s, h, loss = r["swap"], r["harvest"], r["loss"]
    lines = [
        f"swap (idle): median {s['median_ms']} ms ({s['min_ms']}-{s['max_ms']}), {s['n']} swaps",
        (
            f"harvest of {h['entries']:,} entries: {h['harvest_median_s']} s, drain of the same "
            f"{h['drain_median_s']} s ({h['harvest_vs_drain']}x; the swap is {h['swap_share']:.1%})"
        ),
    ]
    if "skipped" not in loss:
        db, plain = loss["double_buffered"], loss["plain_drain"]
        lines.append(
            f"{loss['calls']:,} in-place increments: double-buffered lost {db['lost']} "
            f"({db['swaps']} swaps), plain drain lost {plain['lost']} ({plain['drains']} drains)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="harvested map size")
    parser.add_argument("--repeat", type=int, default=3, help="harvests and drains timed")
    parser.add_argument("--swaps", type=int, default=20, help="idle swaps timed")
    parser.add_argument(
        "--calls", type=int, default=5_000_000, help="getppid() calls in the loss run (0: skip)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.entries, args.repeat, args.swaps, args.calls)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
