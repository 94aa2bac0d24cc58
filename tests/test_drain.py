"""The drain loop and the iterators on it: ENOENT with data, ENOSPC growth, big maps,
concurrent writers, the per-key fallback, copy/view batches and bad arguments."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import threading
from array import array
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    ARRAY_TYPES,
    COVERED_TYPES,
    HASH_TYPES,
    contents,
    element_value,
    exactly_once,
    type_id,
    u32,
    u64,
    where,
)

from libbpf_batch import Batch, BatchNotSupportedError, BpfError, Map, MapType
from libbpf_batch.batch import per_key_batches

MakeMap = Callable[..., Map]
MakeFilled = Callable[..., "tuple[Map, dict[bytes, bytes]]"]
# Map types whose elements can be deleted, so drain() works (by batch or by the per-key walk).
DRAINABLE_TYPES = [t for t in COVERED_TYPES if t not in ARRAY_TYPES]
# Types with no elements until written (arrays always hold max_entries zeroed elements).
EMPTYABLE_TYPES = HASH_TYPES + [MapType.LPM_TRIE, MapType.HASH_OF_MAPS, MapType.ARRAY_OF_MAPS]


def elements(batches: list[Batch]) -> list[tuple[bytes, bytes]]:
    return [pair for b in batches for pair in b]


def first_enospc(m: Map) -> bytes | None:
    """Walk ``m`` with lookup_batch(1); the cursor of the first bucket holding more than one
    element (the kernel's ENOSPC, with nothing returned), or None if there is none."""
    cursor = None
    while True:
        try:
            batch = m.lookup_batch(1, cursor)
        except BpfError as e:
            assert e.errno == errno.ENOSPC, e
            assert e.batch.count == 0  # type: ignore[attr-defined]
            return cursor if cursor is not None else b""
        if batch.done:
            return None
        cursor = batch.cursor


@pytest.fixture(params=HASH_TYPES, ids=type_id)
def crowded(
    request: pytest.FixtureRequest, make_filled: MakeFilled
) -> tuple[Map, dict[bytes, bytes]]:
    """A hash map with 512 elements in 1024 buckets: some buckets hold several (the chance
    that none does is below 1e-50), which the test proves with first_enospc()."""
    return make_filled(request.param, 512, max_entries=1024)


# -- end of iteration -----------------------------------------------------------------------
@pytest.mark.parametrize("map_type", EMPTYABLE_TYPES, ids=type_id)
def test_empty_map_drains_nothing(make_filled: MakeFilled, map_type: MapType) -> None:
    m, _ = make_filled(map_type, 0, max_entries=8)
    assert list(m.drain()) == []
    assert list(m.batches()) == []
    assert list(m.items()) == []


def test_last_call_returns_elements_with_enoent(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.ARRAY, 10)
    cursor, batches = None, []
    while not (batches and batches[-1].done):
        batches.append(m.lookup_batch(3, cursor))
        cursor = batches[-1].cursor
    assert [(b.count, b.done) for b in batches] == [(3, False), (3, False), (3, False), (1, True)]
    assert batches[-1].key_list() == [u32(9)]
    assert dict(elements(batches)) == expected


def test_iterator_yields_the_last_batch_that_came_with_enoent(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.ARRAY, 10)
    batches = list(m.batches(3))
    assert [(b.count, b.done) for b in batches] == [(3, False), (3, False), (3, False), (1, True)]
    assert dict(elements(batches)) == expected


@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_one_call_can_return_everything_and_enoent(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 5)
    batch = m.lookup_and_delete_batch(m.max_entries)
    assert (batch.count, batch.done) == (5, True)
    assert exactly_once(iter(batch)) == expected
    assert contents(m) == {}


@pytest.mark.parametrize("map_type", [MapType.ARRAY, MapType.LPM_TRIE], ids=type_id)
def test_full_last_batch_is_followed_by_an_empty_done_call(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    # generic_map_lookup_batch: filling the count exactly is success, not ENOENT
    m, _ = make_filled(map_type, 10)
    first = m.lookup_batch(10)
    assert (first.count, first.done) == (10, False)
    after = m.lookup_batch(10, first.cursor)
    assert (after.count, after.done) == (0, True)
    assert [b.count for b in m.batches(10)] == [10]


def test_short_batch_without_enoent_is_not_the_end(crowded: tuple[Map, dict]) -> None:
    # hashtab.c returns whole buckets: a bucket that does not fit ends the call early
    m, expected = crowded
    batches = list(m.batches(7))
    assert exactly_once(elements(batches)) == expected
    assert any(b.count < 7 and not b.done for b in batches)


# -- ENOSPC ---------------------------------------------------------------------------------
def test_lookup_batch_of_one_meets_enospc_on_a_shared_bucket(crowded: tuple[Map, dict]) -> None:
    m, expected = crowded
    cursor = first_enospc(m)
    assert cursor is not None, "no bucket with two elements among 512 in 1024"
    # Retrying from the same cursor with a larger count returns that bucket whole.
    batch = m.lookup_batch(m.max_entries, cursor or None)
    assert batch.count >= 2
    assert dict(iter(batch)).items() <= expected.items()


def test_drain_with_batch_size_one_grows_and_yields_each_element_once(
    crowded: tuple[Map, dict],
) -> None:
    m, expected = crowded
    assert first_enospc(m) is not None  # the map really has a bucket bigger than the batch
    batches = list(m.drain(batch_size=1))
    assert exactly_once(elements(batches)) == expected
    assert max(b.count for b in batches) >= 2  # the buffers grew past 1
    assert contents(m) == {}


def test_batches_with_batch_size_one_grows_and_reads_each_element_once(
    crowded: tuple[Map, dict],
) -> None:
    m, expected = crowded
    assert first_enospc(m) is not None
    assert exactly_once(elements(list(m.batches(batch_size=1)))) == expected
    assert contents(m) == expected


def test_enospc_at_max_entries_raises_instead_of_looping(crowded: tuple[Map, dict]) -> None:
    # A live map never holds a bucket bigger than max_entries, so this Map is given a stale
    # MapInfo saying max_entries is 1: the real kernel then answers ENOSPC to every size
    # the loop may grow to.
    m, expected = crowded
    assert first_enospc(m) is not None
    stale = Map(os.dup(m.fd), info=dataclasses.replace(m.info, max_entries=1))
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(sum(b.count for b in stale.batches()))
        except Exception as e:  # noqa: BLE001 (re-raised by the test thread)
            outcome.append(e)

    try:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "the loop kept retrying ENOSPC"
    finally:
        stale.close()
    (err,) = outcome
    assert isinstance(err, BpfError), err
    assert err.errno == errno.ENOSPC
    assert re.search(where(m), str(err))
    assert "max_entries" in str(err)
    assert contents(m) == expected


# -- big maps and concurrent writers --------------------------------------------------------
@pytest.mark.slow
def test_a_million_entries_drain_exactly_once(make_map: MakeMap) -> None:
    n = 1_000_000
    m = make_map(MapType.HASH, 4, 8, n)
    keys = array("I", range(n))
    assert keys.itemsize == 4
    assert m.update_batch(keys.tobytes(), array("Q", range(1, n + 1)).tobytes()) == n
    got_keys, got_values = array("I"), array("Q")
    for batch in m.drain():
        got_keys.frombytes(batch.keys)
        got_values.frombytes(batch.values)
    assert len(got_keys) == n
    assert sorted(got_keys) == keys.tolist()  # each key once
    assert all(v == k + 1 for k, v in zip(got_keys, got_values))
    assert m.next_key() is None


@pytest.mark.parametrize("map_type", HASH_TYPES, ids=type_id)
def test_drain_while_a_writer_inserts_loses_and_duplicates_nothing(
    make_map: MakeMap, map_type: MapType
) -> None:
    n = 20_000
    m = make_map(map_type, 4, 8, 1 << 16)  # LRU maps far from full never evict
    started, finished = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(n):
                m.update(u32(i), element_value(m, i))
                if i == 500:
                    started.set()
        except Exception as e:  # noqa: BLE001 (re-raised by the test thread)
            failure.append(e)
        finally:
            started.set()
            finished.set()

    writer = threading.Thread(target=write)
    writer.start()
    drained: list[tuple[bytes, bytes]] = []
    overlapping_passes = 0
    try:
        started.wait()
        while not finished.is_set():
            overlapping_passes += 1
            for batch in m.drain(256):
                drained.extend(batch)
    finally:
        writer.join()
    assert failure == []
    assert overlapping_passes >= 1 and drained, "no drain ran while the writer did"
    remaining = contents(m)
    got = exactly_once(drained)
    assert got.keys().isdisjoint(remaining)
    assert got | remaining == {u32(i): element_value(m, i) for i in range(n)}


# -- what can't be drained -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["drain", "drain_items", "clear"])
@pytest.mark.parametrize("map_type", ARRAY_TYPES, ids=type_id)
def test_arrays_cannot_be_drained(make_filled: MakeFilled, map_type: MapType, how: str) -> None:
    m, expected = make_filled(map_type, 4)
    with pytest.raises(
        BatchNotSupportedError,
        match=rf"bpf_map_lookup_and_delete_batch: {where(m)}: "
        rf"{map_type.name.lower()} elements can't be deleted",
    ):
        result = getattr(m, how)()
        if how != "clear":
            next(result)
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", [MapType.LPM_TRIE, MapType.ARRAY_OF_MAPS], ids=type_id)
def test_drain_without_the_batch_op_walks_per_key(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    # Neither has BPF_MAP_LOOKUP_AND_DELETE_BATCH (ENOTSUPP); both can delete per key.
    m, expected = make_filled(map_type, 9)
    with pytest.raises(BatchNotSupportedError):
        m.lookup_and_delete_batch(4)
    batches = list(m.drain(4))
    assert exactly_once(elements(batches)) == expected
    assert [b.count for b in batches] == [4, 4, 1]
    assert contents(m) == {}


# -- the per-key fallback ---------------------------------------------------------------------
@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_per_key_walk_reads_what_the_batch_loop_reads(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 9)
    by_key = list(per_key_batches(m.access, delete=False, batch_size=4))
    assert exactly_once(elements(by_key)) == exactly_once(elements(list(m.batches(4))))
    assert dict(elements(by_key)) == expected
    assert [b.count for b in by_key] == [4, 4, 1]
    assert [b.done for b in by_key] == [False, False, True]
    assert contents(m) == expected


@pytest.mark.parametrize("map_type", DRAINABLE_TYPES, ids=type_id)
def test_per_key_drain_gives_what_the_batch_drain_gives(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    by_key, expected_by_key = make_filled(map_type, 9)
    by_batch, expected_by_batch = make_filled(map_type, 9)
    assert (
        exactly_once(elements(list(per_key_batches(by_key.access, delete=True, batch_size=4))))
        == expected_by_key
    )
    assert exactly_once(elements(list(by_batch.drain(4)))) == expected_by_batch
    assert contents(by_key) == contents(by_batch) == {}


# -- copy=False views, copy=True copies -----------------------------------------------------
@pytest.mark.parametrize("how", ["batches", "drain"])
def test_copy_false_batches_are_views_the_next_step_overwrites(
    make_filled: MakeFilled, how: str
) -> None:
    m, _ = make_filled(MapType.HASH, 100, max_entries=128)
    it = getattr(m, how)(10, copy=False)
    first = next(it)
    assert isinstance(first.keys, memoryview) and isinstance(first.values, memoryview)
    before = (bytes(first.keys), bytes(first.values))
    second = next(it)
    assert bytes(second.keys[:4]) not in [before[0][i : i + 4] for i in range(0, len(before[0]), 4)]
    n = min(first.count, second.count)  # hash batches may be short
    assert bytes(first.keys[: n * 4]) == bytes(second.keys[: n * 4])  # one buffer, reused
    assert (bytes(first.keys), bytes(first.values)) != before


@pytest.mark.parametrize("how", ["batches", "drain"])
def test_copy_true_batches_stay_intact(make_filled: MakeFilled, how: str) -> None:
    m, expected = make_filled(MapType.HASH, 100, max_entries=128)
    batches = list(getattr(m, how)(10, copy=True))
    assert all(isinstance(b.keys, bytes) and isinstance(b.values, bytes) for b in batches)
    assert len(batches) >= 10
    assert exactly_once(elements(batches)) == expected


# -- the convenience iterators ----------------------------------------------------------------
@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_items_are_exact(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 9)
    assert exactly_once(m.items(4)) == expected
    assert exactly_once(m.items()) == expected


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_keys_are_exact(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 9)
    keys = list(m.keys(4))
    assert sorted(keys) == sorted(expected) and len(set(keys)) == 9
    assert sorted(m) == sorted(expected)  # iter(m) is keys()


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_values_are_exact(make_filled: MakeFilled, map_type: MapType) -> None:
    m, expected = make_filled(map_type, 9)
    assert sorted(m.values(4)) == sorted(expected.values())


@pytest.mark.parametrize("map_type", DRAINABLE_TYPES, ids=type_id)
def test_drain_items_stopped_mid_batch_puts_the_rest_back(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 9)
    taken = []
    for pair in m.drain_items(batch_size=9):  # one batch holds all 9
        taken.append(pair)
        if len(taken) == 3:
            break
    assert len(dict(taken)) == 3
    # the 3 taken are gone; the 6 the consumer never saw are back, with their values
    assert contents(m) == {k: v for k, v in expected.items() if k not in dict(taken)}


def test_batch_to_dict_is_its_pairs(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.HASH, 9)
    (batch,) = list(m.batches(batch_size=64))
    assert batch.to_dict() == expected


def test_drain_items_put_back_keeps_a_value_written_meanwhile(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 64)
    m.update_batch([u32(i) for i in range(4)], [u64(i) for i in range(4)])
    it = m.drain_items(batch_size=64)
    first_key, _ = next(it)
    others = [u32(i) for i in range(4) if u32(i) != first_key]
    m.update(others[0], u64(1000))  # the program re-created a drained key meanwhile
    del it
    assert m.lookup(others[0]) == u64(1000)
    assert set(m.keys()) == set(others)


@pytest.mark.parametrize("map_type", DRAINABLE_TYPES, ids=type_id)
def test_drain_items_are_exact_and_empty_the_map(
    make_filled: MakeFilled, map_type: MapType
) -> None:
    m, expected = make_filled(map_type, 9)
    assert exactly_once(m.drain_items(4)) == expected
    assert contents(m) == {}


@pytest.mark.parametrize("map_type", DRAINABLE_TYPES, ids=type_id)
def test_clear_counts_what_it_deleted(make_filled: MakeFilled, map_type: MapType) -> None:
    m, _ = make_filled(map_type, 9)
    assert m.clear() == 9
    assert contents(m) == {}


def test_stopping_a_drain_early_leaves_the_rest(make_filled: MakeFilled) -> None:
    m, expected = make_filled(MapType.HASH, 100, max_entries=128)
    it = m.drain(10)
    taken = dict(iter(next(it)))
    del it
    assert taken.items() <= expected.items()
    assert contents(m) == {k: v for k, v in expected.items() if k not in taken}


# -- Batch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key_size", [1, 2, 4, 8, 16])
def test_batch_fields_for_a_hash(make_map: MakeMap, key_size: int) -> None:
    m = make_map(MapType.PERCPU_HASH, key_size, 4, 64)
    keys = [bytes([i]) * key_size for i in range(1, 6)]
    values = [bytes([i]) * m.value_stride for i in range(1, 6)]
    m.update_batch(keys, values)
    (batch,) = list(m.batches())
    assert (batch.count, len(batch), batch.done) == (5, 5, True)
    assert len(batch.keys) == 5 * key_size
    assert len(batch.values) == 5 * m.value_stride == 5 * 8 * m.ncpus
    assert len(batch.cursor) == max(4, key_size)  # hash maps: a 4-byte bucket index
    assert sorted(batch) == sorted(zip(keys, values))
    assert sorted(batch.key_list()) == keys and sorted(batch.value_list()) == values


def test_batch_cursor_of_an_lpm_trie_is_a_key(make_filled: MakeFilled) -> None:
    m, _ = make_filled(MapType.LPM_TRIE, 6)
    batch = m.lookup_batch(3)
    assert (batch.count, batch.done) == (3, False)
    assert len(batch.cursor) == 8
    assert batch.cursor == batch.key_list()[-1]  # generic maps: the last key returned
