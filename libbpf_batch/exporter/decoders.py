"""Label decoders as ebpf_exporter has them: bytes of a key field in, a label value out.

Each decoder takes the previous one's output (bytes, the raw field for the first) and returns
bytes; a chain like ``[uint, static_map]`` reads a number, then names it. ``regexp`` raises
:class:`SkipRow` when nothing matches: the whole row is left out of the scrape, as theirs is.
Results are cached per raw field value, so a decoder runs once per distinct key field.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import sys
from bisect import bisect_right
from collections.abc import Callable, Sequence

from .config import DecoderSpec, LabelSpec

_MISS = "\0miss"  # a cache sentinel no decoder returns (label values are text)


class SkipRow(Exception):
    """A decoder (regexp) asks for this row to be left out."""


class DecodeError(ValueError):
    """A decoder can't read its input (e.g. ``uint`` of 3 bytes)."""


def _uint(data: bytes, spec: DecoderSpec) -> bytes:
    if len(data) not in (1, 2, 4, 8):
        raise DecodeError(f"uint: {len(data)} bytes is not 1, 2, 4 or 8")
    return str(int.from_bytes(data, sys.byteorder)).encode()


def _string(data: bytes, spec: DecoderSpec) -> bytes:
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def _hex(data: bytes, spec: DecoderSpec) -> bytes:
    return data.hex().encode()


def _static_map(data: bytes, spec: DecoderSpec) -> bytes:
    text = data.decode(errors="replace")
    if text in spec.static_map:
        return spec.static_map[text].encode()
    return data if spec.allow_unknown else b"unknown:" + data


def _regexp(data: bytes, spec: DecoderSpec) -> bytes:
    text = data.decode(errors="replace")
    if any(re.search(r, text) for r in spec.regexps):
        return data
    raise SkipRow


def _inet_ip(data: bytes, spec: DecoderSpec) -> bytes:
    if len(data) == 4:
        return str(ipaddress.IPv4Address(data)).encode()
    if len(data) == 16:
        ip = ipaddress.IPv6Address(data)
        return str(ip.ipv4_mapped or ip).encode()  # as Go's net.IP prints it
    raise DecodeError(f"inet_ip: {len(data)} bytes is not 4 or 16")


def _number(data: bytes, what: str) -> int:
    try:
        return int(data)
    except ValueError:
        raise DecodeError(f"{what}: {data[:32]!r} is not a number (put uint first)") from None


def _errno(data: bytes, spec: DecoderSpec) -> bytes:
    n = _number(data, "errno")
    return errno.errorcode.get(n, f"unknown:{n}").encode()


def _ifname(data: bytes, spec: DecoderSpec) -> bytes:
    index = int.from_bytes(data[:4], sys.byteorder)
    try:
        return socket.if_indextoname(index).encode()
    except OSError:
        return f"unknown:{index}".encode()


def _majorminor(data: bytes, spec: DecoderSpec) -> bytes:
    dev = int.from_bytes(data[:4], sys.byteorder)
    major, minor = dev >> 20, dev & 0xFFFFF  # the kernel's new_encode_dev() in a u32
    try:
        with open("/proc/partitions") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4 and parts[:2] == [str(major), str(minor)]:
                    return parts[3].encode()
    except OSError:
        pass
    return f"unknown:{major}:{minor}".encode()


