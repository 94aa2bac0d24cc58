"""End to end: a real BPF program (tests/bpf/counters.bpf.c) writes maps from the kernel; this
library loads it through the pinned libbpf, drains the maps and must find exact counts."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bpf import fixtures
from bpf.workload import GETPPID_NR, GetppidChild, udp_traffic
from conftest import reaped, skip_or_fail

from libbpf_batch import BpfNotFoundError, MapType
from libbpf_batch.objects import BpfObject

# the shared BPF fixtures (tests/bpf/fixtures.py), assigned so pytest finds them here
counters = fixtures.counters
counters_object = fixtures.counters_object

PAYLOADS = [[10] * 7, [0, 1, 100, 1400, 65], [33] * 20]


def test_socket_filter_counts_are_drained_exactly(counters: BpfObject) -> None:
    expected = udp_traffic(counters, PAYLOADS)
    last_len = {port: 8 + sizes[-1] for port, sizes in zip(expected, PAYLOADS)}
    with counters.map("port_counts") as m:
        assert m.type == MapType.HASH
        got = {}
        for batch in m.drain(batch_size=2):  # several batches, the last one with ENOENT
            for (port, proto), (packets, nbytes, last, pad) in batch.unpack("<HBx", "<QQII"):
                assert proto == 17 and pad == 0
                assert port not in got, "drained twice"
                got[port] = (packets, nbytes, last)
        assert got == {p: (*expected[p], last_len[p]) for p in expected}
        assert m.next_key() is None  # drained: empty


def test_percpu_counts_sum_to_the_packets_sent(counters: BpfObject) -> None:
    expected = udp_traffic(counters, PAYLOADS)
    with counters.map("port_packets") as m:
        assert m.is_percpu and m.ncpus >= 1
        sums = {}
        for batch in m.drain():
            ports = [port for port, _ in batch.unpack("<H")]
            sums.update(zip(ports, batch.percpu_sums("<Q")))
        assert sums == {port: packets for port, (packets, _) in expected.items()}


def test_global_data_map_decodes_by_variable_name(counters: BpfObject) -> None:
    expected = udp_traffic(counters, PAYLOADS)
    with counters.map(".bss") as m:
        decoder = m.decoder()
        (value,) = list(m.values())
        assert decoder.decode_value(value) == {
            "total_packets": sum(p for p, _ in expected.values())
        }
        assert decoder.decode_key(b"\0" * 4) is None  # global data maps have no key type


def test_btf_names_the_fields_the_kernel_wrote(counters: BpfObject) -> None:
    expected = udp_traffic(counters, PAYLOADS[:1])
    ((port, (packets, nbytes)),) = expected.items()
    with counters.map("port_counts") as m:
        d = m.decoder()
        assert (d.key_type_name, d.value_type_name) == ("struct port_key", "struct port_stats")
        ((key, value),) = list(m.items())
        assert d.decode_key(key) == {"port": port, "proto": 17, "pad": 0}
        assert d.decode_value(value) == {
            "packets": packets,
            "bytes": nbytes,
            "last_len": 18,
            "pad": 0,
        }
    with counters.map("port_packets") as m:
        d = m.decoder()
        ((key, value),) = list(m.items())
        assert d.decode_key(key) == port
        per_cpu = d.decode_value(value)
        assert len(per_cpu) == m.ncpus and sum(per_cpu) == packets


def test_raw_tracepoint_counts_a_childs_syscalls_exactly(counters: BpfObject) -> None:
    if GETPPID_NR is None:
        skip_or_fail("getppid's syscall number is only known here for x86_64 and aarch64")
    calls = 2500
    with counters.map("syscalls") as m, GetppidChild() as child:
        comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
        with counters.attach("count_syscalls"):
            m.clear()  # whatever the child did while starting up
            child.run(calls)
        mine = {}
        for batch in m.drain():
            for (pid, nr), (count, name) in batch.unpack("<II", "<Q16s"):
                if pid == child.pid:
                    mine[nr] = (count, name.rstrip(b"\0").decode())
        assert mine[GETPPID_NR] == (calls, comm)
        # and through BTF: the same entry, with field names
        d = m.decoder()
        m.update(
            struct.pack("<II", child.pid, GETPPID_NR), struct.pack("<Q16s", calls, comm.encode())
        )
        ((key, value),) = list(m.items())
        assert d.decode_key(key) == {"pid": child.pid, "nr": GETPPID_NR}
        assert d.decode_value(value) == {"count": calls, "comm": comm}


def test_cli_drains_the_programs_map_with_formatted_fields(counters: BpfObject) -> None:
    expected = udp_traffic(counters, PAYLOADS)
    with counters.map("port_counts") as m:
        proc = subprocess.run(
            [sys.executable, "-m", "libbpf_batch", "drain", "id", str(m.id), "--format", "json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        entries = json.loads(proc.stdout)
        got = {
            e["formatted"]["key"]["port"]: (
                e["formatted"]["value"]["packets"],
                e["formatted"]["value"]["bytes"],
            )
            for e in entries
        }
        assert got == expected
        for e in entries:  # hex and formatted agree
            key = bytes(int(b, 16) for b in e["key"])
            assert struct.unpack("<HBx", key) == (e["formatted"]["key"]["port"], 17)
        assert m.next_key() is None


def test_object_errors_name_the_file_and_the_map(counters: BpfObject, tmp_path: Path) -> None:
    with pytest.raises(BpfNotFoundError, match="bpf_object__open_file: '.*nonexistent.o'"):
        BpfObject.open_file(tmp_path / "nonexistent.o")
    with pytest.raises(BpfNotFoundError, match="map 'no_such_map'"):
        counters.map("no_such_map")
    with pytest.raises(BpfNotFoundError, match="program 'no_such_prog'"):
        counters.program_fd("no_such_prog")


def test_closing_the_object_detaches_its_programs(bpf: None, counters_object: Path) -> None:
    obj = BpfObject.open_file(counters_object)
    obj.load()
    m = obj.map("port_counts")
    link = obj.attach("count_syscalls")
    obj.close()
    assert obj.closed and not link.attached
    obj.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        obj.map("port_counts")
    with m:  # the Map holds its own fd: still usable after the object is gone
        m.update(b"\1\0\21\0", bytes(24))
        assert list(m.keys()) == [b"\1\0\21\0"]


def test_pinned_program_map_is_dumped_by_path(counters: BpfObject, bpf_fs: Path) -> None:
    expected = udp_traffic(counters, PAYLOADS[:2])
    pin = bpf_fs / "e2e_port_counts"
    with counters.map("port_counts") as m:
        m.pin(pin)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "libbpf_batch", "dump", "pinned", str(pin), "--format", "jsonl"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        got = {json.loads(line)["formatted"]["key"]["port"] for line in proc.stdout.splitlines()}
        assert got == set(expected)
    finally:
        pin.unlink()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_harvest_example_prints_rates(bpf: None, counters_object: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "harvest.py"),
            "--object",
            str(counters_object),
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
    assert lines[0].startswith("-- harvest 1: ") and lines[1].split() == [
        "PID",
        "COMM",
        "NR",
        "CALLS/s",
    ]
    assert any(line.startswith("-- harvest 2: ") for line in lines)


def test_export_example_serves_syscall_counts(bpf: None, counters_object: Path) -> None:
    import re
    import urllib.request

    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "export.py"),
            "--object",
            str(counters_object),
            "--listen",
            "127.0.0.1:0",
            "--max-scrapes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(proc):
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/metrics)$", line.strip())
        assert match, line
        with urllib.request.urlopen(match.group(1), timeout=10) as r:
            text = r.read().decode()
        assert re.search(r'^bpf_syscalls_count_total\{nr="\d+",pid="\d+"\} \d+', text, re.MULTILINE)
        assert proc.wait(timeout=10) == 0
