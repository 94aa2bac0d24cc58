"""The exporter: ebpf_exporter configs, decoders, histograms, struct and per-CPU values, drain,
stale series, errors, self-metrics and the HTTP side, on real maps.

The end-to-end test against a real Prometheus server is in test_export_e2e.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from bpf.build import Unavailable, compile_program
from conftest import reaped, require_module, skip_or_fail

from libbpf_batch import Map, MapFlags, MapType, possible_cpus
from libbpf_batch.cli import _parse_listen
from libbpf_batch.exporter import decoders as dec
from libbpf_batch.exporter.config import (
    ConfigError,
    DecoderSpec,
    LabelSpec,
    MapRef,
    MetricSpec,
    parse,
)
from libbpf_batch.exporter.histogram import histogram
from libbpf_batch.exporter.server import Exporter, metrics_server, wants_openmetrics
from libbpf_batch.exporter.sources import load
from libbpf_batch.objects import BpfObject

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "exporter"

TYPED_SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
enum state { IDLE = 0, BUSY = 3 };
struct coll_value { __u64 entries; __u64 total; };
struct arr_value { __s64 delta; __u64 hits; };
struct odd_value { enum state state; __u32 n; union { __u32 a; __u16 b; } u; void *ptr; };
struct flow_key { __u32 pid; __u16 port; __u8 proto; };
struct name_key { char name[8]; };
struct odd_key { enum state state; __u32 n; void *ptr; union { __u32 a; __u16 b; } u; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, struct odd_key); __type(value, __u64); } oddkey SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, struct coll_value); } coll SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2);
         __type(key, __u32); __type(value, struct arr_value); } arr SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, struct odd_value); } odd SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 64);
         __type(key, struct flow_key); __type(value, __u64); } pcpu SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, struct name_key); __type(value, __u64); } names SEC(".maps");
"""


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture(scope="session")
def typed_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("typed")
    src = d / "typed.bpf.c"
    src.write_text(TYPED_SOURCE)
    try:
        return compile_program(src, d)
    except Unavailable as e:
        skip_or_fail(str(e))
        raise


@pytest.fixture
def typed(bpf: None, typed_object: Path) -> Iterator[BpfObject]:
    with BpfObject.open_file(typed_object) as obj:
        obj.load()
        yield obj


def spec(kind: str = "gauge", name: str = "t", **kw: Any) -> MetricSpec:
    return MetricSpec(kind=kind, name=name, help=kw.pop("help", ""), map=MapRef("id", 0), **kw)


def exporter(m: Map, s: MetricSpec, batch_size: int | None = None, **options: Any) -> Exporter:
    """An Exporter serving ``s`` over (a dup of) ``m``; close() it."""
    return Exporter(
        lambda: load(
            [], dec.DecoderSet(), batch_size=batch_size, extra=[(s, Map.from_id(m.id), options)]
        )
    )


def scrape(ex: Exporter, om: bool = False) -> str:
    return "".join(ex.scrape(om))


def samples(body: str, prefix: str = "") -> dict[str, str]:
    """{'name{labels}': 'value'} of the sample lines starting with ``prefix``."""
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#") and line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            assert name not in out, f"duplicate series {name}"
            out[name] = value
    return out


def types(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("# TYPE ")]


