"""Batch, and the one lookup loop that every iterator shares."""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

from . import _bindings
from ._libbpf import ffi
from .errors import ENOTSUPP, BatchNotSupportedError, BpfError

if TYPE_CHECKING:
    from .maps import Map

BytesLike = Union[bytes, bytearray, memoryview]

DEFAULT_BATCH_SIZE = 4096
"""Elements per batch when none is given.

Measured here (`make bench`, HASH 4 B/8 B, 1,000,000 entries): the kernel's per-bucket work
dominates from 256 up, and 4096 is within noise of the best while keeping buffers small
(4096 x 12 B = 48 KiB; memory stays bounded by the batch, never by max_entries)."""

# Errors after which the kernel's count is the number of elements it returned (and, for
# lookup_and_delete, deleted): hashtab.c and syscall.c write count on these paths. On the
# others (argument checks, permission, missing op) count still holds the input; on EFAULT
# it can't be trusted (bpf.h).
_COUNT_UNTRUSTED = frozenset(
    {errno.EINVAL, errno.EPERM, errno.EACCES, errno.EBADF, errno.EFAULT, ENOTSUPP,
     errno.EOPNOTSUPP, errno.ENOSPC}
)


def returned_count(err: BpfError, count: int) -> int:
    """How many elements a failed lookup(-and-delete) batch call really returned."""
    return 0 if err.errno in _COUNT_UNTRUSTED else count


class Batch:
    """Elements returned by one batch call: ``count`` keys and values in two flat buffers.

    ``keys`` holds ``count * key_size`` bytes and ``values`` ``count * value_stride`` bytes
    (per-CPU maps: one 8-byte-aligned slot per possible CPU per element). ``cursor`` is what to
    pass to the next call, and ``done`` says the kernel answered ENOENT (this was the last
    batch). Iterating yields ``(key, value)`` bytes pairs. A batch made with ``copy=False``
    holds memoryviews into buffers that the next step of its iterator overwrites.
    """

    __slots__ = ("count", "keys", "values", "cursor", "done", "key_size", "value_size",
                 "value_stride", "ncpus")

    def __init__(
        self, count: int, keys: BytesLike, values: BytesLike, cursor: bytes, done: bool,
        key_size: int, value_size: int, value_stride: int, ncpus: int = 1,
    ) -> None:
        self.count = count
        self.keys = keys
        self.values = values
        self.cursor = cursor
        self.done = done
        self.key_size = key_size
        self.value_size = value_size
        self.value_stride = value_stride
        self.ncpus = ncpus

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"<Batch count={self.count} done={self.done}>"

    def key_list(self) -> list[bytes]:
        """The keys, one bytes object each."""
        return _split(self.keys, self.key_size, self.count)

    def value_list(self) -> list[bytes]:
        """The values, one bytes object each (``value_stride`` bytes for per-CPU maps)."""
        return _split(self.values, self.value_stride, self.count)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return zip(self.key_list(), self.value_list())

    def unpack(
        self, key_format: str | None = None, value_format: str | None = None
    ) -> list[tuple[Any, Any]]:
        """Decode with :mod:`struct` formats, e.g. ``unpack("<I", "<Q")``.

        A format of one field gives that field, not a 1-tuple; ``None`` leaves bytes. Per-CPU
        values decode to a list with one entry per CPU (padding stripped).
        """
        keys = _unpack(self.keys, self.key_size, self.count, key_format)
        if self.value_stride != self.value_size and value_format is not None:
            values: list[Any] = self.percpu_values(value_format)
        else:
            values = _unpack(self.values, self.value_stride, self.count, value_format)
        return list(zip(keys, values))

    def percpu_values(self, value_format: str = "<Q") -> list[list[Any]]:
        """Per-CPU maps: each element's values, one per possible CPU, decoded."""
        return [_unpack(v, _slot(self.value_size), self.ncpus, value_format)
                for v in self.value_list()]

    def percpu_sums(self, value_format: str = "<Q") -> list[Any]:
        """Per-CPU maps: each element's value summed over the CPUs."""
        return [sum(v) for v in self.percpu_values(value_format)]

    def to_numpy(self, key_dtype: Any = None, value_dtype: Any = None) -> tuple[Any, Any]:
        """``(keys, values)`` as numpy arrays without a Python object per element.

        Default dtypes are little-endian unsigned ints for sizes 1/2/4/8 and raw ``V<n>``
        otherwise. Per-CPU values have shape ``(count, ncpus)``, padding stripped. The arrays
        are read-only views of the batch's buffers (copy them to keep a ``copy=False`` batch).
        """
        import numpy as np  # optional extra: pip install libbpf-batch[numpy]

        keys = np.frombuffer(self.keys, dtype=_dtype(np, key_dtype, self.key_size),
                             count=self.count)
        vdtype = _dtype(np, value_dtype, self.value_size)
        if self.value_stride == self.value_size:
            values = np.frombuffer(self.values, dtype=vdtype, count=self.count)
        else:  # one 8-byte-aligned slot per CPU: stride over the padding
            values = np.ndarray(shape=(self.count, self.ncpus), dtype=vdtype,
                                buffer=self.values,
                                strides=(self.value_stride, _slot(self.value_size)))
        return keys, values


