"""The workload (what is written into a map, and the checks) and its consumers.

A consumer takes what an API yields and keeps the least needed to check it: it writes keys and
values into one preallocated buffer, or sums decoded numbers; the check runs after the clock
stops. The per-key loops are here too: the Map-method walk and fill a user would write.
"""

from __future__ import annotations

import array
import io
import operator
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Literal, Optional

from libbpf_batch import Batch, Map

from .config import BATCH_MODES, BenchError

np: Any
try:  # optional extra; the numpy rows are skipped without it
    import numpy

    np = numpy
except ImportError:  # pragma: no cover - exercised where numpy is missing
    np = None


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
        self.kcode, kw = _field(ks)
        self.vcode, vw = _field(m.value_size)
        self.kstep, self.vstep, self.vslot = ks // kw, stride // vw, m.layout.slot // vw
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

    def verify(self, what: str, sums: Sums, empty_after: bool) -> None:
        """Check what a consumer kept (``sums``, or kout/vout when None), then the map."""
        if sums is None:
            self.check_out(what)
        else:
            self.check_sums(what, *sums)
        if empty_after:
            self.check_empty(what)

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


# -- consumers ---------------------------------------------------------------------------------

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


def batch_modes() -> list[str]:
    """The batch consumers this machine can run (to_numpy needs numpy)."""
    return [mode for mode in BATCH_MODES if mode != "py_numpy" or np is not None]


def batch_run(w: Workload, op: str, mode: str, batch: int) -> Callable[[], Sums]:
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


# -- per-key loops -------------------------------------------------------------------------------


def py_key_fill(w: Workload) -> Sums:
    update = w.m.update
    ks, stride = w.ks, w.stride
    kv, vv = w.key_bytes, w.value_bytes
    for o, p in zip(range(0, w.n * ks, ks), range(0, w.n * stride, stride)):
        update(kv[o : o + ks], vv[p : p + stride])
    return None


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
