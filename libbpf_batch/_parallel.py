"""The batch loop's workers: a hash-family walk split by bucket, one thread per share.

hashtab.c's batch cursor is a u32 bucket index, read from in_batch (ENOENT once it is >=
n_buckets = roundup_pow_of_two(max_entries)) and written to out_batch as the bucket after the
last one the call copied. So worker i of T starts at bucket n_buckets * i / T and stops once
out_batch reaches the next worker's start; the last one runs to ENOENT, so nothing depends on
n_buckets being guessed right. The syscalls release the GIL (cffi does), so workers run in
parallel; each is the single walk over its share: same per-call step, same ENOSPC growth.

Batches reach the one consumer through a queue, in no defined order across workers.
``iter(queue.get, END)`` hands each one from the queue to the consumer's ``for`` in C, with no
Python bytecode in between where a signal (raised only in the main thread, the consumer) could
drop a batch the kernel already deleted; workers, where no signal handler runs, never lose
one between the kernel and the queue. What a drain's workers hold when the walk is closed
early (break, an exception, a dropped iterator) is put back with batch.put_back() by the
supervisor thread, through the walk's Hold (a dup of the map's fd: works after Map.close()).

A lookup-only walk must not return a key twice, and a worker's last batch may run past its end
into the next share (the kernel fills the buffer with whole buckets). A key's bucket is fixed,
so two batches can share a key only where their bucket ranges [in_batch, out_batch) overlap:
a batch that crosses its share's end is checked against the keys the later workers delivered
from their first batches (recorded while an earlier worker may still cross into them), and
registered so that their later batches in the overlap are checked against it.
"""

from __future__ import annotations

import errno
import itertools
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._libbpf import ffi
from .batch import Batch, Buffers, Hold, MapAccess, grown, per_key_batches, put_back, step
from .errors import BatchNotSupportedError, BpfError, PutBackError

_PAST_END = 1 << 32  # after every bucket: a batch that ended at ENOENT covered the rest
_END = object()  # put in the queue by the last worker to finish


def _bucket(cursor: bytes) -> int:
    return int.from_bytes(cursor[:4], sys.byteorder)  # hashtab.c: a u32 in the cursor


def ranged_batches(
    fd: int, access: MapAccess, delete: bool, capacity: int, opts: Any, start: int, end: int
) -> Iterator[tuple[Batch, int, int]]:
    """The walk over buckets [start, end) on ``fd`` (a Hold's): ``(batch, first, after)``.

    A batch may end past ``end`` (it holds whole buckets); the last one does. ENOSPC grows the
    buffers as the single walk does; other errors are raised with the elements the call
    returned in their ``batch``. Runs in a worker thread, where no signal handler raises, so
    a batch the kernel returned always reaches the caller.
    """
    op = "bpf_map_lookup_and_delete_batch" if delete else "bpf_map_lookup_batch"
    buf = Buffers(capacity, access)
    cursor = ffi.new("char[]", access.layout.cursor_size)
    ffi.cast("__u32 *", cursor)[0] = start
    count = ffi.new("__u32 *")
    first = start
    while True:
        access.fd(op)  # closed since the last batch: stop with a clear error (fd is a dup)
        try:
            batch = step(fd, access, delete, cursor, cursor, buf, count, opts, True)
        except BpfError as e:
            if e.errno != errno.ENOSPC:
                raise
            buf = grown(buf, access, e)  # retry bigger from the same bucket
            continue
        after = _PAST_END if batch.done else _bucket(batch.cursor)
        yield batch, first, after
        if batch.done or after >= end:
            return
        first = after


