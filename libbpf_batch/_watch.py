"""The watch view: each read's numbers and rates per key, sorted, as a table or a JSON line."""

from __future__ import annotations

import json
import time
from typing import IO, Any

from ._output import EntryFormatter, hex_list
from .batch import Batch
from .maps import Map


def read_numbers(
    m: Map,
    f: EntryFormatter,
    drain: bool,
    batch_size: int | None,
    taken: list[Batch] | None = None,
) -> dict[bytes, dict[str, int | float]]:
    """Each key's numeric fields, read (or drained) with batch lookups.

    A drain appends each batch to ``taken`` (copies) the moment it has it, so a caller that
    is stopped before showing them can put them back.
    """
    if not drain:
        batches = m.batches(batch_size, copy=False)
        return {bytes(k): f.numbers(v) for batch in batches for k, v in batch}
    keep = [] if taken is None else taken
    for batch in m.drain(batch_size):
        keep.append(batch)  # one C call: kept, or not yet handed over
    return {bytes(k): f.numbers(v) for batch in keep for k, v in batch}


def build_rows(
    cur: dict[bytes, dict[str, int | float]],
    prev: dict[bytes, dict[str, int | float]] | None,
    dt: float | None,
    drain: bool,
) -> list[dict[str, Any]]:
    """One row per key: its fields and their rates per second (None before a second read)."""
    rows = []
    for key, fields in cur.items():
        rates: dict[str, float | None] = {}
        for name, n in fields.items():
            if dt is None or dt <= 0:
                rates[name] = None
            elif drain:  # a drained value is what accumulated since the previous drain
                rates[name] = n / dt
            elif prev is not None and name in prev.get(key, {}):
                rates[name] = (n - prev[key][name]) / dt
            else:
                rates[name] = None
        rows.append({"key": key, "fields": fields, "rates": rates})
    return rows


def sort_rows(rows: list[dict[str, Any]], sort: str, field: str | None) -> None:
    """Sort in place by key, or biggest value or rate first (rows without one last)."""
    if sort == "key":
        rows.sort(key=lambda r: r["key"])
        return
    part = "fields" if sort == "value" else "rates"

    def rank(r: dict[str, Any]) -> tuple[int, float]:
        values = r[part]
        name = field if field is not None else next(iter(r["fields"]), None)
        v = values.get(name) if name is not None else None
        return (0, -v) if v is not None else (1, 0.0)

    rows.sort(key=rank)


def write_json(
    out: IO[str],
    m: Map,
    f: EntryFormatter,
    top: list[dict[str, Any]],
    entries: int,
    dt: float | None,
) -> None:
    """One read as one JSON line: the map, its entry count and the top rows."""
    out.write(
        json.dumps(
            {
                "time": time.time(),
                "map": {"id": m.id, "name": m.name},
                "entries": entries,
                "interval": dt,
                "top": [
                    {
                        "key": hex_list(r["key"]),
                        "key_text": f.key_text(r["key"]),
                        "fields": r["fields"],
                        "rates": r["rates"],
                    }
                    for r in top
                ],
            }
        )
        + "\n"
    )


def write_view(
    out: IO[str],
    m: Map,
    f: EntryFormatter,
    top: list[dict[str, Any]],
    entries: int,
    dt: float | None,
    *,
    drained: bool,
    clear: bool,
) -> None:
    """One read as a heading and a table, first clearing the terminal when ``clear``."""
    if clear:
        out.write("\x1b[H\x1b[2J")
    self_desc = "drained" if drained else "read"
    out.write(
        f"{m.name} (id {m.id}, {m.info.type_name}): {entries} entries "
        f"{self_desc} at {time.strftime('%H:%M:%S')}"
        + (f", {dt:.2f}s since the last read" if dt else "")
        + "\n"
    )
    write_table(out, f, top)


def write_table(out: IO[str], f: EntryFormatter, rows: list[dict[str, Any]]) -> None:
    """KEY, then each numeric field and its rate, numbers right-aligned."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["fields"] if n not in names]
    heads = ["KEY"] + [h for n in names for h in (n.upper(), f"{n.upper()}/s")]
    table = [
        [f.key_text(r["key"])]
        + [
            c
            for n in names
            for c in (format_number(r["fields"].get(n)), format_number(r["rates"].get(n)))
        ]
        for r in rows
    ]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(heads)]
    for line in [heads] + table:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        out.write("  ".join(cells).rstrip() + "\n")


def format_number(n: float | None) -> str:
    """Thousands separated; floats to one decimal; None as '-'."""
    if n is None:
        return "-"
    if isinstance(n, float):
        return f"{n:,.1f}"
    return f"{n:,}"
