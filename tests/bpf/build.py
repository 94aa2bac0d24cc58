"""Compile tests/bpf/*.bpf.c with Debian's clang, and mount a private bpffs, for the tests.

Pytest fixtures built on these live in tests/bpf/fixtures.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
COUNTERS_SOURCE = HERE / "counters.bpf.c"
LIBBPF_INCLUDE = ROOT / "build" / "libbpf" / "install" / "include"  # bpf_helpers.h, linux/bpf.h


class Unavailable(Exception):
    """A tool or mount the BPF tests need is missing; the message says which."""


def include_dirs() -> list[Path]:
    """libbpf's installed headers, then the multiarch dir holding asm/types.h.

    ``-target bpf`` drops Debian's multiarch include dir, which linux/types.h needs.
    """
    if not (LIBBPF_INCLUDE / "bpf" / "bpf_helpers.h").exists():
        raise Unavailable(f"{LIBBPF_INCLUDE}/bpf/bpf_helpers.h is missing; run `make build`")
    dirs = [LIBBPF_INCLUDE]
    dirs += sorted({Path(p).parent.parent for p in glob.glob("/usr/include/*/asm/types.h")})
    return dirs


def compile_program(source: Path, out_dir: Path, include: Sequence[str | Path] = ()) -> Path:
    """``clang -target bpf -g -O2`` ``source`` into ``out_dir``; the object's path.

    ``include``: more ``-I`` directories, searched first (e.g. libbpf_batch.get_include()).
    """
    clang = shutil.which("clang")
    if clang is None:
        raise Unavailable("clang is not installed (apt-get install clang llvm, or `make deps`)")
    out = out_dir / (source.name.removesuffix(".c") + ".o")
    cmd = [clang, "-target", "bpf", "-g", "-O2", "-Wall", "-Werror"]
    for d in include:
        cmd += ["-I", str(d)]
    for d in include_dirs():
        cmd += ["-idirafter" if str(d).startswith("/usr/include") else "-I", str(d)]
    cmd += ["-c", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return out


@contextmanager
def bpffs() -> Iterator[Path]:
    """A bpffs mounted on a fresh temporary directory, unmounted (lazily) afterwards."""
    mount = shutil.which("mount")
    if mount is None:
        raise Unavailable("mount(8) is not installed")
    path = Path(tempfile.mkdtemp(prefix="libbpf-batch-bpffs-"))
    proc = subprocess.run(
        [mount, "-t", "bpf", "bpf", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        os.rmdir(path)
        raise Unavailable(f"cannot mount a bpffs: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)
        os.rmdir(path)
