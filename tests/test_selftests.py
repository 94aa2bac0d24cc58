"""The kernel selftests' batch scenarios, ported with real checks.

tools/testing/selftests/bpf/map_tests/{htab,array,lpm_trie,map_in_map}_map_batch_ops.c: every
step size 1..9 for the lookup, delete and lookup-and-delete loops, through the single-call API
(lookup_batch with a cursor, ENOSPC handled by the test) and through the iterators.

Two deliberate differences from the C:
- their map_batch_verify() sets visited[i] = 1 for every i and then checks that all are 1, which
  can't fail; here the keys must be exactly the expected set (no duplicate, none missing) and
  every value exact.
- on ENOSPC the htab test gives up the step (continue) and only asserts that *some* step
  succeeded; here the count grows and the call is retried from the same cursor (as
  map_in_map_batch_ops.c does since 2025), so every step is checked.
"""

from __future__ import annotations

import errno
from typing import Callable

import pytest
from conftest import HASH_TYPES, exactly_once, lru_room, skip_or_fail, type_id, u32

from libbpf_batch import Batch, BatchNotSupportedError, BpfError, Map, MapType

MakeMap = Callable[..., Map]
STEPS = list(range(1, 10))
N = 10  # every selftest map holds 10 elements


def raw_loop(
    m: Map, step: int, *, delete: bool, carry_count: bool = True
) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """The selftests' loop on the single-call API; returns (elements in order, each call's count).

    ``carry_count``: as in the htab/array/lpm selftests, the count asked for is what the
    previous call returned (they never reset it); map_in_map resets it to ``step``. ENOSPC
    (a hash bucket bigger than the count) grows the count by ``step`` and retries from the same
    cursor.
    """
    call = m.lookup_and_delete_batch if delete else m.lookup_batch
    elements: list[tuple[bytes, bytes]] = []
    counts: list[int] = []
    count, cursor = step, None
    for _ in range(10 * N):  # a bound: a loop that never ends is a failure, not a hang
        try:
            batch = call(count, cursor)
        except BpfError as e:
            if e.errno != errno.ENOSPC:
                raise
            assert e.batch.count == 0  # type: ignore[attr-defined]  # hashtab.c: total == 0
            assert count < m.max_entries, "ENOSPC with room for the whole map"
            count += step
            continue
        assert 0 <= batch.count <= count
        elements += list(batch)
        counts.append(batch.count)
        if batch.done:
            return elements, counts
        assert batch.count > 0  # a call that is not the last returns something
        cursor = batch.cursor
        count = batch.count if carry_count else step
    pytest.fail(f"no ENOENT after {10 * N} calls")


def delete_loop(m: Map, keys: list[bytes], step: int) -> list[int]:
    """The selftests' delete loop: delete_batch ``step`` keys at a time; each call's count."""
    counts = []
    total = 0
    while total < len(keys):
        chunk = keys[total : total + step]
        counts.append(m.delete_batch(chunk))
        total += len(chunk)
    return counts


def assert_empty(m: Map) -> None:
    """get_next_key(NULL) fails with ENOENT, as the selftests require after a delete."""
    assert m.next_key() is None


