"""The report: rows of samples, their ratios to C, the targets, the text tables and the JSON."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from libbpf_batch import _bindings

from . import config
from .config import BATCH_MODES, IMPL_LABELS, OPS, TARGETS, row_batch


@dataclass
class Row:
    """The samples of one (map, size, operation, implementation, batch size)."""

    shape: str
    entries: int
    op: str
    impl: str
    batch_size: int | None
    sweep: bool = False
    ns: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    py_peak: int | None = None

    @property
    def median(self) -> float:
        s = sorted(self.ns)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2

    def as_dict(self, ratio: float | None) -> dict[str, Any]:
        med = self.median
        return {
            "shape": self.shape,
            "entries": self.entries,
            "op": self.op,
            "impl": self.impl,
            "label": IMPL_LABELS[self.impl],
            "batch_size": self.batch_size,
            "sweep": self.sweep,
            "checked": True,
            "ns_per_entry": [round(x, 2) for x in self.ns],
            "median_ns": round(med, 2),
            "min_ns": round(min(self.ns), 2),
            "max_ns": round(max(self.ns), 2),
            "entries_per_s": round(1e9 / med),
            "ratio_to_c_batch": None if ratio is None else round(ratio, 3),
            "rss_peak_bytes": max(self.rss) if self.rss else None,
            "tracemalloc_peak_bytes": self.py_peak,
        }


RowKey = tuple[str, int, str, str, Optional[int], bool]  # shape, entries, op, impl, batch, sweep
Rows = Mapping[RowKey, Row]


def ratio_to_c(rows: Rows, row: Row, batch_size: int) -> float | None:
    """``row``'s median over the C batch row it compares with (same map, size, op, batch)."""
    if row.op == "fill":
        batch = None
    else:  # per-key walks compare with the main batch size
        batch = batch_size if row.batch_size is None else row.batch_size
    ref = rows.get((row.shape, row.entries, row.op, "c_batch", batch, row.sweep))
    return row.median / ref.median if ref is not None and ref.ns and row.ns else None


def targets(rows: Rows, batch: int) -> list[dict[str, Any]]:
    """Each target met or not, from the rows of the target map at config.TARGET_ENTRIES."""
    out: list[dict[str, Any]] = []
    label, entries = config.TARGET_LABEL, config.TARGET_ENTRIES
    for op, impl, ref, limit, text in TARGETS:
        row = rows.get((label, entries, op, impl, row_batch(op, impl, batch), False))
        ref_row = rows.get((label, entries, op, ref, row_batch(op, ref, batch), False))
        if row is None or ref_row is None:
            continue
        ratio = row.median / ref_row.median
        speedup = limit >= 2
        out.append(
            {
                "target": text,
                "op": op,
                "impl": impl,
                "reference": ref,
                "ratio": round(ratio, 3),
                "speedup": round(1 / ratio, 2) if speedup else None,
                "limit": limit,
                "met": 1 / ratio >= limit if speedup else ratio <= limit,
            }
        )
    if batch == 4096:
        for mode in BATCH_MODES:
            row = rows.get((label, entries, "drain", mode, batch, False))
            if row is None:
                continue
            peaks = [p for p in (max(row.rss) if row.rss else None, row.py_peak) if p is not None]
            if peaks:
                out.append(
                    {
                        "target": f"drain 1,000,000 with batch 4096 ({IMPL_LABELS[mode]})"
                        " adds < 2 MiB (larger of RSS growth and tracemalloc)",
                        "op": "drain",
                        "impl": mode,
                        "reference": None,
                        "ratio": None,
                        "bytes": max(peaks),
                        "limit": config.MEMORY_TARGET,
                        "met": max(peaks) < config.MEMORY_TARGET,
                    }
                )
    return out


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    from .workloads import np

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libbpf": _bindings.libbpf_version_string(),
        "numpy": np.__version__ if np is not None else None,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


# -- text ----------------------------------------------------------------------------------------


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f}"


