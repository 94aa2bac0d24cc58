"""BpfObject: load a compiled BPF object file through the pinned libbpf, attach its programs.

Just enough of libbpf's object API to run a program that writes maps and read those maps with
this library::

    with BpfObject.open_file("counters.bpf.o") as obj:
        obj.load()
        obj.attach("count_syscalls")             # auto-attach from its SEC() name
        obj.attach_socket("count_udp", sock)    # socket filters: SO_ATTACH_BPF
        with obj.map("syscalls") as m:
            for batch in m.drain(): ...
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, TypeVar

from . import _bindings
from ._libbpf import ffi
from .errors import named_call
from .maps import Map

T = TypeVar("T")

SO_ATTACH_BPF = getattr(socket, "SO_ATTACH_BPF", 50)  # asm-generic/socket.h
SO_DETACH_BPF = getattr(socket, "SO_DETACH_BPF", 27)  # same value as SO_DETACH_FILTER


class Link:
    """An attachment made by :meth:`BpfObject.attach` (a ``struct bpf_link``)."""

    def __init__(self, handle: Any, program: str) -> None:
        self._handle = handle
        self.program = program

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def destroy(self) -> None:
        """Detach (bpf_link__destroy). Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _bindings.bpf_link__destroy(handle)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<Link {self.program!r} {'attached' if self.attached else 'destroyed'}>"


class BpfObject:
    """A BPF object file opened (and, after :meth:`load`, loaded into the kernel) by libbpf.

    :meth:`close` destroys the links it made and unloads the programs; maps opened with
    :meth:`map` stay usable (they hold their own fd) until closed.
    """

    def __init__(self, handle: Any, path: str) -> None:
        """Wrap a ``struct bpf_object *``; use :meth:`open_file`."""
        self._handle = handle
        self.path = path
        self.loaded = False
        self._links: list[Link] = []

    @classmethod
    def open_file(cls, path: str | os.PathLike[str]) -> BpfObject:
        """Open (parse, not load) an ELF BPF object (bpf_object__open_file)."""
        where = os.fspath(path)
        handle = named_call(repr(where), _bindings.bpf_object__open_file, os.fsencode(where))
        return cls(handle, where)

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a BpfError it raises naming this object's path and ``what``."""
        return named_call(f"{self.path!r}: {what}" if what else repr(self.path), fn, *args)

    def _obj(self, op: str) -> Any:
        if self._handle is None:
            raise ValueError(f"{op}: BPF object {self.path!r} is closed")
        return self._handle

    def load(self) -> BpfObject:
        """Create the maps and load the programs into the kernel (bpf_object__load)."""
        self._call("", _bindings.bpf_object__load, self._obj("bpf_object__load"))
        self.loaded = True
        return self

    def _map_handle(self, name: str) -> Any:
        obj = self._obj("bpf_object__find_map_by_name")
        return self._call(
            f"map {name!r}", _bindings.bpf_object__find_map_by_name, obj, name.encode()
        )

    def _program_handle(self, name: str) -> Any:
        obj = self._obj("bpf_object__find_program_by_name")
        return self._call(
            f"program {name!r}", _bindings.bpf_object__find_program_by_name, obj, name.encode()
        )

    def map(self, name: str) -> Map:
        """The loaded map ``name`` (as in the C source; '.bss' etc. for global data).

        The Map holds its own fd (a dup); close it when done.
        """
        self._require_loaded("map")
        return Map.from_fd(_bindings.bpf_map__fd(self._map_handle(name)))

    def program_fd(self, name: str) -> int:
        """The fd of loaded program ``name``; libbpf owns it (valid until close())."""
        self._require_loaded("program_fd")
        return _bindings.bpf_program__fd(self._program_handle(name))

    def program_info(self, name: str) -> tuple[int, str]:
        """Loaded program ``name``'s kernel id and tag (hex), as bpftool prints them."""
        fd = self.program_fd(name)
        # struct bpf_prog_info starts {__u32 type; __u32 id; __u8 tag[8]; ...}; a longer buffer
        # is fine (the kernel wants the tail zeroed, which ffi.new does).
        info = ffi.new("char[]", 512)
        size = ffi.new("__u32 *", 512)
        self._call(f"program {name!r}", _bindings.bpf_obj_get_info_by_fd, fd, info, size)
        raw = ffi.buffer(info, 16)[:]
        return int.from_bytes(raw[4:8], sys.byteorder), raw[8:16].hex()

    def attach(self, name: str) -> Link:
        """Attach program ``name`` as its SEC() name says (bpf_program__attach).

        Socket filters have no such attach point: use :meth:`attach_socket`.
        """
        self._require_loaded("attach")
        prog = self._program_handle(name)
        handle = self._call(f"program {name!r}", _bindings.bpf_program__attach, prog)
        link = Link(handle, name)
        self._links.append(link)
        return link

    def attach_socket(self, name: str, sock: socket.socket | int) -> None:
        """Attach socket filter ``name`` to ``sock`` (setsockopt SO_ATTACH_BPF).

        It stays attached until the socket closes or :func:`detach_socket`.
        """
        fd = self.program_fd(name)
        s = sock if isinstance(sock, socket.socket) else socket.socket(fileno=os.dup(sock))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, fd)
        finally:
            if s is not sock:
                s.close()

    def _require_loaded(self, op: str) -> None:
        self._obj(op)
        if not self.loaded:
            raise ValueError(f"{op}: BPF object {self.path!r} is not loaded; call load()")

    def close(self) -> None:
        """Destroy this object's links and close it (bpf_object__close). Idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            for link in self._links:
                link.destroy()
        finally:
            self._links.clear()
            _bindings.bpf_object__close(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("loaded" if self.loaded else "opened")
        return f"<BpfObject {self.path!r} {state}>"


def detach_socket(sock: socket.socket) -> None:
    """Remove the BPF filter from ``sock`` (SO_DETACH_BPF)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_BPF, 0)


__all__ = ["BpfObject", "Link", "detach_socket"]
