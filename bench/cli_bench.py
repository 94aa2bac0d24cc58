"""The command against bpftool on the same 1,000,000-entry maps, in every format.

Two maps: a HASH without BTF (key 4 B, value 8 B) and one with BTF, a struct key
``{u32 pid; u16 port; u8 proto}`` -> ``{u64 packets; u64 bytes}`` (compiled from the C below
by clang, loaded with libbpf, so the kernel holds real BTF for it). Each command writes to
/dev/null; its wall time and peak RSS (wait4's ru_maxrss) are taken per run. bpftool (Debian's
``bpftool``, when installed) runs on the same maps in the same run: ``-j map dump`` is the
baseline of json/jsonl, plain ``map dump`` of table/csv; ``drain`` is compared to the same dump
(bpftool has none) and the map is refilled, untimed, after each drain.

    python bench/cli_bench.py [--entries N] [--repeat R] [--json FILE]

``run(entries) -> dict`` is what the benchmark runner calls. The machine is shared: each row
carries the median and the min-max over the repetitions; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from libbpf_batch import Map, MapType
from libbpf_batch.objects import BpfObject

FORMATS = ("table", "json", "jsonl", "csv")
BTF_SOURCE = """
typedef unsigned int __u32;
typedef unsigned short __u16;
typedef unsigned char __u8;
typedef unsigned long long __u64;
struct flow { __u32 pid; __u16 port; __u8 proto; };
struct flow_stats { __u64 packets; __u64 bytes; };
/* what libbpf's __uint()/__type() macros expand to: no headers needed */
struct {
	int (*type)[1];              /* BPF_MAP_TYPE_HASH */
	int (*max_entries)[MAX_ENTRIES];
	struct flow *key;
	struct flow_stats *value;
} flows __attribute__((section(".maps"), used));
"""
KEY = struct.Struct("<IHBx")  # struct flow: 7 bytes of fields, aligned to 8
VALUE = struct.Struct("<QQ")


def _plain_values(n: int) -> tuple[bytes, bytes]:
    keys = struct.pack(f"<{n}I", *range(n))
    values = struct.pack(f"<{n}Q", *(3 * i for i in range(n)))
    return keys, values


def _flow_values(n: int) -> tuple[bytes, bytes]:
    keys = b"".join(KEY.pack(1000 + i // 60000, i % 60000, 6 + 11 * (i & 1)) for i in range(n))
    values = b"".join(VALUE.pack(i, 1500 * i) for i in range(n))
    return keys, values


@contextmanager
def btf_map(entries: int) -> Iterator[Map]:
    """The BTF struct map, from a BPF object clang builds from BTF_SOURCE."""
    clang = shutil.which("clang")
    if clang is None:
        raise RuntimeError("clang is not installed (apt-get install clang)")
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        src, obj_path = Path(tmp, "flows.bpf.c"), Path(tmp, "flows.bpf.o")
        src.write_text(BTF_SOURCE)
        subprocess.run(
            [clang, "-target", "bpf", "-g", "-O2", f"-DMAX_ENTRIES={entries}", "-c", str(src)]
            + ["-o", str(obj_path)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with BpfObject.open_file(obj_path) as obj:
            obj.load()
            with obj.map("flows") as m:
                yield m


GNU_TIME = "/usr/bin/time"  # Debian's `time` package


def timed(cmd: list[str]) -> tuple[float, int | None]:
    """Run ``cmd`` with stdout to /dev/null: (seconds, peak RSS in KiB). Fails loudly.

    The peak RSS comes from GNU time (None without it), not from our own wait4: exec records
    the spawning process's high-water mark in the child's ru_maxrss (fork and vfork alike),
    so every command would report this process's size. time is a small process.
    """
    with tempfile.NamedTemporaryFile() as rss, tempfile.TemporaryFile() as err:
        wrapped = cmd
        if os.access(GNU_TIME, os.X_OK):
            wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=err, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}: {err.read().decode().strip()}"
            )
        text = Path(rss.name).read_text().strip()
    return elapsed, int(text.splitlines()[-1]) if text else None


def _stats(runs: list[tuple[float, int | None]]) -> dict[str, Any]:
    times = [t for t, _ in runs]
    return {
        "seconds": round(statistics.median(times), 3),
        "min": round(min(times), 3),
        "max": round(max(times), 3),
        "peak_rss_kib": max((rss for _, rss in runs if rss is not None), default=None),
    }


def _measure_map(
    label: str, m: Map, fill: tuple[bytes, bytes], repeat: int, bpftool: str | None
) -> list[dict[str, Any]]:
    ours = [sys.executable, "-m", "libbpf_batch"]
    rows: list[dict[str, Any]] = []
    base: dict[str, dict[str, Any]] = {}
    if bpftool is not None:
        for name, extra in (("json", ["-j"]), ("plain", [])):
            base[name] = _stats(
                [timed([bpftool, *extra, "map", "dump", "id", str(m.id)]) for _ in range(repeat)]
            )
            rows.append({"map": label, "tool": "bpftool", "command": f"dump {name}", **base[name]})
    for command in ("dump", "drain"):
        for fmt in FORMATS:
            runs = []
            for _ in range(repeat):
                runs.append(timed([*ours, command, "id", str(m.id), "--format", fmt, "-q"]))
                if command == "drain":
                    if m.next_key() is not None:
                        raise RuntimeError(f"{label}: drain left elements in the map")
                    m.update_batch(*fill)
            row = {"map": label, "tool": "libbpf-batch", "command": f"{command} {fmt}"}
            row.update(_stats(runs))
            ref = base.get("json" if fmt.startswith("json") else "plain")
            if ref is not None:
                row["bpftool_seconds"] = ref["seconds"]
                row["ratio"] = round(row["seconds"] / ref["seconds"], 3)
            rows.append(row)
    runs = [timed([*ours, "watch", "id", str(m.id), "--once", "-q"]) for _ in range(repeat)]
    rows.append({"map": label, "tool": "libbpf-batch", "command": "watch --once", **_stats(runs)})
    return rows


def _bpftool_version(bpftool: str | None) -> str | None:
    if bpftool is None:
        return None
    proc = subprocess.run([bpftool, "version"], check=False, capture_output=True, text=True)
    return proc.stdout.split("\n")[0]


def run(entries: int = 1_000_000, repeat: int = 3) -> dict[str, Any]:
    """Time bpftool and the command on the same maps of ``entries`` elements, every format."""
    bpftool = shutil.which("bpftool")
    report: dict[str, Any] = {
        "entries": entries,
        "repeat": repeat,
        "bpftool": _bpftool_version(bpftool),
        "rows": [],
    }
    fill = _plain_values(entries)
    with Map.create(MapType.HASH, 4, 8, entries, name="cli_bench") as m:
        m.update_batch(*fill)
        report["rows"] += _measure_map("hash 4B/8B, no BTF", m, fill, repeat, bpftool)
    fill = _flow_values(entries)
    with btf_map(entries) as m:
        m.update_batch(*fill)
        report["rows"] += _measure_map(
            "hash struct flow -> flow_stats, BTF", m, fill, repeat, bpftool
        )
    report["summary"] = format_report(report).splitlines()  # what `python -m bench` prints
    return report


def format_report(report: dict[str, Any]) -> str:
    head = f"{'map':38} {'tool':12} {'command':13} {'s':>7} {'min-max':>13} {'ratio':>6}"
    lines = [
        f"{report['entries']:,} entries, median of {report['repeat']} (min-max); "
        + (report["bpftool"] or "bpftool not installed"),
        head + f" {'peak RSS':>9}",
    ]
    for r in report["rows"]:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(
            f"{r['map']:38} {r['tool']:12} {r['command']:13} {r['seconds']:7.3f} "
            f"{r['min']:6.3f}-{r['max']:<6.3f} {ratio:>6} "
            + (f"{r['peak_rss_kib'] / 1024:7.1f}MB" if r["peak_rss_kib"] else "        -")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.entries, args.repeat)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
