"""The runner: each section of config.SECTIONS in turn, then the report (text, and JSON)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from libbpf_batch import BpfError

from . import report
from .config import SECTIONS, BenchError, parse_args

PROG = "python -m bench"


def load_section(name: str) -> ModuleType | None:
    """The section's module, or None when this checkout does not have it."""
    module = f"{__package__}.{SECTIONS[name]}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # the section is there but something it imports is not: its failure
        return None


# What a section's keyword parameters get under --quick: a few seconds in all.
QUICK_KWARGS = {
    "entries": 20_000,
    "repeat": 1,
    "reps": 1,
    "scrapes": 1,
    "swaps": 3,
    "calls": 200_000,
}


def run_section(module: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """``module.run(args)`` for a section whose first parameter is ``args``; else ``run()``
    with its own defaults, or with QUICK_KWARGS for those parameters it has under --quick."""
    run = module.run
    params = inspect.signature(run).parameters
    if "args" in params:
        result = run(args)
    elif args.quick:
        result = run(**{k: v for k, v in QUICK_KWARGS.items() if k in params})
    else:
        result = run()
    if not isinstance(result, dict):
        raise TypeError(f"run() returned {type(result).__name__}, not a dict")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections; returns the exit status (1 when a check or a section failed)."""
    args = parse_args(argv)
    t0 = time.monotonic()
    explicit = args.sections is not None
    out: dict[str, Any] = {"benchmark": "libbpf-batch", "sections": [], "skipped": {}}
    for name in args.sections or list(SECTIONS):
        try:
            module = load_section(name)
            if module is None:
                why = f"bench/{SECTIONS[name]}.py is not in this checkout"
                out["skipped"][name] = why
                if explicit:
                    print(f"{PROG}: section {name} skipped: {why}", file=sys.stderr)
                continue
            result = run_section(module, args)
        except BenchError as e:
            print(f"{PROG}: FAILED: {e}", file=sys.stderr)
            return 1
        except BpfError as e:
            print(f"{PROG}: {name}: {e} (the benchmark needs root or CAP_BPF)", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - any section's error fails the run, named
            print(f"{PROG}: section {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        out["sections"].append(name)
        out[name] = result
    out["machine"] = report.machine()
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(report.format_report(out))
    if args.json:
        report.write_json(out, args.json)
    return 0
