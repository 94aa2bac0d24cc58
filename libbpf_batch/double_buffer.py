"""Double-buffered maps: exact interval harvests of counters a BPF program updates in place.

A drain races a program that increments through a looked-up pointer: an increment landing on
an element after the kernel copied and deleted it is lost. A double-buffered map is a one-slot
ARRAY_OF_MAPS whose slot holds the counter map (declare it with ``LBB_DOUBLE_BUFFER`` from
``<libbpf_batch/double_buffer.bpf.h>``; :func:`get_include` gives its directory). A harvest
puts a spare inner map in the slot; the kernel's update of a map-of-maps element returns only
after every running non-sleepable BPF program has finished (``maybe_wait_bpf_programs()``, a
synchronize_rcu(), kernel/bpf/syscall.c), so from then on nothing writes the old inner map: it
is drained without a race, and kept as the next spare::

    with DoubleBufferedMap.from_object(obj, "counts") as counts:
        while True:
            time.sleep(1)
            for batch in counts.harvest():
                ...   # exactly what the program counted since the previous swap
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _bindings
from .batch import Batch
from .errors import BpfError, named_call
from .maps import UNDELETABLE_TYPES, Map, MapType

if TYPE_CHECKING:
    from .btf import MapDecoder
    from .objects import BpfObject

SLOT = bytes(4)  # the outer map's one key: __u32 0


def get_include() -> str:
    """The directory holding ``libbpf_batch/double_buffer.bpf.h``: pass it to clang with -I."""
    return str(Path(__file__).resolve().parent / "include")


def _slot_id(outer: Map) -> int | None:
    """The id of the map in ``outer``'s slot 0 (user space reads an id, not an fd); None if empty."""
    value = outer.lookup(SLOT)
    return None if value is None else int.from_bytes(value, "little")


def is_double_buffered(m: Map) -> bool:
    """True when ``m`` is a one-slot ARRAY_OF_MAPS whose slot holds a map (see LBB_DOUBLE_BUFFER)."""
    if m.type != MapType.ARRAY_OF_MAPS or m.max_entries != 1:
        return False
    return _slot_id(m) is not None


def create_like(template: Map) -> Map:
    """A new, empty map with ``template``'s type, name, sizes, flags, map_extra and BTF types.

    The BTF matters beyond decoding: the kernel accepts an inner map in a map-of-maps only if
    its special fields (spin locks, timers, kptrs) match the outer map's template.
    """
    info = template.info
    where = f"a spare for map {info.name!r} (id {info.id})"
    btf_fd = (
        named_call(f"{where}: BTF id {info.btf_id}", _bindings.bpf_btf_get_fd_by_id, info.btf_id)
        if info.btf_id
        else None
    )
    try:
        return Map.create(
            info.type,
            info.key_size,
            info.value_size,
            info.max_entries,
            info.name,
            info.map_flags,
            map_extra=info.map_extra,
            btf=None if btf_fd is None else (btf_fd, info.btf_key_type_id, info.btf_value_type_id),
        )
    finally:
        if btf_fd is not None:
            os.close(btf_fd)


