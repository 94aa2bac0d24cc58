"""The benchmark (bench/, run as `python -m bench`) at tiny sizes: its self-checks, its JSON, its
C reference, its sections.

No timing assertions: speed belongs in the benchmark's own figures, not in tests. The benchmark
is tool code in the checkout, not in the wheel: every test here is marked source_tree.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import skip_or_fail

from libbpf_batch import Map, MapType

pytestmark = pytest.mark.source_tree
ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "--entries",
    "1500",
    "--reps",
    "2",
    "--batch-size",
    "256",
    "--sweep",
    "64,1024",
    "--no-progress",
]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench package of this checkout, as `python -m bench` from its root imports it."""
    if not (ROOT / "bench" / "__init__.py").is_file():
        skip_or_fail(f"{ROOT / 'bench'} is not here (run from a checkout)")
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # after site-packages: the installed libbpf_batch wins
    for name in ("runner", "config", "c_reference", "workloads", "report", "drain"):
        importlib.import_module(f"bench.{name}")
    return importlib.import_module("bench")


@pytest.fixture(scope="module")
def c_binary(bench: ModuleType) -> Path:
    path, why = bench.c_reference.c_program()
    if path is None:
        skip_or_fail(why)
    return path


def run(bench: ModuleType, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "bench.json"
    rc = bench.runner.main([*TINY, "--sections", "drain", *extra, "--json", str(out)])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def test_quick_run_checks_every_scenario_and_writes_its_json(
    bench: ModuleType, bpf: None, c_binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, report = run(bench, tmp_path)
    assert rc == 0
    assert report["sections"] == ["drain"]
    assert set(report["machine"]) >= {"cpus", "kernel", "python", "libbpf"}
    drain = report["drain"]
    assert drain["c_reference"] is True and drain["c_note"] == ""
    assert drain["config"]["entries"] == [1500]
    rows = drain["rows"]
    assert rows and all(r["checked"] is True for r in rows)
    shapes = {r["shape"] for r in rows}
    assert shapes == {"hash 4/8", "hash 16/64", "percpu_hash 4/8"}
    main = [r for r in rows if not r["sweep"]]
    impls = {(r["shape"], r["op"], r["impl"]) for r in main}
    numpy_rows = ["py_numpy"] if drain["numpy"] else []
    for shape in shapes:
        for op in ("lookup", "drain"):
            for impl in [
                "c_batch",
                "c_key",
                "py_key",
                "py_view",
                "py_copy",
                "py_pairs",
                "py_unpack",
                *numpy_rows,
            ]:
                assert (shape, op, impl) in impls
        assert (shape, "drain", "py_key_lib") in impls
        for impl in ("c_batch", "c_key", "py_key", "py_batch"):
            assert (shape, "fill", impl) in impls
    for r in rows:
        samples = r["ns_per_entry"]
        assert samples and all(x > 0 for x in samples)
        assert r["min_ns"] <= r["median_ns"] <= r["max_ns"]
        assert r["entries_per_s"] > 0
        assert r["ratio_to_c_batch"] is not None  # every row has its C batch reference
        if r["impl"] == "c_batch":
            assert r["ratio_to_c_batch"] == 1.0
    batch_rows = [r for r in main if r["op"] != "fill" and r["impl"] in ("c_batch", "py_view")]
    assert all(len(r["ns_per_entry"]) == 2 for r in batch_rows)  # --reps 2
    drains = [r for r in main if r["op"] == "drain" and r["impl"] in bench.config.BATCH_MODES]
    assert all(r["tracemalloc_peak_bytes"] is not None for r in drains)
    sweep = [r for r in rows if r["sweep"]]
    assert {(r["impl"], r["batch_size"]) for r in sweep} == {
        (impl, size) for impl in ("c_batch", "py_view") for size in (64, 1024)
    }
    text = capsys.readouterr().out
    assert "hash 4/8, 1,500 entries" in text and "C batch" in text


def test_targets_are_reported_for_the_target_map(
    bench: ModuleType, bpf: None, c_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.config, "TARGET_ENTRIES", 1500)
    rc, report = run(bench, tmp_path, "--shapes", "hash:4:8", "--batch-size", "4096", "--sweep", "")
    assert rc == 0
    targets = report["drain"]["targets"]
    assert {t["impl"] for t in targets} >= {"py_view", "py_copy", "py_pairs", "py_batch"}
    for t in targets:
        assert isinstance(t["met"], bool)
        assert (t["ratio"] is None) == ("bytes" in t)


def test_python_only_when_the_c_source_is_not_there(
    bench: ModuleType,
    bpf: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(bench.c_reference, "C_SOURCE", tmp_path / "missing" / "c_drain.c")
    rc, whole = run(
        bench,
        tmp_path,
        "--shapes",
        "hash:4:8",
        "--per-key-reps",
        "0",
        "--sweep",
        "",
        "--no-tracemalloc",
    )
    assert rc == 0
    report = whole["drain"]
    assert report["c_reference"] is False
    assert "c_drain.c is not here" in report["c_note"]
    assert "without ratios to C" in capsys.readouterr().err
    assert report["rows"] and all(r["ratio_to_c_batch"] is None for r in report["rows"])
    assert not any(r["impl"].startswith("c_") for r in report["rows"])


def test_a_consumer_that_loses_elements_fails_loudly(
    bench: ModuleType,
    bpf: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = bench.workloads.consume_batches

    def lossy(w: Any, batches: Iterable[Any]) -> Any:
        return real(w, list(batches)[1:])  # drops the first batch

    monkeypatch.setattr(bench.workloads, "consume_batches", lossy)
    rc, report = run(bench, tmp_path, "--shapes", "hash:4:8", "--no-c", "--sweep", "")
    assert rc == 1
    assert report == {}
    err = capsys.readouterr().err
    assert "FAILED" in err and "hash 4/8, 1,500 entries" in err and "expected 1,500" in err


def test_checks_catch_wrong_sums_and_a_map_left_full(bench: ModuleType, bpf: None) -> None:
    BenchError = bench.config.BenchError
    with Map.create(MapType.PERCPU_HASH, 4, 8, 100) as m:
        w = bench.workloads.Workload(m, 100, "percpu_hash 4/8")
        w.check_sums("ok", 100, w.key_sum, w.value_sums)
        with pytest.raises(BenchError, match="99 elements, expected 100"):
            w.check_sums("drain", 99, w.key_sum, w.value_sums)
        with pytest.raises(BenchError, match="key sum"):
            w.check_sums("drain", 100, w.key_sum + 1, w.value_sums)
        with pytest.raises(BenchError, match="value sums"):
            w.check_sums("drain", 100, w.key_sum, [0] * m.ncpus)
        w.fill()
        with pytest.raises(BenchError, match="not empty after the drain"):
            w.check_empty("drain")
        w.clear()
        w.check_empty("drain")


def test_the_workload_writes_the_pattern_the_c_program_checks(bench: ModuleType, bpf: None) -> None:
    with Map.create(MapType.PERCPU_HASH, 4, 4, 10) as m:
        w = bench.workloads.Workload(m, 10, "percpu_hash 4/4")
        w.fill()
        slot = 8
        for i in range(10):
            value = m.lookup(i.to_bytes(4, "little"))
            assert value is not None
            assert [
                int.from_bytes(value[c * slot : c * slot + 4], "little") for c in range(m.ncpus)
            ] == [i + 1 + c for c in range(m.ncpus)]


def test_c_program_checks_itself_and_prints_json(c_binary: Path, bpf: None) -> None:
    done = subprocess.run(
        [
            str(c_binary),
            "--type",
            "percpu_hash",
            "--key-size",
            "4",
            "--value-size",
            "4",
            "--entries",
            "700",
            "--reps",
            "2",
            "--batch-size",
            "64",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["checked"] is True and out["entries"] == 700 and out["reps"] == 2
    assert set(out["scenarios"]) == {
        "fill_batch",
        "fill_key",
        "lookup_batch",
        "lookup_key",
        "drain_batch",
        "drain_key",
    }
    assert all(len(s["ns_per_entry"]) == 2 for s in out["scenarios"].values())


def test_c_program_refuses_a_map_that_is_not_empty(c_binary: Path, bpf: None) -> None:
    with Map.create(MapType.HASH, 4, 8, 10) as m:
        m.update((1).to_bytes(4, "little"), (2).to_bytes(8, "little"))
        done = subprocess.run(
            [str(c_binary), "--fd", str(m.fd)],
            pass_fds=(m.fd,),
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 1
    assert "must be empty" in done.stderr


def test_c_reference_leaves_the_shared_map_empty(
    bench: ModuleType, c_binary: Path, bpf: None
) -> None:
    with Map.create(MapType.HASH, 16, 64, 300) as m:
        got = bench.c_reference.run_c(c_binary, m, ["fill_batch", "lookup_batch", "lookup_key"], 32)
        assert set(got) == {"fill_batch", "lookup_batch", "lookup_key"}
        assert m.next_key() is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--shapes", "array:4:8"],
        ["--shapes", "hash:4"],
        ["--shapes", "hash:6:8"],
        ["--entries", "0"],
        ["--reps", "0"],
        ["--sections", "drain,nothing"],
    ],
)
def test_bad_arguments_exit_2(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.runner.main(argv)
    assert e.value.code == 2


# -- sections: the registry in bench/config.py ---------------------------------------------------
@pytest.fixture
def fake_section(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A section module 'fake' registered for this test (its run() set by the test)."""
    module = ModuleType("bench.fake_section")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(bench.config.SECTIONS, "fake", "fake_section")
    monkeypatch.setitem(bench.config.SECTIONS, "absent", "absent_section")
    return module


def test_a_section_lands_under_its_name_and_a_missing_one_is_skipped(
    bench: ModuleType, fake_section: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given: list[Any] = []

    def run_fake(args: Any) -> dict[str, Any]:
        given.append(args.quick)
        return {"summary": "3 maps, 2.50x faster", "ratio": 0.4}

    fake_section.run = run_fake
    out = tmp_path / "bench.json"
    assert bench.runner.main(["--sections", "fake,absent", "--quick", "--json", str(out)]) == 0
    assert given == [True]
    report = json.loads(out.read_text())
    assert report["sections"] == ["fake"]
    assert report["fake"] == {"summary": "3 maps, 2.50x faster", "ratio": 0.4}
    assert report["skipped"] == {"absent": "bench/absent_section.py is not in this checkout"}
    assert "drain" not in report
    got = capsys.readouterr()
    assert "\nfake:\n  3 maps, 2.50x faster\n" in got.out
    assert "section absent skipped: bench/absent_section.py is not in this checkout" in got.err


def test_a_section_that_raises_fails_the_run_with_its_message(
    bench: ModuleType, fake_section: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_fake(args: Any) -> dict[str, Any]:
        raise RuntimeError("bpftool vanished")

    fake_section.run = run_fake
    out = tmp_path / "bench.json"
    assert bench.runner.main(["--sections", "fake", "--json", str(out)]) == 1
    assert not out.exists()
    assert "section fake FAILED: RuntimeError: bpftool vanished" in capsys.readouterr().err


def test_python_m_bench_runs_from_the_checkout_root(bench: ModuleType) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "python -m bench" in done.stdout and "--sections" in done.stdout