def generic_counts(step: int, n: int = N) -> list[int]:
    """What generic_map_lookup_batch returns per call for ``n`` elements and count ``step``.

    Full batches return 0; the call that reaches the end returns ENOENT with what is left, which
    is 0 when ``step`` divides ``n`` (get_next_key past the last key).
    """
    return [step] * (n // step) + [n % step]


def iterator_elements(batches: list[Batch]) -> list[tuple[bytes, bytes]]:
    return [pair for b in batches for pair in b]


# -- htab_map_batch_ops.c ------------------------------------------------------------------
def htab_value(m: Map, v: int) -> bytes:
    """A 4-byte value; per-CPU maps: v + cpu in each CPU's 8-byte slot (BPF_DECLARE_PERCPU)."""
    if m.is_percpu:
        return b"".join(u32(v + cpu) + bytes(4) for cpu in range(m.ncpus))
    return u32(v)


@pytest.fixture(params=HASH_TYPES, ids=type_id)
def htab(request: pytest.FixtureRequest, make_map: MakeMap) -> tuple[Map, dict[bytes, bytes]]:
    """The selftest's "hash_map": 4-byte keys and values, max_entries 10 (16 buckets), empty.

    The selftest covers HASH and PERCPU_HASH; the LRU types run it too, with room to spare
    (conftest.lru_room): an LRU map near its limit evicts, losing elements the test expects.
    """
    map_type = request.param
    max_entries = max(N, lru_room(map_type, N))
    m = make_map(map_type, 4, 4, max_entries, name="hash_map")
    expected = {u32(i + 1): htab_value(m, i + 2) for i in range(N)}  # map_batch_update()
    return m, expected


def htab_update(m: Map, expected: dict[bytes, bytes]) -> None:
    assert m.update_batch(list(expected), list(expected.values())) == N


def test_htab_empty_map_lookup_and_delete_is_done_with_nothing(htab: tuple[Map, dict]) -> None:
    m, _ = htab
    batch = m.lookup_and_delete_batch(N)
    assert (batch.count, batch.done, batch.key_list()) == (0, True, [])


def test_htab_count_zero_is_refused_and_the_map_untouched(htab: tuple[Map, dict]) -> None:
    m, expected = htab
    htab_update(m, expected)
    with pytest.raises(ValueError, match="count must be"):
        m.lookup_and_delete_batch(0)
    assert dict(m.items()) == expected


def test_htab_one_call_of_count_10_drains_all(htab: tuple[Map, dict]) -> None:
    m, expected = htab
    htab_update(m, expected)
    batch = m.lookup_and_delete_batch(N)
    assert (batch.count, batch.done) == (N, True)
    assert exactly_once(list(batch)) == expected
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_htab_lookup_loop(htab: tuple[Map, dict], step: int) -> None:
    m, expected = htab
    htab_update(m, expected)
    elements, counts = raw_loop(m, step, delete=False)
    assert exactly_once(elements) == expected
    assert sum(counts) == N
    assert dict(m.items()) == expected  # lookup deletes nothing


@pytest.mark.parametrize("step", STEPS)
def test_htab_delete_loop(htab: tuple[Map, dict], step: int) -> None:
    m, expected = htab
    htab_update(m, expected)
    elements, _ = raw_loop(m, step, delete=False)
    keys = [k for k, _ in elements]
    counts = delete_loop(m, keys, step)
    assert counts == [len(keys[i : i + step]) for i in range(0, N, step)]
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_htab_lookup_and_delete_loop(htab: tuple[Map, dict], step: int) -> None:
    m, expected = htab
    htab_update(m, expected)
    elements, counts = raw_loop(m, step, delete=True)
    assert exactly_once(elements) == expected
    assert sum(counts) == N
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_htab_batches_iterator(htab: tuple[Map, dict], step: int) -> None:
    m, expected = htab
    htab_update(m, expected)
    batches = list(m.batches(step))
    assert exactly_once(iterator_elements(batches)) == expected
    assert all(b.count > 0 for b in batches)
    assert [b.done for b in batches].count(True) <= 1
    assert dict(m.items()) == expected


@pytest.mark.parametrize("step", STEPS)
def test_htab_drain_iterator(htab: tuple[Map, dict], step: int) -> None:
    m, expected = htab
    htab_update(m, expected)
    assert exactly_once(iterator_elements(list(m.drain(step)))) == expected
    assert_empty(m)


# -- array_map_batch_ops.c -----------------------------------------------------------------
@pytest.fixture(params=[MapType.ARRAY, MapType.PERCPU_ARRAY], ids=type_id)
def array(request: pytest.FixtureRequest, make_map: MakeMap) -> tuple[Map, list]:
    """The selftest's "array_map": 4-byte keys, __s64 values, max_entries 10, keys[i] = i and
    values[i] = i + 1 (per-CPU: i + 1 + cpu on each CPU), in key order."""
    m = make_map(request.param, 4, 8, N, name="array_map")
    elements = [
        (
            u32(i),
            b"".join((i + 1 + cpu).to_bytes(8, "little", signed=True) for cpu in range(m.ncpus)),
        )
        for i in range(N)
    ]
    assert m.update_batch([k for k, _ in elements], [v for _, v in elements]) == N
    return m, elements


@pytest.mark.parametrize("step", STEPS)
def test_array_lookup_loop(array: tuple[Map, list], step: int) -> None:
    m, elements = array
    got, counts = raw_loop(m, step, delete=False)
    assert got == elements  # arrays come back in index order
    assert counts == generic_counts(step)


@pytest.mark.parametrize("step", STEPS)
def test_array_batches_iterator(array: tuple[Map, list], step: int) -> None:
    m, elements = array
    batches = list(m.batches(step))
    assert iterator_elements(batches) == elements
    assert [b.count for b in batches] == [c for c in generic_counts(step) if c]
    assert [b.done for b in batches] == [False] * (N // step) + [True] * (N % step > 0)


def test_array_lookup_and_delete_is_not_supported(array: tuple[Map, list]) -> None:
    m, elements = array
    with pytest.raises(BatchNotSupportedError) as info:
        m.lookup_and_delete_batch(N)
    assert info.value.errno == 524
    assert list(m.items()) == elements


# -- lpm_trie_map_batch_ops.c --------------------------------------------------------------
def lpm_192_168_1(i: int) -> bytes:
    """struct test_lpm_key {__u32 prefix; struct in_addr ipv4;}: 192.168.1.(i+1)/32."""
    return u32(32) + bytes([192, 168, 1, i + 1])


@pytest.fixture
def lpm(make_map: MakeMap) -> tuple[Map, dict[bytes, bytes]]:
    """The selftest's LPM_TRIE: 8-byte keys, int values, max_entries 10, NO_PREALLOC."""
    m = make_map(MapType.LPM_TRIE, 8, 4, N)
    expected = {lpm_192_168_1(i): u32(i + 1) for i in range(N)}
    assert m.update_batch(list(expected), list(expected.values())) == N
    return m, expected


@pytest.mark.parametrize("step", STEPS)
def test_lpm_trie_lookup_loop(lpm: tuple[Map, dict], step: int) -> None:
    m, expected = lpm
    elements, counts = raw_loop(m, step, delete=False)
    assert exactly_once(elements) == expected
    assert all(k[7] == v[0] for k, v in elements)  # the selftest's verify: last octet == value
    assert counts == generic_counts(step)


@pytest.mark.parametrize("step", STEPS)
def test_lpm_trie_delete_loop(lpm: tuple[Map, dict], step: int) -> None:
    m, _ = lpm
    keys = [k for k, _ in raw_loop(m, step, delete=False)[0]]
    counts = delete_loop(m, keys, step)
    assert sum(counts) == N
    assert counts == [len(keys[i : i + step]) for i in range(0, N, step)]
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_lpm_trie_batches_iterator(lpm: tuple[Map, dict], step: int) -> None:
    m, expected = lpm
    batches = list(m.batches(step))
    assert exactly_once(iterator_elements(batches)) == expected
    assert [b.count for b in batches] == [c for c in generic_counts(step) if c]


@pytest.mark.parametrize("step", STEPS)
def test_lpm_trie_drain_iterator_falls_back_to_per_key(lpm: tuple[Map, dict], step: int) -> None:
    # LPM tries have no lookup_and_delete batch op (ENOTSUPP): drain() walks per key.
    m, expected = lpm
    batches = list(m.drain(step))
    assert exactly_once(iterator_elements(batches)) == expected
    assert all(0 < b.count <= step for b in batches)
    assert_empty(m)


def test_lpm_trie_lookup_and_delete_batch_is_not_supported(lpm: tuple[Map, dict]) -> None:
    m, expected = lpm
    with pytest.raises(BatchNotSupportedError):
        m.lookup_and_delete_batch(N)
    assert dict(m.items()) == expected


# -- map_in_map_batch_ops.c ----------------------------------------------------------------
def inner_maps(make_map: MakeMap, inner_type: MapType, n: int) -> list[Map]:
    """create_inner_maps(): n one-element maps, each holding key 0 -> its own map id."""
    maps = []
    for i in range(n):
        inner = make_map(inner_type, 4, 4, 1, name=f"inner_map_fd_{i}")
        inner.update(u32(0), u32(inner.id))
        maps.append(inner)
    return maps


def outer_map(
    make_map: MakeMap, outer_type: MapType, inners: list[Map], keys: list[int]
) -> tuple[Map, dict[bytes, bytes]]:
    """The outer map (max_entries 10) with keys[i] -> inners[i], written by fd."""
    try:
        outer = make_map(outer_type, 4, 4, N, inner_map=inners[0])
    except BpfError as e:  # before 5.19 map-in-map had no batch ops, but creation works
        skip_or_fail(f"cannot create {outer_type.name}: {e}")
    assert outer.update_batch([u32(k) for k in keys], [u32(m.fd) for m in inners]) == len(keys)
    return outer, {u32(k): u32(m.id) for k, m in zip(keys, inners)}


def validate_ids(elements: list[tuple[bytes, bytes]]) -> None:
    """Each value is an inner map's id; that map (opened by id) holds key 0 -> that id."""
    for _, value in elements:
        with Map.from_id(int.from_bytes(value, "little")) as inner:
            assert inner.lookup(u32(0)) == value


INNER_TYPES = [MapType.ARRAY, MapType.HASH]
OUTER = {
    MapType.ARRAY_OF_MAPS: [9 - i for i in range(N)],
    MapType.HASH_OF_MAPS: [1000 - i for i in range(N)],
}


@pytest.fixture(
    params=[(o, i) for o in OUTER for i in INNER_TYPES],
    ids=lambda p: f"{p[0].name.lower()}-inner_{p[1].name.lower()}",
)
def map_in_map(request: pytest.FixtureRequest, make_map: MakeMap) -> tuple[Map, dict[bytes, bytes]]:
    outer_type, inner_type = request.param
    return outer_map(make_map, outer_type, inner_maps(make_map, inner_type, N), OUTER[outer_type])


@pytest.fixture(params=INNER_TYPES, ids=lambda t: f"inner_{t.name.lower()}")
def hash_of_maps(
    request: pytest.FixtureRequest, make_map: MakeMap
) -> tuple[Map, dict[bytes, bytes]]:
    inners = inner_maps(make_map, request.param, N)
    return outer_map(make_map, MapType.HASH_OF_MAPS, inners, OUTER[MapType.HASH_OF_MAPS])


@pytest.mark.parametrize("step", STEPS)
def test_map_in_map_lookup_loop(map_in_map: tuple[Map, dict], step: int) -> None:
    m, expected = map_in_map
    elements, counts = raw_loop(m, step, delete=False, carry_count=False)
    assert exactly_once(elements) == expected
    validate_ids(elements)
    assert sum(counts) == N


@pytest.mark.parametrize("step", STEPS)
def test_map_in_map_batches_iterator(map_in_map: tuple[Map, dict], step: int) -> None:
    m, expected = map_in_map
    elements = iterator_elements(list(m.batches(step)))
    assert exactly_once(elements) == expected
    validate_ids(elements)


@pytest.mark.parametrize("step", STEPS)
def test_hash_of_maps_lookup_and_delete_loop(hash_of_maps: tuple[Map, dict], step: int) -> None:
    m, expected = hash_of_maps
    elements, counts = raw_loop(m, step, delete=True, carry_count=False)
    assert exactly_once(elements) == expected
    assert sum(counts) == N
    validate_ids(elements)  # the inner maps outlive the outer's reference (we hold fds)
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_hash_of_maps_delete_loop(hash_of_maps: tuple[Map, dict], step: int) -> None:
    m, expected = hash_of_maps
    keys = [k for k, _ in raw_loop(m, step, delete=False, carry_count=False)[0]]
    assert sorted(keys) == sorted(expected)
    assert sum(delete_loop(m, keys, step)) == N
    assert_empty(m)


@pytest.mark.parametrize("step", STEPS)
def test_hash_of_maps_drain_iterator(hash_of_maps: tuple[Map, dict], step: int) -> None:
    m, expected = hash_of_maps
    assert exactly_once(iterator_elements(list(m.drain(step)))) == expected
    assert_empty(m)


@pytest.mark.parametrize("inner_type", INNER_TYPES, ids=lambda t: f"inner_{t.name.lower()}")
@pytest.mark.parametrize("step", STEPS)
def test_array_of_maps_lookup_skips_holes(
    make_map: MakeMap, inner_type: MapType, step: int
) -> None:
    # The 2025 "holes" variant: 9 inner maps at keys 9..2 and 0, slot 1 empty. Kernels
    # before 5644c6b50ffe answered EINTR here forever; a fixed kernel returns exactly 9.
    keys = [9 - i for i in range(N - 2)] + [0]
    m, expected = outer_map(
        make_map, MapType.ARRAY_OF_MAPS, inner_maps(make_map, inner_type, N - 1), keys
    )
    try:
        elements, _ = raw_loop(m, step, delete=False, carry_count=False)
    except BpfError as e:
        if e.errno == errno.EINTR:
            skip_or_fail(f"kernel without 5644c6b50ffe (lookup batch stops at holes): {e}")
        raise
    assert exactly_once(elements) == expected
    assert u32(1) not in dict(elements)
    validate_ids(elements)
