"""Double-buffered maps: exact interval harvests, on real maps and a real BPF program.

The end-to-end test counts a child's getppid() calls in place (tests/bpf/double_buffer.bpf.c)
while one thread harvests the double-buffered map and another drains a plain map the same
program writes: the double buffer must deliver exactly the number of calls made.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from bpf.build import Unavailable, compile_program
from bpf.workload import GETPPID_NR, GetppidChild
from conftest import skip_or_fail, u32, u64

from libbpf_batch import (
    BpfNotFoundError,
    DoubleBufferedMap,
    Map,
    MapFlags,
    MapType,
    _bindings,
    get_include,
    is_double_buffered,
)
from libbpf_batch.cli import main
from libbpf_batch.objects import BpfObject

SOURCE = Path(__file__).resolve().parent / "bpf" / "double_buffer.bpf.c"


@pytest.fixture(scope="session")
def double_buffer_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/bpf/double_buffer.bpf.c, compiled once per session with the shipped header."""
    try:
        return compile_program(SOURCE, tmp_path_factory.mktemp("bpf"), [get_include()])
    except Unavailable as e:
        skip_or_fail(str(e))
        raise  # unreachable: skip_or_fail raises


@pytest.fixture
def program(bpf: None, double_buffer_object: Path) -> Iterator[BpfObject]:
    """double_buffer.bpf.o loaded (not attached); unloaded after the test."""
    with BpfObject.open_file(double_buffer_object) as obj:
        obj.load()
        yield obj


@pytest.fixture
def make_outer(make_map: Callable[..., Map]) -> Callable[..., tuple[Map, Map]]:
    """make_outer(inner_type=HASH, ...) -> (one-slot ARRAY_OF_MAPS, the inner map in its slot)."""

    def make(inner_type: MapType = MapType.HASH, **kw: Any) -> tuple[Map, Map]:
        kw.setdefault("max_entries", 4096)
        inner = make_map(inner_type, name="counts", **kw)
        outer = make_map(MapType.ARRAY_OF_MAPS, 4, 4, 1, name="outer", inner_map=inner)
        outer.update(u32(0), inner)
        return outer, inner

    return make


def put(m: Map, keys: range) -> dict[bytes, bytes]:
    """Write key i -> value i * 3 for every i in ``keys``; returns what was written."""
    expected = {u32(i): u64(i * 3) for i in keys}
    m.update_batch(list(expected), list(expected.values()))
    return expected


def collect(batches: Iterator[Any]) -> dict[bytes, bytes]:
    """{key: value} from batches, failing on a key delivered twice."""
    got: dict[bytes, bytes] = {}
    for batch in batches:
        for k, v in batch:
            assert bytes(k) not in got, "delivered twice"
            got[bytes(k)] = bytes(v)
    return got


def slot_id(outer: Map) -> int:
    value = outer.lookup(u32(0))
    assert value is not None
    return int.from_bytes(value, "little")


# -- the header and the command ------------------------------------------------------------
def test_header_ships_in_the_include_dir(capsys: pytest.CaptureFixture[str]) -> None:
    header = Path(get_include()) / "libbpf_batch" / "double_buffer.bpf.h"
    assert "LBB_DOUBLE_BUFFER" in header.read_text()
    assert main(["includes"]) == 0
    assert capsys.readouterr().out == f"-I{get_include()}\n"


def test_program_declares_a_double_buffered_map(program: BpfObject) -> None:
    with program.map("db_syscalls") as outer, program.map("plain_syscalls") as plain:
        assert is_double_buffered(outer)
        assert not is_double_buffered(plain)
        with Map.from_id(slot_id(outer)) as inner:
            assert (inner.type, inner.key_size, inner.value_size, inner.max_entries) == (
                MapType.HASH,
                8,
                8,
                4096,
            )


