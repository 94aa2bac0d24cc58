"""The built extension (abi3, libbpf linked in statically and hidden) and build_ffi.py's helpers."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
from conftest import skip_or_fail

import libbpf_batch
from libbpf_batch import _bindings, _libbpf

ROOT = Path(__file__).resolve().parent.parent
SO = Path(_libbpf.__file__)
USE_SYSTEM = os.environ.get("LIBBPF_BATCH_USE_SYSTEM") == "1"
# Names libbpf exports from its own shared library (bpf.h, libbpf.h, btf.h).
LIBBPF_SYMBOL = re.compile(r"^(bpf_|libbpf_|btf__|btf_|bpf_object__|bpf_map__|bpf_program__)")


@pytest.fixture(scope="module")
def build_ffi() -> ModuleType:
    """build_ffi.py, imported from the checkout (declarative: nothing is compiled)."""
    path = ROOT / "build_ffi.py"
    if not path.is_file():
        skip_or_fail("build_ffi.py is not next to the tests (run from a checkout)")
    spec = importlib.util.spec_from_file_location("build_ffi_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed")
    return path


# -- the extension -----------------------------------------------------------------------------
def test_extension_imports_and_exports_ffi_and_lib() -> None:
    assert _libbpf.ffi.sizeof("struct bpf_map_batch_opts") == 24
    assert callable(_libbpf.lib.bpf_map_lookup_batch)


def test_extension_is_an_abi3_shared_object() -> None:
    if sysconfig.get_config_var("Py_GIL_DISABLED"):  # no stable ABI there: built for this one
        assert SO.name == f"_libbpf{sysconfig.get_config_var('EXT_SUFFIX')}"
    else:
        assert SO.name == "_libbpf.abi3.so"
    assert SO.parent == Path(libbpf_batch.__file__).parent


def test_lib_has_libbpf_version_string() -> None:
    assert hasattr(_libbpf.lib, "libbpf_version_string")


def test_libbpf_version_matches_the_pin_major_minor() -> None:
    pinned = (ROOT / "vendor" / "libbpf" / "VERSION").read_text().strip()  # "1.1.2"
    reported = _bindings.libbpf_version_string()  # libbpf says "v1.1"
    m = re.fullmatch(r"v(\d+)\.(\d+)", reported)
    assert m is not None, reported
    assert m.groups() == tuple(pinned.split(".")[:2])


def test_ldd_shows_libbpf_only_when_linking_the_system_one() -> None:
    out = subprocess.run([_tool("ldd"), str(SO)], check=True, capture_output=True, text=True).stdout
    assert "libc.so" in out  # ldd really listed the dependencies
    # "libbpf.so", not "libbpf": an auditwheel-repaired wheel keeps libelf in libbpf_batch.libs/
    assert ("libbpf.so" in out) == USE_SYSTEM, out


def test_no_libbpf_symbol_is_exported_nm() -> None:
    out = subprocess.run(
        [_tool("nm"), "-D", "--defined-only", str(SO)], check=True, capture_output=True, text=True
    ).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert "PyInit__libbpf" in names
    assert [n for n in names if LIBBPF_SYMBOL.match(n)] == []


@pytest.mark.parametrize(
    "symbol", ["bpf_map_lookup_batch", "bpf_map_create", "libbpf_version_string", "btf__free"]
)
def test_libbpf_symbols_are_visible_to_dlsym_only_from_the_system_libbpf(symbol: str) -> None:
    so = ctypes.CDLL(str(SO))
    assert hasattr(so, "PyInit__libbpf")  # dlsym does see what is exported
    # vendored: hidden by vendor/exports.map; system: found in the libbpf.so.1 it depends on
    assert hasattr(so, symbol) == USE_SYSTEM


# -- build_ffi.py's pure helpers -------------------------------------------------------------
def test_read_pin_reads_the_vendored_pin(build_ffi: ModuleType) -> None:
    version, sha, name = build_ffi.read_pin()
    assert version == (ROOT / "vendor" / "libbpf" / "VERSION").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    assert name == f"libbpf_{version}.orig.tar.gz"


def test_read_pin_reads_a_given_directory(build_ffi: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "VERSION").write_text("9.8.7\n")
    (tmp_path / "SHA256").write_text(f"{'ab' * 32}  libbpf_9.8.7.orig.tar.gz\n")
    assert build_ffi.read_pin(tmp_path) == ("9.8.7", "ab" * 32, "libbpf_9.8.7.orig.tar.gz")


def test_check_tarball_accepts_the_right_sha(build_ffi: ModuleType, tmp_path: Path) -> None:
    tarball = tmp_path / "libbpf.tar.gz"
    tarball.write_bytes(b"not really a tarball\n")
    build_ffi.check_tarball(tarball, hashlib.sha256(b"not really a tarball\n").hexdigest())


def test_check_tarball_raises_on_a_wrong_sha(build_ffi: ModuleType, tmp_path: Path) -> None:
    tarball = tmp_path / "libbpf.tar.gz"
    tarball.write_bytes(b"tampered\n")
    got = hashlib.sha256(b"tampered\n").hexdigest()
    with pytest.raises(RuntimeError, match="sha256 mismatch") as info:
        build_ffi.check_tarball(tarball, "0" * 64)
    assert got in str(info.value)
    assert "0" * 64 in str(info.value)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LIBBPF_BATCH_USE_SYSTEM": "1"}, True),
        ({"LIBBPF_BATCH_USE_SYSTEM": "0"}, False),
        ({"LIBBPF_BATCH_USE_SYSTEM": ""}, False),
        ({}, False),
        ({"OTHER": "1"}, False),
    ],
    ids=["set-1", "set-0", "empty", "unset", "other-variable"],
)
def test_use_system_libbpf_reads_the_given_environ(
    build_ffi: ModuleType, environ: dict[str, str], expected: bool
) -> None:
    assert build_ffi.use_system_libbpf(environ) is expected


def test_no_source_message_names_the_three_ways_out(build_ffi: ModuleType) -> None:
    version, sha, _ = build_ffi.read_pin()
    text = build_ffi.no_source_message("apt-get source failed")
    assert "apt-get source failed" in text
    assert f"LIBBPF_TARBALL=/path/to/libbpf-{version}.tar.gz" in text
    assert sha in text
    assert "LIBBPF_BATCH_USE_SYSTEM=1" in text
    for install in (
        "dnf install libbpf-devel",
        "apk add libbpf-dev",
        "pacman -S libbpf",
        "apt-get install libbpf-dev",
    ):
        assert install in text
    assert "sdist" in text
    assert len(text.splitlines()) <= 15  # short: no traceback to dig through


def test_a_missing_libbpf_tarball_exits_with_the_ways_out(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIBBPF_TARBALL", str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(SystemExit) as info:
        build_ffi.find_tarball()
    assert "nowhere.tar.gz is not a file" in str(info.value.code)
    assert "LIBBPF_BATCH_USE_SYSTEM=1" in str(info.value.code)


def test_a_renamed_libbpf_tarball_is_used_when_its_sha256_matches(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Any name (upstream's archive is libbpf-1.1.2.tar.gz): only the sha256 must be the pin's.
    renamed = tmp_path / "libbpf-upstream.tar.gz"
    renamed.write_bytes(b"stands in for libbpf\n")
    sha = hashlib.sha256(b"stands in for libbpf\n").hexdigest()
    pin = ("1.1.2", sha, "libbpf_1.1.2.orig.tar.gz")
    monkeypatch.setattr(build_ffi, "read_pin", lambda vendor=None: pin)
    monkeypatch.setenv("LIBBPF_TARBALL", str(renamed))
    assert build_ffi.find_tarball() == renamed


@pytest.mark.parametrize("struct", ["bpf_map_create_opts", "bpf_map_batch_opts"])
def test_opts_structs_are_declared_open_ended(build_ffi: ModuleType, struct: str) -> None:
    # "...;": cffi takes the layout from the header it compiles against, so a newer system
    # libbpf whose opts struct grew still works (an exact layout fails with "wrong total size").
    m = re.search(r"struct " + struct + r" \{(.*?)\};", build_ffi.CDEF, re.DOTALL)
    assert m is not None
    assert m.group(1).rstrip().splitlines()[-1].strip().startswith("...;")


def _fake_pkg_config_dir(tmp_path: Path, version: str) -> Path:
    (tmp_path / "libbpf.pc").write_text(
        f"Name: libbpf\nDescription: fake\nVersion: {version}\nLibs: -lbpf\nCflags:\n"
    )
    return tmp_path


def test_system_build_refuses_a_libbpf_older_than_the_minimum(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _tool("pkg-config")
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(_fake_pkg_config_dir(tmp_path, "0.8.1")))
    monkeypatch.delenv("PKG_CONFIG_PATH", raising=False)
    with pytest.raises(SystemExit) as info:
        build_ffi.system_libbpf()
    message = str(info.value.code)
    assert "0.8.1" in message and f">= {build_ffi.MIN_SYSTEM_LIBBPF}" in message


def test_system_build_takes_a_new_enough_libbpf(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _tool("pkg-config")
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(_fake_pkg_config_dir(tmp_path, "1.5.0")))
    monkeypatch.delenv("PKG_CONFIG_PATH", raising=False)
    assert build_ffi.system_libbpf()["libraries"] == ["bpf"]


def test_system_build_without_a_libbpf_names_the_ways_out(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _tool("pkg-config")
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(tmp_path))  # empty: no libbpf.pc
    monkeypatch.delenv("PKG_CONFIG_PATH", raising=False)
    with pytest.raises(SystemExit) as info:
        build_ffi.system_libbpf()
    assert "pkg-config finds no libbpf" in str(info.value.code)
    assert "LIBBPF_TARBALL=" in str(info.value.code)


def test_a_libbpf_tarball_with_the_wrong_sha256_exits_with_the_ways_out(
    build_ffi: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tarball = tmp_path / "libbpf-1.1.2.tar.gz"
    tarball.write_bytes(b"not libbpf\n")
    monkeypatch.setenv("LIBBPF_TARBALL", str(tarball))
    with pytest.raises(SystemExit) as info:
        build_ffi.find_tarball()
    message = str(info.value.code)
    assert "sha256 mismatch" in message
    assert hashlib.sha256(b"not libbpf\n").hexdigest() in message
    assert "LIBBPF_BATCH_USE_SYSTEM=1" in message
