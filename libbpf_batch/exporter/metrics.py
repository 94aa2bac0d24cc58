"""One configured metric over one map: read it with batch lookups, write its families.

A scrape first reads the whole map into two flat buffers (keys, values: the map's raw size, a
few bytes per element) so a failed walk exports nothing rather than a silent partial read, and
so each family can be written in turn from the same snapshot. The text is then produced a chunk
of rows at a time and streamed: memory is the raw snapshot plus one chunk of text (plus, where
decoders may map two keys to one label set, the aggregated series).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BpfError
from ..maps import Map
from . import text
from .config import ConfigError, MetricSpec, sanitize
from .decoders import DecodeError, DecoderSet, KeyDecoder, SkipRow
from .histogram import bucket_bound, bucket_keys
from .rows import INT_KINDS, label_text, label_writer, read_rows, sample_lines, value_column

log = logging.getLogger("libbpf_batch.exporter")

_MISS = object()
CHUNK_ROWS = 8192
# Label text kept from the first family for the others: about 40 bytes a row, up to this
# (1,000,000 rows of a 3-field key); past it, later families make their label text again.
KEEP_LABEL_BYTES = 64 << 20  # rows formatted per text chunk
# key fields whose text tells every value apart: distinct keys, distinct label sets (a char
# array's text ends at its NUL, so two keys may share one: those rows are added up)
_DISTINCT_KINDS = INT_KINDS | {"enum", "pointer", "union", "bytes"}

try:  # double-buffered maps (issue 11), where that module is installed
    from ..double_buffer import DoubleBufferedMap, is_double_buffered
except ImportError:  # pragma: no cover - depends on what is merged
    DoubleBufferedMap = is_double_buffered = None  # type: ignore[assignment,misc]


@dataclass
class Family:
    name: str  # counters: without _total
    kind: str
    help: str
    column: int  # which value field


class MapMetric:
    """A metric of the config (counter, gauge or histogram) bound to an open map."""

    def __init__(
        self,
        spec: MetricSpec,
        m: Map,
        decoders: DecoderSet,
        *,
        prefix: str = "",
        key_format: str | None = None,
        value_format: str | None = None,
        use_btf: bool = True,
        batch_size: int | None = None,
        where: str = "",
    ) -> None:
        self.spec, self.map, self.batch_size = spec, m, batch_size
        self.where = where or spec.name
        self.map_name = m.name
        self.dbuf: Any = None
        if is_double_buffered is not None and is_double_buffered(m):
            # the outer map of a double buffer: the keys and values are its inner maps'
            self.dbuf = DoubleBufferedMap(m)
            m = self.dbuf.current
        try:
            self._setup(spec, m, decoders, prefix, key_format, value_format, use_btf)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the double buffer's maps, if any (the map itself belongs to the caller)."""
        if self.dbuf is not None:
            self.dbuf.close()

    def _setup(
        self,
        spec: MetricSpec,
        m: Map,
        decoders: DecoderSet,
        prefix: str,
        key_format: str | None,
        value_format: str | None,
        use_btf: bool,
    ) -> None:
        self.ncpus = 1
        if m.is_percpu:
            from ..maps import possible_cpus

            self.ncpus = possible_cpus()
        slot = m.layout.slot
        # configured labels read the key themselves: its BTF is not needed
        key_btf_wanted = use_btf and spec.labels is None
        self.keys, key_btf = read_rows(m, "key", m.key_size, key_format, key_btf_wanted)
        self.values, _ = read_rows(m, "value", slot, value_format, use_btf)
        self.key_decoder: KeyDecoder | None = None
        if spec.labels is not None:
            self.key_decoder = decoders.label_decoder(spec.labels, m.key_size, self.where)
            self.label_names = list(self.key_decoder.names)
        else:
            self.label_names = [sanitize(n) for n in self.keys.names]
        if spec.kind == "histogram":
            self.label_names = self.label_names[:-1]  # the last is the bucket
        self.split_cpu = m.is_percpu and spec.percpu == "cpu"
        if self.split_cpu:
            self.label_names.append("cpu")
        self._check_labels()
        # Written sorted by name, as both reference clients (Go, Python) write them.
        self.order = sorted(range(len(self.label_names)), key=self.label_names.__getitem__)
        self.sorted_names = tuple(self.label_names[i] for i in self.order)
        self.families = self._families(prefix)
        self.fast = (
            self.key_decoder is None
            and key_btf
            and all(x.kind in _DISTINCT_KINDS for x in self.keys.fields)
            and not m.is_percpu
            and not spec.drain
            and spec.kind != "histogram"
        )
        self.totals: dict[tuple[str, ...], list[Any]] = {}  # drain: what earlier scrapes read
        self._labels_of_key: dict[bytes, Any] = {}
        # The raw snapshot, kept from scrape to scrape and overwritten in place: a map's size
        # changes little, and buffers made anew at every scrape (in the server's thread of the
        # moment) leave the heap fragmented, so the resident size grew scrape after scrape.
        self._snapshot = (bytearray(), bytearray())
        self.hist_totals: dict[tuple[str, ...], dict[float, int]] = {}
        # self-metrics
        self.duration = 0.0
        self.read_duration = 0.0  # of the duration, the batch reads
        self.entries = 0
        self.decode_errors = 0
        self.read_errors = 0

    # -- setup -------------------------------------------------------------------------
    def _check_labels(self) -> None:
        seen: set[str] = set()
        reserved = {"le"} if self.spec.kind == "histogram" else set()
        for name in self.label_names:
            if name in seen or name in reserved:
                raise ConfigError(f"{self.where}: label {name!r} appears twice or is reserved")
            seen.add(name)

    def _families(self, prefix: str) -> list[Family]:
        spec = self.spec
        numeric = [(i, x) for i, x in enumerate(self.values.fields) if x.numeric]
        if spec.values is not None:
            # a nested field by its dotted path ('stats.bytes') or its metric name (stats_bytes)
            by_name = {sanitize(x.name): (i, x) for i, x in numeric}
            by_name.update({x.name: (i, x) for i, x in numeric})
            missing = [v for v in spec.values if v not in by_name]
            if missing:
                raise ConfigError(
                    f"{self.where}: values: no numeric field {missing[0]!r} in the map's value "
                    f"(numeric fields: {', '.join(x.name for _, x in numeric) or 'none'})"
                )
            numeric = [by_name[v] for v in spec.values]
        if not numeric:
            raise ConfigError(f"{self.where}: the map's value has no numeric field to export")
        base = prefix + spec.name
        if spec.kind == "histogram":
            i, _ = numeric[0]
            return [Family(base, "histogram", spec.help or f"BPF map {self.map_name!r}", i)]
        if spec.kind == "counter":
            for _, x in numeric:
                if x.signed or x.kind == "enum":
                    raise ConfigError(
                        f"{self.where}: field {x.name!r} is {'an enum' if x.kind == 'enum' else 'signed'}"
                        "; a counter only goes up: export it as a gauge, or pick fields with values:"
                    )
            base = base.removesuffix("_total")
        single = len(numeric) == 1 and numeric[0][1].name in ("value", "")
        out = []
        for i, x in numeric:
            name = base if single else f"{base}_{sanitize(x.name)}"
            if spec.kind == "counter":
                name = name.removesuffix("_total")
            elif name.endswith("_total"):
                name += "_value"  # '_total' is how counters end; a gauge must not look like one
            help_text = spec.help or f"BPF map {self.map_name!r}"
            if not single:
                help_text += f": field {x.name}"
            out.append(Family(name, spec.kind, help_text, i))
        return out

    # -- a scrape ----------------------------------------------------------------------
    def _read(self) -> tuple[Any, Any, int] | None:
        keys, values = self._snapshot
        try:  # resizable: no view of an earlier scrape is alive (one could be, in a traceback)
            for buf in (keys, values):
                buf.append(0)
                buf.pop()
        except BufferError:
            keys, values = self._snapshot = (bytearray(), bytearray())
        kpos = vpos = n = 0
        m, size, workers = self.map, self.batch_size, self.spec.workers
        if self.dbuf is not None and self.spec.drain:  # swap, then drain
            batches: Any = self.dbuf.harvest(size, copy=False, workers=workers)
        elif self.dbuf is not None:
            batches = self.dbuf.current.batches(size, copy=False, workers=workers)
        elif self.spec.drain:
            batches = m.drain(size, copy=False, workers=workers)
        else:  # an mmapable array too: Map.batches reads it through its mapping
            batches = m.batches(size, copy=False, workers=workers)
        try:
            for b in batches:
                klen, vlen = len(b.keys), len(b.values)
                keys[kpos : kpos + klen] = b.keys  # in place; grows past the end
                values[vpos : vpos + vlen] = b.values
                kpos, vpos, n = kpos + klen, vpos + vlen, n + b.count
        except BpfError as e:
            self.read_errors += 1
            log.error("%s: reading map %r: %s", self.where, self.map_name, e)
            if not self.spec.drain:
                return None  # never a silent partial read; drained elements are kept
        finally:
            batches.close()  # a parallel walk's threads are joined before the scrape goes on
        if len(keys) > 2 * kpos + (1 << 20):  # the map shrank: give the room back
            del keys[kpos:], values[vpos:]
        return memoryview(keys)[:kpos], memoryview(values)[:vpos], n

    def collect(self, om: bool) -> Iterator[str]:
        """The metric's families as exposition text, in chunks."""
        start = time.perf_counter()
        try:
            snap = self._read()
            self.read_duration = time.perf_counter() - start
            if snap is None:
                return
            keys, values, n = snap
            self.entries = n
            if self.fast:
                yield from self._fast(keys, values, n, om)
            elif self.spec.kind == "histogram":
                yield from self._histograms(self._hist_series(keys, values, n), om)
            else:
                yield from self._general(self._series(keys, values, n), om)
        finally:
            self.duration = time.perf_counter() - start

    def _fast(self, keys: Any, values: Any, n: int, om: bool) -> Iterator[str]:
        """Keys whose labels tell them apart, values not per-CPU: text made a chunk of rows
        at a time, one family after the other. A row's label text is made once: families
        after the first reuse it (kept joined, one string per chunk, while the scrape runs);
        value columns are read straight from the buffer and turned into text in one pass."""
        ks, vs = self.keys.size, self.values.size
        labels_of = label_writer(self.keys.fields, self.label_names, self.order)
        kept: list[str | None] = []  # each chunk's label texts, for the families after the first
        room = KEEP_LABEL_BYTES if len(self.families) > 1 else 0
        for k, fam in enumerate(self.families):
            yield text.header(fam.name, fam.kind, fam.help, om)
            sample = text.sample_name(fam.name, fam.kind)
            field = self.values.fields[fam.column]
            for c, lo in enumerate(range(0, n, CHUNK_ROWS)):
                hi = min(n, lo + CHUNK_ROWS)
                joined = kept[c] if k else None
                if joined is None:
                    labels = labels_of(self.keys.iter_rows(keys[lo * ks : hi * ks], hi - lo))
                    if k == 0:
                        joined = "\n".join(labels) if room > 0 else None  # no raw newline in
                        room -= len(joined) if joined is not None else 0  # label text
                        kept.append(joined)
                else:
                    labels = joined.split("\n")
                vcol = self.values.columns(values[lo * vs : hi * vs], hi - lo)[fam.column]
                yield sample_lines(sample, labels, value_column(field, vcol))

    def _decoded(self, keys: Any, values: Any, n: int) -> Iterator[tuple[Any, list[Any]]]:
        """(label values, the value tuple of each CPU) per row, decoded a chunk at a time.

        A row whose key a decoder can't read is counted in decode_errors and left out; rows a
        regexp decoder rejects are left out silently.
        """
        ncpus, ksz, key_fields = self.ncpus, self.keys.size, self.keys.fields
        decode = self.key_decoder
        # a key's labels, made once per distinct key while it stays in the map (histogram
        # keys and long-lived flows repeat at every scrape); None: a regexp left it out
        known = self._labels_of_key
        if len(known) > 2 * n + 1024:  # keys gone since: start over
            known.clear()
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(n, lo + CHUNK_ROWS)
            kbuf = keys[lo * ksz : hi * ksz]
            vrows = self.values.read(values[lo * self.values.size * ncpus :], (hi - lo) * ncpus)
            if decode is None:
                krows: list[Any] = self.keys.read(kbuf, hi - lo)
            else:
                krows = [bytes(kbuf[i * ksz : (i + 1) * ksz]) for i in range(hi - lo)]
            for r, krow in enumerate(krows):
                labels: Any
                try:
                    if decode is None:
                        labels = tuple([label_text(x, v) for x, v in zip(key_fields, krow)])
                    else:
                        labels = known.get(krow, _MISS)
                        if labels is _MISS:
                            try:
                                labels = known[krow] = decode(krow)
                            except SkipRow:
                                labels = known[krow] = None
                        if labels is None:
                            continue
                except SkipRow:
                    continue
                except (DecodeError, ValueError, TypeError) as e:
                    self.decode_errors += 1
                    log.debug("%s: row %d: %s", self.where, lo + r, e)
                    continue
                yield labels, vrows[r * ncpus : (r + 1) * ncpus]

    def _series(self, keys: Any, values: Any, n: int) -> dict[tuple[str, ...], list[Any]]:
        """Label values to per-field numbers, per-CPU summed or split; equal labels add up."""
        series: dict[tuple[str, ...], list[Any]] = {}
        cols = [f.column for f in self.families]
        for labels, per_cpu in self._decoded(keys, values, n):
            try:
                nums = [[_num(v[c]) for c in cols] for v in per_cpu]
            except ValueError:
                self.decode_errors += 1
                continue
            if self.split_cpu:
                for cpu, x in enumerate(nums):
                    _add(series, (*labels, str(cpu)), x)
            else:
                _add(series, labels, _sum_cpus(nums))
        return series

    def _hist_series(
        self, keys: Any, values: Any, n: int
    ) -> dict[tuple[str, ...], dict[float, Any]]:
        """Label values (without the bucket) to {bucket key: count}, CPUs summed or split."""
        series: dict[tuple[str, ...], dict[float, Any]] = {}
        col = self.families[0].column
        buckets: dict[str, float] = {}
        for labels, per_cpu in self._decoded(keys, values, n):
            try:
                text_ = labels[-1]
                bucket = buckets.get(text_)
                if bucket is None:
                    bucket = buckets[text_] = float(text_)
                counts = [v[col] for v in per_cpu]  # numeric fields: ints or floats
            except ValueError:
                self.decode_errors += 1
                continue
            if self.split_cpu:
                for cpu, count in enumerate(counts):
                    h = series.setdefault((*labels[:-1], str(cpu)), {})
                    h[bucket] = h.get(bucket, 0) + count
            else:
                h = series.setdefault(labels[:-1], {})
                h[bucket] = h.get(bucket, 0) + (counts[0] if len(counts) == 1 else sum(counts))
        return series

    def _general(self, series: dict[tuple[str, ...], list[Any]], om: bool) -> Iterator[str]:
        if self.spec.drain and self.spec.kind == "counter":
            for labels, nums in series.items():
                total = self.totals.get(labels)
                self.totals[labels] = (
                    nums if total is None else [a + b for a, b in zip(total, nums)]
                )
            series = self.totals
        names, order = self.sorted_names, self.order
        for k, fam in enumerate(self.families):
            yield text.header(fam.name, fam.kind, fam.help, om)
            sample = text.sample_name(fam.name, fam.kind)
            chunk: list[str] = []
            for labels, nums in series.items():
                values = tuple([labels[i] for i in order])
                chunk.append(f"{sample}{text.labels_text(names, values)} {text.number(nums[k])}\n")
                if len(chunk) >= CHUNK_ROWS:
                    yield "".join(chunk)
                    chunk = []
            yield "".join(chunk)

    def _histograms(
        self, series: dict[tuple[str, ...], dict[float, Any]], om: bool
    ) -> Iterator[str]:
        spec = self.spec
        if spec.drain:
            for labels, counts in series.items():
                acc = self.hist_totals.setdefault(labels, {})
                for bucket, count in counts.items():
                    acc[bucket] = acc.get(bucket, 0) + count
            series = self.hist_totals
        fam = self.families[0]
        yield text.header(fam.name, "histogram", fam.help, om)
        keys, sum_key = bucket_keys(spec)
        les = [text.number(bucket_bound(spec, k)) for k in keys]
        names, order = self.sorted_names, self.order
        chunk: list[str] = []
        for labels, counts in series.items():
            inner = text.labels_text(names, tuple([labels[i] for i in order]))[1:-1]
            lt = f"{{{inner}}}" if inner else ""
            pre = f'{fam.name}_bucket{{{inner},le="' if inner else f'{fam.name}_bucket{{le="'
            cum = 0
            for k, le in zip(keys, les):
                cum += counts.get(k, 0)
                chunk.append(f'{pre}{le}"}} {cum}\n')
            chunk.append(f'{pre}+Inf"}} {cum}\n')
            total_sum = counts.get(sum_key, 0) * spec.bucket_multiplier
            chunk.append(
                f"{fam.name}_sum{lt} {text.number(total_sum)}\n{fam.name}_count{lt} {cum}\n"
            )
            if len(chunk) >= CHUNK_ROWS:
                yield "".join(chunk)
                chunk = []
        yield "".join(chunk)


def _num(v: Any) -> int | float:
    if isinstance(v, (int, float)):
        return int(v) if isinstance(v, bool) else v
    raise ValueError(f"value field is {type(v).__name__}, not a number")


def _sum_cpus(per_cpu: list[list[Any]]) -> list[Any]:
    if len(per_cpu) == 1:
        return per_cpu[0]
    return [sum(col) for col in zip(*per_cpu)]


def _add(
    series: dict[tuple[str, ...], list[Any]], labels: tuple[str, ...], nums: list[Any]
) -> None:
    have = series.get(labels)
    series[labels] = nums if have is None else [a + b for a, b in zip(have, nums)]


__all__ = ["CHUNK_ROWS", "Family", "MapMetric"]