class _Share:
    """One worker's buckets [start, end), and what the seam checks need to know of it."""

    __slots__ = ("end", "finished", "lead", "lead_out", "pos", "recording", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = self.pos = self.lead_out = start
        self.end = end
        self.finished = False
        self.recording = start > 0  # an earlier worker may still cross into this share
        self.lead: set[bytes] = set()  # keys delivered while recording


class _Walk:
    """The workers, their queue and shared state.

    Everything that must happen once the kernel has deleted elements runs in threads where no
    signal handler raises: a supervisor starts the workers, joins them, and, unless the
    consumer took every batch (finish()), puts back what is left in the queue when the
    consumer is gone (close(), or the iterator dropped: its guard dies). The consumer's thread
    only takes batches (in C), sets events, and waits.
    """

    def __init__(
        self,
        access: MapAccess,
        delete: bool,
        capacity: int,
        opts: Any,
        workers: int,
        n_buckets: int,
        hold: Hold | None,
    ) -> None:
        self.access, self.delete, self.capacity, self.opts = access, delete, capacity, opts
        # One duplicate of the map's fd for every worker and the put-back: a close() of the
        # Map from another thread can't make them touch another map that reused the number.
        self.own_hold = hold is None
        self.hold = hold
        n = max(1, min(workers, n_buckets))
        starts = [n_buckets * i // n for i in range(n)] + [_PAST_END]
        self.shares = [_Share(starts[i], starts[i + 1]) for i in range(n)]
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.room = n  # batches waiting in the queue at most: memory is workers x batch
        self.lock = threading.Lock()
        self.crossings: list[tuple[int, int, set[bytes]]] = []  # (first, after, keys kept)
        self.stopping = threading.Event()  # an error, or the consumer gone: no new calls
        self.closing = threading.Event()  # close(): the consumer takes nothing more
        self.consumed = threading.Event()  # finish(): the consumer took every batch
        self.launched = threading.Event()  # the supervisor runs
        self.exited = threading.Event()  # the supervisor (and so every worker) is done
        self.guard: Callable[[], object] = lambda: self  # replaced by a weakref to the guard
        self.leftover: list[Batch] = []  # taken from the kernel, never queued
        self.failed: list[PutBackError] = []
        self.error: BaseException | None = None
        self.called = False  # some call succeeded: no per-key fallback after that
        self.done = False

    def gone(self) -> bool:
        """The consumer will take no more batches: close(), or the iterator was dropped."""
        return self.closing.is_set() or self.guard() is None

    # -- the consumer's side -------------------------------------------------------------
    def start(self) -> Iterator[Batch]:
        """Start the supervisor at the first next(), as the single walk starts its calls."""
        if not self.done:
            supervisor = threading.Thread(target=self._supervise, name="libbpf-batch-supervisor")
            supervisor.daemon = True  # never keeps the interpreter alive; close() waits for it
            supervisor.start()
        yield from ()

    def finish(self) -> Iterator[Batch]:
        """After the last batch: wait for the threads, then raise the first error, if any."""
        self.consumed.set()
        self.done = True
        self._wait()
        error = self.error
        if error is None:
            return
        if isinstance(error, BatchNotSupportedError) and not self.called:
            # a kernel without the batch op: the per-key walk, as the single walk does
            size = self.capacity
            yield from per_key_batches(self.access, delete=self.delete, batch_size=size)
            return
        self.error = None
        raise error

    def close(self) -> None:
        """Stop the workers and wait for them; a drain puts back what nobody received.

        Raises PutBackError for elements that could not go back. Interrupted while waiting
        (another Ctrl-C), the put-back still completes in the supervisor's thread.
        """
        self.done = True
        self.closing.set()
        self._wait()
        self.queue.put(_END)  # a next() after close() ends instead of waiting
        failed, self.failed = self.failed, []
        if failed:
            keys = [k for e in failed for k in e.keys]
            raise PutBackError.of(failed[0].errno, self.access.where, keys)

    def _wait(self) -> None:
        if self.launched.is_set():
            self.exited.wait()
        # else: start() was interrupted before the supervisor ran; if it runs later it sees
        # the consumer gone and returns without a call

    # -- the supervisor ------------------------------------------------------------------
    def _supervise(self) -> None:
        self.launched.set()
        try:
            if self.gone():
                return
            if self.hold is None:
                op = "bpf_map_lookup_and_delete_batch" if self.delete else "bpf_map_lookup_batch"
                self.hold = Hold(self.access, op)
            workers = [
                threading.Thread(target=self._work, args=(i,), name=f"libbpf-batch-{i}")
                for i in range(len(self.shares))
            ]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
            self._fail(e)
        finally:
            try:
                self.queue.put(_END)  # after every batch: the consumer ends here
                while not self.consumed.is_set() and not self.gone():
                    self.consumed.wait(0.005)  # the consumer is still taking batches
                if not self.consumed.is_set():
                    self._put_back()
            finally:
                hold, self.hold = self.hold, None
                if hold is not None and self.own_hold:
                    hold.close()
                self.exited.set()

    def _put_back(self) -> None:
        """Everything the consumer did not take, back into the map (drains only)."""
        try:  # the consumer is gone: what is left in the queue is nobody's
            self.leftover.extend(iter(self.queue.get_nowait, _END))
        except queue.Empty:
            pass
        if not self.delete:
            self.leftover.clear()
            return
        while self.leftover:
            try:
                put_back(self.access, self.leftover.pop(), hold=self.hold)
            except PutBackError as e:
                self.failed.append(e)

    def _fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e  # the first error wins; the others stop cleanly
        self.stopping.set()

    # -- the workers' side ---------------------------------------------------------------
    def _work(self, i: int) -> None:
        share = self.shares[i]
        try:
            assert self.hold is not None  # made by the supervisor, released after the join
            walk = ranged_batches(
                self.hold.fd,
                self.access,
                self.delete,
                self.capacity,
                self.opts,
                share.start,
                share.end,
            )
            while not self.stopping.is_set():
                try:
                    batch, first, after = next(walk)
                except StopIteration:
                    break
                except BpfError as e:
                    if e.batch is not None and e.batch.count:  # deleted: deliver before raising
                        self._deliver(i, e.batch, share.pos, _bucket(e.batch.cursor))
                    raise
                self.called = True
                if not self._deliver(i, batch, first, after):
                    break
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
            self._fail(e)
        finally:
            with self.lock:
                share.finished = True  # its lead stays: an earlier worker may still cross
                for later in self.shares[i + 1 :]:
                    if all(s.finished for s in self.shares if s.start < later.start):
                        later.recording = False
                        later.lead = set()

    def _deliver(self, i: int, batch: Batch, first: int, after: int) -> bool:
        """Queue ``batch`` for the consumer; False when closing (kept to be put back)."""
        if not self.delete and batch.count:
            batch = self._seam(i, batch, first, after)
        if not batch.count:
            return True
        pause = 0.0001
        while self.queue.qsize() >= self.room and not self.gone():
            time.sleep(pause)  # the consumer is behind: wait for room, not for memory
            pause = min(pause * 2, 0.005)
        if self.gone():
            self.leftover.append(batch)  # the supervisor puts it back
            self.stopping.set()
            return False
        self.queue.put(batch)
        return True

    def _seam(self, i: int, batch: Batch, first: int, after: int) -> Batch:
        """A lookup-only batch without the keys another worker delivers (module docstring)."""
        share = self.shares[i]
        with self.lock:
            share.pos = after
            crossing = after > share.end
            overlapping = [c for c in self.crossings if c[0] < after and first < c[1]]
            if not (crossing or overlapping or share.recording):
                return batch
            keys = batch.key_list()
            drop: set[bytes] = set()
            for _, _, kept in overlapping:
                drop.update(k for k in keys if k in kept)
            if crossing:
                for later in self.shares[i + 1 :]:
                    if later.start >= after:
                        break
                    drop.update(k for k in keys if k in later.lead)
                    # Past what it recorded, it delivered without recording: read those
                    # buckets again to learn which of these keys are theirs.
                    stop = min(after, later.pos)
                    if later.lead_out < stop:
                        probe = self._keys_in(later.lead_out, stop)
                        drop.update(k for k in keys if k in probe)
            if drop:
                batch = _without(batch, keys, drop)
                keys = [k for k in keys if k not in drop]
            if crossing:
                self.crossings.append((first, after, set(keys)))
            if share.recording:
                share.lead.update(keys)
                share.lead_out = after
                if len(share.lead) >= 2 * self.capacity:
                    share.recording = False  # bounded: later seams read the buckets again
            return batch

    def _keys_in(self, start: int, end: int) -> set[bytes]:
        keys: set[bytes] = set()
        assert self.hold is not None
        for batch, _, _ in ranged_batches(
            self.hold.fd, self.access, False, self.capacity, self.opts, start, end
        ):
            keys.update(batch.key_list())
        return keys


def _without(batch: Batch, keys: list[bytes], drop: set[bytes]) -> Batch:
    kept = [(k, v) for k, v in zip(keys, batch.value_list()) if k not in drop]
    return Batch(
        batch.layout,
        len(kept),
        b"".join(k for k, _ in kept),
        b"".join(v for _, v in kept),
        batch.cursor,
        batch.done,
        batch.decoder,
    )


class _Guard:
    """Alive while the iterator is: its death tells the supervisor that the consumer is gone.

    Its __del__ only speeds that up and waits for the threads; the supervisor watches a weak
    reference to it, so the put-back happens even if a signal stops __del__ at its first line.
    """

    __slots__ = ("__weakref__", "walk")

    def __init__(self, walk: _Walk) -> None:
        self.walk = walk
        walk.guard = weakref.ref(self)

    def __del__(self) -> None:
        self.walk.close()


class ParallelBatches(Iterator[Batch]):
    """The batches of a parallel walk, in no defined order across workers.

    ``for`` loops take each batch straight from the workers' queue in C. ``close()`` (also
    on ``with`` exit, or when the iterator is dropped) stops and joins the workers and puts
    back, for a drain, the batches they had deleted that were not delivered.
    """

    def __init__(self, walk: _Walk) -> None:
        guard = _Guard(walk)
        self._walk = walk
        self._guard = guard
        # The guard rides with the chain, so a for loop that holds only the chain keeps the
        # walk open, and dropping both closes it. No cycle: the walk holds neither.
        self._it: Iterator[Batch] = itertools.chain(
            walk.start(), iter(walk.queue.get, _END), _finishing(guard)
        )

    def __iter__(self) -> Iterator[Batch]:
        return self._it

    if TYPE_CHECKING:

        def __next__(self) -> Batch: ...

    else:
        # next() calls the chain's own C __next__: nothing in Python between queue and caller
        __next__ = property(lambda self: self._it.__next__)

    def close(self) -> None:
        """Stop the walk: join the workers; a drain puts back what was not delivered."""
        self._walk.close()

    def __enter__(self) -> ParallelBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finishing(guard: _Guard) -> Iterator[Batch]:
    # Its frame holds the guard until the walk's end: the chain alone keeps the walk open.
    yield from guard.walk.finish()


def parallel_batches(
    access: MapAccess,
    delete: bool,
    capacity: int,
    opts: Any,
    workers: int,
    n_buckets: int,
    hold: Hold | None = None,
) -> ParallelBatches:
    """The hash-family walk over ``n_buckets`` buckets with ``workers`` threads.

    ``hold``: the fd to use (the caller's, kept open); default: the walk's own Hold.
    """
    return ParallelBatches(_Walk(access, delete, capacity, opts, workers, n_buckets, hold))
