"""The exporter's configuration: ebpf_exporter's YAML format for the map side, plus extensions.

One file describes one BPF object and the metrics read from its maps, as in ebpf_exporter::

    metrics:
      counters:
        - name: syscalls_total          # the map is named like the metric (or `map:`)
          help: Syscalls by process
          labels:
            - {name: comm, size: 16, decoders: [{name: string}]}
      histograms:
        - name: bio_latency_seconds
          help: Block IO latency
          bucket_type: exp2
          bucket_min: 0
          bucket_max: 26
          bucket_multiplier: 0.000001
          labels: [...]                 # the last label is the bucket

The object is ``<file stem>.bpf.o`` beside the file, or ``object: PATH``. Extensions:
``gauges:``; per metric ``map:`` (a name in the object, or ``{id: N}``, ``{pinned: PATH}``,
``{name: NAME}`` for a map already loaded), ``values:`` (which numeric value fields),
``percpu: sum|cpu``, ``drain: true`` and ``workers: N`` (threads that split a hash map's
buckets, 0: one per CPU). Without ``labels`` they come from the key's BTF.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_WORKERS = 1 << 16  # Map.batches(workers=) takes up to a u16
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
BUCKET_TYPES = ("exp2", "exp2zero", "linear", "fixed")
DECODER_NAMES = (
    "cgroup",
    "errno",
    "hex",
    "ifname",
    "inet_ip",
    "kstack",
    "ksym",
    "majorminor",
    "regexp",
    "static_map",
    "string",
    "syscall",
    "uint",
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the metric."""


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    static_map: dict[str, str] = field(default_factory=dict)
    regexps: tuple[str, ...] = ()
    allow_unknown: bool = False


@dataclass(frozen=True)
class LabelSpec:
    name: str
    size: int
    padding: int = 0
    decoders: tuple[DecoderSpec, ...] = ()


@dataclass(frozen=True)
class MapRef:
    """Where the map is: ``kind`` 'object' (a map of the config's object), 'id', 'pinned', 'name'."""

    kind: str
    value: Any


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # counter, gauge, histogram
    name: str
    help: str
    map: MapRef
    labels: tuple[LabelSpec, ...] | None = None  # None: from the key's BTF
    values: tuple[str, ...] | None = None  # None: every numeric value field
    percpu: str = "sum"  # or "cpu": one series per CPU
    drain: bool = False
    workers: int = 1  # threads reading a hash map (Map.batches/drain workers=)
    bucket_type: str = ""
    bucket_min: int = 0
    bucket_max: int = 0
    bucket_multiplier: float = 1.0
    bucket_keys: tuple[float, ...] = ()


@dataclass(frozen=True)
class FileConfig:
    """One config file: its name (the file's stem), its object (if any) and its metrics."""

    name: str
    path: str
    object: str | None
    metrics: tuple[MetricSpec, ...]


def check_metric_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not METRIC_NAME.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid Prometheus metric name "
            "(letters, digits, '_' and ':', not starting with a digit)"
        )
    return name


def sanitize(name: str) -> str:
    """``name`` as a metric/label name: other characters become '_' (for names from maps)."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return out if out and not out[0].isdigit() else f"_{out}"


def load_file(path: str | os.PathLike[str], *, drain: bool = False, workers: int = 1) -> FileConfig:
    """Read and check one YAML config file (needs PyYAML, the ``yaml`` extra)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("--config needs PyYAML: pip install 'libbpf-batch[yaml]'") from None
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse(raw, p, drain=drain, workers=workers)


