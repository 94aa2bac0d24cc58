"""Batch, and the one lookup loop that every iterator shares."""

from __future__ import annotations

import errno
import itertools
import operator
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Union

from . import _bindings
from ._libbpf import ffi
from .errors import ENOTSUPP, BatchNotSupportedError, BpfError

if TYPE_CHECKING:
    from .btf import MapDecoder
    from .maps import Map

BytesLike = Union[bytes, bytearray, memoryview]
if TYPE_CHECKING:  # what the batch calls accept: any buffer (array.array, numpy arrays too)
    from typing_extensions import Buffer  # PEP 688's protocol; typeshed ships it

    BufferLike = Buffer
else:
    BufferLike = BytesLike

DEFAULT_BATCH_SIZE = 4096
"""Elements per batch when none is given.

Chosen from `python -m libbpf_batch.bench --sweep ...` (HASH 4 B/8 B, 1,000,000 entries, drain
with copy=False, medians of 3; 2 cores, kernel 6.18): the C loop costs 315 ns/entry at batch 64
and 299-306 from 256 to 65536, the kernel's per-bucket work. This library pays about 4 us of
Python per batch, so against C at the same size it is 1.21x at 64, 1.08x at 256, 1.02x at 512,
and 0.97-0.99x from 1024 up. 4096 is in that flat part with room to spare on a busy machine,
and its buffers stay small (48 KiB for 4 B/8 B, 320 KiB for 16 B/64 B keys/values); larger
batches gain nothing and only hold more memory. Memory is bounded by the batch, never by
max_entries."""

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

    __slots__ = (
        "count",
        "cursor",
        "decoder",
        "done",
        "key_size",
        "keys",
        "ncpus",
        "value_size",
        "value_stride",
        "values",
    )

    def __init__(
        self,
        count: int,
        keys: BytesLike,
        values: BytesLike,
        cursor: bytes,
        done: bool,
        key_size: int,
        value_size: int,
        value_stride: int,
        ncpus: int = 1,
        decoder: Callable[[], MapDecoder] | None = None,
    ) -> None:
        self.count = count
        self.decoder = decoder  # the map's Map.decoder, called (once, cached) by decode()
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
        if self.value_stride != self.value_size and value_format is not None:
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
        return _unpack(self.values, _slot(self.value_size), self.count * self.ncpus, value_format)

    def decode(self) -> list[tuple[Any, Any]]:
        """``[(key, value), ...]`` as Python values, decoded with the map's BTF.

        Structs are dicts, arrays lists, enums their names, char arrays text when printable
        and NUL-terminated (else a list of ints); per-CPU values are a list, one per CPU. A
        part without BTF (or a batch made by hand) decodes as an unsigned little-endian int
        when it is 1, 2, 4 or 8 bytes, else as bytes. The BTF is compiled once per map.
        """
        return self._decoder().decode_batch(self)

    def _decoder(self) -> MapDecoder:
        from .btf import MapDecoder

        if self.decoder is not None:
            return self.decoder()
        return MapDecoder(
            None,
            0,
            0,
            key_size=self.key_size,
            value_size=self.value_size,
            ncpus=self.ncpus,
            percpu=self.value_stride != self.value_size,
        )

    def to_numpy(self, key_dtype: Any = None, value_dtype: Any = None) -> tuple[Any, Any]:
        """``(keys, values)`` as numpy arrays without a Python object per element.

        Default dtypes come from the map's BTF: structured dtypes with its field names and
        offsets (see :func:`libbpf_batch.btf.numpy_dtype`); without BTF, little-endian
        unsigned ints for sizes 1/2/4/8 and raw ``V<n>`` otherwise. Per-CPU values have shape
        ``(count, ncpus)``, padding stripped. The arrays are read-only views of the batch's
        buffers (copy them to keep a ``copy=False`` batch).
        """
        import numpy as np  # optional extra: pip install libbpf-batch[numpy]

        if key_dtype is None or value_dtype is None:
            decoder = self._decoder()
            key_dtype = decoder.key_dtype(np) if key_dtype is None else key_dtype
            value_dtype = decoder.value_dtype(np) if value_dtype is None else value_dtype
        keys = np.frombuffer(
            self.keys, dtype=_dtype(np, key_dtype, self.key_size, "key"), count=self.count
        )
        vdtype = _dtype(np, value_dtype, self.value_size, "value")
        if self.value_stride == self.value_size:
            values = np.frombuffer(self.values, dtype=vdtype, count=self.count)
        else:  # one 8-byte-aligned slot per CPU: stride over the padding
            values = np.ndarray(
                shape=(self.count, self.ncpus),
                dtype=vdtype,
                buffer=self.values,
                strides=(self.value_stride, _slot(self.value_size)),
            )
        keys.flags.writeable = False  # views of a copy=False batch's buffers are writable
        values.flags.writeable = False
        return keys, values


def _slot(value_size: int) -> int:
    return (value_size + 7) & ~7


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

    __slots__ = ("_kview", "_vview", "capacity", "key_size", "keys", "value_stride", "values")

    def __init__(self, capacity: int, key_size: int, value_stride: int) -> None:
        self.capacity = capacity
        self.key_size = key_size
        self.value_stride = value_stride
        self.keys = ffi.new("char[]", capacity * key_size)
        self.values = ffi.new("char[]", capacity * value_stride)
        # Views made once: slicing one per batch costs less than a new ffi.buffer (this
        # matters for small batches, where the per-batch overhead is a share of the cost).
        self._kview = memoryview(ffi.buffer(self.keys))
        self._vview = memoryview(ffi.buffer(self.values))

    def contents(self, n: int, copy: bool) -> tuple[BytesLike, BytesLike]:
        keys = self._kview[: n * self.key_size]
        values = self._vview[: n * self.value_stride]
        if copy:
            return keys.tobytes(), values.tobytes()
        return keys, values


