"""Shared by the examples: build tests/bpf/counters.bpf.c with clang and load it with libbpf."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from libbpf_batch.objects import BpfObject

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "bpf" / "counters.bpf.c"
# bpf_helpers.h and linux/bpf.h from the libbpf that `make build` installs; override with
# LIBBPF_INCLUDE=/usr/include when libbpf-dev is installed instead.
LIBBPF_INCLUDE = Path(os.environ.get("LIBBPF_INCLUDE", REPO / "build/libbpf/install/include"))


def compile_counters(out_dir: Path) -> Path:
    """clang -target bpf -g -O2 counters.bpf.c; returns the object's path."""
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang is not installed: apt-get install clang llvm (or `make deps`)")
    out = out_dir / "counters.bpf.o"
    cmd = [clang, "-target", "bpf", "-g", "-O2", "-I", str(LIBBPF_INCLUDE)]
    # -target bpf drops Debian's multiarch include dir, where asm/types.h lives
    for asm in glob.glob("/usr/include/*/asm/types.h"):
        cmd += ["-idirafter", str(Path(asm).parent.parent)]
    subprocess.run(cmd + ["-c", str(SOURCE), "-o", str(out)], check=True)
    return out


def load_counters(obj_path: str | None = None) -> BpfObject:
    """Open and load counters.bpf.o (compiled into a temporary directory unless given)."""
    if obj_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            obj = BpfObject.open_file(compile_counters(Path(tmp)))  # libbpf reads it here
    else:
        obj = BpfObject.open_file(obj_path)
    return obj.load()
