"""The Prometheus text format (0.0.4) and OpenMetrics 1.0: headers, label values, numbers.

The two differ where counters and info metrics are named: text 0.0.4 announces a counter by its
sample name (``x_total``), OpenMetrics by the family name (``x``) with ``x_total`` samples, as
prometheus_client writes them. OpenMetrics bodies end with ``# EOF``.
"""

from __future__ import annotations

import math

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as it goes between the quotes."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(v: float) -> str:
    """A sample value: ints exactly, floats round-trip, infinities and NaN spelled out."""
    if isinstance(v, int):
        return str(int(v))  # bool too: True is 1
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(v)


def labels_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``{a="1",b="x"}``, or '' without labels."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values)) + "}"


def sample_name(family: str, kind: str) -> str:
    """The name samples of a counter/info family carry; others carry the family name."""
    return family + {"counter": "_total", "info": "_info"}.get(kind, "")


def header(family: str, kind: str, help_text: str, om: bool) -> str:
    """The HELP and TYPE lines of a family; ``kind`` counter, gauge, histogram or info."""
    if om:
        name = family
    else:
        name = sample_name(family, kind)
        kind = "gauge" if kind == "info" else kind
    return f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n"


def reserved_names(family: str, kind: str) -> set[str]:
    """Every sample name a family of this kind can carry (for collision checks)."""
    if kind == "counter":
        return {family, f"{family}_total", f"{family}_created"}
    if kind == "histogram":
        return {family, f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
    if kind == "info":
        return {family, f"{family}_info"}
    return {family}


__all__ = [
    "OPENMETRICS_TYPE",
    "TEXT_TYPE",
    "escape_help",
    "escape_label",
    "header",
    "labels_text",
    "number",
    "reserved_names",
    "sample_name",
]
