"""The benchmark: fill, walk and drain maps in C and in Python, side by side, and check them.

For each map shape (type, key size, value size) and size N, one map is created and, in every
repetition, filled, walked (lookup only) and drained by:

  C batch / C per key     bench/c_drain.c, built on demand against the same static libbpf and
                          run on the very same map (its fd is passed down) in each repetition
  Py per key              this library's Map.update / next_key / lookup / delete, key by key
  Py per_key_batches      the library's own per-key drain (batch.per_key_batches)
  Py update_batch         Map.update_batch() from one flat buffer (the fill)
  Py Batch copy=False     drain()/batches(copy=False): raw Batch buffers, reused
  Py Batch (copy)         drain()/batches(): raw Batch buffers, copied (the default)
  Py pairs                drain_items()/items(): one (bytes, bytes) per element
  Py to_numpy             Batch.to_numpy() on copy=False batches (needs numpy)
  Py unpack               Batch.unpack("<I", "<Q") on copy=False batches: ints

By default the first shape (hash 4/8, the one the targets of issue 3 name) runs at every size;
the others, and the per-key fills and lookup walks, only up to 100,000 entries (--full-up-to,
--full). A drain sweep over batch sizes follows, on the first shape at the largest size.

Every run checks its own result: element count, key sum, the sum of every per-CPU value slot,
and an empty map after a drain; a mismatch stops the benchmark with exit status 1. Each
consumer keeps what it was given (the cheapest way: it writes keys and values into one
preallocated buffer, or sums decoded numbers) and the check runs after the clock stops. Each
drain, in C as in Python, starts right after its fill (the map equally warm in the caches).

Times are ns per element (median and min-max over repetitions), entries/s, and the ratio to
the C batch figure of the same map, size, operation and batch size. "RSS +" is the largest
growth of the resident set during a timed run (peak RSS reset through /proc/self/clear_refs
before it); "py peak" is tracemalloc's peak during one extra, untimed drain (Python objects
only: cffi's batch buffers are not traced). The machine is shared and noisy: compare ratios
from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import array
import gc
import io
import json
import operator
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from . import _bindings
from .batch import DEFAULT_BATCH_SIZE, Batch, per_key_batches
from .errors import BpfError
from .maps import Map, MapType

np: Any
try:  # optional extra; the numpy rows are skipped without it
    import numpy

    np = numpy
except ImportError:  # pragma: no cover - exercised where numpy is missing
    np = None

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "bench" / "c_drain.c"
LIBBPF_PREFIX = ROOT / "build" / "libbpf" / "install"
C_BINARY = ROOT / "build" / "bench" / "c_drain"

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
C_SCENARIO = {
    ("fill", "c_batch"): "fill_batch",
    ("fill", "c_key"): "fill_key",
    ("lookup", "c_batch"): "lookup_batch",
    ("lookup", "c_key"): "lookup_key",
    ("drain", "c_batch"): "drain_batch",
    ("drain", "c_key"): "drain_key",
}

# The targets of issue 3: (op, impl, reference, limit, text). A limit >= 2 is a speed-up
# (reference time / impl time, at least the limit); below 2, a time ratio (at most the limit).
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


# -- configuration ---------------------------------------------------------------------------


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


def parse_args(argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog or "python -m libbpf_batch.bench",
        description="Fill, walk and drain BPF maps in C and Python, side by side; every run "
        "checks its own result. Needs root (or CAP_BPF).",
        epilog="Defaults take about a minute on 2 cores; --quick a few seconds.",
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


# -- the C reference -------------------------------------------------------------------------


def c_program(cc: str = "gcc") -> tuple[Path | None, str]:
    """Build bench/c_drain.c into build/bench/ when it is missing or stale.

    Returns ``(path, "")``, or ``(None, why)`` when the source tree (bench/c_drain.c and the
    vendored libbpf in build/libbpf) is not there, e.g. under an installed wheel.
    """
    lib = LIBBPF_PREFIX / "lib" / "libbpf.a"
    if not C_SOURCE.is_file():
        return None, (
            f"no C reference: {C_SOURCE} is not here (it ships with the source tree, "
            "not the wheel); Python figures only, without ratios to C"
        )
    if not lib.is_file():
        return None, (
            f"no C reference: {lib} is missing (run `make build` in the source "
            "tree); Python figures only, without ratios to C"
        )
    if (
        C_BINARY.is_file()
        and C_BINARY.stat().st_mtime >= C_SOURCE.stat().st_mtime
        and C_BINARY.stat().st_mtime >= lib.stat().st_mtime
    ):
        return C_BINARY, ""
    if shutil.which(cc) is None:
        return None, f"no C reference: compiler {cc!r} not found; Python figures only"
    C_BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = C_BINARY.with_name(f"{C_BINARY.name}.{os.getpid()}.tmp")
    cmd = [
        cc,
        "-O2",
        "-Wall",
        "-I",
        str(LIBBPF_PREFIX / "include"),
        str(C_SOURCE),
        str(lib),
        "-lelf",
        "-lz",
        "-o",
        str(tmp),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        tmp.unlink(missing_ok=True)
        return None, (f"no C reference: {' '.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(tmp, C_BINARY)  # atomic: others may run the benchmark at the same time
    return C_BINARY, ""


def run_c(binary: Path, m: Map, scenarios: Iterable[str], batch_size: int) -> dict[str, float]:
    """One repetition of ``scenarios`` by c_drain on ``m`` (empty; left empty): ns/entry."""
    fd = m.fd
    cmd = [
        str(binary),
        "--fd",
        str(fd),
        "--reps",
        "1",
        "--batch-size",
        str(batch_size),
        "--scenarios",
        ",".join(scenarios),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, pass_fds=(fd,), check=False)
    if done.returncode:
        raise BenchError(f"C reference failed ({' '.join(cmd)}): {done.stderr.strip()}")
    try:
        out = json.loads(done.stdout)
        return {name: float(s["ns_per_entry"][0]) for name, s in out["scenarios"].items()}
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BenchError(
            f"C reference printed something unexpected ({e}): {done.stdout[:200]!r}"
        ) from None


# -- the workload: what is written, and the checks -------------------------------------------


def _field(size: int) -> tuple[Literal["I", "Q"], int]:
    """The array code of the number at offset 0 of an element of ``size`` bytes, and its size."""
    return ("I", 4) if size == 4 else ("Q", 8)


class Workload:
    """One map at one size: the fill buffers, the consumers' buffers and the checks.

    Key i is i (u32 or u64 at offset 0, the rest zero); per-CPU slot c of its value holds
    i + 1 + c (cpu 0 only for other maps), as in bench/c_drain.c.
    """

    def __init__(self, m: Map, n: int, label: str) -> None:
        self.m, self.n, self.label = m, n, label
        ks, stride = m.key_size, m.value_stride
        self.ks, self.stride, self.ncpus = ks, stride, m.ncpus
        slot = (m.value_size + 7) & ~7 if m.is_percpu else m.value_size
        self.kcode, kw = _field(ks)
        self.vcode, vw = _field(m.value_size)
        self.kstep, self.vstep, self.vslot = ks // kw, stride // vw, slot // vw
        keys = array.array(self.kcode, bytes(n * ks))
        keys[:: self.kstep] = array.array(self.kcode, range(n))
        values = array.array(self.vcode, bytes(n * stride))
        for c in range(self.ncpus):
            values[c * self.vslot :: self.vstep] = array.array(self.vcode, range(1 + c, n + 1 + c))
        self.keys, self.values = keys, values
        self.key_bytes = memoryview(keys).cast("B")
        self.value_bytes = memoryview(values).cast("B")
        self.key_sum = n * (n - 1) // 2
        self.value_sums = [self.key_sum + n * (1 + c) for c in range(self.ncpus)]
        # Where consumers put what they got: preallocated and touched, so that writing into
        # them neither allocates nor grows the resident set during a timed run.
        self.kout = io.BytesIO()
        self.kout.write(bytes(n * ks))
        self.vout = io.BytesIO()
        self.vout.write(bytes(n * stride))
        self.numpy_dtypes = self._numpy_dtypes() if np is not None else None
        self.kfmt = "<I" if ks == 4 else "<Q"
        self.vfmt = "<I" if m.value_size == 4 else "<Q"

    def _numpy_dtypes(self) -> tuple[Any, Any]:
        def dtype(size: int) -> Any:
            if size in (4, 8):
                return np.dtype(f"<u{size}")
            return np.dtype({"names": ["n"], "formats": ["<u8"], "offsets": [0], "itemsize": size})

        return dtype(self.ks), dtype(self.m.value_size)

    def fail(self, what: str, message: str) -> BenchError:
        return BenchError(f"{self.label}, {self.n:,} entries, {what}: {message}")

    def reset(self) -> None:
        self.kout.seek(0)
        self.vout.seek(0)

    def check_out(self, what: str) -> None:
        """Check what the consumer wrote into kout/vout."""
        nk, nv = self.kout.tell(), self.vout.tell()
        count = nk // self.ks
        if nk % self.ks or nv != count * self.stride:
            raise self.fail(what, f"{nk} key bytes and {nv} value bytes don't make whole elements")
        ksum, vsums = self._sums(count)
        self.check_sums(what, count, ksum, vsums)

    def _sums(self, count: int) -> tuple[int, list[int]]:
        with self.kout.getbuffer() as kb, self.vout.getbuffer() as vb:
            k = kb[: count * self.ks].cast(self.kcode)
            v = vb[: count * self.stride].cast(self.vcode)
            ksum = sum(k[:: self.kstep])
            vsums = [sum(v[c * self.vslot :: self.vstep]) for c in range(self.ncpus)]
            del k, v
        return ksum, vsums

    def check_sums(self, what: str, count: int, ksum: int, vsums: Sequence[int]) -> None:
        if count != self.n:
            raise self.fail(what, f"{count:,} elements, expected {self.n:,}")
        if ksum != self.key_sum:
            raise self.fail(what, f"key sum {ksum}, expected {self.key_sum}")
        if list(vsums) != self.value_sums:
            raise self.fail(what, f"value sums {list(vsums)}, expected {self.value_sums}")

    def check_empty(self, what: str) -> None:
        if self.m.next_key() is not None:
            raise self.fail(what, "the map is not empty after the drain")

    def clear(self) -> None:
        """Drain the map, untimed, checking that it held what the last fill wrote."""
        self.reset()
        consume_batches(self, self.m.drain(copy=False))
        self.check_out("untimed drain")
        self.check_empty("untimed drain")

    def fill(self) -> float:
        """update_batch from one buffer; ns/entry."""
        t0 = time.perf_counter_ns()
        applied = self.m.update_batch(self.key_bytes, self.value_bytes)
        t1 = time.perf_counter_ns()
        if applied != self.n:
            raise self.fail("fill", f"update_batch applied {applied:,} of {self.n:,}")
        return (t1 - t0) / self.n


# -- consumers: each takes what an API yields and keeps the least needed to check it ---------

_second = operator.itemgetter(1)


# A consumer returns None when it wrote what it got into w.kout/w.vout, or the (count, key sum,
# per-CPU value sums) it computed from decoded numbers.
Sums = Optional[tuple[int, int, list[int]]]


def consume_batches(w: Workload, batches: Iterable[Batch]) -> Sums:
    wk, wv = w.kout.write, w.vout.write
    for b in batches:
        wk(b.keys)
        wv(b.values)
    return None


def consume_pairs(w: Workload, pairs: Iterable[tuple[bytes, bytes]]) -> Sums:
    wk, wv = w.kout.write, w.vout.write
    for k, v in pairs:
        wk(k)
        wv(v)
    return None


def consume_numpy(w: Workload, batches: Iterable[Batch]) -> Sums:
    assert w.numpy_dtypes is not None
    kdt, vdt = w.numpy_dtypes
    count = ksum = 0
    vsum = np.zeros(w.ncpus, dtype=np.uint64)
    u64 = np.uint64
    for b in batches:
        keys, values = b.to_numpy(kdt, vdt)
        if kdt.names:
            keys, values = keys["n"], values["n"]
        count += len(keys)
        ksum += int(keys.sum(dtype=u64))
        vsum += values.sum(axis=0, dtype=u64)  # per-CPU: one sum per CPU column
    return count, ksum, [int(x) for x in np.atleast_1d(vsum)]


def consume_unpack(w: Workload, batches: Iterable[Batch]) -> Sums:
    kfmt, vfmt, ncpus = w.kfmt, w.vfmt, w.ncpus
    count = ksum = 0
    vsums = [0] * ncpus
    getters = [operator.itemgetter(c) for c in range(ncpus)]
    for b in batches:
        rows = b.unpack(kfmt, vfmt)
        count += len(rows)
        ksum += sum(map(operator.itemgetter(0), rows))
        if ncpus == 1 and not w.m.is_percpu:
            vsums[0] += sum(map(_second, rows))
        else:  # per-CPU values decode to one list per element
            for c, get in enumerate(getters):
                vsums[c] += sum(map(get, map(_second, rows)))
    return count, ksum, vsums


# -- timing ------------------------------------------------------------------------------


class PeakRss:
    """Growth of the resident set during a run: /proc/self/clear_refs 5 resets VmHWM."""

    def __init__(self) -> None:
        self.ok = True
        self.base = 0

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
        return out

    def start(self) -> None:
        if not self.ok:
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status()["VmRSS"]
        except (OSError, KeyError):
            self.ok = False

    def peak(self) -> int | None:
        if not self.ok:
            return None
        return max(0, self._status()["VmHWM"] - self.base)


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


class Bench:
    """Runs the scenarios and collects rows."""

    def __init__(self, args: argparse.Namespace, c_binary: Path | None) -> None:
        self.args = args
        self.c = c_binary
        self.rows: dict[tuple[str, int, str, str, int | None, bool], Row] = {}
        self.rss = PeakRss()
        self.t0 = time.monotonic()
        self.progress = args.progress

    @staticmethod
    def batch_of(op: str, impl: str, batch: int) -> int | None:
        """The batch size a row is filed under: None for fills and per-key walks."""
        return batch if op != "fill" and impl not in ("c_key", "py_key", "py_key_lib") else None

    def row(self, w: Workload, op: str, impl: str, batch: int | None, sweep: bool = False) -> Row:
        key = (w.label, w.n, op, impl, batch, sweep)
        if key not in self.rows:
            self.rows[key] = Row(w.label, w.n, op, impl, batch, sweep)
        return self.rows[key]

    def say(self, text: str) -> None:
        if self.progress:
            line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    # -- one timed Python run ---------------------------------------------------------------
    def timed(
        self,
        w: Workload,
        what: str,
        run: Callable[[], Sums],
        row: Row,
        empty_after: bool,
        checked_later: bool = False,
        before: Callable[[], object] | None = None,
    ) -> None:
        """Time ``run`` once, then check what it returned (fills: the walk after checks).

        ``before`` (a fill) runs just before the clock starts, after the housekeeping: the C
        program too starts each drain right after its fill, with the map warm in the caches.
        """
        w.reset()
        gc.collect()
        self.rss.start()
        if before is not None:
            before()
        t0 = time.perf_counter_ns()
        sums = run()
        t1 = time.perf_counter_ns()
        peak = self.rss.peak()
        if not checked_later:
            self.verify(w, what, sums, empty_after)
        row.ns.append((t1 - t0) / w.n)
        if peak is not None:
            row.rss.append(peak)

    @staticmethod
    def verify(w: Workload, what: str, sums: Sums, empty_after: bool) -> None:
        if sums is None:
            w.check_out(what)
        else:
            w.check_sums(what, *sums)
        if empty_after:
            w.check_empty(what)

    def python_batch_run(self, w: Workload, op: str, mode: str, batch: int) -> Callable[[], Sums]:
        """The run of ``mode`` for ``op`` (lookup or drain) as a closure."""
        m = w.m
        delete = op == "drain"
        walk = m.drain if delete else m.batches
        if mode == "py_view":
            return lambda: consume_batches(w, walk(batch, copy=False))
        if mode == "py_copy":
            return lambda: consume_batches(w, walk(batch))
        if mode == "py_pairs":
            pairs = m.drain_items if delete else m.items
            return lambda: consume_pairs(w, pairs(batch))
        if mode == "py_numpy":
            return lambda: consume_numpy(w, walk(batch, copy=False))
        if mode == "py_unpack":
            return lambda: consume_unpack(w, walk(batch, copy=False))
        raise ValueError(mode)

    def modes(self) -> list[str]:
        return [mode for mode in BATCH_MODES if mode != "py_numpy" or np is not None]

    # -- per-key loops -----------------------------------------------------------------------
    @staticmethod
    def py_key_fill(w: Workload) -> Sums:
        update = w.m.update
        ks, stride = w.ks, w.stride
        kv, vv = w.key_bytes, w.value_bytes
        for o, p in zip(range(0, w.n * ks, ks), range(0, w.n * stride, stride)):
            update(kv[o : o + ks], vv[p : p + stride])
        return None

    @staticmethod
    def py_key_walk(w: Workload, delete: bool) -> Sums:
        m = w.m
        next_key, lookup, remove = m.next_key, m.lookup, m.delete
        wk, wv = w.kout.write, w.vout.write
        key = next_key()
        while key is not None:
            nxt = next_key(key)  # before the delete: restarting from None is quadratic
            value = lookup(key)
            if value is None:
                raise w.fail("per-key walk", f"next_key gave {key!r}, lookup found nothing")
            if delete:
                remove(key)
            wk(key)
            wv(value)
            key = nxt
        return None

    # -- one map, one size -------------------------------------------------------------------
    def run_workload(self, shape: Shape, n: int) -> None:
        a = self.args
        batch = a.batch_size
        label = shape.label
        with Map.create(shape.map_type, shape.key_size, shape.value_size, n, name="bench") as m:
            w = Workload(m, n, label)
            small = n <= a.full_up_to
            fill_row = self.row(w, "fill", "py_batch", None)

            def fill() -> None:
                fill_row.ns.append(w.fill())

            for rep in range(a.reps):
                per_key = rep < a.per_key_reps
                where = f"{label}, {n:,} entries, rep {rep + 1}/{a.reps}"
                if self.c is not None:
                    self.say(f"{where}: C")
                    # Three runs, so that each drain follows a fill, as the Python drains do
                    # (a drain right after a lookup walk finds a warmer cache: ~5-10% faster).
                    runs = [["fill_batch", "lookup_batch"], ["drain_batch"]]
                    if per_key:
                        runs.append(
                            ["fill_key", "lookup_key", "drain_key"] if small else ["drain_key"]
                        )
                    for scen in runs:
                        got = run_c(self.c, m, scen, batch)
                        for (op, impl), name in C_SCENARIO.items():
                            if name in got:
                                self.row(w, op, impl, self.batch_of(op, impl, batch)).ns.append(
                                    got[name]
                                )
                for mode in self.modes():
                    self.say(f"{where}: Python drain, {IMPL_LABELS[mode]}")
                    self.timed(
                        w,
                        f"drain {mode}",
                        self.python_batch_run(w, "drain", mode, batch),
                        self.row(w, "drain", mode, batch),
                        empty_after=True,
                        before=fill,
                    )
                self.say(f"{where}: Python lookups")
                for i, mode in enumerate(self.modes()):
                    self.timed(
                        w,
                        f"lookup {mode}",
                        self.python_batch_run(w, "lookup", mode, batch),
                        self.row(w, "lookup", mode, batch),
                        empty_after=False,
                        before=None if i else fill,
                    )
                if per_key:
                    self.say(f"{where}: Python per key")
                    if small:
                        w.clear()
                        self.timed(
                            w,
                            "fill py_key",
                            lambda: self.py_key_fill(w),
                            self.row(w, "fill", "py_key", None),
                            empty_after=False,
                            checked_later=True,
                        )
                        self.timed(
                            w,
                            "lookup py_key",
                            lambda: self.py_key_walk(w, False),
                            self.row(w, "lookup", "py_key", None),
                            empty_after=False,
                        )
                    self.timed(
                        w,
                        "drain py_key",
                        lambda: self.py_key_walk(w, True),
                        self.row(w, "drain", "py_key", None),
                        empty_after=True,
                    )
                    self.say(f"{where}: Python per_key_batches")
                    self.timed(
                        w,
                        "drain py_key_lib",
                        lambda: consume_batches(
                            w, per_key_batches(m.access, delete=True, batch_size=batch)
                        ),
                        self.row(w, "drain", "py_key_lib", None),
                        empty_after=True,
                        before=fill,
                    )
                else:
                    w.clear()  # the next repetition starts from an empty map
            if a.tracemalloc:
                for mode in self.modes():
                    self.say(f"{label}, {n:,} entries: tracemalloc, drain {IMPL_LABELS[mode]}")
                    self.traced(w, mode, batch)

    def traced(self, w: Workload, mode: str, batch: int) -> None:
        """One untimed drain under tracemalloc: the peak of Python allocations."""
        w.fill()
        run = self.python_batch_run(w, "drain", mode, batch)
        w.reset()
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            sums = run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.verify(w, f"drain {mode} (tracemalloc)", sums, empty_after=True)
        self.row(w, "drain", mode, batch).py_peak = peak

    def run_sweep(self, shape: Shape, n: int) -> None:
        a = self.args
        with Map.create(
            shape.map_type, shape.key_size, shape.value_size, n, name="bench_sweep"
        ) as m:
            w = Workload(m, n, shape.label)
            for rep in range(a.sweep_reps):
                for batch in a.sweep:
                    self.say(
                        f"sweep {shape.label}, {n:,} entries, batch {batch}, "
                        f"rep {rep + 1}/{a.sweep_reps}"
                    )
                    if self.c is not None:
                        got = run_c(self.c, m, ["drain_batch"], batch)
                        self.row(w, "drain", "c_batch", batch, True).ns.append(got["drain_batch"])
                    self.timed(
                        w,
                        f"sweep drain py_view batch {batch}",
                        self.python_batch_run(w, "drain", "py_view", batch),
                        self.row(w, "drain", "py_view", batch, True),
                        empty_after=True,
                        before=w.fill,
                    )

    def run(self) -> None:
        a = self.args
        for i, shape in enumerate(a.shapes):
            for n in a.entries:
                if i == 0 or n <= a.full_up_to:
                    self.run_workload(shape, n)
        if a.sweep:
            self.run_sweep(a.shapes[0], max(a.entries))
        self.done()

    # -- results -----------------------------------------------------------------------------
    def reference(
        self, shape: str, entries: int, op: str, sweep: bool, batch: int | None
    ) -> Row | None:
        """The C batch row that ``batch`` (None: the main batch size) compares with."""
        if op == "fill":
            batch = None
        elif batch is None:
            batch = self.args.batch_size
        return self.rows.get((shape, entries, op, "c_batch", batch, sweep))

    def ratio(self, row: Row) -> float | None:
        ref = self.reference(row.shape, row.entries, row.op, row.sweep, row.batch_size)
        return row.median / ref.median if ref is not None and ref.ns and row.ns else None

    def targets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        label = Shape(MapType.HASH, TARGET_SHAPE[1], TARGET_SHAPE[2]).label
        batch = self.args.batch_size
        for op, impl, ref, limit, text in TARGETS:
            row = self.rows.get(
                (label, TARGET_ENTRIES, op, impl, self.batch_of(op, impl, batch), False)
            )
            ref_row = self.rows.get(
                (label, TARGET_ENTRIES, op, ref, self.batch_of(op, ref, batch), False)
            )
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
                row = self.rows.get((label, TARGET_ENTRIES, "drain", mode, batch, False))
                if row is None:
                    continue
                peaks = [
                    p for p in (max(row.rss) if row.rss else None, row.py_peak) if p is not None
                ]
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
                            "limit": MEMORY_TARGET,
                            "met": max(peaks) < MEMORY_TARGET,
                        }
                    )
        return out

    def report(self, c_note: str) -> dict[str, Any]:
        rows = []
        for row in self.rows.values():
            rows.append(row.as_dict(self.ratio(row)))
        return {
            "benchmark": "libbpf-batch",
            "machine": machine(),
            "config": {
                "shapes": [s.label for s in self.args.shapes],
                "entries": self.args.entries,
                "reps": self.args.reps,
                "per_key_reps": self.args.per_key_reps,
                "full_up_to": self.args.full_up_to,
                "batch_size": self.args.batch_size,
                "sweep": self.args.sweep,
                "sweep_reps": self.args.sweep_reps,
                "quick": self.args.quick,
                "tracemalloc": self.args.tracemalloc,
            },
            "c_reference": self.c is not None,
            "c_note": c_note,
            "numpy": np is not None,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "rows": rows,
            "targets": self.targets(),
        }


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libbpf": _bindings.libbpf_version_string(),
        "numpy": np.__version__ if np is not None else None,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


# -- output ------------------------------------------------------------------------------------


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as text tables, one per map and size, then the sweep and the targets."""
    lines = []
    mc = report["machine"]
    lines.append(
        f"libbpf-batch benchmark: {mc['cpus']} CPUs, kernel {mc['kernel']}, "
        f"Python {mc['python']}, libbpf {mc['libbpf']}, "
        f"numpy {mc['numpy'] or 'absent'}; {report['elapsed_s']} s"
    )
    if report["c_note"]:
        lines.append(report["c_note"])
    head = (
        f"  {'op':<7}{'implementation':<27}{'batch':>6} {'runs':>4} {'ns/entry':>9} "
        f"{'min-max':>13} {'entries/s':>11} {'x C':>6} {'RSS +KiB':>9} {'py peak KiB':>11}"
    )
    groups: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for row in report["rows"]:
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
                f"{len(r['ns_per_entry']):>4} {r['median_ns']:>9,.0f} {spread:>13} {r['entries_per_s']:>11,} {x_c:>6} "
                f"{_kib(r['rss_peak_bytes']):>9} {_kib(r['tracemalloc_peak_bytes']):>11}"
            )
    if report["targets"]:
        lines.append("")
        lines.append("targets (hash 4/8, 1,000,000 entries, medians of this run):")
        for t in report["targets"]:
            if t.get("bytes") is not None:
                got = f"{t['bytes'] / 2**20:.2f} MiB"
            elif t.get("speedup") is not None:
                got = f"{t['speedup']:.1f}x faster"
            else:
                got = f"{t['ratio']:.2f}x"
            lines.append(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {got}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when a check failed)."""
    args = parse_args(argv, prog)
    name = prog or "libbpf-batch bench"
    c_binary, c_note = (None, "C reference skipped (--no-c)") if args.no_c else c_program(args.cc)
    if c_note:
        print(f"{name}: {c_note}", file=sys.stderr)
    bench = Bench(args, c_binary)
    try:
        bench.run()
    except BenchError as e:
        bench.done()
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        return 1
    except BpfError as e:
        bench.done()
        print(f"{name}: {e} (the benchmark needs root or CAP_BPF)", file=sys.stderr)
        return 1
    report = bench.report(c_note)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