def format_targets(found: list[dict[str, Any]]) -> list[str]:
    """One line per target: met or MISS, and what was measured."""
    lines = []
    for t in found:
        if t.get("bytes") is not None:
            got = f"{t['bytes'] / 2**20:.2f} MiB"
        elif t.get("speedup") is not None:
            got = f"{t['speedup']:.1f}x faster"
        else:
            got = f"{t['ratio']:.2f}x"
        lines.append(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {got}")
    return lines


def format_drain(drain: dict[str, Any]) -> list[str]:
    """The drain section as text tables, one per map and size, then the sweep and targets."""
    lines = []
    if drain["c_note"]:
        lines.append(drain["c_note"])
    head = (
        f"  {'op':<7}{'implementation':<27}{'batch':>6} {'runs':>4} {'ns/entry':>9} "
        f"{'min-max':>13} {'entries/s':>11} {'x C':>6} {'RSS +KiB':>9} {'py peak KiB':>11}"
    )
    groups: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for row in drain["rows"]:
        groups.setdefault((row["shape"], row["entries"], row["sweep"]), []).append(row)
    order = {impl: i for i, impl in enumerate(IMPL_LABELS)}
    for (shape, entries, sweep), rows in groups.items():
        lines.append("")
        title = "drain sweep over batch sizes" if sweep else "fill, lookup-only walk, drain"
        lines.append(f"{shape}, {entries:,} entries: {title} (median ns per entry)")
        lines.append(head)
        rows.sort(
            key=lambda r: (
                OPS.index(r["op"]),
                r["batch_size"] or 0 if sweep else 0,
                order[r["impl"]],
            )
        )
        for r in rows:
            ratio = r["ratio_to_c_batch"]
            spread = f"{r['min_ns']:,.0f}-{r['max_ns']:,.0f}"
            x_c = "-" if ratio is None else f"{ratio:.2f}"
            lines.append(
                f"  {r['op']:<7}{r['label']:<27}{r['batch_size'] or '-':>6} "
                f"{len(r['ns_per_entry']):>4} {r['median_ns']:>9,.0f} {spread:>13} "
                f"{r['entries_per_s']:>11,} {x_c:>6} "
                f"{_kib(r['rss_peak_bytes']):>9} {_kib(r['tracemalloc_peak_bytes']):>11}"
            )
    if drain["targets"]:
        lines.append("")
        lines.append(f"targets ({config.TARGET_LABEL}, 1,000,000 entries, medians of this run):")
        lines.extend(format_targets(drain["targets"]))
    return lines


def format_summary(name: str, result: dict[str, Any]) -> list[str]:
    """A section other than drain: its "summary" (a str or list of lines) or its scalar fields,
    then its "targets" when they have the drain section's shape."""
    lines = [f"{name}:"]
    summary = result.get("summary")
    if isinstance(summary, str):
        lines.extend(f"  {line}" for line in summary.splitlines())
    elif isinstance(summary, list):
        lines.extend(f"  {line}" for line in summary)
    else:
        scalars = [
            (k, v) for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None
        ]
        lines.extend(f"  {k}: {v}" for k, v in scalars[:20])
    found = result.get("targets")
    if isinstance(found, list) and all(isinstance(t, dict) and "target" in t for t in found):
        lines.extend(format_targets(found))
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The whole report as text: where it ran, then each section that ran, then the skips."""
    mc = report["machine"]
    head = (
        f"libbpf-batch benchmark: {mc['cpus']} CPUs, kernel {mc['kernel']}, "
        f"Python {mc['python']}, libbpf {mc['libbpf']}, "
        f"numpy {mc['numpy'] or 'absent'}; {report['elapsed_s']} s"
    )
    lines = [head]
    for name in report["sections"]:
        lines.append("")
        if name == "drain":
            lines.extend(format_drain(report[name]))
        else:
            lines.extend(format_summary(name, report[name]))
    for name, why in report["skipped"].items():
        lines.append(f"section {name} skipped: {why}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