def promtool_clean(body: str) -> None:
    """`promtool check metrics` accepts the body without a single remark."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (apt-get install prometheus)")
        return
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


# -- config --------------------------------------------------------------------------------
def test_ebpf_exporter_biolatency_config_parses_unchanged(tmp_path: Path) -> None:
    yaml = require_module("yaml")
    doc = yaml.safe_load((EXAMPLES / "sleeplat.yaml").read_text())
    cfg = parse(doc, tmp_path / "sleeplat.yaml")
    (m,) = cfg.metrics
    assert (m.kind, m.name, m.map) == ("histogram", "sleep_latency_seconds", MapRef("name", m.name))
    assert (m.bucket_type, m.bucket_min, m.bucket_max, m.bucket_multiplier) == (
        "exp2",
        0,
        26,
        1e-6,
    )
    assert m.labels is not None and [x.name for x in m.labels] == ["comm", "bucket"]
    assert m.labels[0].decoders == (DecoderSpec("string"),)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"metrics": {"counters": [{"name": "a-b", "help": ""}]}}, "'a-b' is not a valid"),
        ({"metrics": {"counters": [{"name": "a", "colour": 1}]}}, "unknown key 'colour'"),
        ({"metrics": {}}, "no metrics"),
        (
            {"metrics": {"histograms": [{"name": "h", "bucket_type": "exp3"}]}},
            "bucket_type: expected one of",
        ),
        (
            {"metrics": {"histograms": [{"name": "h", "bucket_type": "fixed"}]}},
            "bucket_type fixed needs bucket_keys",
        ),
        (
            {"metrics": {"counters": [{"name": "c", "labels": [{"name": "x", "size": 4}]}]}},
            "decoders: expected a non-empty list",
        ),
        (
            {
                "metrics": {
                    "counters": [
                        {
                            "name": "c",
                            "labels": [{"name": "x", "size": 4, "decoders": [{"name": "rot13"}]}],
                        }
                    ]
                }
            },
            "unknown decoder 'rot13'",
        ),
        ({"metrics": {"counters": [{"name": "c", "percpu": "avg"}]}}, "percpu: expected"),
        ({"metrics": {"counters": [{"name": "c", "workers": -1}]}}, "workers: expected a number"),
        ({"metrics": {"gauges": [{"name": "g", "workers": "2"}]}}, "workers: expected a number"),
        ({"metrics": {"gauges": [{"name": "g", "workers": True}]}}, "workers: expected a number"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, doc: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse(doc, tmp_path / "x.yaml")
    assert str(e.value).startswith(str(tmp_path / "x.yaml"))


# -- decoders ------------------------------------------------------------------------------
def run_chain(data: bytes, *decoders: DecoderSpec) -> str:
    label = LabelSpec("x", len(data), 0, tuple(decoders))
    return dec.DecoderSet().label_decoder([label], len(data), "t")(data)[0]


def test_decoders_as_ebpf_exporter_has_them() -> None:
    D = DecoderSpec
    assert run_chain(struct.pack("<Q", 2**64 - 1), D("uint")) == str(2**64 - 1)
    assert run_chain(b"bash\0\0\0\0", D("string")) == "bash"
    assert run_chain(b"\x01\xab", D("hex")) == "01ab"
    smap = D("static_map", {"1": "read", "2": "write"})
    assert run_chain(u32(2), D("uint"), smap) == "write"
    assert run_chain(u32(9), D("uint"), smap) == "unknown:9"
    assert run_chain(u32(9), D("uint"), D("static_map", {"1": "r"}, allow_unknown=True)) == "9"
    assert run_chain(bytes([10, 0, 0, 1]), D("inet_ip")) == "10.0.0.1"
    assert run_chain(bytes(15) + b"\x01", D("inet_ip")) == "::1"
    assert run_chain(bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]), D("inet_ip")) == "192.0.2.7"
    assert run_chain(u32(2), D("uint"), D("errno")) == "ENOENT"
    assert run_chain(u32(0), D("uint"), D("syscall")) in ("read", "io_setup")  # x86_64, arm64
    assert run_chain(u32(99999), D("uint"), D("syscall")) == "unknown_syscall:99999"
    assert run_chain(u32(socket.if_nametoindex("lo")), D("ifname")) == "lo"
    assert run_chain(u32(2**31), D("ifname")) == f"unknown:{2**31}"
    assert run_chain(u32((4095 << 20) | 7), D("majorminor")) == "unknown:4095:7"


def test_regexp_drops_the_row_and_decode_errors_count_per_row(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 8, 8, 16)
    for comm, n in ((b"nginx\0\0\0", 1), (b"sshd\0\0\0\0", 2), (b"nginx-2\0", 3)):
        m.update(comm, struct.pack("<Q", n))
    labels = (
        LabelSpec("comm", 8, 0, (DecoderSpec("string"), DecoderSpec("regexp", regexps=("^ngi",)))),
    )
    with exporter(m, spec(labels=labels)) as ex:
        assert samples(scrape(ex), "t{") == {'t{comm="nginx"}': "1", 't{comm="nginx-2"}': "3"}
    # errno after string: 'ab' is not a number: that one row is an error, the others stay
    m.update(b"12\0\0\0\0\0\0", struct.pack("<Q", 5))
    labels = (LabelSpec("err", 8, 0, (DecoderSpec("string"), DecoderSpec("errno"))),)
    with exporter(m, spec(labels=labels)) as ex:
        body = scrape(ex)
        assert samples(body, "t{") == {'t{err="ENOMEM"}': "5"}
        assert (
            samples(body, "libbpf_batch_exporter_decode_errors_total")[
                'libbpf_batch_exporter_decode_errors_total{metric="t",map=""}'
            ]
            == "3"
        )


def test_ksym_kstack_and_cgroup_resolve_from_the_running_kernel() -> None:
    syms = dec.Kallsyms()
    if not syms.addrs or not any(syms.addrs):
        skip_or_fail("/proc/kallsyms shows no addresses (kptr_restrict); run as root")
    i = len(syms.addrs) // 2
    while syms.addrs[i] == syms.addrs[i + 1]:
        i += 1
    addr, name = syms.addrs[i], syms.names[i]
    assert run_chain(struct.pack("<Q", addr + 1), DecoderSpec("ksym")) == name
    stack = struct.pack("<QQQ", addr, addr, 0) + struct.pack("<Q", addr)
    assert run_chain(stack, DecoderSpec("kstack")) == f"{name}\n{name}"
    root = dec.cgroup2_root()
    if not os.path.isdir(root):
        skip_or_fail("no cgroup v2 hierarchy mounted")
    ino = os.stat(root).st_ino
    assert run_chain(struct.pack("<Q", ino), DecoderSpec("uint"), DecoderSpec("cgroup")) == root
    assert run_chain(struct.pack("<Q", 1), DecoderSpec("uint"), DecoderSpec("cgroup")) in (
        "unknown_cgroup_id:1",
        root,
    )


# -- histograms ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bucket_type", "extra", "want_les"),
    [
        ("exp2", {}, [1.0, 2.0, 4.0, 8.0]),
        ("exp2zero", {}, [0.0, 1.0, 2.0, 4.0]),
        ("linear", {}, [0.0, 1.0, 2.0, 3.0]),
        ("fixed", {"bucket_keys": (0.0, 1.0, 2.0, 3.0)}, [0.0, 1.0, 2.0, 3.0]),
    ],
)
def test_histogram_buckets_are_cumulative_with_gaps_filled(
    bucket_type: str, extra: dict[str, Any], want_les: list[float]
) -> None:
    s = spec(
        "histogram",
        bucket_type=bucket_type,
        bucket_min=0,
        bucket_max=3,
        bucket_multiplier=1.0,
        **extra,
    )
    bounds, total, total_sum = histogram(s, {0.0: 2, 2.0: 5, 3.0: 1, 4.0: 100, 9.0: 7})
    assert bounds == list(zip(want_les, [2, 2, 7, 8]))
    assert (total, total_sum) == (8, 100)  # key 4 (after the last bucket) is the sum


def test_percpu_histogram_summed_or_split_by_cpu(make_map: Callable[..., Map]) -> None:
    ncpus = possible_cpus()
    m = make_map(MapType.PERCPU_HASH, 8, 8, 64)
    for bucket in (0, 2, 4):  # label set 1; key 4 holds the sum
        m.update(
            struct.pack("<II", 1, bucket), b"".join(struct.pack("<Q", c + 1) for c in range(ncpus))
        )
    labels = (
        LabelSpec("set", 4, 0, (DecoderSpec("uint"),)),
        LabelSpec("bucket", 4, 0, (DecoderSpec("uint"),)),
    )
    h: dict[str, Any] = {
        "bucket_type": "exp2",
        "bucket_min": 0,
        "bucket_max": 3,
        "bucket_multiplier": 0.5,
        "labels": labels,
    }
    per_cpu_total = ncpus * (ncpus + 1) // 2
    with exporter(m, spec("histogram", "lat_seconds", **h)) as ex:
        got = samples(scrape(ex), "lat_seconds")
    assert got['lat_seconds_bucket{set="1",le="0.5"}'] == str(per_cpu_total)
    assert got['lat_seconds_bucket{set="1",le="1.0"}'] == str(per_cpu_total)  # gap filled
    assert got['lat_seconds_bucket{set="1",le="2.0"}'] == str(2 * per_cpu_total)
    assert got['lat_seconds_bucket{set="1",le="+Inf"}'] == str(2 * per_cpu_total)
    assert got['lat_seconds_count{set="1"}'] == str(2 * per_cpu_total)
    assert float(got['lat_seconds_sum{set="1"}']) == per_cpu_total * 0.5
    with exporter(m, spec("histogram", "lat_seconds", percpu="cpu", **h)) as ex:
        body = scrape(ex)
    got = samples(body, "lat_seconds")
    for cpu in range(ncpus):
        assert got[f'lat_seconds_count{{cpu="{cpu}",set="1"}}'] == str(2 * (cpu + 1))
        assert got[f'lat_seconds_bucket{{cpu="{cpu}",set="1",le="4.0"}}'] == str(2 * (cpu + 1))
    promtool_clean(body)


# -- values: struct fields, per-CPU, kinds -----------------------------------------------------
def test_struct_value_is_one_metric_per_numeric_field_with_btf_key_labels(typed: BpfObject) -> None:
    with typed.map("coll") as m:
        m.update(u32(7), struct.pack("<QQ", 10, 20))
        with exporter(m, spec("counter", "coll_total")) as ex:
            body = scrape(ex)
    assert samples(body, "coll") == {
        'coll_entries_total{key="7"}': "10",
        'coll_total{key="7"}': "20",  # field 'total' of counter coll_total: coll_total
    }
    assert types(body)[:2] == ["# TYPE coll_entries_total counter", "# TYPE coll_total counter"]
    assert len(types(body)) == len(set(types(body)))  # field 'entries' collides with nothing
    helps = [line for line in body.splitlines() if line.startswith("# HELP coll")]
    assert helps == [  # no map id: stable across program reloads
        "# HELP coll_entries_total BPF map 'coll': field entries",
        "# HELP coll_total BPF map 'coll': field total",
    ]
    promtool_clean(body)


def test_gauge_named_total_does_not_look_like_a_counter(typed: BpfObject) -> None:
    with typed.map("coll") as m:
        m.update(u32(1), struct.pack("<QQ", 1, 2))
        with exporter(m, spec("gauge", "coll")) as ex:
            body = scrape(ex)
    assert samples(body, "coll") == {'coll_entries{key="1"}': "1", 'coll_total_value{key="1"}': "2"}
    promtool_clean(body)


def test_counters_refuse_signed_fields_and_values_picks_fields(typed: BpfObject) -> None:
    with typed.map("arr") as m:
        m.update(u32(1), struct.pack("<qQ", -5, 9))
        with pytest.raises(ConfigError, match="field 'delta' is signed"):
            exporter(m, spec("counter", "arr"))
        with exporter(m, spec("counter", "arr", values=("hits",))) as ex:
            assert samples(scrape(ex), "arr") == {
                'arr_hits_total{key="0"}': "0",
                'arr_hits_total{key="1"}': "9",
            }
        with exporter(m, spec("gauge", "arr")) as ex:
            assert samples(scrape(ex), "arr_delta")['arr_delta{key="1"}'] == "-5"
        with pytest.raises(ConfigError, match="no numeric field 'nope'"):
            exporter(m, spec("gauge", "arr", values=("nope",)))


def test_enum_fields_export_their_value_unions_and_pointers_do_not(typed: BpfObject) -> None:
    with typed.map("odd") as m:
        m.update(u32(1), struct.pack("<IIIxxxxQ", 3, 4, 5, 0xFFFF0000))
        with exporter(m, spec("gauge", "odd")) as ex:
            body = scrape(ex)
    assert samples(body, "odd") == {'odd_state{key="1"}': "3", 'odd_n{key="1"}': "4"}


def test_key_labels_by_kind_enum_names_pointers_and_unions_in_hex(typed: BpfObject) -> None:
    with typed.map("oddkey") as m:
        m.update(struct.pack("<IIQIxxxx", 3, 4, 0xFFFF0000, 5), struct.pack("<Q", 6))
        m.update(struct.pack("<IIQIxxxx", 7, 8, 0, 0x10203), struct.pack("<Q", 9))
        with exporter(m, spec("gauge", "k")) as ex:
            assert ex.loaded.metrics[0].fast  # labels that tell keys apart: no aggregation
            body = scrape(ex)
        with exporter(m, spec("gauge", "k", drain=True)) as ex:  # the aggregating path
            assert not ex.loaded.metrics[0].fast
            drained = scrape(ex)
    expected = {
        'k{n="4",ptr="0xffff0000",state="BUSY",u="05000000"}': "6",
        'k{n="8",ptr="0x0",state="7",u="03020100"}': "9",  # 7: no enumerator
    }
    assert samples(body, "k{") == samples(drained, "k{") == expected
    promtool_clean(body)


def test_percpu_values_summed_or_split_by_cpu(typed: BpfObject) -> None:
    ncpus = possible_cpus()
    with typed.map("pcpu") as m:
        key = struct.pack("<IHBx", 42, 53, 17)
        m.update(key, b"".join(struct.pack("<Q", 10 * (c + 1)) for c in range(ncpus)))
        with exporter(m, spec("counter", "pkts")) as ex:
            assert samples(scrape(ex), "pkts") == {
                'pkts_total{pid="42",port="53",proto="17"}': str(5 * ncpus * (ncpus + 1))
            }
        with exporter(m, spec("counter", "pkts", percpu="cpu")) as ex:
            got = samples(scrape(ex), "pkts")
    assert got == {
        f'pkts_total{{cpu="{c}",pid="42",port="53",proto="17"}}': str(10 * (c + 1))
        for c in range(ncpus)
    }


def test_string_labels_are_escaped(typed: BpfObject) -> None:
    with typed.map("names") as m:
        m.update(b'a"b\\c\nd\0', struct.pack("<Q", 1))
        with exporter(m, spec("gauge", "n")) as ex:
            body = scrape(ex)
    assert samples(body, "n{") == {'n{name="a\\"b\\\\c\\nd"}': "1"}
    promtool_clean(body)


# -- scrape behaviour ------------------------------------------------------------------------
def test_stale_series_disappear_when_the_key_leaves_the_map(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    for i in range(3):
        m.update(u32(i), struct.pack("<Q", i))
    with exporter(m, spec("gauge", "g"), key_format="<I") as ex:
        assert set(samples(scrape(ex), "g{")) == {'g{key="0"}', 'g{key="1"}', 'g{key="2"}'}
        m.delete(u32(1))
        assert set(samples(scrape(ex), "g{")) == {'g{key="0"}', 'g{key="2"}'}


def test_drain_mode_counters_add_up_what_each_scrape_drained(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    m.update(u32(1), struct.pack("<Q", 5))
    with exporter(m, spec("counter", "d", drain=True), key_format="<I") as ex:
        assert samples(scrape(ex), "d_total") == {'d_total{key="1"}': "5"}
        assert len(list(m.keys())) == 0  # drained
        m.update(u32(1), struct.pack("<Q", 2))
        m.update(u32(2), struct.pack("<Q", 7))
        assert samples(scrape(ex), "d_total") == {'d_total{key="1"}': "7", 'd_total{key="2"}': "7"}
        assert samples(scrape(ex), "d_total") == {'d_total{key="1"}': "7", 'd_total{key="2"}': "7"}


def test_a_failed_walk_exports_nothing_for_that_map_and_counts_a_read_error(
    make_map: Callable[..., Map],
) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    m.update(u32(1), struct.pack("<Q", 5))
    with exporter(m, spec("gauge", "r"), key_format="<I") as ex:
        (metric,) = ex.loaded.metrics
        r, w = os.pipe()
        saved = os.dup(metric.map.fd)
        try:
            os.dup2(r, metric.map.fd)  # the kernel now sees a pipe: EINVAL, a real error
            body = scrape(ex)
        finally:
            os.dup2(saved, metric.map.fd)
            for fd in (r, w, saved):
                os.close(fd)
        assert samples(body, "r{") == {}
        key = '{metric="r",map=""}'
        assert samples(body)[f"libbpf_batch_exporter_read_errors_total{key}"] == "1"
        assert samples(scrape(ex), "r{") == {'r{key="1"}': "5"}  # and it recovers


def test_families_that_would_collide_are_refused(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    a = spec("histogram", "x", bucket_type="linear", bucket_min=0, bucket_max=2)
    b = spec("gauge", "x_count")
    with pytest.raises(ConfigError, match="collides with"):
        load([], dec.DecoderSet(), extra=[(a, Map.from_id(m.id), {}), (b, Map.from_id(m.id), {})])
    with pytest.raises(ConfigError, match="collides with the exporter's own"):
        load(
            [],
            dec.DecoderSet(),
            extra=[(spec("gauge", "libbpf_batch_exporter_map_entries"), Map.from_id(m.id), {})],
        )


# -- HTTP ------------------------------------------------------------------------------------
@pytest.fixture
def served(make_map: Callable[..., Map]) -> Iterator[tuple[str, Map]]:
    """An exporter of a small counter, draining, served on a loopback port."""
    m = make_map(MapType.HASH, 4, 8, 16)
    m.update(u32(3), struct.pack("<Q", 4))
    with exporter(m, spec("counter", "h_total", drain=True), key_format="<I") as ex:
        server = metrics_server(ex, "127.0.0.1", 0)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/metrics", m
        finally:
            server.shutdown()
            server.server_close()


def test_head_answers_headers_only_and_reads_nothing(served: tuple[str, Map]) -> None:
    url, m = served
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert r.read() == b""
    assert len(list(m.keys())) == 1  # HEAD did not drain


def test_openmetrics_when_asked(served: tuple[str, Map]) -> None:
    url, _ = served
    req = urllib.request.Request(
        url, headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        body = r.read().decode()
    assert body.endswith("# EOF\n")
    assert "# TYPE h counter\n" in body and 'h_total{key="3"} 4\n' in body
    assert "# TYPE libbpf_batch_exporter_build info\n" in body
    with urllib.request.urlopen(url, timeout=10) as r:
        plain = r.read().decode()
    assert "# TYPE h_total counter\n" in plain and "# EOF" not in plain
    assert not wants_openmetrics("application/openmetrics-text;q=0")


def test_colon_port_listens_on_every_interface() -> None:
    assert _parse_listen(":9435") == ("", 9435)
    assert _parse_listen("127.0.0.1:9435") == ("127.0.0.1", 9435)
    assert _parse_listen("[::1]:9435") == ("::1", 9435)
    ex = Exporter(lambda: load([], dec.DecoderSet()))
    server = metrics_server(ex, "", 0)
    try:
        assert server.server_address[0] in ("::", "0.0.0.0")
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.server_address[1]}/", timeout=10
        ) as r:
            assert b"libbpf_batch_exporter_build_info" in r.read()
        server.shutdown()
    finally:
        server.server_close()
        ex.close()


def test_self_metrics_name_the_map_and_the_libbpf_version(make_map: Callable[..., Map]) -> None:
    from libbpf_batch import __version__
    from libbpf_batch._bindings import libbpf_version_string

    m = make_map(MapType.HASH, 4, 8, 16, name="selfm")
    m.update(u32(1), struct.pack("<Q", 1))
    with exporter(m, spec("gauge", "s"), key_format="<I") as ex:
        got = samples(scrape(ex), "libbpf_batch_exporter")
    labels = '{metric="s",map="selfm"}'
    assert got[f"libbpf_batch_exporter_map_entries{labels}"] == "1"
    assert float(got[f"libbpf_batch_exporter_scrape_duration_seconds{labels}"]) > 0
    assert (
        got[
            f'libbpf_batch_exporter_build_info{{version="{__version__}",libbpf_version="{libbpf_version_string()}"}}'
        ]
        == "1"
    )


# -- the command -----------------------------------------------------------------------------
def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libbpf_batch", "export", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start(*args: object) -> tuple[subprocess.Popen[str], str]:
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
    line = proc.stderr.readline()
    if " on http://127.0.0.1:" not in line:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"export did not start: {line}{proc.stderr.read()}")
    return proc, line.strip().rsplit(" ", 1)[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def test_metric_names_are_checked_not_silently_rewritten(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    proc = cli("id", m.id, "--metric", "foo-bar")
    assert proc.returncode == 2
    assert "--metric: 'foo-bar' is not a valid Prometheus metric name" in proc.stderr


def test_cli_one_map_as_before_and_address_in_use(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16, name="cli_exp")
    for i in range(3):
        m.update(u32(i), struct.pack("<Q", i + 1))
    proc, url = start("id", m.id, "--key-format", "<I", "--max-scrapes", 2)
    with reaped(proc):
        assert samples(get(url), "bpf_map_cli_exp{") == {
            f'bpf_map_cli_exp{{key="{k}"}}': str(k + 1) for k in range(3)
        }
        m.update(u32(1), struct.pack("<Q", 1234))
        assert samples(get(url), "bpf_map_cli_exp{")['bpf_map_cli_exp{key="1"}'] == "1234"
        assert proc.wait(timeout=10) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = cli("id", m.id, "--listen", f"127.0.0.1:{port}")
    assert p.returncode == 1
    assert p.stderr.strip() == f"libbpf-batch: listen 127.0.0.1:{port}: Address already in use"


@pytest.fixture(scope="session")
def example_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/exporter/*.bpf.c compiled beside copies of their YAML files."""
    d = tmp_path_factory.mktemp("exporter-examples")
    try:
        for src in EXAMPLES.glob("*.bpf.c"):
            compile_program(src, d)
    except Unavailable as e:
        skip_or_fail(str(e))
    for y in EXAMPLES.glob("*.yaml"):
        shutil.copy(y, d / y.name)
    return d


