#!/usr/bin/env python3
"""Serve per-(process, syscall) counts to Prometheus: load, attach, then `libbpf-batch export`.

The BPF program (tests/bpf/counters.bpf.c, count_syscalls) stays loaded in this process while
the export subcommand's code path serves the map on /metrics, reading it with batch lookups
on every scrape:

    sudo python3 examples/export.py --listen 127.0.0.1:9435
    curl -s 127.0.0.1:9435/metrics | grep bpf_syscalls_count_total | head

The same for any map that is already loaded (pinned, or found by id or name):

    libbpf-batch export name syscalls --metric bpf_syscalls --type counter
"""

from __future__ import annotations

import argparse
import sys

from common import load_counters

from libbpf_batch import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", help="a compiled counters.bpf.o (default: build it now)")
    parser.add_argument("--listen", default=cli.DEFAULT_LISTEN, metavar="HOST:PORT")
    parser.add_argument(
        "--max-scrapes",
        type=int,
        default=None,
        help="exit after N scrapes (default: run until Ctrl-C or SIGTERM)",
    )
    args = parser.parse_args(argv)

    with load_counters(args.object) as obj, obj.map("syscalls") as m:
        obj.attach("count_syscalls")
        # keys {pid, nr} become labels; the numeric field `count` becomes
        # bpf_syscalls_count_total (comm is a string, so it is not exported)
        export = [
            "export",
            "id",
            str(m.id),
            "--listen",
            args.listen,
            "--metric",
            "bpf_syscalls",
            "--type",
            "counter",
        ]
        if args.max_scrapes:
            export += ["--max-scrapes", str(args.max_scrapes)]
        return cli.main(export)


if __name__ == "__main__":
    sys.exit(main())
