#!/usr/bin/env python3
"""Exact per-interval syscall counts per process from a double-buffered BPF map.

syscount.bpf.c counts every syscall in place (lookup, then __sync_fetch_and_add through the
pointer) in a map declared with LBB_DOUBLE_BUFFER. Every interval this script calls
DoubleBufferedMap.harvest(): it swaps a spare map into the program's slot (the kernel returns
only once no running program can still write the old one) and drains the old map. Unlike a
plain drain, no increment that lands during the harvest is lost, so the totals are exact.

    sudo python3 examples/double_buffer/harvest.py                 # until Ctrl-C
    sudo python3 examples/double_buffer/harvest.py --count 3 --top 5
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from libbpf_batch import BpfObject, DoubleBufferedMap, get_include

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "syscount.bpf.c"
# bpf_helpers.h and linux/bpf.h from the libbpf `make build` installs; LIBBPF_INCLUDE=/usr/include
# when Debian's libbpf-dev is installed instead.
LIBBPF_INCLUDE = os.environ.get(
    "LIBBPF_INCLUDE", str(HERE.parent.parent / "build/libbpf/install/include")
)


def compile_program(out_dir: Path) -> Path:
    """clang -target bpf syscount.bpf.c, with the header's directory from get_include()."""
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang is not installed: apt-get install clang llvm (or `make deps`)")
    out = out_dir / "syscount.bpf.o"
    cmd = [clang, "-target", "bpf", "-g", "-O2", "-I", get_include(), "-I", LIBBPF_INCLUDE]
    # -target bpf drops Debian's multiarch include dir, where asm/types.h lives
    for asm in glob.glob("/usr/include/*/asm/types.h"):
        cmd += ["-idirafter", str(Path(asm).parent.parent)]
    subprocess.run([*cmd, "-c", str(SOURCE), "-o", str(out)], check=True)
    return out


def load(obj_path: str | None) -> BpfObject:
    """Open and load syscount.bpf.o (compiled into a temporary directory unless given)."""
    if obj_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            obj = BpfObject.open_file(compile_program(Path(tmp)))  # libbpf reads it here
    else:
        obj = BpfObject.open_file(obj_path)
    return obj.load()


def harvest(counts: DoubleBufferedMap) -> dict[tuple[int, int], tuple[int, str]]:
    """{(pid, syscall nr): (calls, comm)} counted since the previous harvest, exactly."""
    decoder = counts.decoder()  # BTF: struct syscall_key, struct syscall_stats
    out = {}
    for batch in counts.harvest():
        for key, value in batch:
            k, v = decoder.decode_key(key), decoder.decode_value(value)
            out[(k["pid"], k["nr"])] = (v["count"], v["comm"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", help="a compiled syscount.bpf.o (default: build it now)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--count", type=int, default=None, help="stop after N harvests")
    parser.add_argument("--top", type=int, default=10, help="rows shown (default 10)")
    args = parser.parse_args(argv)

    with load(args.object) as obj, DoubleBufferedMap.from_object(obj, "counts") as counts:
        obj.attach("count_syscalls")
        harvest(counts)  # whatever was counted before this loop started
        last = time.monotonic()
        n = 0
        try:
            while args.count is None or n < args.count:
                time.sleep(args.interval)
                counted = harvest(counts)
                now = time.monotonic()
                elapsed, last = now - last, now
                n += 1
                total = sum(c for c, _ in counted.values())
                print(
                    f"-- harvest {n}: {len(counted)} keys, {total:,} syscalls in {elapsed:.2f}s "
                    f"(swap {counts.last_swap_seconds * 1e3:.1f} ms)"
                )
                print(f"{'PID':>8} {'COMM':<16} {'NR':>4} {'CALLS':>10} {'CALLS/s':>12}")
                top = sorted(counted.items(), key=lambda kv: -kv[1][0])[: args.top]
                for (pid, nr), (calls, comm) in top:
                    print(f"{pid:>8} {comm:<16} {nr:>4} {calls:>10,} {calls / elapsed:>12,.1f}")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # an interrupted harvest keeps its rest for the next one; we stop here
    return 0


if __name__ == "__main__":
    sys.exit(main())
