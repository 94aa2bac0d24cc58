"""Open what a configuration names: load each object and attach its programs, open the maps.

:func:`load` returns a :class:`Loaded` holding everything it opened, closed as one; when any
step fails it closes what it had opened and raises, so a bad reload leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BpfError
from ..maps import Map, map_ids
from ..objects import BpfObject
from . import elf
from .config import ConfigError, FileConfig, MapRef, MetricSpec
from .decoders import DecodeError, DecoderSet
from .metrics import MapMetric
from .text import reserved_names

log = logging.getLogger("libbpf_batch.exporter")

# Sections libbpf can't attach on its own: they need a socket, an interface or a cgroup.
_MANUAL_ATTACH = ("socket", "xdp", "tc", "classifier", "action", "cgroup", "sk_", "flow_dissector")


@dataclass
class Program:
    config: str
    name: str
    section: str
    id: int = 0
    tag: str = ""
    attached: bool = False


@dataclass
class Loaded:
    """What one configuration opened; close() releases all of it."""

    metrics: list[MapMetric] = field(default_factory=list)
    programs: list[Program] = field(default_factory=list)
    objects: list[BpfObject] = field(default_factory=list)
    maps: list[Map] = field(default_factory=list)

    def close(self) -> None:
        for metric in self.metrics:
            metric.close()
        for m in self.maps:
            m.close()
        for obj in self.objects:
            obj.close()
        self.maps.clear()
        self.objects.clear()


def find_map(ref: MapRef, obj: BpfObject | None, where: str) -> Map:
    """Open the map ``ref`` names (in ``obj`` for kind 'object')."""
    try:
        if ref.kind == "object":
            assert obj is not None
            return obj.map(ref.value)
        if ref.kind == "id":
            return Map.from_id(ref.value)
        if ref.kind == "pinned":
            return Map.open_pinned(ref.value)
    except BpfError as e:
        raise ConfigError(f"{where}: map {ref.value!r}: {e.strerror or e}") from None
    matches = []
    for map_id in map_ids():
        try:
            m = Map.from_id(map_id)
        except FileNotFoundError:
            continue
        if m.name == ref.value:
            matches.append(m)
        else:
            m.close()
    if len(matches) != 1:
        for m in matches:
            m.close()
        what = "no map" if not matches else f"{len(matches)} maps"
        raise ConfigError(f"{where}: {what} named {ref.value!r} (use id: or pinned:)")
    return matches[0]


def _attach_all(obj: BpfObject, config: str) -> list[Program]:
    out = []
    for name, section in elf.programs(obj.path):
        p = Program(config, name, section)
        p.id, p.tag = obj.program_info(name)
        try:
            obj.attach(name)
            p.attached = True
        except BpfError as e:
            if not section.startswith(_MANUAL_ATTACH):
                raise ConfigError(
                    f"{config}: attaching program {name!r} (SEC {section!r}): {e.strerror or e}"
                ) from None
            log.info("%s: program %r (SEC %r) is not attached automatically", config, name, section)
        out.append(p)
    return out


def load(
    files: Sequence[FileConfig],
    decoders: DecoderSet,
    *,
    prefix: str = "",
    batch_size: int | None = None,
    extra: Sequence[tuple[MetricSpec, Map, dict[str, object]]] = (),
) -> Loaded:
    """Load the objects of ``files``, attach their programs and bind their metrics to maps.

    ``extra`` adds metrics over maps the caller opened (the command's single-map mode); the
    Loaded then owns those maps.
    """
    loaded = Loaded()
    try:
        for f in files:
            obj = None
            if f.object is not None:
                try:
                    obj = BpfObject.open_file(f.object)
                    loaded.objects.append(obj)
                    obj.load()
                except BpfError as e:
                    raise ConfigError(f"{f.path}: object {f.object!r}: {e.strerror or e}") from None
                loaded.programs += _attach_all(obj, f.name)
            for spec in f.metrics:
                where = f"{f.path}: {spec.name}"
                if spec.map.kind == "object" and obj is None:
                    raise ConfigError(f"{where}: no object to find map {spec.map.value!r} in")
                m = find_map(spec.map, obj, where)
                loaded.maps.append(m)
                loaded.metrics.append(_metric(spec, m, decoders, where, prefix, batch_size, {}))
        for spec, m, options in extra:
            loaded.maps.append(m)
            loaded.metrics.append(_metric(spec, m, decoders, spec.name, "", batch_size, options))
        check_collisions(loaded.metrics)
    except BaseException:
        loaded.close()
        raise
    return loaded


def _metric(
    spec: MetricSpec,
    m: Map,
    decoders: DecoderSet,
    where: str,
    prefix: str,
    batch_size: int | None,
    options: dict[str, object],
) -> MapMetric:
    try:
        return MapMetric(
            spec,
            m,
            decoders,
            prefix=prefix,
            batch_size=batch_size,
            where=where,
            **options,  # type: ignore[arg-type]
        )
    except DecodeError as e:
        raise ConfigError(str(e)) from None


SELF_FAMILIES = {
    "libbpf_batch_exporter_build": "info",
    "libbpf_batch_exporter_scrape_duration_seconds": "gauge",
    "libbpf_batch_exporter_map_entries": "gauge",
    "libbpf_batch_exporter_decode_errors": "counter",
    "libbpf_batch_exporter_read_errors": "counter",
    "libbpf_batch_exporter_program": "info",
    "libbpf_batch_exporter_program_attached": "gauge",
    "libbpf_batch_exporter_config_reloads": "counter",
}


def check_collisions(metrics: Sequence[MapMetric]) -> None:
    """Refuse two families whose sample names could clash (e.g. ``x_count`` and histogram x)."""
    owner: dict[str, str] = {}
    for name, kind in SELF_FAMILIES.items():
        for sample in reserved_names(name, kind):
            owner[sample] = f"the exporter's own {name}"
    for metric in metrics:
        for fam in metric.families:
            what = f"{metric.where} ({fam.kind} {fam.name})"
            for sample in reserved_names(fam.name, fam.kind):
                if sample in owner and owner[sample] != what:
                    raise ConfigError(f"{what} collides with {owner[sample]} on {sample!r}")
                owner[sample] = what


__all__ = ["SELF_FAMILIES", "Loaded", "Program", "check_collisions", "find_map", "load"]