class DoubleBufferedMap:
    """A one-slot ARRAY_OF_MAPS and two inner maps: the one in the slot, which BPF programs
    write, and a spare; :meth:`harvest` swaps them and drains the one swapped out.

    Exact for programs that look the inner map up through the outer map once per run
    (``lbb_double_buffer_current()``) and are not sleepable: the kernel does not wait for
    sleepable programs (SEC("*.s")) when the slot is updated. One harvester per outer map: a
    slot changed by anyone else (another process harvesting, a reloaded program) is refused;
    after fork(), only one of the two processes may harvest.
    Needs CAP_SYS_ADMIN (the inner maps are opened by id, as :meth:`Map.from_id`).
    """

    def __init__(self, outer: Map) -> None:
        """Harvest ``outer`` (the caller keeps it and closes it: this holds a duplicate).

        Opens the map in the slot and creates the spare with the same spec (see
        :func:`create_like`). Raises ValueError when ``outer`` is not a one-slot ARRAY_OF_MAPS
        with a map in its slot, or when that map can't be drained (ARRAY, PERCPU_ARRAY).
        """
        if not isinstance(outer, Map):
            raise TypeError(f"DoubleBufferedMap: outer must be a Map, not {type(outer).__name__}")
        where = f"map {outer.name!r} (id {outer.id})"
        if outer.type != MapType.ARRAY_OF_MAPS or outer.max_entries != 1:
            raise ValueError(
                f"DoubleBufferedMap: {where} is a {outer.info.type_name} with max_entries "
                f"{outer.max_entries}; expected a one-slot array_of_maps (LBB_DOUBLE_BUFFER)"
            )
        self._where = f"double-buffered {where}"
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread whose harvest holds the lock
        self._current: Map | None = None  # in the slot: BPF programs write it
        self._spare: Map | None = None  # empty, out of the slot
        self._pending: Map | None = None  # swapped out, not yet drained to its end
        self.swaps = 0
        """Swaps made by this object."""
        self.last_swap_seconds: float | None = None
        """How long the last swap (one bpf_map_update_elem, an RCU grace period) took."""
        self._outer: Map | None = Map.from_fd(outer.fd)
        try:
            slot_id = _slot_id(self._outer)
            if slot_id is None:
                raise ValueError(
                    f"DoubleBufferedMap: {where}: slot 0 holds no map; declare the map with "
                    "LBB_DOUBLE_BUFFER, or put the inner map in it"
                )
            self._current = Map.from_id(slot_id)
            if self._current.type in UNDELETABLE_TYPES:
                raise ValueError(
                    f"DoubleBufferedMap: {where}: its inner map is a "
                    f"{self._current.info.type_name}, whose elements can't be deleted, so "
                    "it can't be drained; use a hash-family inner map"
                )
            self._spare = create_like(self._current)
        except BaseException:
            self.close()
            raise

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_object(cls, obj: BpfObject, name: str) -> DoubleBufferedMap:
        """The double-buffered map ``name`` (the outer map's name in the C source) of ``obj``."""
        with obj.map(name) as outer:
            return cls(outer)

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> DoubleBufferedMap:
        """The double-buffered map whose outer map is pinned at ``path``."""
        with Map.open_pinned(path) as outer:
            return cls(outer)

    @classmethod
    def from_id(cls, map_id: int) -> DoubleBufferedMap:
        """The double-buffered map whose outer map has this kernel id."""
        with Map.from_id(map_id) as outer:
            return cls(outer)

    # -- attributes --------------------------------------------------------------------
    @property
    def outer(self) -> Map:
        """The outer map (owned by this object)."""
        return self._open("outer")[0]

    @property
    def current(self) -> Map:
        """The inner map now in the slot, which programs write (another one after a harvest)."""
        return self._open("current")[1]

    @property
    def pending(self) -> bool:
        """True when an interrupted harvest left a swapped-out map that the next one drains first."""
        return self._pending is not None

    @property
    def closed(self) -> bool:
        return self._outer is None

    def decoder(self) -> MapDecoder:
        """A BTF decoder for the inner maps' keys and values (they share their BTF types)."""
        return self.current.decoder()

    def _open(self, op: str) -> tuple[Map, Map]:
        if self._outer is None or self._current is None:
            raise ValueError(f"{op}: {self._where} is closed")
        return self._outer, self._current

    # -- harvest -----------------------------------------------------------------------
    def harvest(self, batch_size: int | None = None, **drain_kwargs: Any) -> Iterator[Batch]:
        """Swap the spare into the slot, then yield the old inner map's elements as
        :meth:`Map.drain` does (``drain_kwargs`` go to it: ``copy``, ``elem_flags``, ...).

        Like drain(), it starts at the first next(); arguments are checked now. Each harvest
        holds exactly what the programs added between its swap and the previous one.

        Interrupted (the consumer stops early, an exception, Ctrl-C; also between the swap
        and its bookkeeping), nothing is lost: the swapped-out map keeps what was not yet
        delivered, and the next harvest() yields that first (these batches belong to the
        earlier interval), swapping only once it is empty. ``close()`` with such a map still
        holding elements warns (RuntimeWarning) with how many are lost. Delivery within a
        drain is Map.drain()'s promise.

        Harvests are serialized: a harvest() in another thread waits (from its first next())
        until this one's iterator is exhausted, closed or collected. A second harvest() in the
        same thread before the first iterator finished raises RuntimeError.
        """
        current = self._open("harvest")[1]
        # checked now, not at the first next(): the unstarted drain makes no syscall
        current.drain(batch_size, **drain_kwargs)
        return self._harvest(batch_size, drain_kwargs)

    def _harvest(self, batch_size: int | None, drain_kwargs: dict[str, Any]) -> Iterator[Batch]:
        me = threading.get_ident()
        if self._holder == me:
            raise RuntimeError(
                f"harvest: {self._where}: this thread has an unfinished harvest(); exhaust or "
                "close() its iterator first"
            )
        with self._lock:
            self._holder = me
            try:
                self._open("harvest")
                self._reconcile("harvest")
                if self._pending is not None:
                    yield from self._drain_pending(batch_size, drain_kwargs)
                self._swap()
                yield from self._drain_pending(batch_size, drain_kwargs)
            finally:
                self._holder = None

    def _drain_pending(
        self, batch_size: int | None, drain_kwargs: dict[str, Any]
    ) -> Iterator[Batch]:
        pending = self._pending
        assert pending is not None
        yield from pending.drain(batch_size, **drain_kwargs)
        # only after the walk's end: an interrupted drain leaves it pending
        self._pending, self._spare = None, pending

    def _swap(self) -> None:
        outer, current = self._open("harvest")
        if self._spare is None:  # only if a previous spare could not be kept
            self._spare = create_like(current)
        spare = self._spare
        start = time.perf_counter()
        try:
            outer.update(SLOT, spare)  # returns after synchronize_rcu()
        except BpfError as e:
            raise e.at(f"harvest: {self._where}", "swapping in the spare") from None
        # An exception raised right here (a signal) leaves the swap unrecorded; the next
        # _reconcile() finds the spare in the slot and records it then.
        self._current, self._pending, self._spare = spare, current, None
        self.swaps += 1
        self.last_swap_seconds = time.perf_counter() - start

    def _reconcile(self, op: str) -> None:
        """Bring the bookkeeping in line with the slot (after an interrupted swap)."""
        outer, current = self._open(op)
        slot_id = _slot_id(outer)
        if slot_id == current.id:
            return
        if self._spare is not None and slot_id == self._spare.id:
            self._current, self._pending, self._spare = self._spare, current, None
            return
        raise RuntimeError(
            f"{op}: {self._where}: slot 0 holds "
            + ("no map" if slot_id is None else f"map id {slot_id}")
            + f", not id {current.id} that this harvester put there: something else changed "
            "it (another harvester, a reloaded program); one harvester per map"
        )

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the outer map's duplicate and both inner maps. Idempotent.

        Waits for a harvest running in another thread. Warns (RuntimeWarning) when an
        interrupted harvest left elements that were never delivered: closing frees them.
        """
        if self._holder == threading.get_ident():
            self._close()  # called from inside this thread's own harvest loop
            return
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._outer is not None and self._current is not None:
            try:
                self._reconcile("close")
            except (BpfError, RuntimeError):
                pass  # the slot can't be read or was changed: nothing more to learn here
        lost = 0
        if self._pending is not None and not self._pending.closed:
            try:
                lost = sum(b.count for b in self._pending.batches(copy=False))
            except BpfError:
                pass
        maps = (self._pending, self._spare, self._current, self._outer)
        self._outer = self._current = self._spare = self._pending = None
        for m in maps:
            if m is not None:
                m.close()
        if lost:
            warnings.warn(
                f"{self._where}: closed with {lost} harvested elements never delivered (a "
                "harvest() was interrupted); call harvest() again before close() to get them",
                RuntimeWarning,
                stacklevel=3,
            )

    def __enter__(self) -> DoubleBufferedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_outer", None) is not None:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            # never wait here: gc may finalize us before a harvest generator holding the lock
            if self._lock.acquire(blocking=False):
                try:
                    self._close()
                finally:
                    self._lock.release()
            else:
                self._close()

    def __repr__(self) -> str:
        if self._outer is None or self._current is None:
            return f"<DoubleBufferedMap {self._where} closed>"
        return (
            f"<DoubleBufferedMap {self._outer.name!r} id={self._outer.id} "
            f"current={self._current.id} swaps={self.swaps}"
            + (" pending" if self._pending is not None else "")
            + ">"
        )


__all__ = ["DoubleBufferedMap", "create_like", "get_include", "is_double_buffered"]