def _slot(value_size: int) -> int:
    return (value_size + 7) & ~7


def _split(buf: BytesLike, size: int, count: int) -> list[bytes]:
    data = buf if type(buf) is bytes else bytes(buf)
    return [data[i:i + size] for i in range(0, count * size, size)]


def _unpack(buf: BytesLike, size: int, count: int, fmt: str | None) -> list[Any]:
    if fmt is None:
        return _split(buf, size, count)
    s = struct.Struct(fmt)
    if s.size > size:
        raise ValueError(f"format {fmt!r} needs {s.size} bytes, elements have {size}")
    padded = fmt + f"{size - s.size}x" if s.size < size else fmt
    rows = struct.iter_unpack(padded, memoryview(buf)[: count * size])
    if len(s.unpack(bytes(s.size))) == 1:
        return [r[0] for r in rows]
    return list(rows)


def _dtype(np: Any, dtype: Any, size: int) -> Any:
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(f"<u{size}") if size in (1, 2, 4, 8) else np.dtype(f"V{size}")


class _Buffers:
    """Key and value buffers for ``capacity`` elements, allocated once per iterator."""

    __slots__ = ("capacity", "keys", "values", "key_size", "value_stride")

    def __init__(self, capacity: int, key_size: int, value_stride: int) -> None:
        self.capacity = capacity
        self.key_size = key_size
        self.value_stride = value_stride
        self.keys = ffi.new("char[]", capacity * key_size)
        self.values = ffi.new("char[]", capacity * value_stride)

    def contents(self, n: int, copy: bool) -> tuple[BytesLike, BytesLike]:
        keys = ffi.buffer(self.keys, n * self.key_size)
        values = ffi.buffer(self.values, n * self.value_stride)
        if copy:
            return keys[:], values[:]
        return memoryview(keys), memoryview(values)


def lookup_batches(
    m: Map, *, delete: bool, batch_size: int | None, elem_flags: int = 0, flags: int = 0,
    copy: bool = True,
) -> Iterator[Batch]:
    """Feed out_batch back as in_batch until the kernel says ENOENT.

    ENOSPC (one hash bucket holds more than the batch) doubles the buffers, capped at
    max_entries, and retries from the same cursor. A kernel without the batch op (ENOTSUPP, or
    EINVAL from kernels before 5.6) switches to per-key iteration. Elements a call returned are
    yielded before any error it reported is raised.
    """
    op = "bpf_map_lookup_and_delete_batch" if delete else "bpf_map_lookup_batch"
    call = (_bindings.bpf_map_lookup_and_delete_batch if delete
            else _bindings.bpf_map_lookup_batch)
    fd = m._checked_fd(op)
    if delete:
        m._check_deletable(op)
    capacity = m._batch_capacity(batch_size, op)
    opts = batch_opts(elem_flags, flags)
    key_size, value_stride = m.key_size, m.value_stride
    buf = _Buffers(capacity, key_size, value_stride)
    cursor = ffi.new("char[]", max(4, key_size))  # hash maps keep a u32 bucket index
    count = ffi.new("__u32 *")
    in_batch = _bindings.NULL  # NULL starts at the beginning
    make = _batch_factory(m)
    started = False
    while True:
        count[0] = buf.capacity
        try:
            done = call(fd, in_batch, cursor, buf.keys, buf.values, count, opts)
        except BpfError as e:
            if not started and _batch_op_missing(e, elem_flags, flags):
                yield from per_key_batches(m, delete=delete, batch_size=capacity, copy=copy)
                return
            if e.errno == errno.ENOSPC:
                # hashtab.c returns ENOSPC only when it copied nothing (total == 0), so
                # growing and retrying from the same cursor loses nothing.
                if buf.capacity >= max(m.max_entries, 1):
                    raise m._error(e, f"a bucket holds more than {buf.capacity} elements, "
                                   "the map's max_entries") from None
                buf = _Buffers(min(buf.capacity * 2, max(m.max_entries, 1)), key_size,
                               value_stride)
                continue
            n = returned_count(e, count[0])
            if n:
                yield make(n, *buf.contents(n, copy), bytes(ffi.buffer(cursor)), False)
            raise m._error(e) from None
        started = True
        n = count[0]
        if n:
            yield make(n, *buf.contents(n, copy), bytes(ffi.buffer(cursor)), done)
        if done:
            return
        in_batch = cursor  # in and out may share one buffer (the selftests do)


