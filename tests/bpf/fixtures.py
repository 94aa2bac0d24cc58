"""Pytest fixtures over tests/bpf/build.py; test modules import the ones they use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail

from libbpf_batch.objects import BpfObject

from .build import COUNTERS_SOURCE, Unavailable, compile_program


@pytest.fixture(scope="session")
def counters_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/bpf/counters.bpf.c compiled once per session (skips without clang)."""
    try:
        return compile_program(COUNTERS_SOURCE, tmp_path_factory.mktemp("bpf"))
    except Unavailable as e:
        skip_or_fail(str(e))
        raise  # unreachable: skip_or_fail raises


@pytest.fixture
def counters(bpf: None, counters_object: Path) -> Iterator[BpfObject]:
    """counters.bpf.o loaded into the kernel; closed (programs unloaded) after the test."""
    with BpfObject.open_file(counters_object) as obj:
        obj.load()
        yield obj