def parse(raw: Any, path: Path, *, drain: bool = False, workers: int = 1) -> FileConfig:
    """Check an already-parsed config document; ``path`` names it in errors. ``drain`` and
    ``workers`` are the defaults for metrics that don't say (the command line's)."""
    where = str(path)
    doc = _mapping(raw, where, {"metrics", "object", "kaddrs", "tracing"})
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    obj = doc.get("object")
    if obj is None:
        sibling = path.with_name(f"{name}.bpf.o")
        obj = str(sibling) if sibling.exists() else None
    elif not isinstance(obj, str):
        raise ConfigError(f"{where}: object: expected a path")
    else:
        obj = str(path.parent / obj)
    metrics_doc = _mapping(
        doc.get("metrics", {}), f"{where}: metrics", {"counters", "gauges", "histograms"}
    )
    metrics: list[MetricSpec] = []
    for kind, key in (("counter", "counters"), ("gauge", "gauges"), ("histogram", "histograms")):
        items = metrics_doc.get(key) or []
        if not isinstance(items, list):
            raise ConfigError(f"{where}: metrics.{key}: expected a list")
        for i, item in enumerate(items):
            at = f"{where}: metrics.{key}[{i}]"
            metrics.append(_metric(kind, item, at, obj, drain, workers))
    if not metrics:
        raise ConfigError(f"{where}: no metrics (metrics.counters, .gauges or .histograms)")
    return FileConfig(name, where, obj, tuple(metrics))


_METRIC_KEYS = {
    "name",
    "help",
    "labels",
    "map",
    "values",
    "percpu",
    "drain",
    "workers",
    "perf_event_array",
    "flush_interval",
}
_HISTOGRAM_KEYS = {"bucket_type", "bucket_min", "bucket_max", "bucket_multiplier", "bucket_keys"}


def _metric(
    kind: str, raw: Any, where: str, obj: str | None, drain: bool, workers: int
) -> MetricSpec:
    allowed = _METRIC_KEYS | (_HISTOGRAM_KEYS if kind == "histogram" else set())
    d = _mapping(raw, where, allowed)
    if d.get("perf_event_array"):
        raise ConfigError(f"{where}: perf_event_array metrics are not supported (maps only)")
    name = check_metric_name(str(d.get("name", "")), f"{where}: name")
    where = f"{where} ({name})"
    help_text = d.get("help", "")
    if not isinstance(help_text, str):
        raise ConfigError(f"{where}: help: expected a string")
    labels = None
    if "labels" in d:
        if not isinstance(d["labels"], list):
            raise ConfigError(f"{where}: labels: expected a list")
        labels = tuple(_label(x, f"{where}: labels[{i}]") for i, x in enumerate(d["labels"]))
    values = d.get("values")
    if values is not None:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: values: expected a list of field names")
        values = tuple(values)
    percpu = d.get("percpu", "sum")
    if percpu not in ("sum", "cpu"):
        raise ConfigError(f"{where}: percpu: expected 'sum' or 'cpu', got {percpu!r}")
    workers = d.get("workers", workers)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers < MAX_WORKERS:
        raise ConfigError(
            f"{where}: workers: expected a number of threads (0: one per CPU), got {workers!r}"
        )
    spec = MetricSpec(
        kind=kind,
        name=name,
        help=help_text,
        map=_map_ref(d.get("map", name), f"{where}: map", obj),
        labels=labels,
        values=values,
        percpu=percpu,
        drain=bool(d.get("drain", drain)),
        workers=workers,
    )
    if kind == "histogram":
        spec = _histogram(spec, d, where)
    return spec


