"""Python values <-> cdata: argument checks, opts structs, and the element Layout.

A leaf under ``batch``, ``btf`` and ``maps``: it knows cffi and libbpf's structs, never a Map.
Every check raises TypeError for a wrong type and ValueError for a wrong value, naming ``where``
(the operation and, where there is one, the map) before any syscall is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from . import _bindings
from ._libbpf import ffi, lib

BytesLike = Union[bytes, bytearray, memoryview]
if TYPE_CHECKING:  # what the batch calls accept: any buffer (array.array, numpy arrays too)
    from typing_extensions import Buffer  # PEP 688's protocol; typeshed ships it

    BufferLike = Buffer
else:
    BufferLike = BytesLike


def percpu_slot(value_size: int) -> int:
    """round_up(value_size, 8): one CPU's share of a per-CPU value (bpf_map_value_size())."""
    return (value_size + 7) & ~7


@dataclass(frozen=True)
class Layout:
    """How a map's elements sit in a batch's flat buffers, computed once per map.

    ``value_stride`` is the bytes per value: ``value_size``, or for per-CPU maps ``ncpus``
    slots of ``slot`` bytes (round_up(value_size, 8)), in possible-CPU order.
    """

    key_size: int
    value_size: int
    ncpus: int = 1  # 1 for maps that are not per-CPU
    percpu: bool = False
    slot: int = field(init=False)
    value_stride: int = field(init=False)

    def __post_init__(self) -> None:
        slot = percpu_slot(self.value_size) if self.percpu else self.value_size
        object.__setattr__(self, "slot", slot)
        object.__setattr__(self, "value_stride", slot * self.ncpus if self.percpu else slot)

    @property
    def cursor_size(self) -> int:
        """Bytes for in_batch/out_batch: hash maps keep a u32 bucket index, others a key."""
        return max(4, self.key_size)


def check_uint(value: object, what: str, bits: int, where: str) -> int:
    """``value`` if it is an int in [0, 2**bits); TypeError (bools too) or ValueError otherwise.

    cffi would raise OverflowError (or a TypeError naming nothing) for these.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{where}: {what} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{where}: {what} must be an int in [0, 2**{bits}), got {value!r}")
    return value


def check_positive(value: object, what: str, where: str, bits: int = 32) -> int:
    """``value`` if it is an int in [1, 2**bits)."""
    if check_uint(value, what, bits, where) == 0:
        raise ValueError(f"{where}: {what} must be at least 1, got 0")
    return value  # type: ignore[return-value]  # check_uint proved it an int


def element(buf: object, size: int, what: str, where: str, hint: str = "") -> Any:
    """A cdata view of one key or value without copying; it must be exactly ``size`` bytes."""
    c = _from_buffer(buf, what, where)
    if len(c) != size:
        raise ValueError(f"{where}: {what} is {len(c)} bytes, expected {size}{hint}")
    return c


def _from_buffer(buf: object, what: str, where: str) -> Any:
    try:
        return ffi.from_buffer(buf)
    except TypeError:
        raise TypeError(f"{where}: {what} must be bytes-like, not {type(buf).__name__}") from None
    except (BufferError, ValueError) as e:  # strided memoryviews, non-contiguous arrays
        raise ValueError(f"{where}: {what} must be a contiguous buffer ({e})") from None


def join_elements(
    items: BufferLike | Sequence[BufferLike], size: int, what: str, where: str
) -> tuple[Any, int]:
    """One C buffer over ``items`` (a flat bytes-like, or a sequence of elements) and its count.

    A flat buffer is passed without copying.
    """
    try:
        flat = ffi.from_buffer(items)
    except TypeError:
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise TypeError(
                f"{where}: {what} must be bytes-like or a sequence of bytes-like items, "
                f"not {type(items).__name__}"
            ) from None
        for i, item in enumerate(items):
            element(item, size, f"{what}[{i}]", where)
        return ffi.from_buffer(b"".join(items)), len(items)
    except (BufferError, ValueError) as e:
        raise ValueError(f"{where}: {what} must be a contiguous buffer ({e})") from None
    if len(flat) % size:
        raise ValueError(f"{where}: {what} buffer is {len(flat)} bytes, not a multiple of {size}")
    return flat, len(flat) // size


def batch_opts(elem_flags: int, flags: int, where: str) -> Any:
    """A ``struct bpf_map_batch_opts`` (NULL when both flags are 0)."""
    check_uint(elem_flags, "elem_flags", 64, where)
    check_uint(flags, "flags", 64, where)
    if not elem_flags and not flags:
        return _bindings.NULL
    opts = ffi.new("struct bpf_map_batch_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    opts.elem_flags = elem_flags
    opts.flags = flags
    return opts


def create_opts(
    map_flags: int,
    map_extra: int,
    inner_map_fd: int | None,
    numa_node: int | None,
    btf: tuple[int, int, int] | None = None,
) -> Any:
    """A filled ``struct bpf_map_create_opts``; numa_node also sets BPF_F_NUMA_NODE.

    ``btf`` is (btf_fd, btf_key_type_id, btf_value_type_id).
    """
    opts = ffi.new("struct bpf_map_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    opts.map_flags = map_flags
    opts.map_extra = map_extra
    if btf is not None:
        opts.btf_fd, opts.btf_key_type_id, opts.btf_value_type_id = btf
    if inner_map_fd is not None:
        opts.inner_map_fd = inner_map_fd
    if numa_node is not None:
        opts.numa_node = numa_node
        opts.map_flags |= lib.BPF_F_NUMA_NODE
    return opts


def read_map_info(fd: int) -> Any:
    """bpf_obj_get_info_by_fd() for a map fd: the filled ``struct bpf_map_info``."""
    info = ffi.new("struct bpf_map_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct bpf_map_info"))
    _bindings.bpf_obj_get_info_by_fd(fd, info, size)
    return info


def c_string(chars: Any) -> str:
    """A NUL-terminated char array (a kernel object name) as text."""
    return str(ffi.string(chars).decode(errors="replace"))
