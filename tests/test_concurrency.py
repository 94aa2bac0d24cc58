"""No loss, no duplicate, no hang: drains and walks racing writers, on the real kernel.

Writers run in other threads and in another process (which opens the map by id). Every
insert, update and delete a writer makes is logged, so the assertions are exact: what was
drained, what remains and what writers deleted partition what was ever inserted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from conftest import contents, exactly_once, fill, type_id

import libbpf_batch
from libbpf_batch import Map, MapType

MakeMap = Callable[..., Map]

RACED_TYPES = [MapType.HASH, MapType.LRU_HASH, MapType.PERCPU_HASH]

# Map size for the writer races. LRU maps can evict before they are full: each CPU refills a
# private free list 128 nodes at a time (bpf_lru_list.c, LOCAL_FREE_TARGET) and every LRU
# update, even of an existing key, takes a fresh node first (hashtab.c). A race below makes
# at most ~12,000 update attempts in all, so 32,768 nodes never run short, nothing is
# evicted, and any key missing from the accounting is a real loss.
RACE_MAX_ENTRIES = 32768
INITIAL = 2000
WRITER_OPS = 3000
VALUE_SIZE = 16


def value_of(key: int, version: int) -> bytes:
    """One 16-byte slot: the version, and the version mixed with the key (torn if they differ)."""
    return struct.pack("<QQ", version, version ^ (key * 0x9E3779B97F4A7C15 & (2**64 - 1)))


def slots(m: Map, value: bytes) -> list[bytes]:
    return [value[i : i + VALUE_SIZE] for i in range(0, len(value), m.layout.slot)]


def full_value(m: Map, key: int, version: int) -> bytes:
    """The value as update() takes it: the same slot on every CPU for per-CPU maps."""
    return value_of(key, version) * m.ncpus


def version_in(key: int, slot: bytes) -> int:
    """The version a slot holds; fails when the slot is torn (its halves disagree)."""
    version, mixed = struct.unpack("<QQ", slot)
    assert mixed == version ^ (key * 0x9E3779B97F4A7C15 & (2**64 - 1)), (key, slot.hex())
    return int(version)


def k32(i: int) -> bytes:
    return i.to_bytes(4, "little")


# -- the writer: the same code in a thread and in another process ------------------------------
WRITER = r'''
import json, random, sys
from libbpf_batch import BpfNotFoundError, ElemFlags, Map


def write(m, value_of, seed, base, initial, nops):
    """Insert fresh keys (NOEXIST), update keys that may exist (EXIST), delete; log it all."""
    rng = random.Random(seed)
    inserted, deleted, updated = [], [], []
    mine, version = [], seed << 32
    for _ in range(nops):
        op = rng.random()
        if op < 0.35:
            key = base + len(inserted)
            version += 1
            m.update(key.to_bytes(4, "little"), value_of(key, version) * m.ncpus,
                     ElemFlags.NOEXIST)  # a fresh key: EEXIST would be a bug, so it raises
            inserted.append([key, version])
            mine.append(key)
        elif op < 0.8:
            key = rng.randrange(initial) if rng.random() < 0.7 or not mine else rng.choice(mine)
            version += 1
            try:
                m.update(key.to_bytes(4, "little"), value_of(key, version) * m.ncpus,
                         ElemFlags.EXIST)  # never re-creates a key a drain took
                updated.append([key, version])
            except BpfNotFoundError:
                pass
        else:
            key = rng.randrange(initial) if rng.random() < 0.7 or not mine else rng.choice(mine)
            if m.delete(key.to_bytes(4, "little")):
                deleted.append(key)
    return {"inserted": inserted, "deleted": deleted, "updated": updated}


if __name__ == "__main__":
    import struct
    map_id, seed, base, initial, nops = map(int, sys.argv[1:6])
    exec(sys.argv[6])  # value_of, shared with the test
    with Map.from_id(map_id) as m:
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        print(json.dumps(write(m, value_of, seed, base, initial, nops)), flush=True)
'''

VALUE_OF_SRC = """
def value_of(key, version):
    return struct.pack("<QQ", version, version ^ (key * 0x9E3779B97F4A7C15 & (2**64 - 1)))
