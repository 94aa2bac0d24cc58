"""Histogram buckets as ebpf_exporter reads them from a map: bounds, cumulative counts, sum."""

from __future__ import annotations

import math

from .config import MetricSpec


def bucket_bound(spec: MetricSpec, key: float) -> float:
    """The upper bound (``le``) of the bucket a histogram map keys as ``key``."""
    mult = spec.bucket_multiplier
    if spec.bucket_type == "exp2":
        return math.ldexp(1.0, int(key)) * mult
    if spec.bucket_type == "exp2zero":
        return 0.0 if key == 0 else math.ldexp(1.0, int(key) - 1) * mult
    return key * mult  # linear, fixed


def bucket_keys(spec: MetricSpec) -> tuple[list[float], float]:
    """The map keys that are buckets, in order, and the key that holds the sum.

    As ebpf_exporter reads them: bucket_min..bucket_max (or bucket_keys), then the key after the
    last; other keys are ignored.
    """
    if spec.bucket_type == "fixed":
        return list(spec.bucket_keys), spec.bucket_keys[-1] + 1
    return [float(k) for k in range(spec.bucket_min, spec.bucket_max + 1)], float(
        spec.bucket_max + 1
    )


def histogram(
    spec: MetricSpec, counts: dict[float, int]
) -> tuple[list[tuple[float, int]], int, float]:
    """Cumulative (le, count) buckets with gaps filled, the total count and the sum."""
    keys, sum_key = bucket_keys(spec)
    out, cum = [], 0
    for k in keys:
        cum += counts.get(k, 0)
        out.append((bucket_bound(spec, k), cum))
    return out, cum, counts.get(sum_key, 0) * spec.bucket_multiplier


__all__ = ["bucket_bound", "bucket_keys", "histogram"]