def lookup_batches(
    m: Map,
    *,
    delete: bool,
    batch_size: int | None,
    elem_flags: int = 0,
    flags: int = 0,
    copy: bool = True,
) -> Iterator[Batch]:
    """Feed out_batch back as in_batch until the kernel says ENOENT.

    ENOSPC (one hash bucket holds more than the batch) doubles the buffers, capped at
    max_entries, and retries from the same cursor. A kernel without the batch op (ENOTSUPP, or
    EINVAL from kernels before 5.6) switches to per-key iteration. Elements a call returned are
    yielded before any error it reported is raised.
    """
    op = "bpf_map_lookup_and_delete_batch" if delete else "bpf_map_lookup_batch"
    # Checked now, not at the first next(): a bad argument fails where it was written.
    m._checked_fd(op)
    if delete:
        m._check_deletable(op)
    capacity = m._batch_capacity(batch_size, op)
    opts = batch_opts(elem_flags, flags, f"{op}: {m._where}")
    return _walk(m, op, delete, capacity, opts, elem_flags, flags, copy)


def _walk(
    m: Map, op: str, delete: bool, capacity: int, opts: Any, elem_flags: int, flags: int, copy: bool
) -> Iterator[Batch]:
    call = _bindings.bpf_map_lookup_and_delete_batch if delete else _bindings.bpf_map_lookup_batch
    key_size, value_stride = m.key_size, m.value_stride
    buf = _Buffers(capacity, key_size, value_stride)
    cursor = ffi.new("char[]", max(4, key_size))  # hash maps keep a u32 bucket index
    cursor_view = ffi.buffer(cursor)
    count = ffi.new("__u32 *")
    in_batch = _bindings.NULL  # NULL starts at the beginning
    make = _batch_factory(m)
    started = False
    while True:
        # Again before every call: the map may have been closed between batches, and its fd
        # number reused by another file (a stale fd would drain that one).
        fd = m._checked_fd(op)
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
                    raise m._error(
                        e,
                        f"a bucket holds more than {buf.capacity} elements, the map's max_entries",
                    ) from None
                buf = _Buffers(min(buf.capacity * 2, max(m.max_entries, 1)), key_size, value_stride)
                continue
            n = returned_count(e, count[0])
            if n:
                yield make(n, *buf.contents(n, copy), cursor_view[:], False)
            raise m._error(e) from None
        started = True
        n = count[0]
        if n:
            yield make(n, *buf.contents(n, copy), cursor_view[:], done)
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
    decoder = m.decoder

    def make(n: int, keys: BytesLike, values: BytesLike, cursor: bytes, done: bool) -> Batch:
        return Batch(n, keys, values, cursor, done, ks, vs, stride, ncpus, decoder)

    return make


def per_key_batches(m: Map, *, delete: bool, batch_size: int, copy: bool = True) -> Iterator[Batch]:
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
                fd = m._checked_fd("bpf_map_get_next_key")  # closed between batches: stop
    except BpfError as e:
        if keys:
            yield flush(False)
        raise m._error(e) from None


def check_uint(value: object, what: str, bits: int, where: str) -> int:
    """``value`` if it is an int in [0, 2**bits); else TypeError/ValueError naming ``where``.

    cffi would raise OverflowError (or a TypeError naming nothing) for these.
    """
    if not isinstance(value, int):
        raise TypeError(f"{where}: {what} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{where}: {what} must be an int in [0, 2**{bits}), got {value!r}")
    return value


def batch_opts(elem_flags: int, flags: int, where: str = "bpf_map_batch_opts") -> Any:
    """A ``struct bpf_map_batch_opts`` (NULL when both flags are 0)."""
    check_uint(elem_flags, "elem_flags", 64, where)
    check_uint(flags, "flags", 64, where)
    if not elem_flags and not flags:
        return _bindings.NULL
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    opts.elem_flags = elem_flags
    opts.flags = flags
    return opts


def join_elements(
    items: BufferLike | Sequence[BufferLike], size: int, what: str
) -> tuple[Any, int]:
    """One C buffer over ``items`` (a flat bytes-like, or a sequence of elements) and its count.

    A flat buffer is passed without copying. Raises TypeError/ValueError naming ``what``.
    """
    try:
        flat = ffi.from_buffer(items)
    except TypeError:
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise TypeError(
                f"{what} must be bytes-like or a sequence of bytes-like items, "
                f"not {type(items).__name__}"
            ) from None
        for i, item in enumerate(items):
            try:
                n = memoryview(item).nbytes
            except TypeError:
                raise TypeError(
                    f"{what}[{i}] must be bytes-like, not {type(item).__name__}"
                ) from None
            if n != size:
                raise ValueError(f"{what}[{i}] is {n} bytes, expected {size}") from None
        return ffi.from_buffer(b"".join(items)), len(items)
    if len(flat) % size:
        raise ValueError(f"{what} buffer is {len(flat)} bytes, not a multiple of {size}")
    return flat, len(flat) // size
