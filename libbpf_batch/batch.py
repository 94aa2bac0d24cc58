"""Batch, and the one lookup loop that every iterator shares."""

from __future__ import annotations

import errno
import itertools
import operator
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from . import _bindings
from ._cdata import BytesLike, Layout, batch_opts, check_positive
from ._libbpf import ffi
from .errors import ENOTSUPP, BatchNotSupportedError, BpfError

DEFAULT_BATCH_SIZE = 4096
"""Elements per batch when none is given.

The C loop's cost per entry is the kernel's per-bucket work and barely moves from a batch of
256 up; this library adds a few microseconds of Python per batch, which is noise from about
1024 elements on (bench/RESULTS.md has the sweep). 4096 sits in that flat part with room to
spare on a busy machine while its buffers stay small (48 KiB for 4 B keys and 8 B values):
larger batches gain nothing and only hold more memory. Memory is bounded by the batch, never
by max_entries."""

# Errors after which the kernel's count is the number of elements it returned (and, for
# lookup_and_delete, deleted): hashtab.c and syscall.c write count on these paths. On the
# others (argument checks, permission, missing op) count still holds the input; on EFAULT
# it can't be trusted (bpf.h).
_COUNT_UNTRUSTED = frozenset(
    {
        errno.EINVAL,
        errno.EPERM,
        errno.EACCES,
        errno.EBADF,
        errno.EFAULT,
        ENOTSUPP,
        errno.EOPNOTSUPP,
        errno.ENOSPC,
    }
)


def _returned_count(err: BpfError, count: int) -> int:
    """How many elements a failed lookup(-and-delete) batch call really returned."""
    return 0 if err.errno in _COUNT_UNTRUSTED else count


@dataclass(frozen=True)
class MapAccess:
    """What the batch loop needs of a map, and no more: the loop never sees the Map.

    ``fd(op)`` returns the open fd or raises ValueError naming ``op`` and the map; ``where``
    names the map in messages (``map 'counts' (id 42)``).
    """

    fd: Callable[[str], int]
    layout: Layout
    max_entries: int
    where: str


