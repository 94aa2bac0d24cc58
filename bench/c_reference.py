"""The C reference: bench/c_drain.c, built on demand against the same static libbpf, run on the
very map the Python scenarios use (its fd is passed down)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from libbpf_batch import Map

from .config import BenchError

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "bench" / "c_drain.c"
LIBBPF_PREFIX = ROOT / "build" / "libbpf" / "install"
C_BINARY = ROOT / "build" / "bench" / "c_drain"


def c_program(cc: str = "gcc") -> tuple[Path | None, str]:
    """Build bench/c_drain.c into build/bench/ when it is missing or stale.

    Returns ``(path, "")``, or ``(None, why)`` when bench/c_drain.c or the vendored libbpf
    in build/libbpf is not there (before `make build`).
    """
    lib = LIBBPF_PREFIX / "lib" / "libbpf.a"
    if not C_SOURCE.is_file():
        return None, (
            f"no C reference: {C_SOURCE} is not here; Python figures only, without ratios to C"
        )
    if not lib.is_file():
        return None, (
            f"no C reference: {lib} is missing (run `make build` in the source "
            "tree); Python figures only, without ratios to C"
        )
    if (
        C_BINARY.is_file()
        and C_BINARY.stat().st_mtime >= C_SOURCE.stat().st_mtime
        and C_BINARY.stat().st_mtime >= lib.stat().st_mtime
    ):
        return C_BINARY, ""
    if shutil.which(cc) is None:
        return None, f"no C reference: compiler {cc!r} not found; Python figures only"
    C_BINARY.parent.mkdir(parents=True, exist_ok=True)
    tmp = C_BINARY.with_name(f"{C_BINARY.name}.{os.getpid()}.tmp")
    cmd = [
        cc,
        "-O2",
        "-Wall",
        "-I",
        str(LIBBPF_PREFIX / "include"),
        str(C_SOURCE),
        str(lib),
        "-lelf",
        "-lz",
        "-o",
        str(tmp),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        tmp.unlink(missing_ok=True)
        return None, (f"no C reference: {' '.join(cmd)} failed:\n{done.stderr.strip()}")
    os.replace(tmp, C_BINARY)  # atomic: others may run the benchmark at the same time
    return C_BINARY, ""


def run_c(binary: Path, m: Map, scenarios: Iterable[str], batch_size: int) -> dict[str, float]:
    """One repetition of ``scenarios`` by c_drain on ``m`` (empty; left empty): ns/entry."""
    fd = m.fd
    cmd = [
        str(binary),
        "--fd",
        str(fd),
        "--reps",
        "1",
        "--batch-size",
        str(batch_size),
        "--scenarios",
        ",".join(scenarios),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, pass_fds=(fd,), check=False)
    if done.returncode:
        raise BenchError(f"C reference failed ({' '.join(cmd)}): {done.stderr.strip()}")
    try:
        out = json.loads(done.stdout)
        return {name: float(s["ns_per_entry"][0]) for name, s in out["scenarios"].items()}
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BenchError(
            f"C reference printed something unexpected ({e}): {done.stdout[:200]!r}"
        ) from None
