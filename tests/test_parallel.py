"""Parallel walks (``workers=``): every hash-family type, exactly once, on the real kernel.

Each test checks the multiset of what was delivered (no key twice, every value exact) and that
no worker thread outlives the iterator.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from conftest import HASH_TYPES, lpm_key, lru_room, type_id, u32, u64

from libbpf_batch import Batch, BpfError, Map, MapType

MakeMap = Callable[..., Map]
WORKERS = list(range(1, 9))


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("libbpf-batch-")]


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterable[None]:
    yield
    assert worker_threads() == []


def filled(
    make_map: MakeMap, map_type: MapType, n: int, max_entries: int = 0
) -> tuple[Map, dict[bytes, bytes]]:
    """A map of ``map_type`` holding keys 0..n-1, each value distinct per element and CPU."""
    room = max_entries or max(2 * n, lru_room(map_type, n))
    m = make_map(map_type, 4, 8, room)
    expected = {u32(i): b"".join(u64((i << 8) | cpu) for cpu in range(m.ncpus)) for i in range(n)}
    if expected:
        assert m.update_batch(list(expected), list(expected.values())) == n
    return m, expected


def pairs_of(batches: Iterable[Batch]) -> Counter[tuple[bytes, bytes]]:
    return Counter(pair for b in batches for pair in b)


def assert_exactly(got: Counter[tuple[bytes, bytes]], expected: dict[bytes, bytes]) -> None:
    assert max(got.values(), default=1) == 1, "an element came twice"
    keys = Counter(k for k, _ in got.elements())
    assert max(keys.values(), default=1) == 1, "a key came twice"
    assert dict(got) == dict.fromkeys(expected.items(), 1)


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_drain_delivers_every_element_once_and_empties_the_map(
    make_map: MakeMap, map_type: MapType, workers: int
) -> None:
    m, expected = filled(make_map, map_type, 3000)
    assert_exactly(pairs_of(m.drain(256, workers=workers)), expected)
    assert m.next_key() is None


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_read_returns_every_element_once_and_leaves_the_map(
    make_map: MakeMap, map_type: MapType, workers: int
) -> None:
    m, expected = filled(make_map, map_type, 3000)
    assert_exactly(pairs_of(m.batches(256, workers=workers)), expected)
    assert_exactly(Counter(m.items(256, workers=workers)), expected)
    assert Counter(m.keys(workers=workers)) == Counter(list(expected))
    assert Counter(m.values(workers=workers)) == Counter(expected.values())


@pytest.mark.parametrize("batch_size", [1, 2, 1 << 20], ids=["1", "2", "huge"])
@pytest.mark.parametrize("workers", [2, 3, 8])
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_tiny_and_huge_batches(
    make_map: MakeMap, map_type: MapType, workers: int, batch_size: int
) -> None:
    m, expected = filled(make_map, map_type, 700)
    assert_exactly(pairs_of(m.batches(batch_size, workers=workers)), expected)
    assert_exactly(pairs_of(m.drain(batch_size, workers=workers)), expected)
    assert m.next_key() is None


def first_enospc(m: Map) -> bool:
    """True when some bucket holds more than one element (lookup_batch(1) says ENOSPC)."""
    cursor = None
    while True:
        try:
            batch = m.lookup_batch(1, cursor)
        except BpfError as e:
            if e.errno == 28:  # ENOSPC
                return True
            raise
        if batch.done:
            return False
        cursor = batch.cursor


@pytest.mark.parametrize("workers", [2, 4, 8])
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_buckets_larger_than_the_batch_grow_it_per_worker(
    make_map: MakeMap, map_type: MapType, workers: int
) -> None:
    # A full map puts several elements in some of its max_entries buckets.
    n = 1024 if map_type not in (MapType.LRU_HASH, MapType.LRU_PERCPU_HASH) else 256
    m, expected = filled(make_map, map_type, n, max_entries=n if n == 1024 else 0)
    if n == 1024:
        assert first_enospc(m)
    assert_exactly(pairs_of(m.batches(1, workers=workers)), expected)
    assert_exactly(pairs_of(m.drain(1, workers=workers)), expected)


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_sparse_map_batches_cross_several_shares_without_repeating_keys(
    make_map: MakeMap, workers: int
) -> None:
    # 40 elements in 131072 buckets: one call from any share's start reads to the end.
    m, expected = filled(make_map, MapType.HASH, 40, max_entries=100_000)
    for batch_size in (1, 3, 64):
        for _ in range(5):
            assert_exactly(pairs_of(m.batches(batch_size, workers=workers)), expected)


def test_other_types_walk_in_one_thread_whatever_workers_says(make_map: MakeMap) -> None:
    arr = make_map(MapType.ARRAY, 4, 8, 500)
    arr.update_batch([u32(i) for i in range(500)], [u64(i * 3) for i in range(500)])
    assert dict(arr.items(64, workers=8)) == {u32(i): u64(i * 3) for i in range(500)}
    lpm = make_map(MapType.LPM_TRIE, 8, 8, 100)
    lpm.update_batch([lpm_key(i) for i in range(50)], [u64(i) for i in range(50)])
    assert dict(lpm.drain_items(8, workers=4)) == {lpm_key(i): u64(i) for i in range(50)}
    assert lpm.next_key() is None


def test_workers_zero_means_one_per_cpu_of_the_affinity_mask(make_map: MakeMap) -> None:
    m, _ = filled(make_map, MapType.HASH, 2000)
    seen: set[str] = set()
    for b in m.drain(64, workers=0):
        seen.update(t.name for t in worker_threads() if t.name[-1].isdigit())
        assert len(b)
    assert len(seen) <= len(os.sched_getaffinity(0))
    assert m.next_key() is None


@pytest.mark.parametrize("bad", [-1, 1 << 16, 1.5, "2", True, None])
def test_bad_workers_are_refused_before_any_call(make_map: MakeMap, bad: object) -> None:
    m, expected = filled(make_map, MapType.HASH, 10)
    for call in (m.drain, m.batches, m.items, m.keys, m.values, m.drain_items):
        kind = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
        with pytest.raises(kind, match=rf"map {m.name!r} \(id {m.id}\): workers must be an int"):
            call(workers=bad)  # type: ignore[operator]
    assert dict(m.items()) == expected


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_drain_racing_writers_loses_and_duplicates_nothing(
    make_map: MakeMap, map_type: MapType, workers: int
) -> None:
    n = 4000
    m, expected = filled(make_map, map_type, n, max_entries=max(4 * n, lru_room(map_type, 2 * n)))
    value = b"".join(u64(7) for _ in range(m.ncpus))
    stop = threading.Event()
    written: list[bytes] = []

    def writer() -> None:  # inserts new keys while the drain runs
        i = n
        while not stop.is_set() and i < 2 * n:
            m.update(u32(i), value)
            written.append(u32(i))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        got = pairs_of(m.drain(64, workers=workers))
    finally:
        stop.set()
        t.join()
    rest = Counter(m.drain_items())
    assert max((got + rest).values()) == 1, "an element was delivered twice"
    everything = dict(expected)
    everything.update(dict.fromkeys(written, value))
    assert dict(got + rest) == dict.fromkeys(everything.items(), 1)


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_read_racing_writers_never_repeats_a_key(
    make_map: MakeMap, map_type: MapType, workers: int
) -> None:
    n = 4000
    m, expected = filled(make_map, map_type, n, max_entries=max(4 * n, lru_room(map_type, 2 * n)))
    stop = threading.Event()

    def writer() -> None:  # churns keys n..2n-1 (insert, delete) and rewrites stable values
        rng = random.Random(1)
        while not stop.is_set():
            k = u32(n + rng.randrange(n))
            if rng.random() < 0.5:
                m.update(k, b"\1" * m.value_stride)
            else:
                m.delete(k)
            i = rng.randrange(n)
            m.update(u32(i), expected[u32(i)])

    t = threading.Thread(target=writer)
    t.start()
    try:
        for batch_size in (1, 16, 256):
            got = list(m.items(batch_size, workers=workers))
            keys = Counter(k for k, _ in got)
            assert max(keys.values()) == 1, "a key came twice"
            stable = {k: v for k, v in got if k in expected}
            assert stable == expected  # keys present throughout are all read, values exact
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("how", ["break", "close", "with", "exception", "drain_items"])
@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_consumer_stopping_early_puts_back_what_workers_deleted(
    make_map: MakeMap, map_type: MapType, how: str
) -> None:
    m, expected = filled(make_map, map_type, 8_000)
    got: Counter[tuple[bytes, bytes]] = Counter()
    if how == "drain_items":
        for pair in m.drain_items(128, workers=2):
            got[pair] += 1
            if len(got) == 1000:
                break
    elif how == "with":
        with m.drain(128, workers=2) as it:  # type: ignore[attr-defined]
            for b in it:
                got.update(b)
                break
    elif how == "exception":
        with pytest.raises(RuntimeError):
            for b in m.drain(128, workers=2):
                got.update(b)
                raise RuntimeError("consumer failed")
    else:
        it = m.drain(128, workers=2)
        for b in it:
            got.update(b)
            break
        if how == "close":
            it.close()  # type: ignore[attr-defined]
        del it
    assert worker_threads() == []
    rest = Counter(m.drain_items())
    assert max((got + rest).values()) == 1
    assert dict(got + rest) == dict.fromkeys(expected.items(), 1)
    assert 0 < sum(got.values()) < len(expected)


def test_iterator_never_started_deletes_nothing(make_map: MakeMap) -> None:
    m, expected = filled(make_map, MapType.HASH, 500)
    it = m.drain(workers=4)
    del it
    assert dict(m.items()) == expected


def test_sigint_during_a_parallel_drain_loses_nothing(make_map: MakeMap) -> None:
    m, expected = filled(make_map, MapType.HASH, 20_000, max_entries=20_000)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread().ident == main
    interrupted = 0
    try:
        for _ in range(6):
            received: list[Batch] = []  # extend() takes each batch in C: a signal can't split it
            done = threading.Event()

            def interrupt(done: threading.Event = done) -> None:
                time.sleep(random.uniform(0.0001, 0.001))
                if not done.is_set():
                    signal.pthread_kill(main, signal.SIGINT)

            killer = threading.Thread(target=interrupt)
            try:
                try:
                    killer.start()  # may itself be interrupted on a loaded machine
                    received.extend(m.drain(256, workers=2))
                finally:
                    done.set()
                    if killer.ident is not None:
                        killer.join()
            except KeyboardInterrupt:
                interrupted += 1
            got = pairs_of(received)
            rest = pairs_of(m.drain())
            assert max((got + rest).values()) == 1
            assert dict(got + rest) == dict.fromkeys(expected.items(), 1)
            m.update_batch(list(expected), list(expected.values()))
    finally:
        signal.signal(signal.SIGINT, old)
    assert interrupted  # the test saw drains cut short


def test_next_and_list_work_like_the_single_walk(make_map: MakeMap) -> None:
    m, expected = filled(make_map, MapType.PERCPU_HASH, 1000)
    it = m.batches(100, workers=3)
    first = next(it)
    assert isinstance(first, Batch) and first.count
    rest = list(it)
    assert_exactly(pairs_of([first, *rest]), expected)
    with pytest.raises(StopIteration):
        next(it)


def test_next_after_close_ends_the_walk(make_map: MakeMap) -> None:
    m, expected = filled(make_map, MapType.HASH, 2000)
    unstarted = m.drain(64, workers=2)
    unstarted.close()  # type: ignore[attr-defined]
    assert list(unstarted) == []
    it = m.drain(64, workers=2)
    first = next(it)
    it.close()  # type: ignore[attr-defined]
    assert list(it) == []
    rest = Counter(pair for b in m.drain() for pair in b)
    assert dict(pairs_of([first]) + rest) == dict.fromkeys(expected.items(), 1)


@pytest.mark.parametrize("workers", [2, 4])
def test_map_closed_during_a_parallel_drain_stops_with_nothing_lost(
    make_map: MakeMap, workers: int
) -> None:
    m, expected = filled(make_map, MapType.HASH, 20_000)
    with Map.from_id(m.id) as witness:
        received: list[Batch] = []
        it = m.drain(64, workers=workers)
        received.append(next(it))
        m.close()  # the workers' fd is their own duplicate: they stop, nobody else is touched
        with pytest.raises(ValueError, match="closed"):
            received.extend(it)
        del it
        got = pairs_of(received)
        rest = pairs_of(witness.drain())
    assert max((got + rest).values()) == 1
    assert dict(got + rest) == dict.fromkeys(expected.items(), 1)


def test_signal_storm_over_parallel_drains_loses_nothing(
    make_map: MakeMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, expected = filled(make_map, MapType.HASH, 50_000, max_entries=50_000)
    # The storm also lands in finalizers (an interrupted drain's iterator, dropped), where
    # Python can only report it as unraisable: collect those; anything else fails the test.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread().ident == main
    stop = threading.Event()

    def storm() -> None:  # one SIGINT every 1-5 ms until told to stop
        while not stop.wait(random.uniform(0.001, 0.005)):
            signal.pthread_kill(main, signal.SIGINT)

    received: list[Batch] = []
    interrupts = 0
    killer = threading.Thread(target=storm)
    try:
        while True:  # a harvester that goes on after each Ctrl-C until the map is empty
            try:
                if not killer.is_alive() and not stop.is_set():
                    killer.start()
                received.extend(m.drain(128, workers=2))
                if m.next_key() is None:
                    break
            except KeyboardInterrupt:
                interrupts += 1
        while True:
            try:
                stop.set()
                killer.join()
                break
            except KeyboardInterrupt:
                pass
    finally:
        stop.set()
        signal.signal(signal.SIGINT, old)
    assert interrupts
    # A cleanup that a signal cut short in the consumer finishes in the supervisor's thread
    # (nothing is lost), a few ms later: wait for it before reading the map.
    for t in worker_threads():
        t.join(10)
    got = pairs_of(received) + pairs_of(m.drain())
    assert max(got.values()) == 1
    assert dict(got) == dict.fromkeys(expected.items(), 1)
    assert all(isinstance(u.exc_value, KeyboardInterrupt) for u in unraisable), unraisable