class Batch:
    """Elements returned by one batch call: ``count`` keys and values in two flat buffers.

    ``keys`` holds ``count * key_size`` bytes and ``values`` ``count * value_stride`` bytes
    (per-CPU maps: one 8-byte-aligned slot per possible CPU per element). ``cursor`` is what to
    pass to the next call, and ``done`` says the kernel answered ENOENT (this was the last
    batch). Iterating yields ``(key, value)`` bytes pairs. A batch made with ``copy=False``
    holds memoryviews into buffers that the next step of its iterator overwrites.
    """

    __slots__ = ("count", "cursor", "done", "keys", "layout", "values")

    def __init__(
        self,
        layout: Layout,
        count: int,
        keys: BytesLike,
        values: BytesLike,
        cursor: bytes = b"",
        done: bool = False,
    ) -> None:
        self.layout = layout
        self.count = count
        self.keys = keys
        self.values = values
        self.cursor = cursor
        self.done = done

    @property
    def key_size(self) -> int:
        return self.layout.key_size

    @property
    def value_size(self) -> int:
        return self.layout.value_size

    @property
    def value_stride(self) -> int:
        return self.layout.value_stride

    @property
    def ncpus(self) -> int:
        return self.layout.ncpus

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"<Batch count={self.count} done={self.done}>"

    def key_list(self) -> list[bytes]:
        """The keys, one bytes object each."""
        return list(_chunks(self.keys, self.key_size, self.count))

    def value_list(self) -> list[bytes]:
        """The values, one bytes object each (``value_stride`` bytes for per-CPU maps)."""
        return list(_chunks(self.values, self.value_stride, self.count))

    def to_dict(self) -> dict[bytes, bytes]:
        """``{key: value}``; ``dict(batch)`` can't work, as ``keys`` is a buffer, not a method."""
        return dict(iter(self))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return _pairs(self.keys, self.values, self.key_size, self.value_stride, self.count)

    def unpack(
        self, key_format: str | None = None, value_format: str | None = None
    ) -> list[tuple[Any, Any]]:
        """Decode with :mod:`struct` formats, e.g. ``unpack("<I", "<Q")``.

        A format of one field gives that field, not a 1-tuple; ``None`` leaves bytes. Per-CPU
        values decode to a list with one entry per CPU (padding stripped).
        """
        keys = _unpack(self.keys, self.key_size, self.count, key_format)
        if self.layout.percpu and value_format is not None:
            values: list[Any] = self.percpu_values(value_format)
        else:
            values = _unpack(self.values, self.value_stride, self.count, value_format)
        return list(zip(keys, values))

    def percpu_values(self, value_format: str = "<Q") -> list[list[Any]]:
        """Per-CPU maps: each element's values, one per possible CPU, decoded."""
        flat = self._slots(value_format)
        return list(map(list, zip(*[iter(flat)] * self.ncpus)))  # groups of ncpus, in C

    def percpu_sums(self, value_format: str = "<Q") -> list[Any]:
        """Per-CPU maps: each element's value summed over the CPUs (a one-field format)."""
        flat = self._slots(value_format)
        return list(map(sum, zip(*[iter(flat)] * self.ncpus)))  # groups of ncpus, in C

    def _slots(self, value_format: str) -> list[Any]:
        # count * ncpus slots of round_up(value_size, 8) bytes, decoded in one pass
        return _unpack(self.values, self.layout.slot, self.count * self.ncpus, value_format)

    def to_numpy(self, key_dtype: Any = None, value_dtype: Any = None) -> tuple[Any, Any]:
        """``(keys, values)`` as numpy arrays without a Python object per element.

        Default dtypes are little-endian unsigned ints for sizes 1/2/4/8 and raw ``V<n>``
        otherwise. Per-CPU values have shape ``(count, ncpus)``, padding stripped. The arrays
        are read-only views of the batch's buffers (copy them to keep a ``copy=False`` batch).
        """
        import numpy as np  # optional extra: pip install libbpf-batch[numpy]

        keys = np.frombuffer(
            self.keys, dtype=_dtype(np, key_dtype, self.key_size, "key"), count=self.count
        )
        vdtype = _dtype(np, value_dtype, self.value_size, "value")
        if not self.layout.percpu:
            values = np.frombuffer(self.values, dtype=vdtype, count=self.count)
        else:  # one 8-byte-aligned slot per CPU: stride over the padding
            values = np.ndarray(
                shape=(self.count, self.ncpus),
                dtype=vdtype,
                buffer=self.values,
                strides=(self.value_stride, self.layout.slot),
            )
        keys.flags.writeable = False  # views of a copy=False batch's buffers are writable
        values.flags.writeable = False
        return keys, values


_first = operator.itemgetter(0)


def _view(buf: BytesLike, nbytes: int) -> BytesLike:
    """The first ``nbytes`` of ``buf`` as flat bytes, without copying."""
    if type(buf) is bytes and len(buf) == nbytes:
        return buf
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv if mv.nbytes == nbytes else mv[:nbytes]


def _chunks(buf: BytesLike, size: int, count: int) -> Iterator[bytes]:
    """``count`` elements of ``size`` bytes, one bytes object each, cut in C."""
    if size == 0:  # struct can't iterate a zero-size format
        return itertools.repeat(b"", count)
    return map(_first, struct.iter_unpack(f"{size}s", _view(buf, count * size)))


# Above this many strided word copies per element, interleaving costs more than it saves.
_MAX_INTERLEAVE_COPIES = 12
_WORD_CODES: dict[int, Any] = {struct.calcsize(code): code for code in "BHIQ"}