def _histogram(spec: MetricSpec, d: dict[str, Any], where: str) -> MetricSpec:
    bucket_type = d.get("bucket_type")
    if bucket_type not in BUCKET_TYPES:
        raise ConfigError(f"{where}: bucket_type: expected one of {', '.join(BUCKET_TYPES)}")
    multiplier = d.get("bucket_multiplier", 1) or 1  # ebpf_exporter: 0 or unset means 1
    if not isinstance(multiplier, (int, float)):
        raise ConfigError(f"{where}: bucket_multiplier: expected a number")
    keys: tuple[float, ...] = ()
    lo = hi = 0
    if bucket_type == "fixed":
        raw_keys = d.get("bucket_keys")
        if not raw_keys or not all(isinstance(k, (int, float)) for k in raw_keys):
            raise ConfigError(f"{where}: bucket_type fixed needs bucket_keys: a list of numbers")
        keys = tuple(float(k) for k in raw_keys)
        if list(keys) != sorted(set(keys)):
            raise ConfigError(f"{where}: bucket_keys must be increasing")
    else:
        raw_lo, raw_hi = d.get("bucket_min"), d.get("bucket_max")
        if not isinstance(raw_lo, int) or not isinstance(raw_hi, int) or raw_hi <= raw_lo:
            raise ConfigError(f"{where}: bucket_min and bucket_max: integers, min < max")
        lo, hi = raw_lo, raw_hi
    if spec.labels is not None and not spec.labels:
        raise ConfigError(f"{where}: a histogram needs at least the bucket label (the last)")
    return MetricSpec(
        **{
            **spec.__dict__,
            "bucket_type": bucket_type,
            "bucket_min": lo,
            "bucket_max": hi,
            "bucket_multiplier": float(multiplier),
            "bucket_keys": keys,
        }
    )


def _label(raw: Any, where: str) -> LabelSpec:
    d = _mapping(raw, where, {"name", "size", "padding", "decoders"})
    name = d.get("name")
    if not isinstance(name, str) or not LABEL_NAME.match(name) or name.startswith("__"):
        raise ConfigError(f"{where}: name: {name!r} is not a valid Prometheus label name")
    size, padding = d.get("size"), d.get("padding", 0)
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(f"{where} ({name}): size: expected a positive number of bytes")
    if not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"{where} ({name}): padding: expected a number of bytes")
    decoders = d.get("decoders")
    if not isinstance(decoders, list) or not decoders:
        raise ConfigError(f"{where} ({name}): decoders: expected a non-empty list")
    return LabelSpec(
        name,
        size,
        padding,
        tuple(_decoder(x, f"{where} ({name}): decoders[{i}]") for i, x in enumerate(decoders)),
    )


def _decoder(raw: Any, where: str) -> DecoderSpec:
    d = _mapping(raw, where, {"name", "static_map", "regexps", "allow_unknown"})
    name = d.get("name")
    if name not in DECODER_NAMES:
        raise ConfigError(f"{where}: unknown decoder {name!r} (known: {', '.join(DECODER_NAMES)})")
    static = d.get("static_map") or {}
    if not isinstance(static, dict):
        raise ConfigError(f"{where}: static_map: expected a mapping")
    regexps = d.get("regexps") or []
    if name == "regexp":
        if not regexps or not isinstance(regexps, list):
            raise ConfigError(f"{where}: regexp needs regexps: a list of patterns")
        for r in regexps:
            try:
                re.compile(r)
            except (re.error, TypeError) as e:
                raise ConfigError(f"{where}: bad regexp {r!r}: {e}") from None
    return DecoderSpec(
        name,
        {str(k): str(v) for k, v in static.items()},
        tuple(regexps),
        bool(d.get("allow_unknown", False)),
    )


def _map_ref(raw: Any, where: str, obj: str | None) -> MapRef:
    if isinstance(raw, str):
        return MapRef("object", raw) if obj else MapRef("name", raw)
    d = _mapping(raw, where, {"id", "pinned", "name"})
    if len(d) != 1:
        raise ConfigError(f"{where}: expected one of id, pinned or name")
    ((kind, value),) = d.items()
    if kind == "id" and (not isinstance(value, int) or not 0 < value < 2**32):
        raise ConfigError(f"{where}: id: expected a map id")
    if kind != "id" and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {kind}: expected a string")
    return MapRef(kind, value)


def _mapping(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return raw


__all__ = [
    "ConfigError",
    "DecoderSpec",
    "FileConfig",
    "LabelSpec",
    "MapRef",
    "MetricSpec",
    "check_metric_name",
    "load_file",
    "parse",
    "sanitize",
]
