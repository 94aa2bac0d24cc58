"""Thin bindings: one function per libbpf call, same name and arguments, errno to exceptions.

libbpf returns ``-errno``; every wrapper turns that into a :class:`BpfError` naming the call.
The caller owns the buffers (cffi cdata), so nothing here allocates on the hot path. ENOENT is
an answer, not an error, where the call uses it to say "no such key" or "end of map".
"""

from __future__ import annotations

import errno
from typing import Any

from ._libbpf import ffi, lib
from .errors import BpfError, error_from_errno

CData = Any
NULL = ffi.NULL


def _check(rc: int, op: str) -> int:
    if rc < 0:
        raise error_from_errno(-rc, op)
    return rc


def _at_end(rc: int, op: str) -> bool:
    """False for 0, True for -ENOENT (the walk is over), an exception for any other error."""
    if rc == 0:
        return False
    if rc == -errno.ENOENT:
        return True
    raise error_from_errno(-rc, op)


def _found(rc: int, op: str) -> bool:
    """True for 0, False for -ENOENT, an exception for any other error."""
    if rc == 0:
        return True
    if rc == -errno.ENOENT:
        return False
    raise error_from_errno(-rc, op)


def bpf_map_create(
    map_type: int,
    map_name: CData,
    key_size: int,
    value_size: int,
    max_entries: int,
    opts: CData = NULL,
) -> int:
    """bpf_map_create(): the new map's fd."""
    return _check(
        lib.bpf_map_create(map_type, map_name, key_size, value_size, max_entries, opts),
        "bpf_map_create",
    )


def bpf_map_update_elem(fd: int, key: CData, value: CData, flags: int = 0) -> None:
    """bpf_map_update_elem()."""
    _check(lib.bpf_map_update_elem(fd, key, value, flags), "bpf_map_update_elem")


def bpf_map_lookup_elem(fd: int, key: CData, value: CData) -> bool:
    """bpf_map_lookup_elem(): False when the key is missing."""
    return _found(lib.bpf_map_lookup_elem(fd, key, value), "bpf_map_lookup_elem")


def bpf_map_lookup_elem_flags(fd: int, key: CData, value: CData, flags: int) -> bool:
    """bpf_map_lookup_elem_flags(): False when the key is missing."""
    return _found(lib.bpf_map_lookup_elem_flags(fd, key, value, flags), "bpf_map_lookup_elem_flags")


def bpf_map_lookup_and_delete_elem(fd: int, key: CData, value: CData) -> bool:
    """bpf_map_lookup_and_delete_elem(): False when the key is missing."""
    return _found(
        lib.bpf_map_lookup_and_delete_elem(fd, key, value), "bpf_map_lookup_and_delete_elem"
    )


def bpf_map_delete_elem(fd: int, key: CData) -> bool:
    """bpf_map_delete_elem(): False when the key is missing."""
    return _found(lib.bpf_map_delete_elem(fd, key), "bpf_map_delete_elem")


def bpf_map_get_next_key(fd: int, key: CData, next_key: CData) -> bool:
    """bpf_map_get_next_key() (key NULL: the first key): False at the end of the map."""
    return _found(lib.bpf_map_get_next_key(fd, key, next_key), "bpf_map_get_next_key")


def bpf_map_lookup_batch(
    fd: int,
    in_batch: CData,
    out_batch: CData,
    keys: CData,
    values: CData,
    count: CData,
    opts: CData = NULL,
) -> bool:
    """bpf_map_lookup_batch(); ``count`` (``__u32 *``) is updated in place.

    Returns True when the kernel answered ENOENT: the walk is over, and ``count[0]`` still
    holds the elements this call returned.
    """
    rc = lib.bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, count, opts)
    return _at_end(rc, "bpf_map_lookup_batch")


