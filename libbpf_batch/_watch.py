"""The watch view: the top entries of each read, with their numbers and rates per second.

Memory is bounded by the batch and the rows shown: each batch's numbers are computed for the
whole batch at once and only the best ``top`` rows so far are kept. Rates need the previous
read's values: those are kept as one raw value (bytes) per key, updated in place, and only
when a rate can be shown (not with --once, not with --drain, whose values are already deltas).
Keys deleted from the map linger until they outnumber the live ones, then are dropped.
"""

from __future__ import annotations

import heapq
import itertools
import json
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from ._output import EntryFormatter, hex_list
from .batch import Batch
from .maps import MAP_OF_MAPS_TYPES, Map

_MISSING_RANK = float("-inf")  # rows with no value (or no rate yet) sort after all others
_first = operator.itemgetter(0)


def _sortable(v: Any) -> Any:
    """A decoded key as something ``<`` orders (dicts by their values, in field order)."""
    if isinstance(v, dict):
        return tuple(_sortable(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return tuple(_sortable(x) for x in v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return (1, str(v)) if not isinstance(v, bool) else (0, int(v))
    return (0, v)


def close_walk(batches: Iterator[Batch]) -> None:
    """Close a walk (generator or parallel) now: a parallel drain puts back, in its supervisor
    thread, what its workers deleted and nobody received. A signal handler's exception (Ctrl-C,
    the command's SIGTERM) does not cut that wait short, where the process could exit before
    the put-back is done: it is raised once the walk is closed."""
    close = getattr(batches, "close", None)
    interrupted: BaseException | None = None
    while close is not None:
        try:
            close()
            break
        except Exception:
            raise  # PutBackError and the like: the walk is closed
        except BaseException as e:  # noqa: BLE001 - raised below, after the wait
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


class Reader:
    """One map's reads for watch: the top rows of each, and what the next rates need."""

    def __init__(
        self,
        m: Map,
        f: EntryFormatter,
        *,
        harvest: Callable[..., Iterator[Batch]] | None = None,
        drain: bool,
        batch_size: int | None,
        workers: int = 1,
        sort: str,
        field: str | None,
        top: int,
        rates: bool,
    ) -> None:
        self.m, self.f, self.drain, self.batch_size = m, f, drain, batch_size
        self.workers = workers  # threads splitting a hash map's buckets (Map.drain)
        self.harvest = harvest  # a double buffer's: swap, then drain what was swapped out
        self.sort, self.top = sort, top
        self.inner_maps = m.type in MAP_OF_MAPS_TYPES  # values are map ids, not quantities
        self.names: tuple[str, ...] = () if self.inner_maps else f.number_names()
        self.index = self.names.index(field) if field is not None else 0
        self.keep_prev = rates and not drain
        self.prev: dict[bytes, bytes] = {}
        self._zero = bytes(m.value_stride)

    def read(
        self, dt: float | None, taken: list[Batch] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The top rows of one read (sorted) and the number of entries read.

        A drain adds each batch (a copy: raw bytes, no object per entry) to ``taken`` the
        moment it has it, so that a caller stopped before showing the read can put it back;
        so a drained pass is held whole until it is shown.
        """
        m = self.m
        keep = [] if taken is None else taken
        size, workers = self.batch_size, self.workers
        if self.harvest is not None:  # copies, as drain's: kept in ``taken`` until shown
            batches = self.harvest(size, workers=workers)
        elif self.drain:
            batches = m.drain(size, workers=workers)
        else:
            batches = m.batches(size, copy=False, workers=workers)
        try:
            if self.drain:
                # list.extend takes each batch in C as the walk yields it: no bytecode between
                # the walk handing a batch over and ``taken`` holding it, where a signal could
                # be raised (it can, on Python < 3.11, between a for loop's body's lines)
                keep.extend(batches)
                return self._top(iter(keep), dt)
            return self._top(batches, dt)
        finally:
            close_walk(batches)  # a parallel drain's undelivered batches go back now

    def _top(self, batches: Iterator[Batch], dt: float | None) -> tuple[list[dict[str, Any]], int]:
        f = self.f
        best: list[tuple[Any, ...]] = []
        prev = self.prev
        entries = 0
        for batch in batches:
            n = batch.count
            entries += n
            keys = batch.key_list()
            values = batch.value_list() if (self.keep_prev or self.inner_maps) else None
            numbers = f.batch_numbers(batch.values, n) if self.names else [()] * n
            old: list[Any] = [None] * n
            if prev and dt:
                found = list(map(prev.get, keys, itertools.repeat(None)))
                flat = b"".join(v if v is not None else self._zero for v in found)
                old = [
                    o if v is not None else None for o, v in zip(f.batch_numbers(flat, n), found)
                ]
            rank = self._ranks(batch, numbers, old, dt, n)
            extra: Iterable[bytes | None] = (
                values if self.inner_maps and values is not None else itertools.repeat(None)
            )
            candidates = zip(rank, keys, numbers, old, extra)
            if self.sort == "key":
                best = heapq.nsmallest(self.top, itertools.chain(best, candidates), key=_first)
            else:
                best = heapq.nlargest(self.top, itertools.chain(best, candidates), key=_first)
            if self.keep_prev and values is not None:
                prev.update(zip(keys, values))  # in place: one value per key, never two
        if len(prev) > 2 * entries:  # many keys gone since: start over (rates resume next read)
            self.prev = {}
        return [self._row(item, dt) for item in best], entries

    def _ranks(
        self, batch: Any, numbers: list[Any], old: list[Any], dt: float | None, n: int
    ) -> list[Any]:
        if self.sort == "key":
            return list(map(_sortable, self.f.key_values(batch)))
        if not self.names:
            return [_MISSING_RANK] * n
        i = self.index
        if self.sort == "value":
            return [x[i] for x in numbers]
        if not dt:
            return [_MISSING_RANK] * n
        if self.drain:
            return [x[i] / dt for x in numbers]
        return [
            (x[i] - o[i]) / dt if o is not None else _MISSING_RANK for x, o in zip(numbers, old)
        ]

    def _row(self, item: tuple[Any, ...], dt: float | None) -> dict[str, Any]:
        _rank, key, numbers, old, value = item
        fields = dict(zip(self.names, numbers))
        rates: dict[str, float | None] = {}
        for name, x, o in zip(self.names, numbers, old if old is not None else [None] * 99):
            if not dt:
                rates[name] = None
            elif self.drain:
                rates[name] = x / dt
            else:
                rates[name] = (x - o) / dt if o is not None else None
        row = {"key": key, "fields": fields, "rates": rates}
        if value is not None:
            row["inner_map_id"] = int.from_bytes(value[:4], "little")
        return row


def write_json(
    out: IO[str],
    m: Map,
    f: EntryFormatter,
    top: list[dict[str, Any]],
    entries: int,
    dt: float | None,
) -> None:
    """One read as one JSON line: the map, its entry count and the top rows."""
    rows = []
    for r in top:
        row = {"key": hex_list(r["key"]), "key_text": f.key_text(r["key"])}
        if "inner_map_id" in r:
            row["inner_map_id"] = r["inner_map_id"]
        row.update(fields=r["fields"], rates=r["rates"])
        rows.append(row)
    out.write(
        json.dumps(
            {
                "time": time.time(),
                "map": {"id": m.id, "name": m.name},
                "entries": entries,
                "interval": dt,
                "top": rows,
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
    """KEY, then each numeric field and its rate, numbers right-aligned (an inner map's id
    is an id: no separators, no rate)."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["fields"] if n not in names]
    inner = any("inner_map_id" in r for r in rows)
    heads = ["KEY"] + ["INNER_MAP_ID"] * inner
    heads += [h for n in names for h in (n.upper(), f"{n.upper()}/s")]
    table = [
        [f.key_text(r["key"])]
        + [str(r.get("inner_map_id", "-"))] * inner
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
