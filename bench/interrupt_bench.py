"""What "nothing lost on interruption" costs: per batch, per walk, and per element put back.

``run()`` returns a dict for the benchmark's JSON report; ``python bench/interrupt_bench.py``
prints it. Needs root (or CAP_BPF). The drain below and a bare loop of the same syscalls with
the same buffers, but without the mechanism (no mark, no separate out_batch, no Hold, no try),
run interleaved on the same freshly filled map, so machine noise hits both alike.
"""

from __future__ import annotations

import json
import statistics
import time
import timeit
from typing import Any

from libbpf_batch import Map, MapType, _bindings
from libbpf_batch._libbpf import ffi
from libbpf_batch.batch import _NOT_RUN, Hold, put_back


def _fill(m: Map, n: int) -> None:
    keys = memoryview(bytearray(n * 4)).cast("I")
    for i in range(n):
        keys[i] = i
    m.update_batch(keys.tobytes(), bytes(8 * n))


def _bare_drain(m: Map, batch_size: int) -> int:
    """The drain loop without the mechanism: one cursor for in and out, nothing marked."""
    fd = m.fd
    keys = ffi.new("char[]", batch_size * m.key_size)
    values = ffi.new("char[]", batch_size * m.value_stride)
    cursor = ffi.new("char[]", max(4, m.key_size))
    count = ffi.new("__u32 *")
    in_batch, total = _bindings.NULL, 0
    while True:
        count[0] = batch_size
        done = _bindings.bpf_map_lookup_and_delete_batch(fd, in_batch, cursor, keys, values, count)
        total += count[0]
        if done:
            return total
        in_batch = cursor


def _mechanism_ns_per_batch() -> float:
    """The per-batch work the mechanism adds to the loop: mark, check, swap (no exception)."""
    cursors = [ffi.new("char[]", 4) for _ in range(2)]
    marks = [ffi.cast("__u32 *", c) for c in cursors]
    state = {"out": 0, "in_batch": _bindings.NULL}

    def one() -> None:
        out = state["out"]
        mark = marks[out]
        mark[0] = _NOT_RUN
        try:
            pass
        except BaseException:
            if mark[0] != _NOT_RUN:
                raise
            raise
        state["in_batch"], state["out"] = cursors[out], 1 - out

    def baseline() -> None:
        state["in_batch"] = cursors[0]

    n = 200_000
    with_mech = min(timeit.repeat(one, number=n, repeat=5)) / n
    without = min(timeit.repeat(baseline, number=n, repeat=5)) / n
    return (with_mech - without) * 1e9


def run(entries: int = 1_000_000, batch_size: int = 4096, reps: int = 5) -> dict[str, Any]:
    """Medians over ``reps`` interleaved runs; ns figures are per entry unless named."""
    lib_ns: list[float] = []
    bare_ns: list[float] = []
    with Map.create(MapType.HASH, 4, 8, entries, name="interrupt_bench") as m:
        for _ in range(reps):
            _fill(m, entries)
            t = time.perf_counter_ns()
            n = sum(b.count for b in m.drain(batch_size, copy=False))
            lib_ns.append((time.perf_counter_ns() - t) / entries)
            assert n == entries
            _fill(m, entries)
            t = time.perf_counter_ns()
            assert _bare_drain(m, batch_size) == entries
            bare_ns.append((time.perf_counter_ns() - t) / entries)

        # the Hold each walk takes: dup + close of the map's fd
        access = m.access
        hold_ns = (
            min(timeit.repeat(lambda: Hold(access, "bench").close(), number=2000, repeat=5))
            / 2000
            * 1e9
        )

        # putting back one interrupted batch: one BPF_NOEXIST update per element, in C
        put_ns: list[float] = []
        for _ in range(reps):
            _fill(m, batch_size)
            batch = m.lookup_and_delete_batch(batch_size)
            t = time.perf_counter_ns()
            restored = put_back(access, batch)
            put_ns.append((time.perf_counter_ns() - t) / max(batch.count, 1))
            assert restored == batch.count
            m.clear()

    batches = -(-entries // batch_size)
    mech = _mechanism_ns_per_batch()
    lib, bare = statistics.median(lib_ns), statistics.median(bare_ns)
    return {
        "entries": entries,
        "batch_size": batch_size,
        "reps": reps,
        "mechanism_ns_per_batch": round(mech, 1),
        "mechanism_share_of_drain": mech * batches / (lib * entries),
        "hold_ns_per_walk": round(hold_ns, 1),
        "drain_ns_per_entry": round(lib, 2),
        "bare_loop_ns_per_entry": round(bare, 2),
        "drain_vs_bare_loop": round(lib / bare, 3),
        "put_back_ns_per_element": round(statistics.median(put_ns), 1),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