def _pairs(
    keys: BytesLike, values: BytesLike, ks: int, vs: int, count: int
) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` bytes pairs, made in C with no Python frame per element.

    Narrow elements (most maps) are first interleaved into one scratch buffer, a strided copy
    per machine word of key and value, so that struct.iter_unpack builds each pair as one
    tuple of two bytes: about 30 ns per element less than zipping two iterators, which wide
    elements still do. Either way a copy=False batch's pairs must be taken before the next
    step of its iterator overwrites the buffers.
    """
    word = next(w for w in (8, 4, 2, 1) if ks % w == 0 and vs % w == 0)
    kw, vw = ks // word, vs // word
    if not kw or not vw or kw + vw > _MAX_INTERLEAVE_COPIES:
        return zip(_chunks(keys, ks, count), _chunks(values, vs, count))
    code, width = _WORD_CODES[word], kw + vw
    scratch = bytearray(count * (ks + vs))
    out = memoryview(scratch).cast(code)
    k = memoryview(_view(keys, count * ks)).cast(code)
    v = memoryview(_view(values, count * vs)).cast(code)
    for j in range(kw):
        out[j::width] = k[j::kw]
    for j in range(vw):
        out[kw + j :: width] = v[j::vw]
    out.release()
    return struct.iter_unpack(f"{ks}s{vs}s", scratch)


def _split(buf: BytesLike, size: int, count: int) -> list[bytes]:
    return list(_chunks(buf, size, count))


# memoryview.cast() decodes these standard-size little-endian formats in C on a little-endian
# host where the native item has the same size: "<I" -> "I", "<Q" -> "Q" (not "<l" -> "l").
_CASTABLE = "bBhHiIlLqQfd"


def _cast_code(fmt: str, size: int) -> Any:  # a memoryview.cast() format, or None
    if sys.byteorder != "little" or len(fmt) not in (1, 2) or fmt[-1] not in _CASTABLE:
        return None
    if len(fmt) == 2 and fmt[0] not in "<=@":
        return None
    code = fmt[-1]
    return code if struct.calcsize(code) == struct.calcsize(fmt) == size else None


def _unpack(buf: BytesLike, size: int, count: int, fmt: str | None) -> list[Any]:
    if fmt is None:
        return _split(buf, size, count)
    s = struct.Struct(fmt)
    if s.size > size:
        raise ValueError(f"format {fmt!r} needs {s.size} bytes, elements have {size}")
    code = _cast_code(fmt, size)
    view = _view(buf, count * size)
    if code is not None:
        decoded: list[Any] = memoryview(view).cast(code).tolist()
        return decoded
    padded = fmt + f"{size - s.size}x" if s.size < size else fmt
    rows = struct.iter_unpack(padded, view)
    if len(s.unpack(bytes(s.size))) == 1:
        return list(map(_first, rows))
    return list(rows)


def _dtype(np: Any, dtype: Any, size: int, what: str) -> Any:
    if dtype is None:
        return np.dtype(f"<u{size}") if size in (1, 2, 4, 8) else np.dtype(f"V{size}")
    dt = np.dtype(dtype)
    if dt.itemsize != size:
        raise ValueError(
            f"{what} dtype {dt} is {dt.itemsize} bytes, the map's {what}s are "
            f"{size} (use a structured dtype with itemsize={size})"
        )
    return dt


class _Buffers:
    """Key and value buffers for ``capacity`` elements, allocated once per iterator."""

    __slots__ = ("_kview", "_vview", "capacity", "keys", "layout", "values")

    def __init__(self, capacity: int, layout: Layout) -> None:
        self.capacity = capacity
        self.layout = layout
        self.keys = ffi.new("char[]", capacity * layout.key_size)
        self.values = ffi.new("char[]", capacity * layout.value_stride)
        # Views made once: slicing one per batch costs less than a new ffi.buffer (this
        # matters for small batches, where the per-batch overhead is a share of the cost).
        self._kview = memoryview(ffi.buffer(self.keys))
        self._vview = memoryview(ffi.buffer(self.values))

    def batch(self, n: int, cursor: bytes, done: bool, copy: bool) -> Batch:
        """The first ``n`` elements as a Batch: copies, or views the next call overwrites."""
        keys = self._kview[: n * self.layout.key_size]
        values = self._vview[: n * self.layout.value_stride]
        if copy:
            return Batch(self.layout, n, keys.tobytes(), values.tobytes(), cursor, done)
        return Batch(self.layout, n, keys, values, cursor, done)


def _lookup_call(delete: bool) -> tuple[str, Callable[..., bool]]:
    if delete:
        return "bpf_map_lookup_and_delete_batch", _bindings.bpf_map_lookup_and_delete_batch
    return "bpf_map_lookup_batch", _bindings.bpf_map_lookup_batch


def _step(
    access: MapAccess,
    delete: bool,
    in_batch: Any,
    cursor: Any,
    buf: _Buffers,
    count: Any,
    opts: Any,
    copy: bool,
) -> Batch:
    """One lookup(-and-delete) batch call from ``in_batch``; ``cursor`` receives out_batch.

    Returns the Batch (``done`` at ENOENT). A kernel error is raised naming the map, with the
    elements the call still returned (and deleted) in its ``batch``.
    """
    op, call = _lookup_call(delete)
    # Checked before every call: the map may have been closed since the last one, and its fd
    # number reused by another file (a stale fd would drain that one).
    fd = access.fd(op)
    count[0] = buf.capacity
    try:
        done = call(fd, in_batch, cursor, buf.keys, buf.values, count, opts)
    except BpfError as e:
        err = e.at(access.where)
        n = _returned_count(e, count[0])
        err.batch = buf.batch(n, ffi.buffer(cursor)[:], False, copy)
        raise err from None
    return buf.batch(count[0], ffi.buffer(cursor)[:], done, copy)


def batch_capacity(batch_size: int | None, max_entries: int, where: str) -> int:
    """The elements one batch buffer holds: ``batch_size`` (default DEFAULT_BATCH_SIZE)."""
    if batch_size is not None:
        check_positive(batch_size, "batch_size", where, bits=64)
    # A batch never holds more than max_entries elements; a larger buffer only wastes.
    return max(1, min(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, max_entries))


def one_batch(
    access: MapAccess,
    delete: bool,
    count: int,
    cursor: bytes | None,
    elem_flags: int,
    flags: int,
) -> Batch:
    """Up to ``count`` elements from ``cursor`` (None: the start) in one call (see _step)."""
    op, _ = _lookup_call(delete)
    where = f"{op}: {access.where}"
    access.fd(op)
    # count 0 would "succeed" with nothing read (hashtab.c), hiding a caller's bug
    check_positive(count, "count", where)
    out = ffi.new("char[]", access.layout.cursor_size)
    in_batch = _bindings.NULL
    if cursor is not None:
        try:
            c = ffi.from_buffer(cursor)
        except TypeError:
            raise TypeError(
                f"{where}: cursor must be bytes-like (a Batch.cursor), not {type(cursor).__name__}"
            ) from None
        if len(c) != len(out):
            raise ValueError(
                f"{where}: cursor is {len(c)} bytes, expected {len(out)} "
                "(pass Batch.cursor back unchanged)"
            )
        ffi.memmove(out, c, len(out))
        in_batch = out
    opts = batch_opts(elem_flags, flags, where)
    buf = _Buffers(min(count, max(access.max_entries, 1)), access.layout)
    return _step(access, delete, in_batch, out, buf, ffi.new("__u32 *"), opts, True)


def lookup_batches(
    access: MapAccess,
    *,
    delete: bool,
    batch_size: int | None,
    elem_flags: int = 0,
    flags: int = 0,
    copy: bool = True,
    workers: int = 1,
    n_buckets: int = 0,
) -> Iterator[Batch]:
    """Feed out_batch back as in_batch until the kernel says ENOENT.

    ENOSPC (one hash bucket holds more than the batch) doubles the buffers, capped at
    max_entries, and retries from the same cursor. A kernel without the batch op (ENOTSUPP, or
    EINVAL from kernels before 5.6) switches to per-key iteration. Elements a call returned are
    yielded before any error it reported is raised. With ``n_buckets`` (hash-family maps) and
    ``workers`` > 1, the buckets are split among threads (``_parallel``).
    """
    op, _ = _lookup_call(delete)
    # Checked now, not at the first next(): a bad argument fails where it was written.
    access.fd(op)
    where = f"{op}: {access.where}"
    capacity = batch_capacity(batch_size, access.max_entries, where)
    opts = batch_opts(elem_flags, flags, where)
    if workers > 1 and n_buckets > 1:
        from ._parallel import parallel_batches  # it builds on this module

        return parallel_batches(access, delete, capacity, opts, copy, workers, n_buckets)
    return _walk(access, delete, capacity, opts, bool(elem_flags or flags), copy)


def _walk(
    access: MapAccess, delete: bool, capacity: int, opts: Any, flagged: bool, copy: bool
) -> Iterator[Batch]:
    buf = _Buffers(capacity, access.layout)
    cursor = ffi.new("char[]", access.layout.cursor_size)
    count = ffi.new("__u32 *")
    in_batch = _bindings.NULL  # NULL starts at the beginning
    started = False
    while True:
        try:
            batch = _step(access, delete, in_batch, cursor, buf, count, opts, copy)
        except BpfError as e:
            if not started and _batch_op_missing(e, flagged):
                yield from per_key_batches(access, delete=delete, batch_size=capacity, copy=copy)
                return
            if e.errno == errno.ENOSPC:
                # hashtab.c returns ENOSPC only when it copied nothing (total == 0), so
                # growing and retrying from the same cursor loses nothing.
                limit = max(access.max_entries, 1)
                if buf.capacity >= limit:
                    raise e.at(
                        access.where,
                        f"a bucket holds more than {buf.capacity} elements, the map's max_entries",
                    ) from None
                buf = _Buffers(min(buf.capacity * 2, limit), access.layout)
                continue
            if e.batch is not None and e.batch.count:
                yield e.batch
            raise
        started = True
        if batch.count:
            yield batch
        if batch.done:
            return
        in_batch = cursor  # in and out may share one buffer (the selftests do)


def _batch_op_missing(e: BpfError, flagged: bool) -> bool:
    if isinstance(e, BatchNotSupportedError):
        return True
    # Kernels before 5.6 don't know the command: EINVAL with no flags to blame.
    return e.errno == errno.EINVAL and not flagged


def per_key_batches(
    access: MapAccess, *, delete: bool, batch_size: int, copy: bool = True
) -> Iterator[Batch]:
    """The per-key walk (get_next_key, lookup[, delete]) in batches of ``batch_size``.

    The next key is taken *before* the current one is deleted: restarting from NULL after each
    delete would make a drain quadratic. A key another thread deleted in between is skipped
    (it is theirs). Elements deleted so far are yielded before an error is raised.
    """
    layout = access.layout
    fd = access.fd("bpf_map_get_next_key")
    key, nxt = ffi.new("char[]", layout.key_size), ffi.new("char[]", layout.key_size)
    value = ffi.new("char[]", layout.value_stride)
    keys: list[bytes] = []
    values: list[bytes] = []

    def flush(done: bool) -> Batch:
        batch = Batch(layout, len(keys), b"".join(keys), b"".join(values), b"", done)
        keys.clear()
        values.clear()
        return batch

    try:
        more = _bindings.bpf_map_get_next_key(fd, _bindings.NULL, key)
        while more:
            more = _bindings.bpf_map_get_next_key(fd, key, nxt)
            found = _bindings.bpf_map_lookup_elem(fd, key, value)
            if found and delete:
                found = _bindings.bpf_map_delete_elem(fd, key)
            if found:
                keys.append(ffi.buffer(key)[:])
                values.append(ffi.buffer(value)[:])
            key, nxt = nxt, key
            if len(keys) >= batch_size or (keys and not more):
                yield flush(not more)
                fd = access.fd("bpf_map_get_next_key")  # closed between batches: stop
    except BpfError as e:
        if keys:
            yield flush(False)
        raise e.at(access.where) from None
