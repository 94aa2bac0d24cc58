"""What the benchmark runs: its sections, the map shapes, the labels, the targets, the arguments."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libbpf_batch import DEFAULT_BATCH_SIZE, MapType

# The sections, in the order they run: name -> module of this package with run(args) -> dict.
# One line each; a section whose module is not there is skipped with a note.
SECTIONS = {
    "drain": "drain",  # fill, lookup-only walk and drain, C vs Python, batch vs per key
    "cli": "cli_bench",  # the command vs bpftool
    "export": "export_bench",  # the exporter's scrape
    "harvest": "harvest_bench",  # the double-buffered harvest's swap
    "workers": "workers_bench",  # parallel drain, mmapable arrays
    "interrupt": "interrupt_bench",  # the cost of the exactly-once mechanism
}

DEFAULT_SHAPES = "hash:4:8,hash:16:64,percpu_hash:4:8"
DEFAULT_ENTRIES = "100000,1000000"
DEFAULT_SWEEP = "64,256,1024,4096,16384,65536"

OPS = ("fill", "lookup", "drain")
IMPL_LABELS = {
    "c_batch": "C batch",
    "c_key": "C per key",
    "py_key": "Py per key (Map methods)",
    "py_key_lib": "Py per_key_batches",
    "py_batch": "Py update_batch(buffer)",
    "py_view": "Py Batch copy=False",
    "py_copy": "Py Batch (copy)",
    "py_pairs": "Py (bytes, bytes) pairs",
    "py_numpy": "Py to_numpy()",
    "py_unpack": "Py unpack() ints",
}
BATCH_MODES = ("py_view", "py_copy", "py_pairs", "py_numpy", "py_unpack")
PER_KEY_IMPLS = ("c_key", "py_key", "py_key_lib")
C_SCENARIO = {
    ("fill", "c_batch"): "fill_batch",
    ("fill", "c_key"): "fill_key",
    ("lookup", "c_batch"): "lookup_batch",
    ("lookup", "c_key"): "lookup_key",
    ("drain", "c_batch"): "drain_batch",
    ("drain", "c_key"): "drain_key",
}

# The targets: (op, impl, reference, limit, text). A limit >= 2 is a speed-up (reference time /
# impl time, at least the limit); below 2, a time ratio (at most the limit).
TARGETS = (
    (
        "drain",
        "py_view",
        "c_batch",
        1.05,
        "drain yielding raw Batch buffers (copy=False) <= 1.05x C batch",
    ),
    (
        "drain",
        "py_copy",
        "c_batch",
        1.05,
        "drain yielding raw Batch buffers (copied) <= 1.05x C batch",
    ),
    ("drain", "py_numpy", "c_batch", 1.15, "drain decoded to numpy <= 1.15x C batch"),
    ("drain", "py_pairs", "c_batch", 1.5, "drain to (bytes, bytes) pairs <= 1.5x C batch"),
    ("drain", "py_copy", "py_key_lib", 10, "batch drain >= 10x faster than per_key_batches"),
    ("drain", "py_copy", "py_key", 10, "batch drain >= 10x faster than Map-method per-key"),
    ("fill", "py_batch", "c_batch", 1.1, "update_batch from one buffer <= 1.1x C batch fill"),
)
TARGET_SHAPE = ("hash", 4, 8)
TARGET_ENTRIES = 1_000_000
MEMORY_TARGET = 2 * 1024 * 1024  # draining 1,000,000 entries with batch 4096 adds < 2 MB


class BenchError(Exception):
    """A run's own check failed, or the benchmark could not run."""


def row_batch(op: str, impl: str, batch: int) -> int | None:
    """The batch size a row is filed under: None for fills and per-key walks."""
    return batch if op != "fill" and impl not in PER_KEY_IMPLS else None


@dataclass(frozen=True)
class Shape:
    """A map type with its key and value sizes, e.g. ``hash:4:8``."""

    map_type: MapType
    key_size: int
    value_size: int

    @property
    def label(self) -> str:
        return f"{self.map_type.name.lower()} {self.key_size}/{self.value_size}"

    @classmethod
    def parse(cls, text: str) -> Shape:
        try:
            name, ks, vs = text.split(":")
            map_type = MapType[name.upper()]
            shape = cls(map_type, int(ks), int(vs))
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected TYPE:KEY_SIZE:VALUE_SIZE, e.g. hash:4:8"
            ) from None
        if map_type not in (MapType.HASH, MapType.PERCPU_HASH):
            raise argparse.ArgumentTypeError(f"{text!r}: type must be hash or percpu_hash")
        for size in (shape.key_size, shape.value_size):
            if size != 4 and (size <= 0 or size % 8):
                raise argparse.ArgumentTypeError(
                    f"{text!r}: sizes must be 4 or a multiple of 8 (the pattern writes a u32 "
                    "or u64 at offset 0)"
                )
        if shape.key_size > 64:
            raise argparse.ArgumentTypeError(f"{text!r}: keys of at most 64 bytes")
        return shape