"""

_writer_ns: dict[str, object] = {}
exec(WRITER.split('if __name__ == "__main__":')[0], _writer_ns)  # noqa: S102 (one writer, two homes)
write_in_thread = _writer_ns["write"]


def package_env() -> dict[str, str]:
    """Environment for a child Python that must import the same libbpf_batch as this one."""
    env = dict(os.environ)
    here = str(Path(libbpf_batch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


class WriterProcess:
    """A writer in another process, started and parked until go()."""

    def __init__(self, m: Map, seed: int, base: int, nops: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(m.id),
                str(seed),
                str(base),
                str(INITIAL),
                str(nops),
                VALUE_OF_SRC,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=package_env(),
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, list]:  # type: ignore[type-arg]
        out, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, out
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_threads(targets: list[Callable[[], object]]) -> tuple[list[threading.Thread], list[object]]:
    """Start a thread per target; results (or the exception raised) land in the list."""
    results: list[object] = [None] * len(targets)

    def run(i: int) -> None:
        try:
            results[i] = targets[i]()
        except BaseException as e:  # noqa: BLE001 (re-raised by the test)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(targets))]
    for t in threads:
        t.start()
    return threads, results


# -- drain racing writers in threads and in another process --------------------------------
@pytest.mark.parametrize("map_type", RACED_TYPES, ids=type_id)
def test_drain_racing_writers_loses_and_duplicates_nothing(
    make_map: MakeMap, map_type: MapType
) -> None:
    m = make_map(map_type, 4, VALUE_SIZE, RACE_MAX_ENTRIES)
    m.update_batch([k32(i) for i in range(INITIAL)], [full_value(m, i, 0) for i in range(INITIAL)])
    procs = [WriterProcess(m, seed=9, base=9_000_000, nops=WRITER_OPS)]
    start = threading.Event()

    def thread_writer(seed: int, base: int) -> Callable[[], object]:
        def run() -> object:
            start.wait()
            return write_in_thread(m, value_of, seed, base, INITIAL, WRITER_OPS)  # type: ignore[operator]

        return run

    threads, results = run_threads([thread_writer(1, 1_000_000), thread_writer(2, 2_000_000)])
    start.set()
    for p in procs:
        p.go()

    drained: list[tuple[bytes, bytes]] = []
    passes = 0
    while True:  # drain pass after drain pass until the writers are done; what they
        # inserted behind the last pass stays in the map
        one_pass = [(k, v) for b in m.drain(batch_size=64) for k, v in b]
        exactly_once(one_pass)  # within one drain
        drained += one_pass
        passes += 1
        if all(not t.is_alive() for t in threads) and all(p.proc.poll() is not None for p in procs):
            break
    for t in threads:
        t.join()
    logs = [r for r in results] + [p.result() for p in procs]
    for r in logs:
        if isinstance(r, BaseException):
            raise r
    remaining = contents(m)

    inserted = {k32(i): 0 for i in range(INITIAL)}
    versions: dict[bytes, set[int]] = {k: {0} for k in inserted}
    writer_deleted: list[bytes] = []
    for log in logs:
        assert isinstance(log, dict)
        for key, version in log["inserted"]:
            assert k32(key) not in inserted
            inserted[k32(key)] = version
            versions[k32(key)] = {version}
        for key, version in log["updated"]:
            versions[k32(key)].add(version)
        writer_deleted += [k32(key) for key in log["deleted"]]
    assert sum(len(log["inserted"]) for log in logs if isinstance(log, dict)) > 0
    assert passes >= 2 and drained

    drained_keys = Counter(k for k, _ in drained)
    assert max(drained_keys.values()) == 1, "a key was delivered twice"
    assert max(Counter(writer_deleted).values(), default=1) == 1
    # The partition: every key ever inserted was drained, deleted by a writer, or remains.
    assert len(drained) + len(writer_deleted) + len(remaining) == len(inserted)
    assert set(drained_keys) | set(remaining) == set(inserted) - set(writer_deleted)
    assert not set(drained_keys) & set(remaining)
    assert not set(writer_deleted) & (set(drained_keys) | set(remaining))
    # Every value seen is one a writer wrote for that key, whole (per CPU slot).
    for key, value in drained + list(remaining.items()):
        n = int.from_bytes(key, "little")
        for slot in slots(m, value):
            assert version_in(n, slot) in versions[key]


# -- two drains at once ------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False], ids=["one_map_object", "two_fds"])
@pytest.mark.parametrize("map_type", RACED_TYPES, ids=type_id)
def test_two_concurrent_drains_deliver_each_element_exactly_once(
    make_map: MakeMap, map_type: MapType, shared: bool
) -> None:
    m = make_map(map_type, 4, 8, 32768)
    expected = fill(m, 20_000)
    other = m if shared else Map.from_id(m.id)
    barrier = threading.Barrier(2)

    def drainer(mm: Map, batch_size: int) -> Callable[[], list[tuple[bytes, bytes]]]:
        def run() -> list[tuple[bytes, bytes]]:
            barrier.wait()
            return [kv for b in mm.drain(batch_size=batch_size) for kv in b]

        return run

    try:
        threads, results = run_threads([drainer(m, 32), drainer(other, 48)])
        for t in threads:
            t.join(60)
    finally:
        if not shared:
            other.close()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    together = [kv for r in results for kv in r]  # type: ignore[attr-defined]
    assert Counter(k for k, _ in together) == Counter(expected.keys())
    assert dict(together) == expected
    assert contents(m) == {}


# -- lookup-only walks under concurrent updates ------------------------------------------------
@pytest.mark.parametrize("map_type", RACED_TYPES + [MapType.ARRAY], ids=type_id)
@pytest.mark.parametrize("batch_size", [1, 7, 512])
def test_lookup_walk_under_concurrent_updates_terminates_without_duplicates(
    make_map: MakeMap, map_type: MapType, batch_size: int
) -> None:
    max_entries = 4096  # a power of two: exactly max_entries hash buckets
    m = make_map(map_type, 4, VALUE_SIZE, max_entries)
    is_array = map_type == MapType.ARRAY
    for i in range(0, max_entries, 1 if is_array else 2):
        m.update(k32(i), full_value(m, i, 0))
    stop = threading.Event()

    def writer() -> int:
        # Hash maps: keys from 3/4 of max_entries, 30% deletes, so the map never fills
        # (a full HASH refuses inserts with E2BIG).
        rng, version = random.Random(5), 0
        domain = max_entries if is_array else max_entries * 3 // 4
        while not stop.is_set():
            key = rng.randrange(domain)
            version += 1
            if not is_array and rng.random() < 0.3:
                m.delete(k32(key))
            else:
                m.update(k32(key), full_value(m, key, version))
        return version

    threads, results = run_threads([writer])
    try:
        deadline = time.monotonic() + 60
        for _ in range(3 if batch_size == 1 else 10):
            seen: list[bytes] = []
            for n, batch in enumerate(m.batches(batch_size), start=1):
                assert n <= max_entries, "more batches than max_entries"
                assert time.monotonic() < deadline, "the walk did not end"
                for key, value in batch:
                    for slot in slots(m, value):
                        version_in(int.from_bytes(key, "little"), slot)  # never torn
                    seen.append(key)
            assert len(seen) == len(set(seen)), "a key came twice in one walk"
            if is_array:
                assert len(seen) == max_entries  # array slots never vanish
    finally:
        stop.set()
        threads[0].join()
    assert isinstance(results[0], int) and results[0] > 0


# -- the GIL is released during the syscall ----------------------------------------------------
def test_another_thread_runs_during_one_long_batch_call(make_map: MakeMap) -> None:
    n = 1_000_000
    m = make_map(MapType.HASH, 4, 8, n)
    m.update_batch(struct.pack(f"<{n}I", *range(n)), bytes(8 * n))
    attempts = []
    # A loaded machine (two vCPUs shared with other work) can keep the counter thread off
    # the CPU for a whole call; holding the GIL would starve it in every attempt.
    for _ in range(5):
        during, seconds = ticks_during_one_call(m, n)
        attempts.append((during, round(seconds, 3)))
        if during >= 5:
            break
    else:
        raise AssertionError(f"no progress during the call: (ticks, seconds) = {attempts}")


def ticks_during_one_call(m: Map, n: int) -> tuple[int, float]:
    """Samples another thread took in the middle half of one lookup_batch(n); its duration."""
    ticks: list[float] = []  # one sample per 0.5 ms at most, to keep the list small
    stop = threading.Event()

    def counter() -> None:
        last = 0.0
        while not stop.is_set():
            now = time.perf_counter()
            if now - last >= 0.0005:
                ticks.append(now)
                last = now

    thread = threading.Thread(target=counter, daemon=True)
    thread.start()
    try:
        time.sleep(0.01)
        t0 = time.perf_counter()
        batch = m.lookup_batch(n)  # one bpf() call walking every bucket
        t1 = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    assert batch.count == n and batch.done
    assert t1 - t0 > 0.02, f"the call took only {t1 - t0:.3f} s; too short to tell"
    # The middle half of the call is inside the kernel (buffers are set up before it and
    # copied after it). A thread holding the GIL there would leave no samples in it.
    quarter = (t1 - t0) / 4
    return len([t for t in ticks if t0 + quarter <= t <= t1 - quarter]), t1 - t0


# -- interrupting the consumer between batches -------------------------------------------------
def _stop_consumer(how: str) -> None:
    if how == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if how == "SIGINT":
        signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt here
        raise AssertionError("SIGINT did not interrupt")
    raise RuntimeError("consumer failed")


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGINT", "RuntimeError"])
@pytest.mark.parametrize("map_type", RACED_TYPES, ids=type_id)
def test_consumer_stopping_between_batches_loses_nothing(
    make_map: MakeMap, map_type: MapType, how: str
) -> None:
    # Python's own handler, even where the runner started us with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _consumer_stops(make_map, map_type, how)
    finally:
        signal.signal(signal.SIGINT, previous)


def _consumer_stops(make_map: MakeMap, map_type: MapType, how: str) -> None:
    m = make_map(map_type, 4, 8, 8192)  # room to spare: an LRU map near full evicts
    expected = fill(m, 3000)
    delivered: dict[bytes, bytes] = {}
    it = m.drain(batch_size=100)
    with pytest.raises(KeyboardInterrupt if how != "RuntimeError" else RuntimeError):
        for n, batch in enumerate(it):
            delivered.update(list(batch))
            if n == 4:
                _stop_consumer(how)
    del it  # closes the generator, as leaving the frame would
    remaining = contents(m)
    assert 0 < len(delivered) < len(expected)
    assert not delivered.keys() & remaining.keys()
    assert {**delivered, **remaining} == expected


def test_abandoned_drain_leaves_the_rest_in_the_map(make_map: MakeMap) -> None:
    m = make_map(MapType.HASH, 4, 8, 4096)
    expected = fill(m, 3000)
    it = m.drain(batch_size=256)
    first = dict(list(next(it)))
    del it  # abandoned mid-drain: the generator is closed and collected here
    remaining = contents(m)
    assert first and {**first, **remaining} == expected
    assert len(first) + len(remaining) == len(expected)


def test_drain_of_a_closed_map_stops_instead_of_using_a_reused_fd(make_map: MakeMap) -> None:
    a = make_map(MapType.HASH, 4, 8, 64, name="first")
    fill(a, 10)
    it = a.drain(batch_size=1)
    next(it)
    a.close()
    b = make_map(MapType.HASH, 4, 8, 64, name="second")  # likely the same fd number
    expected = fill(b, 10)
    with pytest.raises(ValueError, match="'first'.* is closed"):
        next(it)
    assert contents(b) == expected
