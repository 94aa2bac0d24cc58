"""Nothing leaks: fds and buffers across many open/drain/close cycles; and what the package ships.

Buffers come from cffi's ``ffi.new``, which takes large blocks from malloc where tracemalloc
does not look, so the C heap is measured too (glibc's mallinfo2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib.metadata
import os
import re
import tracemalloc
import warnings
from pathlib import Path

import pytest
from conftest import fill, open_fds, skip_or_fail

import libbpf_batch
from libbpf_batch import Map, MapType, _libbpf

ROOT = Path(__file__).resolve().parent.parent
CYCLES = 10_000


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def c_heap_in_use() -> int:
    """Bytes malloc has handed out and not had back (heap chunks plus mmapped blocks)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        skip_or_fail("this libc has no mallinfo2()")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def one_cycle(map_id: int, i: int) -> None:
    """Open the map by id, fill it, start a drain, and end the cycle one of four ways."""
    ending = i % 4
    m = Map.from_id(map_id)
    fill(m, 8)
    it = m.drain()  # DEFAULT_BATCH_SIZE: 48 KiB of buffers per iterator, capped by max_entries
    next(it)
    if ending == 0:  # close the map under a live iterator, then drop the iterator
        m.close()
        del it
    elif ending == 1:  # drop the iterator mid-drain, then close
        del it
        m.close()
    elif ending == 2:  # run it out, then close
        for _ in it:
            pass
        m.close()
    else:  # never closed: both collected together (the Map warns, as files do)
        del it, m


def test_open_drain_close_cycles_leak_no_fd_and_no_buffer(make_map: object) -> None:
    with Map.create(MapType.HASH, 4, 8, 8192, name="cycles") as target:
        for i in range(200):  # warm up: caches, interned strings, malloc arenas
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                one_cycle(target.id, i)
        gc.collect()
        fds = open_fds()
        heap = c_heap_in_use()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            unclosed = 0

            def count(*args: object, **kwargs: object) -> None:
                nonlocal unclosed  # counted, not kept: a kept warning keeps its Map alive
                unclosed += 1

            with warnings.catch_warnings():
                warnings.simplefilter("always", ResourceWarning)
                warnings.showwarning = count
                for i in range(CYCLES):
                    one_cycle(target.id, i)
                    if i % 1000 == 999:
                        assert open_fds() == fds, f"fds grew by cycle {i + 1}"
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert unclosed == CYCLES // 4  # only the maps never closed warned
        assert open_fds() == fds
        assert current - base < 64 * 1024, f"Python memory grew {current - base} bytes"
        assert peak - base < 1024 * 1024, f"peak {peak - base} bytes above the start"
        grown = c_heap_in_use() - heap
        # One leaked iterator's buffers would be ~100 KiB; 10,000 of them, a gigabyte.
        assert grown < 1024 * 1024, f"C heap grew {grown} bytes"
        assert len(list(target.keys())) <= 8


def test_collected_open_map_warns_and_closes_its_fd(bpf: None) -> None:
    fds = open_fds()
    m = Map.create(MapType.HASH, 4, 8, 16, name="forgotten")
    assert open_fds() == fds + 1
    with pytest.warns(ResourceWarning, match="unclosed <Map hash 'forgotten'"):  # noqa: PT031
        del m
        gc.collect()
    assert open_fds() == fds


def test_iterator_on_a_collected_map_keeps_the_map_open_until_it_goes(bpf: None) -> None:
    fds = open_fds()
    m = Map.create(MapType.HASH, 4, 8, 64, name="held")
    expected = fill(m, 20)
    it = m.items(batch_size=4)
    del m  # the iterator holds the Map: its fd stays open and valid until the walk ends
    first = next(it)
    assert open_fds() == fds + 2  # the map's fd, and the walk's duplicate of it (batch.Hold)
    with pytest.warns(ResourceWarning, match="unclosed <Map hash 'held'"):  # noqa: PT031
        rest = list(it)  # the finished generator drops the last reference
        gc.collect()
    assert dict([first, *rest]) == expected
    assert open_fds() == fds


# -- what ships -----------------------------------------------------------------------------
INSTALLED_PREFIX = os.environ.get("LIBBPF_BATCH_INSTALLED_PREFIX")


def test_the_package_under_test_is_the_one_the_run_names() -> None:
    package = Path(libbpf_batch.__file__).resolve()
    if INSTALLED_PREFIX:  # `make wheel-test`: the installed wheel, never the source tree
        assert package.is_relative_to(Path(INSTALLED_PREFIX).resolve()), package
        assert "site-packages" in package.parts
        assert not (package.parent.parent / "build_ffi.py").exists()
    else:  # `make test`: the in-place build of this checkout
        assert package.parent.parent == ROOT, package
        assert Path(_libbpf.__file__).resolve().parent == package.parent


def test_version_is_the_distribution_version() -> None:
    try:
        installed = importlib.metadata.version("libbpf-batch")
    except importlib.metadata.PackageNotFoundError:
        skip_or_fail("libbpf-batch is not installed (no metadata to compare)")
    assert libbpf_batch.__version__ == installed
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z0-9.+-]*)", installed)


def test_changelog_names_the_vendored_libbpf_and_its_sha256() -> None:
    changelog, pin = ROOT / "CHANGELOG.md", ROOT / "vendor" / "libbpf"
    if not changelog.is_file() or not (pin / "SHA256").is_file():
        skip_or_fail("not a source tree")
    first = changelog.read_text().splitlines()[0]
    sha, _ = (pin / "SHA256").read_text().split()
    assert f"libbpf {(pin / 'VERSION').read_text().strip()}" in first
    assert sha in first
    assert f"## {libbpf_batch.__version__}" in changelog.read_text()


def test_typing_marker_ships_with_the_package() -> None:
    here = Path(libbpf_batch.__file__).parent
    assert (here / "py.typed").is_file()
    assert (here / "_libbpf.pyi").is_file()