class Kallsyms:
    """/proc/kallsyms, sorted, read once: an address to the symbol that contains it."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        pairs = []
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        pairs.append((int(parts[0], 16), parts[2]))
        except OSError:
            pass
        pairs.sort()
        self.addrs = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def name(self, addr: int) -> str | None:
        i = bisect_right(self.addrs, addr) - 1
        return self.names[i] if i >= 0 and self.addrs[i] else None


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return "/sys/fs/cgroup"


class CgroupPaths:
    """cgroup id (a cgroup v2 directory's inode number) to path; re-walked on a miss."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root
        self.paths: dict[int, str] = {}

    def path(self, cgroup_id: int) -> str | None:
        if cgroup_id not in self.paths:
            root = self.root or cgroup2_root()
            try:
                dev = os.stat(root).st_dev
            except OSError:
                return None
            for top, _dirs, _files in os.walk(root):
                try:
                    st = os.stat(top)
                except OSError:
                    continue
                if st.st_dev == dev:  # ids are only unique within the cgroup2 filesystem
                    self.paths[st.st_ino] = top
        return self.paths.get(cgroup_id)


class DecoderSet:
    """The decoders with their state (kallsyms, cgroup paths) and a per-label cache."""

    def __init__(self) -> None:
        self._kallsyms: Kallsyms | None = None
        self._cgroups = CgroupPaths()
        self._syscalls: dict[int, str] | None = None
        self.table: dict[str, Callable[[bytes, DecoderSpec], bytes]] = {
            "uint": _uint,
            "string": _string,
            "hex": _hex,
            "static_map": _static_map,
            "regexp": _regexp,
            "inet_ip": _inet_ip,
            "errno": _errno,
            "ifname": _ifname,
            "majorminor": _majorminor,
            "ksym": self._ksym,
            "kstack": self._kstack,
            "syscall": self._syscall,
            "cgroup": self._cgroup,
        }

    @property
    def kallsyms(self) -> Kallsyms:
        if self._kallsyms is None:
            self._kallsyms = Kallsyms()
        return self._kallsyms

    def _ksym(self, data: bytes, spec: DecoderSpec) -> bytes:
        addr = int.from_bytes(data[:8], sys.byteorder)
        return (self.kallsyms.name(addr) or f"unknown_addr:0x{addr:x}").encode()

    def _kstack(self, data: bytes, spec: DecoderSpec) -> bytes:
        frames = []
        for off in range(0, len(data) - 7, 8):
            addr = int.from_bytes(data[off : off + 8], sys.byteorder)
            if addr == 0:
                break
            frames.append(self.kallsyms.name(addr) or "??")
        return "\n".join(frames).encode()

    def _syscall(self, data: bytes, spec: DecoderSpec) -> bytes:
        n = _number(data, "syscall")
        if self._syscalls is None:
            self._syscalls = syscall_names()
        return self._syscalls.get(n, f"unknown_syscall:{n}").encode()

    def _cgroup(self, data: bytes, spec: DecoderSpec) -> bytes:
        n = _number(data, "cgroup")
        return (self._cgroups.path(n) or f"unknown_cgroup_id:{n}").encode()

    def label_decoder(self, labels: Sequence[LabelSpec], key_size: int, where: str) -> KeyDecoder:
        """A decoder of whole keys for these labels; they must cover ``key_size`` exactly."""
        total = sum(label.size + label.padding for label in labels)
        if total != key_size:
            raise DecodeError(
                f"{where}: labels cover {total} bytes (sizes + padding) but the key is "
                f"{key_size} bytes"
            )
        return KeyDecoder(self, labels)


class KeyDecoder:
    """Raw key bytes to a tuple of label values, one decoder chain per label, cached."""

    def __init__(self, decoders: DecoderSet, labels: Sequence[LabelSpec]) -> None:
        self.names = tuple(label.name for label in labels)
        self.parts: list[tuple[int, int, list[tuple[Callable[..., bytes], DecoderSpec]]]] = []
        off = 0
        for label in labels:
            chain = [(decoders.table[d.name], d) for d in label.decoders]
            self.parts.append((off, off + label.size, chain))
            off += label.size + label.padding
        self.caches: list[dict[bytes, str | None]] = [{} for _ in labels]

    def __call__(self, key: bytes) -> tuple[str, ...]:
        """The label values; raises SkipRow (regexp) or DecodeError."""
        out = []
        for (start, end, chain), cache in zip(self.parts, self.caches):
            raw = key[start:end]
            value = cache.get(raw, _MISS)
            if value is _MISS:
                value = cache[raw] = self._run(chain, raw)
            if value is None:
                raise SkipRow
            out.append(value)
        return tuple(out)

    @staticmethod
    def _run(chain: list[tuple[Callable[..., bytes], DecoderSpec]], raw: bytes) -> str | None:
        data = raw
        try:
            for fn, spec in chain:
                data = fn(data, spec)
        except SkipRow:
            return None
        return data.decode(errors="replace")


def syscall_names() -> dict[int, str]:
    """Syscall numbers of this machine's architecture, from the kernel headers or libc's table.

    Read from ``asm/unistd_64.h`` (Debian's linux-libc-dev); empty if it is not installed.
    """
    out: dict[int, str] = {}
    for path in (
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        "/usr/include/asm-generic/unistd.h",
    ):
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"#define __NR_(\w+)\s+(\d+)\s*$", line)
                    if m:
                        out.setdefault(int(m.group(2)), m.group(1))
        except OSError:
            continue
        if out:
            break
    return out


__all__ = ["DecodeError", "DecoderSet", "KeyDecoder", "SkipRow", "cgroup2_root", "syscall_names"]
