"""End to end: the example BPF programs, the exporter, and Debian's real Prometheus server.

The exporter loads examples/exporter/{syscalls,sleeplat}.bpf.o from their ebpf_exporter-style
YAML files; a child process does a known amount of work under a unique name; Prometheus
scrapes the exporter every second on loopback and the test asks its HTTP API for exact counter
values, a rate, and a histogram quantile.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpf.build import Unavailable, compile_program
from conftest import reaped, require_module, skip_or_fail

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "exporter"
YIELDS_PER_TICK, TICKS, TICK = 10, 400, 0.01  # 1000 sched_yield/s for 4 s
SLEEPS, SLEEP = 20, 0.005

# The workload: sched_yield at a steady 1000/s under one name, then short sleeps under another.
# Prints the yield phase's wall-clock end and each sleep's duration in microseconds.
WORKLOAD = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
def nanosleep(seconds):  # time.sleep is select() before Python 3.11: no nanosleep to see
    ts = timespec(int(seconds), int(seconds % 1 * 1e9))
    libc.nanosleep(ctypes.byref(ts), None)
def name(n):
    with open("/proc/self/comm", "w") as f:
        f.write(n)
yields, sleeps = sys.argv[1], sys.argv[2]
per_tick, ticks, tick, n_sleeps, sleep = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
name(yields)
start = time.monotonic()
for i in range(ticks):
    for _ in range(per_tick):
        os.sched_yield()
    delay = start + (i + 1) * tick - time.monotonic()
    if delay > 0:
        time.sleep(delay)
end = time.time()
name(sleeps)
took = []
for _ in range(n_sleeps):
    t = time.perf_counter()
    nanosleep(sleep)
    took.append((time.perf_counter() - t) * 1e6)
print(json.dumps({"yield_end": end, "sleeps_us": took}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, q: str, at: float | None = None) -> list[Any]:
        params = {"query": q} | ({"time": f"{at:.3f}"} if at is not None else {})
        out = get_json(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert out["status"] == "success", out
        return list(out["data"]["result"])

    def value(self, q: str, at: float | None = None) -> float:
        result = self.query(q, at)
        assert len(result) == 1, (q, result)
        return float(result[0]["value"][1])


@pytest.fixture
def objects(bpf: None, tmp_path: Path) -> Path:
    require_module("yaml")
    try:
        for src in EXAMPLES.glob("*.bpf.c"):
            compile_program(src, tmp_path)
    except Unavailable as e:
        skip_or_fail(str(e))
    for y in EXAMPLES.glob("*.yaml"):
        shutil.copy(y, tmp_path / y.name)
    return tmp_path


@pytest.fixture
def exporter_url(objects: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "libbpf_batch", "export", "--listen", "127.0.0.1:0",
         "--config", str(objects / "syscalls.yaml"), "--config", str(objects / "sleeplat.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with reaped(proc):
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()
        if " on http://127.0.0.1:" not in line:
            proc.kill()
            pytest.fail(f"exporter did not start: {line}{proc.stderr.read()}")
        yield line.rsplit(" ", 1)[1]


@pytest.fixture
def prometheus(tmp_path: Path, exporter_url: str) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        skip_or_fail("Debian's prometheus is not installed (apt-get install prometheus)")
        return
    target = urllib.parse.urlsplit(exporter_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: bpf\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with reaped(proc):
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("prometheus did not become ready")
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
            yield Prometheus(base)
    finally:
        log.close()


def wait_for(prom: Prometheus, q: str, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = prom.query(q)
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"no result for {q} within {timeout}s")


def test_prometheus_scrapes_exact_counts_rates_and_quantiles(
    prometheus: Prometheus, exporter_url: str
) -> None:
    tag = secrets.token_hex(4)
    yields, sleeps = f"lbbY{tag}", f"lbbS{tag}"
    wait_for(prometheus, 'up{job="bpf"} == 1')
    child = subprocess.run(
        [sys.executable, "-c", WORKLOAD, yields, sleeps, str(YIELDS_PER_TICK), str(TICKS),
         str(TICK), str(SLEEPS), str(SLEEP)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report = json.loads(child.stdout)

    # Exact: every sched_yield the child made, once the last scrape has it.
    count = f'ebpf_exporter_syscalls_total{{comm="{yields}",syscall="sched_yield"}}'
    total = YIELDS_PER_TICK * TICKS
    deadline = time.monotonic() + 30
    while prometheus.query(f"{count} == {total}") == [] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert prometheus.value(count) == total

    # rate() over the last 3 s of the steady phase: 1000/s.
    rate = prometheus.value(f"rate({count}[3s])", at=report["yield_end"])
    assert 0.65 * 1000 < rate < 1.35 * 1000, rate

    # The histogram: every sleep counted, the median in the bucket the child's own timing says.
    hist = f'ebpf_exporter_sleep_latency_seconds_count{{comm="{sleeps}"}}'
    wait_for(prometheus, f"{hist} == {SLEEPS}")
    median = prometheus.value(
        f'histogram_quantile(0.5, ebpf_exporter_sleep_latency_seconds_bucket{{comm="{sleeps}"}})'
    )
    took = sorted(report["sleeps_us"])
    k = math.ceil(math.log2(took[len(took) // 2]))  # bucket k: (2^(k-1), 2^k] microseconds
    assert 2 ** (k - 1) * 1e-6 <= median <= 2**k * 1e-6, (median, took)
    total_s = prometheus.value(f'ebpf_exporter_sleep_latency_seconds_sum{{comm="{sleeps}"}}')
    assert SLEEPS * SLEEP <= total_s <= sum(took) * 1e-6 * 1.05, (total_s, took)

    # What Prometheus scraped passes promtool's checks, and the exporter reports its programs.
    with urllib.request.urlopen(exporter_url, timeout=30) as r:
        body = r.read().decode()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    attached = prometheus.query("libbpf_batch_exporter_program_attached == 1")
    assert {r["metric"]["program"] for r in attached} == {
        "count_syscalls",
        "sleep_enter",
        "sleep_exit",
    }