# -- what is and is not a double-buffered map ---------------------------------------------
def test_is_double_buffered_needs_one_slot_holding_a_map(
    make_map: Callable[..., Map], make_outer: Callable[..., tuple[Map, Map]]
) -> None:
    outer, inner = make_outer()
    assert is_double_buffered(outer)
    assert not is_double_buffered(inner)
    empty = make_map(MapType.ARRAY_OF_MAPS, 4, 4, 1, inner_map=inner)
    assert not is_double_buffered(empty)
    two = make_map(MapType.ARRAY_OF_MAPS, 4, 4, 2, inner_map=inner)
    two.update(u32(0), inner)
    assert not is_double_buffered(two)
    hom = make_map(MapType.HASH_OF_MAPS, 4, 4, 1, inner_map=inner)
    hom.update(u32(0), inner)
    assert not is_double_buffered(hom)


def test_refuses_what_it_cannot_harvest(
    make_map: Callable[..., Map], make_outer: Callable[..., tuple[Map, Map]]
) -> None:
    outer, inner = make_outer()
    with pytest.raises(ValueError, match=r"map 'counts' .*is a hash with max_entries 4096"):
        DoubleBufferedMap(inner)
    two = make_map(MapType.ARRAY_OF_MAPS, 4, 4, 2, inner_map=inner)
    with pytest.raises(ValueError, match="expected a one-slot array_of_maps"):
        DoubleBufferedMap(two)
    empty = make_map(MapType.ARRAY_OF_MAPS, 4, 4, 1, inner_map=inner)
    with pytest.raises(ValueError, match="slot 0 holds no map"):
        DoubleBufferedMap(empty)
    array_outer, _ = make_outer(MapType.ARRAY, max_entries=8)
    with pytest.raises(ValueError, match="inner map is a array, whose elements can't be deleted"):
        DoubleBufferedMap(array_outer)
    with pytest.raises(TypeError, match="outer must be a Map"):
        DoubleBufferedMap(outer.fd)  # type: ignore[arg-type]


# -- the spare ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "inner_type, key_size, flags",
    [
        (MapType.HASH, 4, 0),
        (MapType.HASH, 4, MapFlags.NO_PREALLOC),
        (MapType.LRU_HASH, 4, 0),
        (MapType.PERCPU_HASH, 4, 0),
        (MapType.LPM_TRIE, 8, MapFlags.NO_PREALLOC),
    ],
    ids=["hash", "hash_no_prealloc", "lru_hash", "percpu_hash", "lpm_trie"],
)
def test_spare_has_the_inner_maps_spec(
    make_outer: Callable[..., tuple[Map, Map]], inner_type: MapType, key_size: int, flags: int
) -> None:
    outer, inner = make_outer(inner_type, key_size=key_size, value_size=8, flags=flags)
    with DoubleBufferedMap(outer) as db:
        assert list(db.harvest()) == []
        spare = db.current
        assert spare.id != inner.id and slot_id(outer) == spare.id
        assert (spare.type, spare.name, spare.key_size, spare.value_size, spare.max_entries) == (
            inner.type,
            inner.name,
            inner.key_size,
            inner.value_size,
            inner.max_entries,
        )
        assert spare.flags == inner.flags


def test_spare_has_the_inner_maps_btf_types(program: BpfObject) -> None:
    with DoubleBufferedMap.from_object(program, "db_syscalls") as db:
        first = db.current.info
        assert first.btf_id and first.btf_value_type_id
        list(db.harvest())
        spare = db.current.info
        assert spare.id != first.id
        assert (spare.btf_id, spare.btf_key_type_id, spare.btf_value_type_id) == (
            first.btf_id,
            first.btf_key_type_id,
            first.btf_value_type_id,
        )
        db.current.update(struct.pack("<II", 7, 39), u64(5))
        ((key, value),) = collect(db.harvest()).items()
        d = db.decoder()
        assert d.decode_key(key) == {"pid": 7, "nr": 39}
        assert d.decode_value(value) == {"count": 5}