def bpf_map_lookup_and_delete_batch(
    fd: int,
    in_batch: CData,
    out_batch: CData,
    keys: CData,
    values: CData,
    count: CData,
    opts: CData = NULL,
) -> bool:
    """bpf_map_lookup_and_delete_batch(); ``count`` is updated in place.

    Returns True when the kernel answered ENOENT: the map has no more elements, and
    ``count[0]`` still holds those this call returned (and deleted).
    """
    rc = lib.bpf_map_lookup_and_delete_batch(fd, in_batch, out_batch, keys, values, count, opts)
    return _at_end(rc, "bpf_map_lookup_and_delete_batch")


def bpf_map_update_batch(
    fd: int, keys: CData, values: CData, count: CData, opts: CData = NULL
) -> None:
    """bpf_map_update_batch(); on error ``count[0]`` is the number applied before it."""
    _check(lib.bpf_map_update_batch(fd, keys, values, count, opts), "bpf_map_update_batch")


def bpf_map_delete_batch(fd: int, keys: CData, count: CData, opts: CData = NULL) -> None:
    """bpf_map_delete_batch(); on error ``count[0]`` is the number deleted before it."""
    _check(lib.bpf_map_delete_batch(fd, keys, count, opts), "bpf_map_delete_batch")


def bpf_obj_pin(fd: int, pathname: bytes) -> None:
    """bpf_obj_pin()."""
    _check(lib.bpf_obj_pin(fd, pathname), "bpf_obj_pin")


def bpf_obj_get(pathname: bytes) -> int:
    """bpf_obj_get(): a new fd for the pinned object."""
    return _check(lib.bpf_obj_get(pathname), "bpf_obj_get")


def bpf_map_get_next_id(start_id: int, next_id: CData) -> bool:
    """bpf_map_get_next_id(): False when there is no map id above ``start_id``."""
    return _found(lib.bpf_map_get_next_id(start_id, next_id), "bpf_map_get_next_id")


def bpf_map_get_fd_by_id(map_id: int) -> int:
    """bpf_map_get_fd_by_id(): a new fd for the map."""
    return _check(lib.bpf_map_get_fd_by_id(map_id), "bpf_map_get_fd_by_id")


def bpf_btf_get_fd_by_id(btf_id: int) -> int:
    """bpf_btf_get_fd_by_id(): a new fd for the BTF object."""
    return _check(lib.bpf_btf_get_fd_by_id(btf_id), "bpf_btf_get_fd_by_id")


def bpf_obj_get_info_by_fd(bpf_fd: int, info: CData, info_len: CData) -> None:
    """bpf_obj_get_info_by_fd(); ``info_len`` (``__u32 *``) is updated in place."""
    _check(lib.bpf_obj_get_info_by_fd(bpf_fd, info, info_len), "bpf_obj_get_info_by_fd")


def libbpf_num_possible_cpus() -> int:
    """libbpf_num_possible_cpus(): CPUs in /sys/devices/system/cpu/possible."""
    return _check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def libbpf_version_string() -> str:
    """libbpf_version_string(), e.g. 'v1.1'."""
    return str(ffi.string(lib.libbpf_version_string()).decode())


# Our C loops (build_ffi.py), bound to the C functions themselves, not wrapped: a Python
# frame in between would let a signal handler raise after the caller decided to put elements
# back and before they are. lbb_put_back(fd, keys, values, key_size, value_stride, n, mode,
# errs) -> restored; lbb_per_key_batch(fd, key, next_key, state, delete, keys, values,
# key_size, value_stride, max_count, count) -> 1 at the end, 0, or -errno.
lbb_put_back = lib.lbb_put_back
lbb_per_key_batch = lib.lbb_per_key_batch
lbb_close_fd = lib.lbb_close_fd  # lbb_close_fd(int *fd): closes *fd once, sets it to -1
lbb_write = lib.lbb_write  # lbb_write(fd, buf, len, long *written): one write(2), kept in *written


def _pointer(ptr: CData, op: str) -> CData:
    """libbpf 1.x returns NULL and sets errno for a failed constructor."""
    if ptr == NULL:
        raise error_from_errno(ffi.errno or errno.EINVAL, op)
    return ptr


