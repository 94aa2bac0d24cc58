#!/usr/bin/env python3
"""Count every syscall on the host per (process, syscall) in the kernel; harvest it each second.

A raw tracepoint on sys_enter (tests/bpf/counters.bpf.c, count_syscalls) adds to a BTF-typed
hash map; every interval this script drains the map with batched lookup-and-delete calls, so
each harvest holds exactly what happened since the previous one, and prints the top rates.

    sudo python3 examples/harvest.py                 # until Ctrl-C
    sudo python3 examples/harvest.py --count 3 --top 5
"""

from __future__ import annotations

import argparse
import sys
import time

from common import load_counters

from libbpf_batch import Map


def harvest(m: Map) -> dict[tuple[int, int], tuple[int, str]]:
    """Drain the map: {(pid, syscall nr): (calls, comm)} since the previous drain."""
    decoder = m.decoder()  # BTF: struct syscall_key {pid, nr}, struct syscall_stats {count, comm}
    out = {}
    for batch in m.drain():
        for key, value in batch:
            k, v = decoder.decode_key(key), decoder.decode_value(value)
            out[(k["pid"], k["nr"])] = (v["count"], v["comm"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", help="a compiled counters.bpf.o (default: build it now)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=None, help="stop after N harvests")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)

    with load_counters(args.object) as obj, obj.map("syscalls") as m:
        obj.attach("count_syscalls")
        m.clear()
        last = time.monotonic()
        n = 0
        try:
            while args.count is None or n < args.count:
                time.sleep(args.interval)
                now = time.monotonic()
                counts = harvest(m)
                elapsed, last = now - last, now
                n += 1
                total = sum(c for c, _ in counts.values())
                print(
                    f"-- harvest {n}: {len(counts)} keys, {total:,} syscalls in "
                    f"{elapsed:.2f}s ({total / elapsed:,.0f}/s)"
                )
                print(f"{'PID':>8} {'COMM':<16} {'NR':>4} {'CALLS/s':>12}")
                top = sorted(counts.items(), key=lambda kv: -kv[1][0])[: args.top]
                for (pid, nr), (calls, comm) in top:
                    print(f"{pid:>8} {comm:<16} {nr:>4} {calls / elapsed:>12,.1f}")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