# -- harvest --------------------------------------------------------------------------------
def test_harvest_yields_what_the_slot_held_and_alternates_two_maps(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    outer, inner = make_outer()
    expected = put(inner, range(1000))
    with DoubleBufferedMap(outer) as db:
        assert collect(db.harvest(batch_size=64)) == expected
        assert db.swaps == 1 and not db.pending
        assert list(inner.keys()) == []  # drained
        spare_id = slot_id(outer)
        assert spare_id not in (0, inner.id) and db.current.id == spare_id
        second = put(db.current, range(1000, 1500))
        assert collect(db.harvest()) == second
        assert slot_id(outer) == inner.id  # the drained map came back: no third map
        third = put(inner, range(7))
        assert collect(db.harvest()) == third
        assert slot_id(outer) == spare_id
        assert db.swaps == 3 and db.last_swap_seconds is not None


def test_watch_drain_harvests_a_double_buffered_map_by_swapping(
    program: BpfObject, capsys: pytest.CaptureFixture[str]
) -> None:
    def watch_once() -> dict[str, Any]:
        argv = ["watch", "id", str(outer.id), "--drain", "--once", "--format", "json"]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    key = struct.pack("<II", 7, 39)
    with program.map("db_syscalls") as outer:
        first = Map.from_id(slot_id(outer))
        with first:
            first.update(key, u64(5))
            shown = watch_once()
            assert (shown["map"]["id"], shown["entries"]) == (outer.id, 1)
            # the inner map's BTF formats it: its fields, not the outer map's map ids
            assert [(r["key_text"], r["fields"]) for r in shown["top"]] == [
                ('{"pid":7,"nr":39}', {"count": 5})
            ]
            assert slot_id(outer) != first.id  # swapped: programs now write the spare
            assert list(first.keys()) == []  # and what was swapped out was drained
        with Map.from_id(slot_id(outer)) as second:
            second.update(key, u64(2))
            assert [r["fields"] for r in watch_once()["top"]] == [{"count": 2}]
            assert list(second.keys()) == []


def test_harvest_passes_drain_arguments_through(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    outer, inner = make_outer()
    expected = put(inner, range(100))
    with DoubleBufferedMap(outer) as db:
        batches = db.harvest(batch_size=16, copy=False)
        first = next(batches)
        assert isinstance(first.keys, memoryview) and first.count <= 16
        got = first.to_dict()
        got.update(collect(batches))
        assert got == expected
        before = slot_id(outer)
        # bad arguments fail at the call, before any swap
        with pytest.raises(TypeError, match="unexpected keyword argument 'no_such'"):
            db.harvest(no_such=1)
        with pytest.raises(ValueError, match="batch_size must be at least 1"):
            db.harvest(batch_size=0)
        assert slot_id(outer) == before and db.swaps == 1


def stop_after_one_batch(batches: Iterator[Any]) -> dict[bytes, bytes]:
    got = next(batches).to_dict()
    batches.close()  # type: ignore[attr-defined]
    return got


def raise_after_one_batch(batches: Iterator[Any]) -> dict[bytes, bytes]:
    got: dict[bytes, bytes] = {}
    with pytest.raises(KeyError):
        for batch in batches:
            got.update(batch.to_dict())
            raise KeyError("the consumer failed")
    return got


def interrupt_after_one_batch(batches: Iterator[Any]) -> dict[bytes, bytes]:
    got = next(batches).to_dict()
    with pytest.raises(KeyboardInterrupt):
        batches.throw(KeyboardInterrupt)  # type: ignore[attr-defined]
    return got


@pytest.mark.parametrize(
    "stop",
    [stop_after_one_batch, raise_after_one_batch, interrupt_after_one_batch],
    ids=["close", "exception", "keyboard_interrupt"],
)
def test_interrupted_harvest_delivers_the_rest_first_next_time(
    make_outer: Callable[..., tuple[Map, Map]],
    stop: Callable[[Iterator[Any]], dict[bytes, bytes]],
) -> None:
    outer, inner = make_outer()
    first_interval = put(inner, range(1000))
    with DoubleBufferedMap(outer) as db:
        got = stop(db.harvest(batch_size=16))
        assert 0 < len(got) < 1000
        assert db.pending
        second_interval = put(db.current, range(2000, 2100))
        rest = collect(db.harvest(batch_size=16))
        assert not got.keys() & rest.keys()
        assert {**got, **rest} == {**first_interval, **second_interval}
        assert not db.pending and db.swaps == 2


def test_swap_interrupted_before_its_bookkeeping_loses_nothing(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    """A signal handled right after the kernel swapped: the next harvest finds out."""
    outer, inner = make_outer()
    first_interval = put(inner, range(300))
    swap = _bindings.bpf_map_update_elem.__code__

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is swap:

            def on_return(frame: Any, event: str, arg: Any) -> Any:
                if event == "return":
                    raise KeyboardInterrupt  # as a signal handler would, after the syscall
                return on_return

            return on_return
        return None

    with DoubleBufferedMap(outer) as db:
        old = sys.gettrace()
        sys.settrace(tracer)
        try:
            with pytest.raises(KeyboardInterrupt):
                next(db.harvest())
        finally:
            sys.settrace(old)
        assert slot_id(outer) != inner.id  # the kernel did swap
        assert db.swaps == 0  # ... and the harvester did not record it
        with Map.from_id(slot_id(outer)) as in_slot:
            second_interval = put(in_slot, range(500, 550))
        got = collect(db.harvest())
        assert got == {**first_interval, **second_interval}
        assert slot_id(outer) == inner.id


def test_close_warns_when_an_interrupted_harvest_left_elements(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    outer, inner = make_outer()
    put(inner, range(1000))
    db = DoubleBufferedMap(outer)
    got = stop_after_one_batch(db.harvest(batch_size=16))
    with pytest.warns(RuntimeWarning, match=f"closed with {1000 - len(got)} harvested elements"):
        db.close()
    assert db.closed
    db.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        db.harvest()
    assert not outer.closed and not inner.closed  # the caller's maps stay open
    assert len(collect(inner.drain())) == 1000 - len(got)  # the caller still holds this one


def test_close_after_complete_harvests_is_silent_and_frees_the_spare(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    outer, inner = make_outer()
    put(inner, range(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with DoubleBufferedMap(outer) as db:
            assert len(collect(db.harvest())) == 10
            created = db.current.id
            assert list(db.harvest()) == []
            assert slot_id(outer) == inner.id
    with pytest.raises(BpfNotFoundError):
        Map.from_id(created)  # only the DoubleBufferedMap held it


def test_slot_changed_by_someone_else_is_refused(
    make_map: Callable[..., Map], make_outer: Callable[..., tuple[Map, Map]]
) -> None:
    outer, _ = make_outer()
    other = make_map(MapType.HASH, 4, 8, 4096)
    with DoubleBufferedMap(outer) as db:
        outer.update(u32(0), other)
        with pytest.raises(RuntimeError, match=f"slot 0 holds map id {other.id}.*one harvester"):
            next(db.harvest())
        assert slot_id(outer) == other.id  # refused before swapping


# -- concurrency ----------------------------------------------------------------------------
def test_harvests_are_serialized(make_outer: Callable[..., tuple[Map, Map]]) -> None:
    outer, inner = make_outer()
    first_interval = put(inner, range(200))
    with DoubleBufferedMap(outer) as db:
        a = db.harvest(batch_size=8)
        got = next(a).to_dict()
        with pytest.raises(RuntimeError, match="this thread has an unfinished harvest"):
            next(db.harvest())
        second_interval = put(db.current, range(1000, 1010))
        results: dict[str, dict[bytes, bytes]] = {}

        def other() -> None:
            results["b"] = collect(db.harvest())

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and "b" not in results  # waiting for the first harvest
        got.update(collect(a))
        t.join(10)
        assert not t.is_alive()
        assert got == first_interval
        assert results["b"] == second_interval
        assert db.swaps == 2


# -- constructors ---------------------------------------------------------------------------
def test_opens_by_pin_and_by_id_and_keeps_the_callers_map(
    make_outer: Callable[..., tuple[Map, Map]], bpf_fs: Path
) -> None:
    outer, inner = make_outer()
    expected = put(inner, range(50))
    pin = bpf_fs / "double_buffered"
    outer.pin(pin)
    try:
        with DoubleBufferedMap.open_pinned(pin) as db:
            assert db.outer.id == outer.id
            assert collect(db.harvest()) == expected
        with DoubleBufferedMap.from_id(outer.id) as db:
            more = put(db.current, range(60, 70))
            assert collect(db.harvest()) == more
        with DoubleBufferedMap(outer) as db:
            assert db.outer.fd != outer.fd
        assert not outer.closed  # the caller's own map is not closed
        assert is_double_buffered(outer)
    finally:
        pin.unlink()


# -- end to end: a real program counting in place under load -----------------------------
def child_count(batches: Iterator[Any], key: bytes) -> int:
    """The count the program stored for ``key`` (a (pid, nr) pair), 0 if absent."""
    total = 0
    for batch in batches:
        for k, v in batch:
            if bytes(k) == key:
                total += int.from_bytes(v[:8], "little")
    return total


def test_double_buffered_harvests_count_every_increment_under_load(
    program: BpfObject, record_property: Callable[[str, object], None]
) -> None:
    if GETPPID_NR is None:
        skip_or_fail("getppid's syscall number is only known here for x86_64 and aarch64")
    calls = 1_000_000
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(program.map("target"))
        plain = stack.enter_context(program.map("plain_syscalls"))
        db = stack.enter_context(DoubleBufferedMap.from_object(program, "db_syscalls"))
        child = stack.enter_context(GetppidChild())
        target.update(u32(0), u32(child.pid))  # count only the child
        key = struct.pack("<II", child.pid, GETPPID_NR)
        stop = threading.Event()
        totals = {"db": 0, "plain": 0, "harvests_with_calls": 0, "drains": 0}
        errors: list[BaseException] = []

        def harvest_loop() -> None:
            try:
                while not stop.is_set():
                    n = child_count(db.harvest(copy=False), key)
                    totals["db"] += n
                    totals["harvests_with_calls"] += n > 0
            except BaseException as e:  # noqa: BLE001 (asserted empty by the test)
                errors.append(e)

        def drain_loop() -> None:
            try:
                while not stop.is_set():
                    totals["plain"] += child_count(plain.drain(copy=False), key)
                    totals["drains"] += 1
            except BaseException as e:  # noqa: BLE001 (asserted empty by the test)
                errors.append(e)

        with program.attach("count_syscalls"):
            threads = [threading.Thread(target=harvest_loop), threading.Thread(target=drain_loop)]
            for t in threads:
                t.start()
            try:
                child.run(calls)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
        assert not errors
        # the program is detached: one more of each collects the last interval
        totals["db"] += child_count(db.harvest(), key)
        totals["plain"] += child_count(plain.drain(), key)

    lost = calls - totals["plain"]
    print(
        f"\n{calls:,} getppid() calls: double-buffered {totals['db']:,} over {db.swaps} "
        f"swaps ({totals['harvests_with_calls']} under load); plain drain {totals['plain']:,} "
        f"over {totals['drains']:,} drains, {lost:,} lost"
    )
    record_property("plain_drain_lost", lost)
    record_property("swaps", db.swaps)
    assert totals["db"] == calls
    assert totals["harvests_with_calls"] >= 5  # the swaps really split the workload
    assert 0 <= lost <= calls  # a drain loses increments; it never invents them


# -- the example ----------------------------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "double_buffer"


def test_example_harvests_syscall_counts(bpf: None, tmp_path: Path) -> None:
    try:
        obj = compile_program(EXAMPLE / "syscount.bpf.c", tmp_path, [get_include()])
    except Unavailable as e:
        skip_or_fail(str(e))
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "harvest.py"),
            "--object",
            str(obj),
            "--count",
            "2",
            "--interval",
            "0.2",
            "--top",
            "3",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(
        r"-- harvest 1: \d+ keys, [\d,]+ syscalls in [\d.]+s \(swap [\d.]+ ms\)$", lines[0]
    )
    assert lines[1].split() == ["PID", "COMM", "NR", "CALLS", "CALLS/s"]
    assert any(line.startswith("-- harvest 2: ") for line in lines)


def test_unclosed_double_buffered_map_warns_and_closes_its_maps(
    make_outer: Callable[..., tuple[Map, Map]],
) -> None:
    outer, _ = make_outer()
    db = DoubleBufferedMap(outer)
    list(db.harvest())
    created = db.current.id
    list(db.harvest())  # the caller's inner map is back in the slot; db alone holds `created`
    with pytest.warns(ResourceWarning, match="unclosed <DoubleBufferedMap 'outer'"):  # noqa: PT031
        del db
        gc.collect()
    with pytest.raises(BpfNotFoundError):
        Map.from_id(created)
