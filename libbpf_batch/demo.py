"""`make demo`: fill a 1,000,000-entry hash map, drain it batch by batch and per key, compare."""

from __future__ import annotations

import argparse
import array
import sys
import time
from collections.abc import Sequence

from .batch import per_key_batches
from .maps import Map, MapType


def _fill(m: Map, n: int) -> None:
    keys = array.array("I", range(n))
    values = array.array("Q", range(1, n + 1))
    m.update_batch(keys, values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m libbpf_batch.demo", description=__doc__)
    parser.add_argument("-n", "--entries", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.entries

    with Map.create(MapType.HASH, 4, 8, n, name="demo_counts") as m:
        print(f"created {m!r}")
        _fill(m, n)
        t0 = time.perf_counter()
        drained = sum(b.count for b in m.drain(args.batch_size, copy=False))
        batch_s = time.perf_counter() - t0
        assert drained == n and m.next_key() is None, (drained, n)
        print(
            f"batch drain:   {drained:>9,} entries in {batch_s:7.3f} s "
            f"= {drained / batch_s:>12,.0f} entries/s"
        )

        _fill(m, n)
        t0 = time.perf_counter()
        drained = sum(b.count for b in per_key_batches(m.access, delete=True, batch_size=4096))
        key_s = time.perf_counter() - t0
        assert drained == n and m.next_key() is None, (drained, n)
        print(
            f"per-key drain: {drained:>9,} entries in {key_s:7.3f} s "
            f"= {drained / key_s:>12,.0f} entries/s"
        )
        print(f"speed-up: {key_s / batch_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