def test_sighup_reloads_the_config_without_dropping_the_listener(
    bpf: None, example_objects: Path, tmp_path: Path
) -> None:
    require_module("yaml")
    cfg = tmp_path / "syscalls.yaml"
    shutil.copy(example_objects / "syscalls.bpf.o", tmp_path / "syscalls.bpf.o")
    cfg.write_text((example_objects / "syscalls.yaml").read_text())
    proc, url = start("--config", cfg)
    with reaped(proc):
        body = get(url)
        assert "# HELP ebpf_exporter_syscalls_total Syscalls entered" in body
        assert (
            'libbpf_batch_exporter_program_attached{config="syscalls",program="count_syscalls"} 1'
            in body
        )
        cfg.write_text(cfg.read_text().replace("Syscalls entered", "Reloaded syscalls"))
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            body = get(url)
            if 'config_reloads_total{result="success"} 1' in body:
                break
        assert "# HELP ebpf_exporter_syscalls_total Reloaded syscalls" in body
        cfg.write_text("metrics: [")  # broken: the old configuration keeps serving
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            body = get(url)
            if 'config_reloads_total{result="failure"} 1' in body:
                break
        assert "# HELP ebpf_exporter_syscalls_total Reloaded syscalls" in body
        promtool_clean(body)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_runs_with_cap_bpf_and_cap_perfmon_only(bpf: None, example_objects: Path) -> None:
    """What the example systemd unit grants: the programs attach and the maps are served."""
    require_module("yaml")
    capsh = shutil.which("capsh")
    if capsh is None:
        skip_or_fail("capsh not found: install libcap2-bin (`make deps`)")
        return
    bounding = (
        subprocess.run([capsh, "--print"], capture_output=True, text=True, check=True)
        .stdout.split("Bounding set =", 1)[1]
        .split("\n", 1)[0]
    )
    drop = ",".join(c for c in bounding.split(",") if c not in ("cap_bpf", "cap_perfmon"))
    proc = subprocess.Popen(
        [capsh, f"--drop={drop}", "--", "-c", 'exec "$0" "$@"', sys.executable, "-m",
         "libbpf_batch", "export", "--config", str(example_objects / "syscalls.yaml"),
         "--listen", "127.0.0.1:0", "--max-scrapes", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with reaped(proc):
        assert proc.stderr is not None
        lines = []
        while not lines or " on http://" not in lines[-1]:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        body = get(lines[-1].strip().rsplit(" ", 1)[1])
        assert proc.wait(timeout=30) == 0
    # proof it ran without CAP_SYS_ADMIN: the map's BTF (by id) was out of reach
    assert "no BTF without CAP_SYS_ADMIN" in "".join(lines)
    assert 'program_attached{config="syscalls",program="count_syscalls"} 1' in body
    assert re.search(
        r'^ebpf_exporter_syscalls_total\{comm="[^"]*",syscall="\w+"\} \d+$', body, re.MULTILINE
    )


def test_config_metrics_over_maps_already_loaded_by_id_pin_or_name(
    make_map: Callable[..., Map], tmp_path: Path
) -> None:
    from bpf.build import bpffs

    name = "exp_" + os.urandom(4).hex()
    m = make_map(MapType.HASH, 4, 8, 16, name=name)
    m.update(u32(1), struct.pack("<Q", 11))
    label = [{"name": "k", "size": 4, "decoders": [{"name": "uint"}]}]
    try:
        with bpffs() as fs:
            m.pin(str(fs / "m"))
            doc = {
                "metrics": {
                    "gauges": [
                        {"name": "by_id", "map": {"id": m.id}, "labels": label},
                        {"name": "by_pin", "map": {"pinned": str(fs / "m")}, "labels": label},
                        {"name": "by_name", "map": {"name": name}, "labels": label},
                    ]
                }
            }
            with Exporter(lambda: load([parse(doc, tmp_path / "x.yaml")], dec.DecoderSet(),
                                       prefix="p_")) as ex:  # fmt: skip
                got = samples(scrape(ex), "p_")
    except Unavailable as e:
        skip_or_fail(str(e))
    assert got == {'p_by_id{k="1"}': "11", 'p_by_pin{k="1"}': "11", 'p_by_name{k="1"}': "11"}
    with pytest.raises(ConfigError, match="no map named 'exp_none'"):
        load([parse({"metrics": {"gauges": [{"name": "g", "map": {"name": "exp_none"}}]}},
                    tmp_path / "x.yaml")], dec.DecoderSet())  # fmt: skip


def test_drain_mode_histograms_accumulate(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 16)
    labels = (LabelSpec("bucket", 4, 0, (DecoderSpec("uint"),)),)
    s = spec(
        "histogram", "dh", bucket_type="linear", bucket_min=0, bucket_max=1, labels=labels,
        drain=True,
    )  # fmt: skip
    with exporter(m, s) as ex:
        m.update(u32(0), struct.pack("<Q", 2))
        m.update(u32(2), struct.pack("<Q", 9))  # the sum key
        assert samples(scrape(ex), "dh_count") == {"dh_count": "2"}
        m.update(u32(1), struct.pack("<Q", 3))
        got = samples(scrape(ex), "dh")
    assert got == {
        'dh_bucket{le="0.0"}': "2",
        'dh_bucket{le="1.0"}': "5",
        'dh_bucket{le="+Inf"}': "5",
        "dh_sum": "9.0",
        "dh_count": "5",
    }
    assert list(m.keys()) == []


def test_a_client_leaving_mid_scrape_does_not_block_the_next(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 100_000)
    m.update_batch(
        b"".join(u32(i) for i in range(100_000)),
        b"".join(struct.pack("<Q", i) for i in range(100_000)),
    )
    with exporter(m, spec("gauge", "big"), key_format="<I") as ex:
        server = metrics_server(ex, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            port = server.server_address[1]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.0 200")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            body = get(f"http://127.0.0.1:{port}/metrics")  # the lock was released: it answers
            assert len(samples(body, "big{")) == 100_000
        finally:
            server.shutdown()
            server.server_close()


def test_config_without_pyyaml_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['yaml'] = None\n"  # hide it: ImportError
        "from libbpf_batch.cli import main\n"
        f"sys.exit(main(['export', '--config', {str(tmp_path / 'x.yaml')!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "libbpf-batch: --config needs PyYAML: pip install 'libbpf-batch[yaml]'"
    )


@pytest.mark.source_tree
def test_export_bench_runs_and_checks_its_own_scrape(bpf: None) -> None:
    """bench/export_bench.py at a small size: the scrape's body is checked line by line."""
    import importlib.util

    if shutil.which("gcc") is None or shutil.which("clang") is None:
        skip_or_fail("gcc and clang are needed for bench/export_bench.py")
    path = Path(__file__).resolve().parent.parent / "bench" / "export_bench.py"
    module_spec = importlib.util.spec_from_file_location("export_bench", path)
    assert module_spec is not None and module_spec.loader is not None
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)
    result = bench.run(entries=5000)
    assert result["checked"] is True
    assert result["scrape"]["fast_path"] is True and result["scrape"]["entries"] == 5000
    assert result["c_per_key_walk"]["entries"] == 5000
    assert result["histogram"]["label_sets"] == 100


def test_drain_mode_harvests_a_double_buffered_map_by_swapping(bpf: None, tmp_path: Path) -> None:
    from libbpf_batch.double_buffer import get_include

    source = Path(__file__).resolve().parent / "bpf" / "double_buffer.bpf.c"
    try:
        obj_path = compile_program(source, tmp_path, [get_include()])
    except Unavailable as e:
        skip_or_fail(str(e))
    key = struct.pack("<II", 7, 39)
    with BpfObject.open_file(obj_path) as obj:
        obj.load()
        with obj.map("db_syscalls") as outer:
            with exporter(outer, spec("counter", "dbs", drain=True)) as ex:
                (metric,) = ex.loaded.metrics
                first = metric.dbuf.current
                first.update(key, struct.pack("<Q", 5))
                assert samples(scrape(ex), "dbs") == {'dbs_count_total{nr="39",pid="7"}': "5"}
                assert metric.dbuf.current.id != first.id  # swapped: programs write the spare
                metric.dbuf.current.update(key, struct.pack("<Q", 2))
                assert samples(scrape(ex), "dbs") == {'dbs_count_total{nr="39",pid="7"}': "7"}
            with exporter(outer, spec("gauge", "now")) as ex:  # no drain: the inner map as is
                ex.loaded.metrics[0].dbuf.current.update(key, struct.pack("<Q", 3))
                assert samples(scrape(ex), "now") == {'now_count{nr="39",pid="7"}': "3"}


# -- workers: the parallel walk, per metric or from the command line -------------------------
def test_workers_key_per_metric_and_the_command_line_default(tmp_path: Path) -> None:
    doc = {"metrics": {"gauges": [{"name": "a"}, {"name": "b", "workers": 0}]}}
    assert [x.workers for x in parse(doc, tmp_path / "x.yaml").metrics] == [1, 0]
    assert [x.workers for x in parse(doc, tmp_path / "x.yaml", workers=4).metrics] == [4, 0]


def _sorted_body(body: str) -> list[str]:
    """Headers in place, each family's samples sorted: across workers the row order is not
    defined."""
    out: list[str] = []
    rows: list[str] = []
    for line in body.splitlines() + ["#"]:
        if line.startswith("#"):
            out += sorted(rows) + [line]
            rows = []
        else:
            rows.append(line)
    return out[:-1]


@pytest.mark.parametrize("drain", [False, True], ids=["read", "drain"])
@pytest.mark.parametrize("map_type", [MapType.HASH, MapType.PERCPU_HASH], ids=["hash", "percpu"])
def test_workers_2_export_exactly_what_1_exports(
    make_map: Callable[..., Map], map_type: MapType, drain: bool
) -> None:
    m = make_map(map_type, 4, 8, 4096)
    n = 3000
    keys = [u32(i) for i in range(n)]
    values = [b"".join(struct.pack("<Q", i * 10 + c) for c in range(m.ncpus)) for i in range(n)]
    kind = "counter" if drain else "gauge"
    bodies = {}
    for workers in (1, 2):
        m.update_batch(keys, values)
        split = {"percpu": "cpu"} if map_type == MapType.PERCPU_HASH else {}
        s = spec(kind, "w", drain=drain, workers=workers, **split)
        with exporter(m, s, key_format="<I", batch_size=5) as ex:
            bodies[workers] = scrape(ex).split("# HELP libbpf_batch_exporter")[0]
        assert (len(list(m.keys())) == 0) is drain
    assert _sorted_body(bodies[2]) == _sorted_body(bodies[1])
    name = "w_total" if drain else "w"
    if map_type == MapType.PERCPU_HASH:
        expected = {
            f'{name}{{cpu="{c}",key="{i}"}}': str(i * 10 + c)
            for i in range(n)
            for c in range(m.ncpus)
        }
    else:
        expected = {f'{name}{{key="{i}"}}': str(i * 10) for i in range(n)}
    assert samples(bodies[1], name + "{") == expected


def test_an_mmapable_array_exports_what_a_plain_array_does(make_map: Callable[..., Map]) -> None:
    """Read through its mapping (Map.batches), the same series as the syscalls give."""
    n = 500
    mapped = make_map(MapType.ARRAY, 4, 8, n, flags=MapFlags.MMAPABLE)
    plain = make_map(MapType.ARRAY, 4, 8, n)
    for m in (mapped, plain):
        m.update_batch([u32(i) for i in range(n)], [struct.pack("<Q", i * i) for i in range(n)])
    bodies = []
    for m in (mapped, plain):
        with exporter(m, spec("gauge", "arr", workers=2), key_format="<I") as ex:
            bodies.append(samples(scrape(ex), "arr{"))
    assert bodies[0] == bodies[1] == {f'arr{{key="{i}"}}': str(i * i) for i in range(n)}


def test_cli_workers_serve_what_one_worker_serves(make_map: Callable[..., Map]) -> None:
    m = make_map(MapType.HASH, 4, 8, 1024, name="cli_workers")
    for i in range(300):
        m.update(u32(i), struct.pack("<Q", i + 1))
    got = []
    for workers in (1, 2):
        proc, url = start("id", m.id, "--key-format", "<I", "--workers", workers,
                          "--batch-size", 7, "--max-scrapes", 1)  # fmt: skip
        with reaped(proc):
            got.append(samples(get(url), "bpf_map_cli_workers{"))
            assert proc.wait(timeout=10) == 0
    assert got[0] == got[1] == {f'bpf_map_cli_workers{{key="{k}"}}': str(k + 1) for k in range(300)}