def bpf_object__open_file(path: bytes, opts: CData = NULL) -> CData:
    """bpf_object__open_file(): a ``struct bpf_object *``."""
    return _pointer(lib.bpf_object__open_file(path, opts), "bpf_object__open_file")


def bpf_object__load(obj: CData) -> None:
    """bpf_object__load()."""
    _check(lib.bpf_object__load(obj), "bpf_object__load")


def bpf_object__close(obj: CData) -> None:
    """bpf_object__close()."""
    lib.bpf_object__close(obj)


def bpf_object__find_map_by_name(obj: CData, name: bytes) -> CData:
    """bpf_object__find_map_by_name(): a ``struct bpf_map *``."""
    return _pointer(lib.bpf_object__find_map_by_name(obj, name), "bpf_object__find_map_by_name")


def bpf_object__find_program_by_name(obj: CData, name: bytes) -> CData:
    """bpf_object__find_program_by_name(): a ``struct bpf_program *``."""
    return _pointer(
        lib.bpf_object__find_program_by_name(obj, name), "bpf_object__find_program_by_name"
    )


def bpf_map__fd(bpf_map: CData) -> int:
    """bpf_map__fd(): the fd libbpf owns (valid until the object is closed)."""
    return _check(lib.bpf_map__fd(bpf_map), "bpf_map__fd")


def bpf_program__fd(prog: CData) -> int:
    """bpf_program__fd(): the fd libbpf owns (valid until the object is closed)."""
    return _check(lib.bpf_program__fd(prog), "bpf_program__fd")


def bpf_program__attach(prog: CData) -> CData:
    """bpf_program__attach(): a ``struct bpf_link *`` (auto-attach from the SEC() name)."""
    return _pointer(lib.bpf_program__attach(prog), "bpf_program__attach")


def bpf_link__destroy(link: CData) -> None:
    """bpf_link__destroy()."""
    _check(lib.bpf_link__destroy(link), "bpf_link__destroy")


def btf__load_from_kernel_by_id(btf_id: int) -> CData:
    """btf__load_from_kernel_by_id(): a ``struct btf *`` to free with btf__free()."""
    return _pointer(lib.btf__load_from_kernel_by_id(btf_id), "btf__load_from_kernel_by_id")


def btf__free(btf: CData) -> None:
    """btf__free()."""
    lib.btf__free(btf)


def btf__raw_data(btf: CData) -> bytes:
    """btf__raw_data(): the BTF blob (header, types, strings) as bytes."""
    size = ffi.new("__u32 *")
    data = _pointer(lib.btf__raw_data(btf, size), "btf__raw_data")
    return bytes(ffi.buffer(data, size[0]))


__all__ = [
    "NULL",
    "BpfError",
    "CData",
    "bpf_link__destroy",
    "bpf_map__fd",
    "bpf_map_create",
    "bpf_map_delete_batch",
    "bpf_map_delete_elem",
    "bpf_map_get_fd_by_id",
    "bpf_map_get_next_id",
    "bpf_map_get_next_key",
    "bpf_map_lookup_and_delete_batch",
    "bpf_map_lookup_and_delete_elem",
    "bpf_map_lookup_batch",
    "bpf_map_lookup_elem",
    "bpf_map_lookup_elem_flags",
    "bpf_map_update_batch",
    "bpf_map_update_elem",
    "bpf_obj_get",
    "bpf_obj_get_info_by_fd",
    "bpf_obj_pin",
    "bpf_object__close",
    "bpf_object__find_map_by_name",
    "bpf_object__find_program_by_name",
    "bpf_object__load",
    "bpf_object__open_file",
    "bpf_program__attach",
    "bpf_program__fd",
    "btf__free",
    "btf__load_from_kernel_by_id",
    "btf__raw_data",
    "lbb_close_fd",
    "lbb_per_key_batch",
    "lbb_put_back",
    "lbb_write",
    "libbpf_num_possible_cpus",
    "libbpf_version_string",
]
