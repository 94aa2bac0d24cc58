"""The libbpf-batch command, run as `python -m libbpf_batch` against real maps; output parsed back."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from bpf import fixtures
from conftest import fill, reaped, require_module, skip_or_fail

from libbpf_batch import Map, MapType, cli
from libbpf_batch.objects import BpfObject

# the shared BPF fixtures (tests/bpf/fixtures.py), assigned so pytest finds them here
bpf_fs = fixtures.bpf_fs
counters = fixtures.counters
counters_object = fixtures.counters_object

NO_SUCH_ID = 2**32 - 1  # map ids are u32 handed out from 1 up: this one never exists here


def run(*args: object, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
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
    # a format shorter than the element decodes its prefix; several fields give a list
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
        f"libbpf-batch: drain: map {m.name!r} (id {m.id}) is a array: its "
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
    assert rows[m.id] == {
        "id": m.id,
        "type": "hash",
        "name": m.name,
        "key_size": 4,
        "value_size": 8,
        "max_entries": 1024,
        "flags": 0,
        "btf_id": 0,
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
        (["export", "id", "1", "--listen", "nowhere"], "expected HOST:PORT"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=[
        "bad-kind",
        "no-value",
        "bad-format",
        "bad-struct",
        "count-0",
        "bad-listen",
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
    assert cli.main(["show"]) == 2
    assert cli.main(["--help"]) == 0


# -- progress --------------------------------------------------------------------------------
def test_progress_goes_to_a_terminal_stderr_unless_quiet(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, _ = hash_map
    for quiet in (False, True):
        master, slave = os.openpty()
        try:
            proc = run(
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


# -- export ----------------------------------------------------------------------------------
def _start_export(*args: object) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "libbpf_batch",
            "export",
            *map(str, args),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # announces the address once it is listening
    match = re.search(r"on (http://127\.0\.0\.1:\d+/metrics)$", line.strip())
    if match is None:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"export did not start: {line}{proc.stderr.read()}")
    return proc, match.group(1)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_export_serves_each_entry_as_a_labelled_gauge(make_map: Callable[..., Map]) -> None:
    require_module("prometheus_client")
    m = make_map(MapType.HASH, 4, 8, 16, name=unique_name())
    fill(m, 3)
    proc, url = _start_export("id", m.id, "--key-format", "<I", "--max-scrapes", 2)
    with reaped(proc):
        metric = f"bpf_map_{m.name}"
        assert _scrape(url) == {f'{metric}{{key="{k}"}}': k + 1.0 for k in range(3)} | {
            f"{metric}_entries": 3.0
        }
        m.update(struct.pack("<I", 1), struct.pack("<Q", 1234))  # read again on each scrape
        assert _scrape(url)[f'{metric}{{key="1"}}'] == 1234.0
        assert proc.wait(timeout=10) == 0  # --max-scrapes 2: done


def test_export_btf_fields_become_metrics_and_sigterm_stops_it(counters: BpfObject) -> None:
    require_module("prometheus_client")
    with counters.map("port_counts") as m:
        m.update(struct.pack("<H2x", 53), struct.pack("<QQII", 4, 400, 100, 0))
        proc, url = _start_export("id", m.id, "--metric", "udp", "--type", "counter")
        with reaped(proc):
            got = _scrape(url)
            assert got['udp_packets_total{pad="0",port="53",proto="0"}'] == 4.0
            assert got['udp_bytes_total{pad="0",port="53",proto="0"}'] == 400.0
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def test_export_without_prometheus_client_says_what_to_install(
    hash_map: tuple[Map, dict[bytes, bytes]],
) -> None:
    m, _ = hash_map
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # hide it: ImportError
        "from libbpf_batch.cli import main\n"
        f"sys.exit(main(['export', 'id', '{m.id}']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert one_line_error(proc, 1) == (
        "libbpf-batch: export needs prometheus_client: pip install 'libbpf-batch[prometheus]'"
    )


def test_export_address_in_use_is_one_line(hash_map: tuple[Map, dict[bytes, bytes]]) -> None:
    require_module("prometheus_client")
    import socket

    m, _ = hash_map
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_line_error(run("export", "id", m.id, "--listen", f"127.0.0.1:{port}"), 1)
    assert line == f"libbpf-batch: listen 127.0.0.1:{port}: Address already in use"


# -- bench and the rest ----------------------------------------------------------------------
def test_bench_is_passed_through() -> None:
    import importlib.util

    proc = run("bench", "--help")
    if importlib.util.find_spec("libbpf_batch.bench") is None:
        assert (
            one_line_error(proc, 1) == "libbpf-batch: bench: this install has no libbpf_batch.bench"
        )
    else:
        assert proc.returncode == 0, proc.stderr
        assert "usage" in proc.stdout.lower()


def test_version_and_help() -> None:
    from libbpf_batch import __version__

    assert ok("--version").strip() == f"libbpf-batch {__version__}"
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


def test_output_to_a_closed_pipe_stops_quietly(make_map: Callable[..., Map]) -> None:
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
    assert dump.wait(10) == 1 and err == ""
