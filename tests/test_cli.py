"""The libbpf-batch command against real maps, output parsed back: cli.main in-process, or
`python -m libbpf_batch` in a child where a test needs a real process."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from bpf import fixtures
from conftest import COVERED_TYPES, fill, skip_or_fail, type_id

from libbpf_batch import Map, MapFlags, MapType, cli
from libbpf_batch.objects import BpfObject

# the shared BPF fixtures (tests/bpf/fixtures.py), assigned so pytest finds them here
counters = fixtures.counters
counters_object = fixtures.counters_object

NO_SUCH_ID = 2**32 - 1  # map ids are u32 handed out from 1 up: this one never exists here


def run(*args: object) -> subprocess.CompletedProcess[str]:
    """cli.main(args) in this process, its stdout and stderr captured; no subprocess needed."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return subprocess.CompletedProcess(
        ["libbpf-batch", *argv], status, out.getvalue(), err.getvalue()
    )


def run_process(
    *args: object, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    """`python -m libbpf_batch ARGS` in a child, for tests that need a real process."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "libbpf_batch", *map(str, args)],
        check=False,
        text=True,
        timeout=timeout,
        **kw,
    )  # type: ignore[call-overload]


def ok(*args: object) -> str:
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no progress
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], status: int) -> str:
    """The single 'libbpf-batch: ...' line an expected error prints, checked."""
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("libbpf-batch: "), proc.stderr
    return lines[0]


def unique_name() -> str:
    return "cli_" + secrets.token_hex(5)  # 14 characters: under BPF_OBJ_NAME_LEN


def unhex(items: list[str]) -> bytes:
    return bytes(int(b, 16) for b in items)


@pytest.fixture
def hash_map(make_map: Callable[..., Map]) -> tuple[Map, dict[bytes, bytes]]:
    m = make_map(MapType.HASH, 4, 8, 1024, name=unique_name())
    return m, fill(m, 300)


@pytest.fixture
def percpu_map(make_map: Callable[..., Map]) -> tuple[Map, dict[bytes, bytes]]:
    m = make_map(MapType.PERCPU_HASH, 4, 4, 64, name=unique_name())
    expected = {
        struct.pack("<I", k): b"".join(struct.pack("<I4x", k * 100 + cpu) for cpu in range(m.ncpus))
        for k in range(20)
    }
    m.update_batch(list(expected), list(expected.values()))
    return m, expected


def entries_from_json(entries: list[dict[str, object]], m: Map) -> dict[bytes, bytes]:
    """bpftool-shaped JSON back to raw entries (per-CPU: the padded value_stride bytes)."""
    out = {}
    for e in entries:
        if m.is_percpu:
            slots = e["values"]
            assert [s["cpu"] for s in slots] == list(range(m.ncpus))  # type: ignore[union-attr]
            value = b"".join(
                unhex(s["value"]).ljust(m.layout.slot, b"\0")  # type: ignore[index]
                for s in slots
            )  # type: ignore[union-attr]
        else:
            value = unhex(e["value"])  # type: ignore[arg-type]
        key = unhex(e["key"])  # type: ignore[arg-type]
        assert key not in out
        out[key] = value
    return out


# -- dump and drain: every format round-trips ----------------------------------------------
@pytest.mark.parametrize("fixture", ["hash_map", "percpu_map"])
def test_dump_json_round_trips(fixture: str, request: pytest.FixtureRequest) -> None:
    m, expected = request.getfixturevalue(fixture)
    entries = json.loads(ok("dump", "id", m.id, "--format", "json", "--batch-size", 7))
    assert entries_from_json(entries, m) == expected
    assert all("formatted" not in e for e in entries)  # no BTF, no formats: hex only
    assert dict(m.items()) == expected  # dump leaves the map alone


def test_dump_jsonl_round_trips_by_name(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, expected = hash_map
    lines = ok("dump", "name", m.name, "--format", "jsonl").splitlines()
    assert len(lines) == len(expected)
    assert entries_from_json([json.loads(line) for line in lines], m) == expected


@pytest.mark.parametrize("fixture", ["hash_map", "percpu_map"])
def test_dump_csv_round_trips(fixture: str, request: pytest.FixtureRequest) -> None:
    m, expected = request.getfixturevalue(fixture)
    rows = list(csv.DictReader(io.StringIO(ok("dump", "id", m.id, "--format", "csv"))))
    got: dict[bytes, bytes] = {}
    if m.is_percpu:
        slot = m.layout.slot
        for r in rows:
            key = bytes.fromhex(r["key"])
            assert int(r["cpu"]) == len(got.get(key, b"")) // slot
            got[key] = got.get(key, b"") + bytes.fromhex(r["value"]).ljust(slot, b"\0")
    else:
        assert [list(r) for r in rows[:1]] == [["key", "value"]]
        got = {bytes.fromhex(r["key"]): bytes.fromhex(r["value"]) for r in rows}
        assert len(got) == len(rows)
    assert got == expected


def test_dump_pinned_array_table(make_map: Callable[..., Map], bpf_fs: Path) -> None:
    m = make_map(MapType.ARRAY, 4, 4, 5, name=unique_name())
    m.update(struct.pack("<I", 3), struct.pack("<I", 0xABCD))
    pin = bpf_fs / unique_name()
    m.pin(pin)
    try:
        lines = ok("dump", "pinned", pin).splitlines()
    finally:
        pin.unlink()
    assert lines[-1] == "Found 5 elements"
    assert "key: 03 00 00 00  value: cd ab 00 00" in lines
    assert lines.count("key: 00 00 00 00  value: 00 00 00 00") == 1


def test_dump_struct_formats_decode_by_hand(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, expected = hash_map
    entries = json.loads(
        ok("dump", "id", m.id, "--format", "json", "--key-format", "<I", "--value-format", "<Q")
    )
    assert {e["formatted"]["key"]: e["formatted"]["value"] for e in entries} == {
        struct.unpack("<I", k)[0]: struct.unpack("<Q", v)[0] for k, v in expected.items()
    }
    # several fields give a list
    entries = json.loads(ok("dump", "id", m.id, "--format", "json", "--value-format", "<II"))
    assert sorted(e["formatted"]["value"] for e in entries)[:2] == [[1, 0], [2, 0]]
    table = ok("dump", "id", m.id, "--key-format", "<I", "--value-format", "<Q")
    assert "key: 41  value: 42\n" in table


def test_percpu_formatted_values_list_each_cpu(percpu_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, _ = percpu_map
    entries = json.loads(
        ok("dump", "id", m.id, "--format", "json", "--key-format", "<I", "--value-format", "<I")
    )
    for e in entries:
        k = e["formatted"]["key"]
        assert e["formatted"]["values"] == [
            {"cpu": c, "value": k * 100 + c} for c in range(m.ncpus)
        ]


def test_drain_outputs_everything_and_empties_the_map(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, expected = hash_map
    entries = json.loads(ok("drain", "id", m.id, "--format", "json", "--batch-size", 16))
    assert entries_from_json(entries, m) == expected
    assert m.next_key() is None


def test_drain_jsonl_percpu(percpu_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, expected = percpu_map
    lines = ok("drain", "id", m.id, "--format", "jsonl").splitlines()
    assert entries_from_json([json.loads(line) for line in lines], m) == expected
    assert m.next_key() is None


def test_drain_of_an_array_is_refused(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.ARRAY, 4, 8, 4, name=unique_name())
    line = one_line_error(run("drain", "id", m.id), 1)
    assert line == (
        f"libbpf-batch: drain: map {m.name!r} (id {m.id}) is an array: its "
        "elements can't be deleted; use dump"
    )


def test_unreadable_map_type_prints_nothing_but_the_error(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.QUEUE, 0, 4, 8)  # no keys to walk: refused before any syscall
    proc = run("dump", "id", m.id, "--format", "json")
    assert proc.stdout == ""
    assert one_line_error(proc, 1) == (
        f"libbpf-batch: dump: map '' (id {m.id}) is a queue: it has no keys to walk "
        "(Map.pop/peek/push in Python)"
    )


def test_empty_map_dumps_as_an_empty_list(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    assert json.loads(ok("dump", "id", m.id, "--format", "json")) == []
    assert ok("dump", "id", m.id, "--format", "jsonl") == ""
    assert ok("dump", "id", m.id) == "Found 0 elements\n"


# -- BTF: `formatted` from the map's own types ----------------------------------------------
def test_dump_formats_with_btf(counters: BpfObject) -> None:
    with counters.map("port_counts") as m:
        m.update(struct.pack("<H2x", 5353), struct.pack("<QQII", 3, 99, 33, 0))
        (entry,) = json.loads(ok("dump", "id", m.id, "--format", "json"))
        assert entry["formatted"] == {
            "key": {"port": 5353, "proto": 0, "pad": 0},
            "value": {"packets": 3, "bytes": 99, "last_len": 33, "pad": 0},
        }
        assert unhex(entry["key"]) == struct.pack("<H2x", 5353)
        table = ok("dump", "id", m.id)
        assert (
            'key: {"port":5353,"proto":0,"pad":0}  value: '
            '{"packets":3,"bytes":99,"last_len":33,"pad":0}\n'
        ) in table
        rows = list(csv.DictReader(io.StringIO(ok("dump", "id", m.id, "--format", "csv"))))
        assert json.loads(rows[0]["value_decoded"])["bytes"] == 99
        (entry,) = json.loads(ok("dump", "id", m.id, "--format", "json", "--no-btf"))
        assert "formatted" not in entry


def test_show_names_the_btf_types(counters: BpfObject) -> None:
    with counters.map("port_counts") as m:
        info = json.loads(ok("show", "id", m.id, "--format", "json"))
        assert (info["key_type"], info["value_type"]) == ("struct port_key", "struct port_stats")
        assert (
            f"btf_id {m.info.btf_id}  key_type struct port_key  value_type struct "
            "port_stats" in ok("show", "id", m.id)
        )


# -- list and show --------------------------------------------------------------------------
def test_list_includes_the_map(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, _ = hash_map
    rows = {r["id"]: r for r in json.loads(ok("list", "--format", "json"))}
    memlock = rows[m.id].pop("bytes_memlock")
    assert isinstance(memlock, int) and memlock > 0
    # bpftool -j map show's names; btf_id only when there is BTF, ncpus only when per-CPU
    assert rows[m.id] == {
        "id": m.id,
        "type": "hash",
        "name": m.name,
        "flags": 0,
        "bytes_key": 4,
        "bytes_value": 8,
        "max_entries": 1024,
        "frozen": 0,
    }
    table = ok("list").splitlines()
    assert table[0].split() == ["ID", "TYPE", "NAME", "KEY", "VALUE", "MAX_ENTRIES", "FLAGS"]
    assert any(
        line.split() == [str(m.id), "hash", m.name, "4", "8", "1024", "0x0"] for line in table
    )


def test_list_count_counts_entries(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, expected = hash_map
    rows = {r["id"]: r for r in json.loads(ok("list", "--count", "--format", "json"))}
    assert rows[m.id]["entries"] == len(expected)


def test_show_by_id_pinned_and_name_agree(
    hash_map: tuple[Map, dict[bytes, bytes]], bpf_fs: Path
) -> None:
    m, expected = hash_map
    pin = bpf_fs / unique_name()
    m.pin(pin)
    try:
        shown = [
            json.loads(ok("show", *spec, "--format", "json", "--count"))
            for spec in (("id", m.id), ("pinned", pin), ("name", m.name))
        ]
    finally:
        pin.unlink()
    assert shown[0] == shown[1] == shown[2]
    assert shown[0]["entries"] == len(expected) and shown[0]["name"] == m.name
    text = ok("show", "id", m.id).splitlines()
    assert text == [
        f"{m.id}: hash  name {m.name}  flags 0x0",
        "\tkey 4B  value 8B  max_entries 1024",
    ]


# -- errors: one line, no traceback, exit 1 or 2 ---------------------------------------------
def test_missing_map_id_is_one_line_exit_1() -> None:
    line = one_line_error(run("dump", "id", NO_SUCH_ID), 1)
    assert line == (
        f"libbpf-batch: bpf_map_get_fd_by_id: id {NO_SUCH_ID}: No such file or directory"
    )


def test_missing_pin_is_one_line_exit_1(bpf_fs: Path) -> None:
    line = one_line_error(run("show", "pinned", bpf_fs / "nothing"), 1)
    assert line == f"libbpf-batch: bpf_obj_get: '{bpf_fs / 'nothing'}': No such file or directory"


def test_unknown_name_is_one_line_exit_1(bpf: None) -> None:
    name = unique_name()
    assert one_line_error(run("show", "name", name), 1) == f"libbpf-batch: no map named {name!r}"


def test_ambiguous_name_lists_the_candidates(make_map: Callable[..., Map]) -> None:
    name = unique_name()
    a = make_map(MapType.HASH, 4, 8, 4, name=name)
    b = make_map(MapType.ARRAY, 4, 8, 4, name=name)
    line = one_line_error(run("dump", "name", name), 1)
    assert line == (
        f"libbpf-batch: map name {name!r} is ambiguous: id {a.id} (hash), "
        f"id {b.id} (array); use 'id N'"
    )


def test_without_privilege_the_error_is_one_line(bpf: None) -> None:
    # Root without the capabilities (not another uid: that one may not read this checkout).
    capsh = shutil.which("capsh")
    if capsh is None:
        skip_or_fail("capsh not found: install libcap2-bin (`make deps`)")
    proc = subprocess.run(
        [
            capsh,
            "--drop=cap_bpf,cap_sys_admin,cap_perfmon",
            "--",
            "-c",
            'exec "$0" "$@"',
            sys.executable,
            "-m",
            "libbpf_batch",
            "list",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one_line_error(proc, 1) == ("libbpf-batch: bpf_map_get_next_id: Operation not permitted")


@pytest.mark.parametrize(
    "args, message",
    [
        (["dump", "id", "abc"], "libbpf-batch: bad map id 'abc': expected a number"),
        (["dump", "id", "0"], "libbpf-batch: bad map id '0': out of range"),
        (["show", "id", str(2**32)], f"libbpf-batch: bad map id '{2**32}': out of range"),
    ],
    ids=["not-a-number", "zero", "too-big"],
)
def test_bad_map_id_is_a_usage_error(args: list[str], message: str) -> None:
    assert one_line_error(run(*args), 2) == message


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["dump", "fd", "3"], "invalid choice: 'fd'"),
        (["dump", "id"], "the following arguments are required: VALUE"),
        (["dump", "id", "1", "--format", "xml"], "invalid choice: 'xml'"),
        (["dump", "id", "1", "--value-format", "<Z"], "bad struct format '<Z'"),
        (["watch", "id", "1", "--count", "0"], "expected a positive integer"),
        (["watch", "id", "1", "--interval", "inf"], "--interval must be seconds in (0, 86400]"),
        (["watch", "id", "1", "--interval", "nan"], "--interval must be seconds in (0, 86400]"),
        (["watch", "id", "1", "--interval", "1e300"], "--interval must be seconds in (0, 86400]"),
        (["export", "id", "1", "--listen", "nowhere"], "expected HOST:PORT"),
        (["dump", "id", "1", "--workers", "-1"], "--workers: expected a number of threads"),
        (["drain", "id", "1", "--workers", "two"], "--workers: expected a number of threads"),
        (["watch", "id", "1", "--workers", "1.5"], "--workers: expected a number of threads"),
        (["export", "id", "1", "--workers", "-2"], "--workers: expected a number of threads"),
        (["dump", "id", "1", "--workers", "65536"], "--workers: expected a number of threads"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=[
        "bad-kind",
        "no-value",
        "bad-format",
        "bad-struct",
        "count-0",
        "interval-inf",
        "interval-nan",
        "interval-1e300",
        "bad-listen",
        "workers-negative",
        "workers-word",
        "workers-float",
        "workers-negative-export",
        "workers-too-many",
        "bad-command",
        "no-command",
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_format_larger_than_the_element_is_a_usage_error(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, _ = hash_map
    line = one_line_error(run("dump", "id", m.id, "--key-format", "<Q"), 2)
    assert line == "libbpf-batch: --key-format '<Q' needs 8 bytes, the map's keys have 4"


def test_main_returns_the_status_in_process(capsys: pytest.CaptureFixture[str], bpf: None) -> None:
    assert cli.main(["show", "id", str(NO_SUCH_ID)]) == 1
    assert capsys.readouterr().err == (
        f"libbpf-batch: bpf_map_get_fd_by_id: id {NO_SUCH_ID}: No such file or directory\n"
    )
    assert cli.main(["show", "id"]) == 2
    assert cli.main(["--help"]) == 0


# -- progress --------------------------------------------------------------------------------
def test_progress_goes_to_a_terminal_stderr_unless_quiet(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, _ = hash_map
    for quiet in (False, True):
        master, slave = os.openpty()
        try:
            proc = run_process(
                "dump", "id", m.id, "--format", "jsonl", *(["--quiet"] * quiet), stderr=slave
            )
            os.close(slave)
            slave = -1
            text = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                text += chunk
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        assert proc.returncode == 0
        assert len(proc.stdout.splitlines()) == 300
        assert (b"libbpf-batch: read 300 entries" in text) is not quiet


# -- watch -----------------------------------------------------------------------------------
def test_watch_once_shows_the_top_entries(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, _ = hash_map
    (snap,) = [
        json.loads(line)
        for line in ok(
            "watch", "id", m.id, "--once", "--top", 3, "--format", "json", "--key-format", "<I"
        ).splitlines()
    ]
    assert snap["entries"] == 300 and snap["map"] == {"id": m.id, "name": m.name}
    # values are key + 1: the biggest three are keys 299, 298, 297
    assert [(r["key_text"], r["fields"], r["rates"]) for r in snap["top"]] == [
        (str(k), {"value": k + 1}, {"value": None}) for k in (299, 298, 297)
    ]
    table = ok("watch", "id", m.id, "--once", "--top", 2, "--sort", "key").splitlines()
    assert table[0].startswith(f"{m.name} (id {m.id}, hash): 300 entries read at ")
    assert table[1].split() == ["KEY", "VALUE", "VALUE/s"]
    assert table[2].split() == ["00", "00", "00", "00", "1", "-"]
    assert len(table) == 4


def test_watch_drain_reports_per_interval_deltas(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, _ = hash_map
    snaps = [
        json.loads(line)
        for line in ok(
            "watch",
            "id",
            m.id,
            "--drain",
            "--count",
            2,
            "--interval",
            "0.05",
            "--format",
            "json",
            "--top",
            1,
        ).splitlines()
    ]
    assert [s["entries"] for s in snaps] == [300, 0]
    assert snaps[0]["top"][0]["fields"] == {"value": 300}
    assert m.next_key() is None


def test_watch_rates_between_reads(counters: BpfObject) -> None:
    # BTF fields, sorted by a named field, rates from two reads (0: nothing changed)
    with counters.map("port_counts") as m:
        for port, packets in ((1, 5), (2, 50), (3, 7)):
            m.update(struct.pack("<H2x", port), struct.pack("<QQII", packets, 1000 - port, 0, 0))
        snaps = [
            json.loads(line)
            for line in ok(
                "watch",
                "id",
                m.id,
                "--count",
                2,
                "--interval",
                "0.05",
                "--format",
                "json",
                "--field",
                "bytes",
            ).splitlines()
        ]
        top = snaps[1]["top"]
        assert [json.loads(r["key_text"])["port"] for r in top] == [1, 2, 3]
        assert top[0]["fields"] == {"packets": 5, "bytes": 999, "last_len": 0, "pad": 0}
        assert top[0]["rates"]["packets"] == 0.0
        line = one_line_error(run("watch", "id", m.id, "--once", "--field", "nope"), 2)
        assert line.startswith("libbpf-batch: --field 'nope': no such numeric field")


# -- export: tests/test_export.py ---------------------------------------------------------


# -- bench and the rest ----------------------------------------------------------------------
def test_bench_points_to_the_source_checkout() -> None:
    assert one_line_error(run("bench", "--quick"), 1) == (
        "libbpf-batch: bench: the benchmark lives in the source checkout: run `make bench` "
        "(or `python -m bench`) from its root"
    )


def test_version_and_help() -> None:
    from libbpf_batch import __version__
    from libbpf_batch._bindings import libbpf_version_string

    expected = f"libbpf-batch {__version__} (libbpf {libbpf_version_string()})"
    assert ok("--version").strip() == ok("-V").strip() == expected
    out = ok("--help")
    for command in ("list", "show", "dump", "drain", "watch", "export", "bench"):
        assert command in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "libbpf-batch"
    if not script.exists():
        skip_or_fail(f"{script} is missing: pip install -e . creates it")
    proc = subprocess.run(
        [str(script), "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("libbpf-batch ")


def test_output_to_a_closed_pipe_stops_with_sigpipes_status(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 8192)
    fill(m, 8192)  # ~400 KB of table: more than a pipe holds
    dump = subprocess.Popen(
        [sys.executable, "-m", "libbpf_batch", "dump", "id", str(m.id), "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert dump.stdout is not None and dump.stderr is not None
    dump.stdout.readline()
    dump.stdout.close()  # the reader goes away after one line
    deadline = time.monotonic() + 30
    while dump.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    err = dump.stderr.read().decode()
    dump.stderr.close()
    assert dump.wait(10) == 141 and err == ""  # 128 + SIGPIPE, as cat and other tools


# -- operator rough edges (issue 8, item 5) --------------------------------------------------
def _read_pty(master: int) -> bytes:
    text = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            return text
        if not chunk:
            return text
        text += chunk


def test_progress_stays_off_a_terminal_that_shows_the_data(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    # stdout and stderr on one terminal (a shell's default): progress would mix into the data
    m, _ = hash_map
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "libbpf_batch", "dump", "id", str(m.id), "--batch-size", "1"],
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        text = _read_pty(master)
        assert proc.wait(60) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    lines = text.decode().splitlines()
    assert "entries" not in text.decode() and len(lines) == 301  # 300 entries + "Found"
    assert all(line.startswith("key: ") for line in lines[:-1])


@pytest.mark.parametrize("formats", [[], ["--key-format", "<I"]], ids=["raw", "key-format"])
def test_watch_sort_key_orders_by_the_decoded_key(
    make_map: Callable[..., Map], formats: list[str]
) -> None:
    m = make_map(MapType.HASH, 4, 8, 64)
    for k in (256, 2, 1, 65536):  # little-endian bytes sort 65536 and 256 before 1 and 2
        m.update(struct.pack("<I", k), struct.pack("<Q", k))
    (snap,) = [
        json.loads(line)
        for line in ok(
            "watch", "id", m.id, "--once", "--sort", "key", "--format", "json", *formats
        ).splitlines()
    ]
    assert [r["fields"]["value"] for r in snap["top"]] == [1, 2, 256, 65536]


def test_watch_keeps_enum_fields_as_numbers(counters: BpfObject) -> None:
    from test_btf import sample

    with counters.map("samples") as m:
        m.update(struct.pack("<I", 1), sample(color=7))  # BLUE
        (snap,) = [
            json.loads(line)
            for line in ok(
                "watch", "id", m.id, "--once", "--format", "json", "--field", "color"
            ).splitlines()
        ]
        top = snap["top"][0]
        assert top["fields"]["color"] == 7 and top["fields"]["bits.c"] == -7
        assert "name" not in top["fields"]  # a char array is text, not a number


def test_watch_shows_inner_map_ids_as_ids(make_map: Callable[..., Map]) -> None:
    inner = [make_map(MapType.HASH, 4, 4, 1) for _ in range(3)]
    m = make_map(MapType.HASH_OF_MAPS, 4, 4, 8, inner_map=inner[0])
    for i, im in enumerate(inner):
        m.update(struct.pack("<I", i), im.fd)
    (snap,) = [
        json.loads(line)
        for line in ok(
            "watch", "id", m.id, "--once", "--format", "json", "--sort", "key", "--key-format", "<I"
        ).splitlines()
    ]
    assert [(r["key_text"], r["inner_map_id"], r["fields"]) for r in snap["top"]] == [
        (str(i), im.id, {}) for i, im in enumerate(inner)
    ]
    table = ok("watch", "id", m.id, "--once", "--sort", "key", "--key-format", "<I").splitlines()
    assert table[1].split() == ["KEY", "INNER_MAP_ID"]
    assert table[2].split() == ["0", str(inner[0].id)]  # no thousands separator, no rate


def test_watch_memory_holds_only_the_top_rows(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    from libbpf_batch._output import EntryFormatter
    from libbpf_batch._watch import Reader

    m, _ = hash_map
    f = EntryFormatter(m)
    once = Reader(m, f, drain=False, batch_size=7, sort="value", field=None, top=3, rates=False)
    rows, entries = once.read(None)
    assert entries == 300 and [r["fields"]["value"] for r in rows] == [300, 299, 298]
    assert once.prev == {}  # --once keeps nothing between reads
    again = Reader(m, f, drain=False, batch_size=7, sort="rate", field=None, top=2, rates=True)
    again.read(None)
    assert len(again.prev) == 300  # one raw value per key: what the next rates need
    m.update(struct.pack("<I", 5), struct.pack("<Q", 1006))  # +1000 over 0.5 s
    rows, _ = again.read(0.5)
    assert rows[0]["fields"]["value"] == 1006 and rows[0]["rates"]["value"] == 2000.0
    assert rows[1]["rates"]["value"] == 0.0


@pytest.mark.parametrize(
    "option, fmt, what, covers",
    [("--key-format", "<H", "key", 2), ("--value-format", "<I", "value", 4)],
)
def test_a_format_shorter_than_the_element_is_refused(
    hash_map: tuple[Map, dict[bytes, bytes]], option: str, fmt: str, what: str, covers: int
) -> None:
    m, _ = hash_map
    size = 4 if what == "key" else 8
    line = one_line_error(run("dump", "id", m.id, option, fmt), 2)
    assert line == (
        f"libbpf-batch: {option} {fmt!r} covers {covers} bytes, the map's {what}s have {size} "
        f"(pad with 'x' to skip bytes: {fmt + f'{size - covers}x'!r})"
    )


def test_show_without_a_map_lists_every_map(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, _ = hash_map
    shown = {r["id"]: r for r in json.loads(ok("show", "--format", "json"))}
    assert shown[m.id]["name"] == m.name and shown[m.id]["bytes_value"] == 8
    assert any(line.split()[:3] == [str(m.id), "hash", m.name] for line in ok("show").splitlines())


def test_bpftool_json_flags(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    m, expected = hash_map
    compact = ok("-j", "show", "id", m.id)
    assert compact.count("\n") == 1 and json.loads(compact)["bytes_key"] == 4
    assert json.loads(ok("show", "id", m.id, "-j")) == json.loads(compact)
    pretty = ok("-p", "show", "id", m.id)
    assert pretty.count("\n") > 5 and json.loads(pretty) == json.loads(compact)
    for args in (("-j", "dump", "id", m.id), ("dump", "id", m.id, "-p", "--batch-size", 7)):
        assert entries_from_json(json.loads(ok(*args)), m) == expected


def test_help_for_each_command_describes_it() -> None:
    assert "every entry, by batch lookup" in ok("dump", "--help")
    assert ok("help", "dump") == ok("dump", "--help")
    assert ok("help") == ok("--help")
    assert "serve maps to Prometheus" in ok("help", "export")


def test_a_pin_path_outside_a_bpffs_says_so(tmp_path: Path, bpf: None) -> None:
    path = tmp_path / "not-a-pin"
    path.write_text("")
    fs = cli.filesystem_of(str(path))
    assert fs is not None and fs != "bpf"
    line = one_line_error(run("show", "pinned", path), 1)
    assert line == (
        f"libbpf-batch: pinned {path}: not on a bpffs (it is on {fs}); maps are pinned "
        "under a bpf filesystem such as /sys/fs/bpf"
    )


# -- bpftool compatibility: the same JSON as bpftool for the same map -------------------------
def _bpftool() -> str:
    tool = shutil.which("bpftool")
    if tool is None:
        skip_or_fail("bpftool is not installed (apt-get install bpftool)")
    assert tool is not None
    return tool


def _bpftool_dump(map_id: int) -> list[dict[str, object]]:
    proc = subprocess.run(
        [_bpftool(), "-j", "map", "dump", "id", str(map_id)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    entries: list[dict[str, object]] = json.loads(proc.stdout)
    return entries


def _by_key(entries: list[dict[str, object]]) -> dict[str, object]:
    return {json.dumps(e["key"]): e for e in entries}


@pytest.mark.parametrize("name", ["port_counts", "port_packets", ".bss", "syscalls"])
def test_dump_json_matches_bpftool(counters: BpfObject, name: str) -> None:
    with counters.map(name) as m:
        if name == "port_counts":
            m.update(struct.pack("<HBx", 5353, 17), struct.pack("<QQII", 3, 99, 33, 0))
        elif name == "port_packets":
            m.update(struct.pack("<H", 53), b"".join(struct.pack("<Q", c) for c in range(m.ncpus)))
        elif name == "syscalls":  # comm: printable and NUL-terminated text, and not
            m.update(struct.pack("<II", 1, 2), struct.pack("<Q16s", 7, b"bash"))
            m.update(struct.pack("<II", 3, 4), struct.pack("<Q16s", 8, b"\xff" * 16))
        else:
            m.update(bytes(4), struct.pack("<Q", 12345))
        ours = json.loads(ok("dump", "id", m.id, "--format", "json"))
        assert _by_key(ours) == _by_key(_bpftool_dump(m.id))


def test_a_float_in_a_struct_stays_valid_json(counters: BpfObject) -> None:
    from test_btf import SAMPLE, sample

    with counters.map("samples") as m:
        raw = bytearray(sample())
        struct.pack_into("<d", raw, SAMPLE.size - 16, float("nan"))
        m.update(struct.pack("<I", 0), bytes(raw))
        m.update(struct.pack("<I", 1), sample())
        entries = json.loads(ok("dump", "id", m.id, "--format", "json"))
        ratios = [e["formatted"]["value"]["ratio"] for e in entries[:2]]
        assert ratios == ["nan", 0.25]  # bpftool writes a bare nan here: not JSON


def test_watch_sums_percpu_struct_format_values(
    percpu_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, _ = percpu_map  # key k holds k * 100 + cpu on each CPU
    (snap,) = [
        json.loads(line)
        for line in ok(
            "watch", "id", m.id, "--once", "--format", "json", "--top", 1, "--value-format", "<I"
        ).splitlines()
    ]
    assert snap["top"][0]["fields"] == {"value": sum(19 * 100 + c for c in range(m.ncpus))}


def test_csv_quotes_decoded_json_with_quotes_and_commas(counters: BpfObject) -> None:
    with counters.map("syscalls") as m:
        comms = {1: b'say "hi", ok', 2: b"plain", 3: b"\x01\x02"}
        for pid, comm in comms.items():
            m.update(struct.pack("<II", pid, 7), struct.pack("<Q16s", pid * 10, comm))
        text = ok("dump", "id", m.id, "--format", "csv", "--batch-size", 2)
        lines = text.splitlines()
        assert lines[0] == "key,value,key_decoded,value_decoded" and len(lines) == 4
        rows = list(csv.DictReader(io.StringIO(text)))
        got = {json.loads(r["key_decoded"])["pid"]: json.loads(r["value_decoded"]) for r in rows}
        assert got == {
            1: {"count": 10, "comm": 'say "hi", ok'},
            2: {"count": 20, "comm": "plain"},
            3: {"count": 30, "comm": [1, 2] + [0] * 14},
        }
        assert {bytes.fromhex(r["key"]) for r in rows} == {
            struct.pack("<II", pid, 7) for pid in comms
        }


@pytest.mark.parametrize("map_type", COVERED_TYPES, ids=type_id)
def test_dump_json_without_btf_matches_bpftool(
    make_filled: Callable[..., tuple[Map, dict[bytes, bytes]]], map_type: MapType
) -> None:
    m, _ = make_filled(map_type, 40)
    ours = json.loads(ok("dump", "id", m.id, "--format", "json", "--batch-size", 7))
    assert len(ours) == 40 and _by_key(ours) == _by_key(_bpftool_dump(m.id))


# -- --workers: the parallel walk gives the same entries --------------------------------------
def _lines(text: str, fmt: str) -> list[str]:
    """The output's entries as lines, in a fixed order: across workers the order is not
    defined. json: one entry per line between '[' and ']'."""
    lines = text.splitlines()
    if fmt == "json":
        assert lines[0].startswith("[") and lines[-1].endswith("]")
        return sorted(json.dumps(e, sort_keys=True) for e in json.loads(text))
    return sorted(lines)


@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "csv"])
@pytest.mark.parametrize("fixture", ["hash_map", "percpu_map"])
def test_dump_with_workers_writes_exactly_what_one_worker_writes(
    fixture: str, fmt: str, request: pytest.FixtureRequest
) -> None:
    m, expected = request.getfixturevalue(fixture)
    args = ["dump", "id", m.id, "--format", fmt, "--batch-size", 3]
    one = ok(*args, "--workers", 1)
    for workers in (2, 0):
        assert _lines(ok(*args, "--workers", workers), fmt) == _lines(one, fmt)
    if fmt == "jsonl":
        rows = [json.loads(line) for line in one.splitlines()]
        assert entries_from_json(rows, m) == expected  # and that is the map
    if fmt == "table":
        assert one.splitlines()[-1] == f"Found {len(expected)} elements"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
@pytest.mark.parametrize("fixture", ["hash_map", "percpu_map"])
def test_drain_with_workers_writes_exactly_what_one_worker_writes(
    fixture: str, fmt: str, request: pytest.FixtureRequest
) -> None:
    m, expected = request.getfixturevalue(fixture)
    out = {}
    for workers in (1, 2):
        m.update_batch(list(expected), list(expected.values()))
        out[workers] = ok("drain", "id", m.id, "--format", fmt, "--batch-size", 3,
                          "--workers", workers)  # fmt: skip
        assert m.next_key() is None  # every entry drained, once
    assert _lines(out[2], fmt) == _lines(out[1], fmt)
    assert len(_lines(out[1], fmt)) == len(expected) * (
        m.ncpus if fmt == "csv" and m.is_percpu else 1
    ) + (fmt == "csv")


@pytest.mark.parametrize("fixture", ["hash_map", "percpu_map"])
def test_watch_with_workers_shows_what_one_worker_shows(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    m, expected = request.getfixturevalue(fixture)

    def top(*extra: object) -> dict[str, object]:
        text = ok("watch", "id", m.id, "--once", "--format", "json", "--top", 500,
                  "--sort", "key", "--batch-size", 3, *extra)  # fmt: skip
        (snap,) = [json.loads(line) for line in text.splitlines()]
        del snap["time"]
        return snap

    one = top("--workers", 1)
    assert one["entries"] == len(expected) and len(one["top"]) == len(expected)  # type: ignore[arg-type]
    assert top("--workers", 2) == one
    drained = {}
    for workers in (1, 2):
        m.update_batch(list(expected), list(expected.values()))
        drained[workers] = top("--drain", "--workers", workers)
        assert m.next_key() is None
    assert drained[2] == drained[1] and drained[1]["entries"] == len(expected)


def test_dump_of_an_mmapable_array_reads_what_the_syscalls_read(
    make_map: Callable[..., Map],
) -> None:
    """An mmapable ARRAY is dumped through its mapping (Map.batches): the same JSON as
    bpftool's (bpf_map_get_next_key + lookup) and as this command's for a plain array."""
    n = 1000
    mapped = make_map(MapType.ARRAY, 4, 12, n, flags=MapFlags.MMAPABLE)
    plain = make_map(MapType.ARRAY, 4, 12, n)
    values = [struct.pack("<QI", i * 1_000_003, n - i) for i in range(n)]
    for m in (mapped, plain):
        m.update_batch([struct.pack("<I", i) for i in range(n)], values)
    assert mapped.is_mmapable and not plain.is_mmapable
    ours = json.loads(ok("dump", "id", mapped.id, "--format", "json", "--batch-size", 7))
    assert len(ours) == n and ours == json.loads(ok("dump", "id", plain.id, "--format", "json"))
    assert [unhex(e["value"]) for e in ours] == values
    assert _by_key(ours) == _by_key(_bpftool_dump(mapped.id))
    table = ok("dump", "id", mapped.id, "--workers", 2)  # arrays: one walk whatever --workers
    assert table == ok("dump", "id", plain.id)


@pytest.mark.parametrize(
    "command, method",
    [
        (["dump"], "batches"),
        (["drain"], "drain"),
        (["watch", "--once"], "batches"),
        (["watch", "--once", "--drain"], "drain"),
    ],
    ids=["dump", "drain", "watch", "watch-drain"],
)
def test_workers_reach_the_walk(
    hash_map: tuple[Map, dict[bytes, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    method: str,
) -> None:
    """The real walk, watched on its way: --workers N is what Map.batches/drain receive."""
    m, _ = hash_map
    seen: list[int] = []
    real = getattr(Map, method)

    def spy(self: Map, *args: object, **kw: object) -> object:
        seen.append(kw["workers"])  # type: ignore[arg-type]
        return real(self, *args, **kw)

    monkeypatch.setattr(Map, method, spy)
    ok(command[0], "id", m.id, *command[1:], "--workers", 3)
    ok(command[0], "id", m.id, *command[1:])
    assert seen == [3, 1]
