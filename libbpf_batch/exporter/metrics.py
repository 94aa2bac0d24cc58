"""One configured metric over one map: read it with batch lookups, write its families.

A scrape first reads the whole map into two flat buffers (keys, values: the map's raw size, a
few bytes per element) so a failed walk exports nothing rather than a silent partial read, and
so each family can be written in turn from the same snapshot. The text is then produced a chunk
of rows at a time and streamed: memory is the raw snapshot plus one chunk of text (plus, where
decoders may map two keys to one label set, the aggregated series).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BpfError
from ..maps import Map
from . import layout, text
from .config import ConfigError, MetricSpec, sanitize
from .decoders import DecodeError, DecoderSet, KeyDecoder, SkipRow

log = logging.getLogger("libbpf_batch.exporter")

CHUNK_ROWS = 8192  # rows formatted per text chunk
_INT_KINDS = ("uint", "int", "bool")

try:  # the double-buffered harvest (issue 11), where it exists
    from ..harvest import DoubleBufferedMap, is_double_buffered  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on what is merged
    DoubleBufferedMap = is_double_buffered = None


class Rows:
    """How to read a buffer of keys or values into tuples, one per row, one item per leaf."""

    def __init__(
        self, leaves: Sequence[layout.Leaf], size: int, st: struct.Struct | None, slow: Any
    ) -> None:
        self.leaves = list(leaves)
        self.names = [x.name for x in leaves]
        self.size = size
        self.st = st
        self.slow = slow  # element by element, when struct can't read the fields

    def read(self, buf: Any, count: int) -> list[tuple[Any, ...]]:
        if self.st is not None:
            return list(self.st.iter_unpack(buf[: count * self.size]))
        out = []
        for i in range(count):
            flat = _flatten(self.slow(bytes(buf[i * self.size : (i + 1) * self.size])))
            out.append(tuple(flat.get(n) for n in self.names))
        return out


def _flatten(v: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for k, sub in v.items():
            out.update(_flatten(sub, f"{prefix}_{k}" if prefix and k else prefix or str(k)))
        return out
    if isinstance(v, list):
        out = {}
        for i, sub in enumerate(v):
            out.update(_flatten(sub, f"{prefix}_{i}" if prefix else str(i)))
        return out
    return {prefix: v}


def _rows(m: Map, what: str, size: int, fmt: str | None, use_btf: bool) -> tuple[Rows, bool]:
    """The Rows of keys or values and whether they came from BTF."""
    if fmt is not None:
        st = struct.Struct(fmt)
        if st.size != (m.key_size if what == "key" else m.value_size):
            raise ConfigError(
                f"--{what}-format {fmt!r} is {st.size} bytes, the map's {what}s are "
                f"{m.key_size if what == 'key' else m.value_size}"
            )
        padded = struct.Struct(st.format + f"{size - st.size}x") if size > st.size else st
        return Rows(layout.format_leaves(fmt, what), size, padded, None), False
    leaves = layout.btf_leaves(m, what) if use_btf else None
    if leaves is not None:
        row = layout.row_struct(leaves, size)
        slow = layout.slow_decoder(m, what) if row is None else None
        leaves = [layout.Leaf(x.name or what, *_rest(x)) for x in leaves]
        return Rows(leaves, size, row, slow), True
    leaf = layout.scalar_leaf(m.key_size if what == "key" else m.value_size, what)
    if leaf is None:
        return Rows(
            [layout.Leaf(what, 0, size, "bytes", f"{size}s")], size, struct.Struct(f"{size}s"), None
        ), False
    return Rows([leaf], size, layout.row_struct([leaf], size), None), False


def _rest(x: layout.Leaf) -> tuple[Any, ...]:
    return (x.offset, x.size, x.kind, x.code, x.enumerators)


def _label_text(leaf: layout.Leaf, v: Any) -> str:
    if leaf.kind == "enum" and leaf.enumerators:
        for name, value in leaf.enumerators:
            if value == v:
                return name
    if isinstance(v, bytes):
        if leaf.kind == "string":
            end = v.find(b"\0")
            return v[: end if end >= 0 else None].decode("utf-8", errors="backslashreplace")
        return v.hex()
    if isinstance(v, bool):
        return "1" if v else "0"
    if leaf.kind == "pointer":
        return f"0x{v:x}"
    return str(v)


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
        self.ncpus = 1
        if m.is_percpu:
            from ..maps import possible_cpus

            self.ncpus = possible_cpus()
        slot = (m.value_size + 7) & ~7 if m.is_percpu else m.value_size
        self.keys, key_btf = _rows(m, "key", m.key_size, key_format, use_btf)
        self.values, _ = _rows(m, "value", slot, value_format, use_btf)
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
        self.families = self._families(prefix)
        self.fast = (
            self.key_decoder is None
            and key_btf
            and self.keys.st is not None
            and all(x.kind in _INT_KINDS for x in self.keys.leaves)
            and self.values.st is not None
            and not m.is_percpu
            and not spec.drain
            and spec.kind != "histogram"
        )
        self.totals: dict[tuple[str, ...], list[Any]] = {}  # drain: what earlier scrapes read
        self.hist_totals: dict[tuple[str, ...], dict[float, int]] = {}
        # self-metrics
        self.duration = 0.0
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
        numeric = [
            (i, x)
            for i, x in enumerate(self.values.leaves)
            if x.numeric or x.kind in ("bitfield", "format")
        ]
        if spec.values is not None:
            by_name = {x.name: (i, x) for i, x in numeric}
            missing = [v for v in spec.values if v not in by_name]
            if missing:
                raise ConfigError(
                    f"{self.where}: values: no numeric field {missing[0]!r} in the map's value "
                    f"(numeric fields: {', '.join(by_name) or 'none'})"
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
        keys, values, n = bytearray(), bytearray(), 0
        m = self.map
        if self.spec.drain and is_double_buffered is not None and is_double_buffered(m):
            batches: Any = DoubleBufferedMap(m).harvest()
        elif self.spec.drain:
            batches = m.drain(self.batch_size, copy=False)
        else:
            batches = m.batches(self.batch_size, copy=False)
        try:
            for b in batches:
                keys += b.keys
                values += b.values
                n += b.count
        except BpfError as e:
            self.read_errors += 1
            log.error("%s: reading map %r: %s", self.where, self.map_name, e)
            if not self.spec.drain:
                return None  # never a silent partial read; drained elements are kept
        return memoryview(keys), memoryview(values), n

    def collect(self, om: bool) -> Iterator[str]:
        """The metric's families as exposition text, in chunks."""
        start = time.perf_counter()
        try:
            snap = self._read()
            if snap is None:
                return
            keys, values, n = snap
            self.entries = n
            if self.fast:
                yield from self._fast(keys, values, n, om)
            elif self.spec.kind == "histogram":
                yield from self._histograms(self._series(keys, values, n), om)
            else:
                yield from self._general(self._series(keys, values, n), om)
        finally:
            self.duration = time.perf_counter() - start

    def _fast(self, keys: Any, values: Any, n: int, om: bool) -> Iterator[str]:
        """Integer BTF keys: one % format per sample, a chunk of rows at a time."""
        labels = ",".join(f'{name}="%d"' for name in self.label_names)
        kst, vst = self.keys.st, self.values.st
        assert kst is not None and vst is not None
        ks, vs = kst.size, vst.size
        for fam in self.families:
            yield text.header(fam.name, fam.kind, fam.help, om)
            tmpl = f"{text.sample_name(fam.name, fam.kind)}{{{labels}}} %d\n"
            if not labels:
                tmpl = f"{text.sample_name(fam.name, fam.kind)} %d\n"
            j = fam.column
            for lo in range(0, n, CHUNK_ROWS):
                hi = min(n, lo + CHUNK_ROWS)
                krows = kst.iter_unpack(keys[lo * ks : hi * ks])
                vcol = [v[j] for v in vst.iter_unpack(values[lo * vs : hi * vs])]
                yield "".join([tmpl % (*k, v) for k, v in zip(krows, vcol)])

    def _series(self, keys: Any, values: Any, n: int) -> dict[tuple[str, ...], list[Any]]:
        """Label values to per-field numbers (per-CPU summed or split), rows decoded by chunk.

        A row whose key a decoder can't read is counted in decode_errors and left out; rows a
        regexp decoder rejects are left out silently; rows that decode to the same labels add.
        """
        series: dict[tuple[str, ...], list[Any]] = {}
        ncpus, hist = self.ncpus, self.spec.kind == "histogram"
        cols = [f.column for f in self.families]
        key_leaves = self.keys.leaves
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(n, lo + CHUNK_ROWS)
            kbuf = keys[lo * self.keys.size : hi * self.keys.size]
            vrows = self.values.read(values[lo * self.values.size * ncpus :], (hi - lo) * ncpus)
            krows: list[Any]
            if self.key_decoder is None:
                krows = self.keys.read(kbuf, hi - lo)
            else:
                ksz = self.keys.size
                krows = [bytes(kbuf[i * ksz : (i + 1) * ksz]) for i in range(hi - lo)]
            for r, krow in enumerate(krows):
                try:
                    if self.key_decoder is None:
                        labels = tuple(_label_text(x, v) for x, v in zip(key_leaves, krow))
                    else:
                        labels = self.key_decoder(krow)
                    per_cpu = vrows[r * ncpus : (r + 1) * ncpus]
                    nums = [[_num(v[c]) for c in cols] for v in per_cpu]
                    bucket = None
                    if hist:
                        labels, bucket = labels[:-1], float(labels[-1])
                except SkipRow:
                    continue
                except (DecodeError, ValueError, TypeError) as e:
                    self.decode_errors += 1
                    log.debug("%s: row %d: %s", self.where, lo + r, e)
                    continue
                if self.split_cpu:
                    for cpu, x in enumerate(nums):
                        _add(series, (*labels, str(cpu)), x, bucket)
                else:
                    _add(series, labels, _sum_cpus(nums), bucket)
        return series

    def _general(self, series: dict[tuple[str, ...], list[Any]], om: bool) -> Iterator[str]:
        if self.spec.drain and self.spec.kind == "counter":
            for labels, nums in series.items():
                total = self.totals.get(labels)
                self.totals[labels] = (
                    nums if total is None else [a + b for a, b in zip(total, nums)]
                )
            series = self.totals
        names = tuple(self.label_names)
        for k, fam in enumerate(self.families):
            yield text.header(fam.name, fam.kind, fam.help, om)
            sample = text.sample_name(fam.name, fam.kind)
            chunk: list[str] = []
            for labels, nums in series.items():
                chunk.append(f"{sample}{text.labels_text(names, labels)} {text.number(nums[k])}\n")
                if len(chunk) >= CHUNK_ROWS:
                    yield "".join(chunk)
                    chunk = []
            yield "".join(chunk)

    def _histograms(self, series: dict[tuple[str, ...], list[Any]], om: bool) -> Iterator[str]:
        spec = self.spec
        if spec.drain:
            for labels, pairs in series.items():
                acc = self.hist_totals.setdefault(labels, {})
                for bucket, count in pairs:
                    acc[bucket] = acc.get(bucket, 0) + count
            buckets_of = {k: list(v.items()) for k, v in self.hist_totals.items()}
        else:
            buckets_of = series
        fam = self.families[0]
        yield text.header(fam.name, "histogram", fam.help, om)
        names = tuple(self.label_names)
        le_names = (*names, "le")
        chunk: list[str] = []
        for labels, pairs in buckets_of.items():
            counts: dict[float, int] = {}
            for bucket, count in pairs:
                counts[bucket] = counts.get(bucket, 0) + count
            bounds, total, total_sum = histogram(spec, counts)
            for le, cum in bounds:
                chunk.append(
                    f"{fam.name}_bucket{text.labels_text(le_names, (*labels, _le(le)))} {cum}\n"
                )
            chunk.append(
                f"{fam.name}_bucket{text.labels_text(le_names, (*labels, '+Inf'))} {total}\n"
            )
            lt = text.labels_text(names, labels)
            chunk.append(f"{fam.name}_sum{lt} {text.number(total_sum)}\n")
            chunk.append(f"{fam.name}_count{lt} {total}\n")
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
    series: dict[tuple[str, ...], list[Any]],
    labels: tuple[str, ...],
    nums: list[Any],
    bucket: float | None,
) -> None:
    if bucket is not None:  # a histogram: collect (bucket, count) pairs per label set
        series.setdefault(labels, []).append((bucket, nums[0]))
        return
    have = series.get(labels)
    series[labels] = nums if have is None else [a + b for a, b in zip(have, nums)]


