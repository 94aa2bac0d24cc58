"""Random sequences of map operations on a real map match a Python dict, exactly.

Hypothesis draws the sequences (updates, batch updates with repeated keys, deletes, batch
deletes with missing and repeated keys, drains of any batch size, lookup_and_delete) and
shrinks a failing one to the shortest. Keys come from a small range, so sequences collide.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from conftest import exactly_once, skip_or_fail, type_id, u32, u64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libbpf_batch import BpfError, Map, MapFlags, MapType

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KEYS = st.integers(0, 47)
VALUES = st.integers(0, 2**64 - 1)
Op = tuple[Any, ...]
OPS = st.one_of(
    st.tuples(st.just("update"), KEYS, VALUES),
    st.tuples(st.just("update_batch"), st.lists(st.tuples(KEYS, VALUES), max_size=24)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("delete_batch"), st.lists(KEYS, max_size=24)),
    st.tuples(st.just("drain"), st.sampled_from([None, 1, 2, 5, 64])),
    st.tuples(st.just("lookup_and_delete"), KEYS),
)
# LRU maps can evict before they are full (per-CPU free lists are refilled 128 nodes at a
# time), so every map here has room for many times the 48 keys used: nothing is ever evicted.
MAX_ENTRIES = 1024
TYPES = [MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH]

Model = dict[bytes, bytes]


def value(m: Map, v: int) -> bytes:
    """An 8-byte value, different in every CPU slot for per-CPU maps."""
    if not m.is_percpu:
        return u64(v)
    return b"".join(u64(v ^ (cpu << 56)) for cpu in range(m.ncpus))


def contents(m: Map) -> Model:
    """The map read per key (get_next_key + lookup), apart from the batch calls under test."""
    found = {}
    key = m.next_key()
    while key is not None:
        v = m.lookup(key)
        assert v is not None
        found[key] = v
        key = m.next_key(key)
    return found


def apply(m: Map, model: Model, op: Op) -> None:
    """Run ``op`` on the map and on the model; their answers must agree."""
    name = op[0]
    if name == "update":
        m.update(u32(op[1]), value(m, op[2]))
        model[u32(op[1])] = value(m, op[2])
    elif name == "update_batch":
        pairs = [(u32(k), value(m, v)) for k, v in op[1]]
        assert m.update_batch([k for k, _ in pairs], [v for _, v in pairs]) == len(pairs)
        model.update(pairs)  # in order: a repeated key keeps its last value
    elif name == "delete":
        assert m.delete(u32(op[1])) == (model.pop(u32(op[1]), None) is not None)
    elif name == "delete_batch":
        keys = [u32(k) for k in op[1]]
        expected = sum(model.pop(k, None) is not None for k in keys)
        assert m.delete_batch(keys) == expected
    elif name == "drain":
        drained = [kv for batch in m.drain(op[1]) for kv in batch]
        assert exactly_once(drained) == model
        model.clear()
    elif name == "lookup_and_delete":
        assert m.lookup_and_delete(u32(op[1])) == model.pop(u32(op[1]), None)
    else:
        raise AssertionError(op)


@pytest.mark.parametrize("map_type", TYPES, ids=type_id)
@SETTINGS
@given(ops=st.lists(OPS, max_size=30))
def test_random_operations_match_a_dict(bpf: None, map_type: MapType, ops: list[Op]) -> None:
    with Map.create(map_type, 4, 8, MAX_ENTRIES, name="prop") as m:
        model: Model = {}
        for op in ops:
            apply(m, model, op)
        assert contents(m) == model
        assert dict(m.items(batch_size=3)) == model


FULL_OPS = st.one_of(
    st.tuples(st.just("update"), st.integers(0, 15), VALUES),
    st.tuples(
        st.just("update_batch"), st.lists(st.tuples(st.integers(0, 15), VALUES), max_size=12)
    ),
    st.tuples(st.just("delete_batch"), st.lists(st.integers(0, 15), max_size=8)),
    st.tuples(st.just("drain"), st.sampled_from([None, 1, 3])),
)


def apply_bounded(m: Map, model: Model, op: Op) -> None:
    """Like apply(), on a HASH of 8 entries: an insert into a full map is E2BIG, and an
    update_batch stops there, having applied exactly the elements before it."""
    name = op[0]
    pairs: list[tuple[bytes, bytes]] = []
    if name == "update":
        pairs = [(u32(op[1]), value(m, op[2]))]
    elif name == "update_batch":
        pairs = [(u32(k), value(m, v)) for k, v in op[1]]
    else:
        return apply(m, model, op)
    applied = 0
    for k, v in pairs:  # the model's answer: how far the batch gets
        if k not in model and len(model) >= m.max_entries:
            break
        model[k] = v
        applied += 1
    try:
        if name == "update":
            m.update(*pairs[0])
            result: int | None = 1
        else:
            result = m.update_batch([k for k, _ in pairs], [v for _, v in pairs])
    except BpfError as e:
        assert e.errno == errno.E2BIG, e
        assert applied < len(pairs)
        if name == "update_batch":
            assert e.count == applied
        return
    assert applied == len(pairs) and result == len(pairs)


@pytest.mark.parametrize("flags", [0, MapFlags.NO_PREALLOC], ids=["prealloc", "no_prealloc"])
@SETTINGS
@given(ops=st.lists(FULL_OPS, max_size=30))
def test_a_full_hash_refuses_inserts_and_matches_a_bounded_dict(
    bpf: None, flags: int, ops: list[Op]
) -> None:
    try:
        m = Map.create(MapType.HASH, 4, 8, 8, name="prop_full", flags=flags)
    except BpfError as e:
        skip_or_fail(f"cannot create the map: {e}")
    with m:
        model: Model = {}
        for op in ops:
            apply_bounded(m, model, op)
            assert len(model) <= 8
        assert contents(m) == model