TARGET_LABEL = Shape(MapType[TARGET_SHAPE[0].upper()], TARGET_SHAPE[1], TARGET_SHAPE[2]).label


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers, e.g. 64,4096") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: values must be positive")
    return values


def _shape_list(text: str) -> list[Shape]:
    return [Shape.parse(x) for x in text.split(",") if x.strip()]


def _section_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: sections are a comma-separated list of {','.join(SECTIONS)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="The libbpf-batch benchmark, section by section. The drain section fills, "
        "walks and drains BPF maps in C and Python, side by side; every run checks its own "
        "result. Needs root (or CAP_BPF); run from the repository root.",
        epilog="Defaults take about a minute on 2 cores; --quick a few seconds.",
    )
    p.add_argument(
        "--sections",
        type=_section_list,
        default=None,
        help=f"sections to run, comma-separated (default: every one present of "
        f"{','.join(SECTIONS)})",
    )
    p.add_argument(
        "--shapes",
        type=_shape_list,
        default=None,
        help=f"map shapes TYPE:KEY:VALUE (default {DEFAULT_SHAPES})",
    )
    p.add_argument(
        "-n",
        "--entries",
        type=_int_list,
        default=None,
        help=f"map sizes, comma-separated (default {DEFAULT_ENTRIES})",
    )
    p.add_argument(
        "-r",
        "--reps",
        type=int,
        default=None,
        help="repetitions of the batch scenarios (default 3)",
    )
    p.add_argument(
        "--per-key-reps",
        type=int,
        default=None,
        help="repetitions of the per-key scenarios, 0 to skip them (default 1)",
    )
    p.add_argument(
        "--full-up-to",
        type=int,
        default=None,
        metavar="N",
        help="sizes above N run only the first shape, and of the per-key scenarios "
        "only the drains (default 100000: per-key walks take seconds at "
        "1,000,000 entries and cost the same per entry at 100,000)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="every scenario for every shape at every size (several minutes)",
    )
    p.add_argument(
        "-b",
        "--batch-size",
        type=int,
        default=None,
        help=f"batch size of the main scenarios (default {DEFAULT_BATCH_SIZE}, the "
        "library's default)",
    )
    p.add_argument(
        "--sweep",
        type=_int_list,
        default=None,
        help=f"batch sizes for the drain sweep on the first shape at the largest N "
        f"(default {DEFAULT_SWEEP}; '' to skip)",
    )
    p.add_argument(
        "--sweep-reps", type=int, default=None, help="repetitions per sweep point (default 1)"
    )
    p.add_argument("--no-c", action="store_true", help="skip the C reference")
    p.add_argument("--cc", default=os.environ.get("CC", "gcc"), help="C compiler (default gcc)")
    p.add_argument(
        "--no-tracemalloc",
        dest="tracemalloc",
        action="store_false",
        help="skip the extra untimed drains that measure Python allocations",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: small maps, 2 repetitions, a short sweep",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    prog_group = p.add_mutually_exclusive_group()
    prog_group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="a progress line on stderr (default: when stderr is a tty)",
    )
    prog_group.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "shapes": _shape_list(DEFAULT_SHAPES),
        "entries": [20_000] if quick else _int_list(DEFAULT_ENTRIES),
        "reps": 2 if quick else 3,
        "per_key_reps": 1,
        "full_up_to": 100_000,
        "batch_size": DEFAULT_BATCH_SIZE,
        "sweep": [64, 1024, 65536] if quick else _int_list(DEFAULT_SWEEP),
        "sweep_reps": 1,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("reps", "batch_size", "sweep_reps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.full:
        args.full_up_to = max(args.entries)
    if args.per_key_reps < 0:
        p.error("--per-key-reps must be >= 0")
    if not args.shapes or not args.entries:
        p.error("need at least one shape and one size")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    return args