def _batch_op_missing(e: BpfError, elem_flags: int, flags: int) -> bool:
    if isinstance(e, BatchNotSupportedError):
        return True
    # Kernels before 5.6 don't know the command: EINVAL with no flags to blame.
    return e.errno == errno.EINVAL and not elem_flags and not flags


def _batch_factory(m: Map) -> Callable[[int, BytesLike, BytesLike, bytes, bool], Batch]:
    ks, vs, stride, ncpus = m.key_size, m.value_size, m.value_stride, m.ncpus

    def make(n: int, keys: BytesLike, values: BytesLike, cursor: bytes, done: bool) -> Batch:
        return Batch(n, keys, values, cursor, done, ks, vs, stride, ncpus)

    return make


def per_key_batches(m: Map, *, delete: bool, batch_size: int, copy: bool = True
                    ) -> Iterator[Batch]:
    """The per-key walk (get_next_key, lookup[, delete]) in batches of ``batch_size``.

    The next key is taken *before* the current one is deleted: restarting from NULL after each
    delete would make a drain quadratic. A key another thread deleted in between is skipped
    (it is theirs). Elements deleted so far are yielded before an error is raised.
    """
    fd = m._checked_fd("bpf_map_get_next_key")
    key_size, stride = m.key_size, m.value_stride
    key, nxt = ffi.new("char[]", key_size), ffi.new("char[]", key_size)
    value = ffi.new("char[]", stride)
    make = _batch_factory(m)
    keys: list[bytes] = []
    values: list[bytes] = []

    def flush(done: bool) -> Batch:
        batch = make(len(keys), b"".join(keys), b"".join(values), b"", done)
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
    except BpfError as e:
        if keys:
            yield flush(False)
        raise m._error(e) from None


def batch_opts(elem_flags: int, flags: int) -> Any:
    """A ``struct bpf_map_batch_opts`` (NULL when both flags are 0)."""
    if not elem_flags and not flags:
        return _bindings.NULL
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    opts.elem_flags = elem_flags
    opts.flags = flags
    return opts


def join_elements(
    items: BytesLike | Sequence[BytesLike], size: int, what: str
) -> tuple[Any, int]:
    """One C buffer over ``items`` (a flat bytes-like, or a sequence of elements) and its count.

    A flat buffer is passed without copying. Raises TypeError/ValueError naming ``what``.
    """
    try:
        flat = ffi.from_buffer(items)
    except TypeError:
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise TypeError(f"{what} must be bytes-like or a sequence of bytes-like items, "
                            f"not {type(items).__name__}") from None
        for i, item in enumerate(items):
            try:
                n = memoryview(item).nbytes
            except TypeError:
                raise TypeError(f"{what}[{i}] must be bytes-like, not "
                                f"{type(item).__name__}") from None
            if n != size:
                raise ValueError(f"{what}[{i}] is {n} bytes, expected {size}") from None
        return ffi.from_buffer(b"".join(items)), len(items)
    if len(flat) % size:
        raise ValueError(f"{what} buffer is {len(flat)} bytes, not a multiple of {size}")
    return flat, len(flat) // size

