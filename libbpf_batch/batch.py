"""Batch, and the one lookup loop that every iterator shares."""

from __future__ import annotations

import errno
import itertools
import operator
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from . import _bindings
from ._cdata import BytesLike, Layout, batch_opts, check_positive
from ._libbpf import ffi, lib
from .btf import MapDecoder
from .errors import ENOTSUPP, BatchNotSupportedError, BpfError, PutBackError, error_from_errno

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
    names the map in messages (``map 'counts' (id 42)``); ``decoder()`` gives the map's BTF
    decoder, built on first use (the batches it yields decode with it).
    """

    fd: Callable[[str], int]
    layout: Layout
    max_entries: int
    where: str
    # dup(op): a new fd for the same map, made atomically with the map's close() (ValueError
    # when closed); None: os.dup(fd(op)), which a close() from another thread can race.
    dup: Callable[[str], int] | None = None
    map_type: int = 0  # BPF_MAP_TYPE_*: how elements go back (map-of-maps hold inner ids)
    decoder: Callable[[], MapDecoder] | None = None


class Hold:
    """The map's fd, duplicated for one iterator or call; its owner closes it (close()).

    A close() of the Map from another thread then can't make the iterator touch another map
    that reused the fd number, and elements it must put back still have their map. Not closed
    when collected: in a reference cycle that would run before the generator that owns it
    puts elements back; the owning generator's ``finally`` closes it, in C (lbb_close_fd), so
    no signal handler can raise between deciding to close and closing.
    """

    __slots__ = ("cell",)

    def __init__(self, access: MapAccess, op: str) -> None:
        fd = access.dup(op) if access.dup is not None else os.dup(access.fd(op))
        self.cell = ffi.new("int *", fd)

    @property
    def fd(self) -> int:
        """The duplicate (-1 once closed)."""
        fd: int = self.cell[0]
        return fd

    def close(self) -> None:
        _bindings.lbb_close_fd(self.cell)


class Batch:
    """Elements returned by one batch call: ``count`` keys and values in two flat buffers.

    ``keys`` holds ``count * key_size`` bytes and ``values`` ``count * value_stride`` bytes
    (per-CPU maps: one 8-byte-aligned slot per possible CPU per element). ``cursor`` is what to
    pass to the next call, and ``done`` says the kernel answered ENOENT (this was the last
    batch). Iterating yields ``(key, value)`` bytes pairs. A batch made with ``copy=False``
    holds memoryviews into buffers that the next step of its iterator overwrites.
    """

    __slots__ = ("count", "cursor", "decoder", "done", "keys", "layout", "values")

    def __init__(
        self,
        layout: Layout,
        count: int,
        keys: BytesLike,
        values: BytesLike,
        cursor: bytes = b"",
        done: bool = False,
        decoder: Callable[[], MapDecoder] | None = None,
    ) -> None:
        self.layout = layout
        self.decoder = decoder  # the map's Map.decoder, called (once, cached) by decode()
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

    def decode(self) -> list[tuple[Any, Any]]:
        """``[(key, value), ...]`` as Python values, decoded with the map's BTF.

        Structs are dicts, arrays lists, enums their names, char arrays text when printable
        and NUL-terminated (else a list of ints); per-CPU values are a list, one per CPU. A
        part without BTF (or a batch made by hand) decodes as an unsigned little-endian int
        when it is 1, 2, 4 or 8 bytes, else as bytes. The BTF is compiled once per map.
        """
        return self._decoder().decode_batch(self)

    def _decoder(self) -> MapDecoder:
        if self.decoder is not None:
            return self.decoder()
        return MapDecoder.for_map(0, 0, 0, self.layout)

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


class Buffers:
    """Key and value buffers for ``capacity`` elements, allocated once per iterator."""

    __slots__ = ("_kview", "_vview", "capacity", "decoder", "errs", "keys", "layout", "values")

    def __init__(self, capacity: int, access: MapAccess) -> None:
        self.capacity = capacity
        self.layout = layout = access.layout
        self.decoder = access.decoder
        self.keys = ffi.new("char[]", capacity * layout.key_size)
        self.values = ffi.new("char[]", capacity * layout.value_stride)
        # made now: an allocation in the put-back path would be one more place to interrupt
        self.errs = ffi.new("int[]", capacity)
        # Views made once: slicing one per batch costs less than a new ffi.buffer (this
        # matters for small batches, where the per-batch overhead is a share of the cost).
        self._kview = memoryview(ffi.buffer(self.keys))
        self._vview = memoryview(ffi.buffer(self.values))

    def batch(self, n: int, cursor: bytes, done: bool, copy: bool) -> Batch:
        """The first ``n`` elements as a Batch: copies, or views the next call overwrites."""
        keys: BytesLike = self._kview[: n * self.layout.key_size]
        values: BytesLike = self._vview[: n * self.layout.value_stride]
        if copy:
            keys, values = bytes(keys), bytes(values)
        return Batch(self.layout, n, keys, values, cursor, done, self.decoder)


def _lookup_call(delete: bool) -> tuple[str, Callable[..., bool]]:
    if delete:
        return "bpf_map_lookup_and_delete_batch", _bindings.bpf_map_lookup_and_delete_batch
    return "bpf_map_lookup_batch", _bindings.bpf_map_lookup_batch


def grown(buf: Buffers, access: MapAccess, err: BpfError) -> Buffers:
    """Buffers twice as big after ENOSPC (one bucket holds more than ``buf``), at most
    max_entries; at max_entries ``err`` is raised, naming the map.

    hashtab.c returns ENOSPC only when it copied nothing (total == 0), so growing and
    retrying from the same cursor loses nothing.
    """
    limit = max(access.max_entries, 1)
    if buf.capacity >= limit:
        raise err.at(
            access.where,
            f"a bucket holds more than {buf.capacity} elements, the map's max_entries",
        ) from None
    return Buffers(min(buf.capacity * 2, limit), access)


def step(
    fd: int,
    access: MapAccess,
    delete: bool,
    in_batch: Any,
    cursor: Any,
    buf: Buffers,
    count: Any,
    opts: Any,
    copy: bool,
) -> Batch:
    """One lookup(-and-delete) batch call on ``fd`` (a Hold's) from ``in_batch``; ``cursor``
    receives out_batch.

    Returns the Batch (``done`` at ENOENT). A kernel error is raised naming the map, with the
    elements the call still returned (and deleted) in its ``batch``. An interruption is the
    caller's to settle: see _NOT_RUN.
    """
    _, call = _lookup_call(delete)
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


# -- nothing lost: elements a call deleted are delivered, or put back ----------------------
#
# A signal handler (KeyboardInterrupt, a SIGTERM handler that raises) runs in the main thread
# at the interpreter's next check, wherever the signal was sent from, so masking signals in one
# thread can't close the window between the kernel deleting a batch and the consumer having it.
# So every deleting call runs inside a try whose handler puts back what the kernel returned, and
# the batch is yielded just after that try, with no call in between (nothing the interpreter
# checks for signals at). To know after any exception whether the kernel ran, out_batch is a
# buffer apart from in_batch, marked before the call: hashtab.c writes out_batch (a u32 bucket
# index) together with count on every path that returned elements, and never this value.
_NOT_RUN = 0xFFFFFFFF

# lbb_put_back modes: how an element goes back (map-of-maps are read as ids, written as fds)
_PUT_NOEXIST, _PUT_INNER_NOEXIST, _PUT_INNER_EMPTY_SLOT = 0, 1, 2


def _put_mode(map_type: int) -> int:
    if map_type == lib.BPF_MAP_TYPE_HASH_OF_MAPS:
        return _PUT_INNER_NOEXIST
    if map_type == lib.BPF_MAP_TYPE_ARRAY_OF_MAPS:
        return _PUT_INNER_EMPTY_SLOT  # arrays refuse NOEXIST: every index exists
    return _PUT_NOEXIST


def _raise_unrestored(access: MapAccess, keys: Any, errs: Any, n: int, mode: int) -> None:
    """PutBackError for the elements lbb_put_back could not write (errs), if any."""
    # EEXIST: the key is in the map again with a newer value, which wins; ENOENT for map-of-maps:
    # the inner map was freed meanwhile, so there is nothing to put back.
    fine = (0, errno.EEXIST) if mode == _PUT_NOEXIST else (0, errno.EEXIST, errno.ENOENT)
    failed = [i for i in range(n) if errs[i] not in fine]
    if failed:
        ks = access.layout.key_size
        lost = [ffi.buffer(keys + i * ks, ks)[:] for i in failed]
        raise PutBackError.of(errs[failed[0]], access.where, lost)


def put_back(access: MapAccess, batch: Batch, start: int = 0, *, hold: Hold | None = None) -> int:
    """Put elements ``start:`` of a drained ``batch`` that will not be delivered back into the map.

    Each goes back with its own BPF_NOEXIST update (batch update takes only BPF_F_LOCK), so a
    key written again meanwhile keeps its newer value; an LRU map that is full evicts to make
    room, as for any update. Returns how many were written. Raises PutBackError (a BpfError)
    with ``lost`` and ``keys`` for elements that could not go back (the map filled up
    meanwhile). ``hold``: the fd to write through (the Hold of the iterator that drained them,
    which stays valid when the Map is closed); default: a new Hold on ``access``.
    """
    n = batch.count - start
    if n <= 0:
        return 0
    own = hold is None
    h = Hold(access, "put back") if hold is None else hold
    try:
        ks, vs = batch.key_size, batch.value_stride
        keys = ffi.from_buffer(_view(batch.keys, batch.count * ks)) + start * ks
        values = ffi.from_buffer(_view(batch.values, batch.count * vs)) + start * vs
        errs = ffi.new("int[]", n)
        mode = _put_mode(access.map_type)
        restored: int = _bindings.lbb_put_back(h.fd, keys, values, ks, vs, n, mode, errs)
        _raise_unrestored(access, keys, errs, n, mode)
        return restored
    finally:
        if own:
            _bindings.lbb_close_fd(h.cell)


def one_batch(
    access: MapAccess,
    delete: bool,
    count: int,
    cursor: bytes | None,
    elem_flags: int,
    flags: int,
) -> Batch:
    """Up to ``count`` elements from ``cursor`` (None: the start) in one call (see step).

    Interrupted after the kernel deleted elements and before returning them, it puts them back.
    """
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
        except (BufferError, ValueError) as e:  # strided memoryviews, non-contiguous arrays
            raise ValueError(f"{where}: cursor must be a contiguous buffer ({e})") from None
        if len(c) != len(out):
            raise ValueError(
                f"{where}: cursor is {len(c)} bytes, expected {len(out)} "
                "(pass Batch.cursor back unchanged)"
            )
        in_batch = ffi.new("char[]", len(out))
        ffi.memmove(in_batch, c, len(out))
        ffi.memmove(out, c, len(out))  # what Batch.cursor says where the kernel writes nothing
    opts = batch_opts(elem_flags, flags, where)
    buf = Buffers(min(count, max(access.max_entries, 1)), access)
    n = ffi.new("__u32 *")
    mode = _put_mode(access.map_type)
    # No Hold: closing it after the call would be one more place to lose the batch, and a
    # single call has no "next batch" to run on a reused fd number.
    fd = access.fd(op)
    mark = ffi.cast("__u32 *", out)
    if delete:  # a lookup's cursor stays the one passed in where the kernel writes none
        mark[0] = _NOT_RUN
    try:
        return step(fd, access, delete, in_batch, out, buf, n, opts, True)
    except BpfError:
        raise  # the elements it returned travel with it (its batch)
    except BaseException:
        if delete and mark[0] != _NOT_RUN and n[0]:
            _bindings.lbb_put_back(
                fd, buf.keys, buf.values, buf.layout.key_size,
                buf.layout.value_stride, n[0], mode, buf.errs,
            )  # fmt: skip
            _raise_unrestored(access, buf.keys, buf.errs, n[0], mode)
        raise


def lookup_batches(
    access: MapAccess,
    *,
    delete: bool,
    batch_size: int | None,
    elem_flags: int = 0,
    flags: int = 0,
    copy: bool = True,
    hold: Hold | None = None,
    workers: int = 1,
    n_buckets: int = 0,
) -> Iterator[Batch]:
    """Feed out_batch back as in_batch until the kernel says ENOENT.

    ENOSPC (one hash bucket holds more than the batch) doubles the buffers, capped at
    max_entries, and retries from the same cursor. A kernel without the batch op (ENOTSUPP, or
    EINVAL from kernels before 5.6) switches to per-key iteration. Elements a call returned are
    yielded before any error it reported is raised; elements a drain deleted when a signal
    handler (or anything) raised before they were yielded are put back first. ``hold``: the
    fd to use (the caller's, kept open after the walk); default: the walk's own Hold. With
    ``n_buckets`` (hash-family maps) and ``workers`` > 1, the buckets are split among threads
    (``_parallel``).
    """
    op, _ = _lookup_call(delete)
    # Checked now, not at the first next(): a bad argument fails where it was written.
    access.fd(op)
    where = f"{op}: {access.where}"
    capacity = batch_capacity(batch_size, access.max_entries, where)
    opts = batch_opts(elem_flags, flags, where)
    if workers > 1 and n_buckets > 1:
        from ._parallel import parallel_batches  # it builds on this module

        return parallel_batches(access, delete, capacity, opts, workers, n_buckets, hold)
    return _walk(access, delete, capacity, opts, bool(elem_flags or flags), copy, hold)


def _walk(
    access: MapAccess,
    delete: bool,
    capacity: int,
    opts: Any,
    flagged: bool,
    copy: bool,
    hold: Hold | None,
) -> Iterator[Batch]:
    op, _ = _lookup_call(delete)
    own = hold is None
    h = Hold(access, op) if hold is None else hold
    try:
        fd, mode = h.fd, _put_mode(access.map_type)
        buf = Buffers(capacity, access)
        # in_batch and out_batch apart, swapped after each call: out_batch's mark must last
        cursors = [ffi.new("char[]", access.layout.cursor_size) for _ in range(2)]
        marks = [ffi.cast("__u32 *", c) for c in cursors]
        count = ffi.new("__u32 *")
        in_batch = _bindings.NULL  # NULL starts at the beginning
        out = 0
        started = False
        while True:
            # Closed since the last batch: stop with a clear error (the Hold keeps this map).
            access.fd(op)
            mark = marks[out]
            mark[0] = _NOT_RUN
            err: BpfError | None = None
            handed = False
            try:
                try:
                    batch = step(fd, access, delete, in_batch, cursors[out], buf, count, opts, copy)
                except BpfError as e:
                    err, batch = e, e.batch  # type: ignore[assignment]
                if batch is not None and batch.count:
                    # Yielded inside the try: on Python < 3.11 leaving a try (POP_BLOCK) is a
                    # point where a signal can be raised. From the flag to the yield only
                    # opcodes that never check for signals run; an exception thrown in at the
                    # yield (close(), a dropped generator) finds the batch already handed over.
                    handed = True
                    yield batch
            except BaseException:
                if not handed and delete and mark[0] != _NOT_RUN and count[0]:
                    _bindings.lbb_put_back(
                        fd, buf.keys, buf.values, buf.layout.key_size,
                        buf.layout.value_stride, count[0], mode, buf.errs,
                    )  # fmt: skip
                    _raise_unrestored(access, buf.keys, buf.errs, count[0], mode)
                raise
            if err is not None:
                if not started and _batch_op_missing(err, flagged):
                    yield from _per_key_walk(access, fd, delete, capacity, copy)
                    return
                if err.errno != errno.ENOSPC:
                    raise err
                buf = grown(buf, access, err)
                continue
            started = True
            if batch.done:
                return
            in_batch, out = cursors[out], 1 - out
    finally:
        if own:
            _bindings.lbb_close_fd(h.cell)


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
    (it is theirs). Elements deleted so far are yielded before an error is raised; elements
    deleted when something raised before they were yielded are put back.
    """
    hold = Hold(access, "bpf_map_get_next_key")
    try:
        yield from _per_key_walk(access, hold.fd, delete, batch_size, copy)
    finally:
        _bindings.lbb_close_fd(hold.cell)


def _per_key_walk(
    access: MapAccess, fd: int, delete: bool, batch_size: int, copy: bool
) -> Iterator[Batch]:
    layout = access.layout
    ks, vs, mode = layout.key_size, layout.value_stride, _put_mode(access.map_type)
    buf = Buffers(batch_size, access)
    key, nxt = ffi.new("char[]", ks), ffi.new("char[]", ks)
    state = ffi.new("int *")  # lbb_per_key_batch's: not started, key is next, walk over
    count = ffi.new("__u32 *")
    rc = 0
    while rc == 0:
        access.fd("bpf_map_get_next_key")  # closed between batches: stop
        count[0] = 0  # lbb_per_key_batch counts up from here as it deletes
        handed = False
        try:
            rc = _bindings.lbb_per_key_batch(
                fd, key, nxt, state, delete, buf.keys, buf.values, ks, vs, buf.capacity, count
            )
            batch = buf.batch(count[0], b"", rc == 1, copy)
            if batch.count:
                handed = True  # and yielded inside the try, as in _walk
                yield batch
        except BaseException:
            if not handed and delete and count[0]:
                _bindings.lbb_put_back(fd, buf.keys, buf.values, ks, vs, count[0], mode, buf.errs)
                _raise_unrestored(access, buf.keys, buf.errs, count[0], mode)
            raise
    if rc < 0:
        op = "bpf_map_get_next_key/lookup_elem" + ("/delete_elem" if delete else "")
        raise error_from_errno(-rc, op, access.where)
