"""Known workloads for counters.bpf.c: exact packet and syscall counts to check maps against."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from collections.abc import Sequence

from libbpf_batch.objects import BpfObject

UDP_HEADER = 8  # the socket filter sees the skb from the UDP header on
GETPPID_NR = {"x86_64": 110, "aarch64": 173}.get(platform.machine())


def udp_traffic(
    obj: BpfObject, payload_sizes: Sequence[Sequence[int]]
) -> dict[int, tuple[int, int]]:
    """Send UDP datagrams over loopback to one filtered socket per entry of ``payload_sizes``.

    Each receiving socket has count_udp attached; every datagram is received back before the
    next is sent, so the filter has run on all of them when this returns. Returns
    ``{destination port: (packets, bytes as the filter counts them)}``.
    """
    receivers = []
    expected: dict[int, tuple[int, int]] = {}
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sizes in payload_sizes:
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receivers.append(rx)
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(5)
            obj.attach_socket("count_udp", rx)
            port = rx.getsockname()[1]
            for n in sizes:
                tx.sendto(bytes(n), ("127.0.0.1", port))
                assert len(rx.recv(65536)) == n
            expected[port] = (len(sizes), sum(n + UDP_HEADER for n in sizes))
    finally:
        tx.close()
        for rx in receivers:
            rx.close()
    return expected


GETPPID_CHILD = """
import os, sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
n = int(sys.stdin.readline())
for _ in range(n):
    os.getppid()
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


class GetppidChild:
    """A child process that calls getppid() exactly n times when told to (see run())."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GETPPID_CHILD],
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid

    def run(self, n: int) -> None:
        """Make the n getppid() calls and wait until they are done."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> GetppidChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