def _le(bound: float) -> str:
    return text.number(float(bound))


def bucket_bound(spec: MetricSpec, key: float) -> float:
    """The upper bound (``le``) of the bucket a histogram map keys as ``key``."""
    mult = spec.bucket_multiplier
    if spec.bucket_type == "exp2":
        return math.ldexp(1.0, int(key)) * mult
    if spec.bucket_type == "exp2zero":
        return 0.0 if key == 0 else math.ldexp(1.0, int(key) - 1) * mult
    return key * mult  # linear, fixed


def histogram(
    spec: MetricSpec, counts: dict[float, int]
) -> tuple[list[tuple[float, int]], int, float]:
    """Cumulative (le, count) buckets with gaps filled, the total count and the sum.

    As ebpf_exporter reads them: the keys bucket_min..bucket_max (or bucket_keys) are buckets,
    the key after the last holds the sum (times bucket_multiplier), other keys are ignored.
    """
    if spec.bucket_type == "fixed":
        keys: Sequence[float] = spec.bucket_keys
        sum_key = spec.bucket_keys[-1] + 1
    else:
        keys = [float(k) for k in range(spec.bucket_min, spec.bucket_max + 1)]
        sum_key = float(spec.bucket_max + 1)
    out, cum = [], 0
    for k in keys:
        cum += counts.get(k, 0)
        out.append((bucket_bound(spec, k), cum))
    return out, cum, counts.get(sum_key, 0) * spec.bucket_multiplier


__all__ = ["CHUNK_ROWS", "Family", "MapMetric", "bucket_bound", "histogram"]
