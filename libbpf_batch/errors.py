"""Exceptions: every kernel error is a BpfError (an OSError) that keeps the kernel's errno."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .batch import Batch

T = TypeVar("T")

ENOTSUPP = 524
"""Kernel-internal errno that leaks to user space for a missing map op; not ENOTSUP/EOPNOTSUPP."""


class BpfError(OSError):
    """A libbpf call failed; ``errno`` is the kernel's and the message names the call and map.

    ``count``, where set, is how many elements the call applied (update/delete batches) before
    the failure. ``batch``, where set, holds the elements a failing lookup(-and-delete) batch
    call still returned (and deleted).
    """

    errno: int  # always set: every BpfError is made with the kernel's errno
    count: int | None = None
    batch: Batch | None = None
    op: str = ""

    def at(self, where: str, detail: str = "") -> BpfError:
        """This error again, its message naming ``where`` (a map, a path) and ``detail``."""
        err = error_from_errno(
            self.errno, self.op or "bpf", f"{where}: {detail}" if detail else where
        )
        err.count, err.batch = self.count, self.batch
        return err


class BpfNotFoundError(BpfError, FileNotFoundError):
    """ENOENT: no such map, pin, id or key."""


class BpfPermissionError(BpfError, PermissionError):
    """EPERM or EACCES: the caller lacks CAP_BPF/CAP_SYS_ADMIN or the fd's mode forbids it."""


class BatchNotSupportedError(BpfError):
    """The kernel has no such operation for this map type (ENOTSUPP 524, EOPNOTSUPP)."""


class NotAMapError(BpfError, ValueError):
    """The file descriptor or pin is a BPF object, or a file, that is not a map (EINVAL)."""


class PutBackError(BpfError):
    """Elements a drain deleted and could not deliver also could not go back into the map.

    ``lost`` is how many, ``keys`` which (bytes), ``errno`` the first failure's (E2BIG: the
    map filled up meanwhile). Raised from the interruption that made them undeliverable, which
    is its ``__context__``; nothing is lost silently.
    """

    lost: int = 0
    keys: list[bytes]

    @classmethod
    def of(cls, err: int, where: str, keys: list[bytes]) -> PutBackError:
        """The error for ``keys`` that ``where`` (a map) refused with ``err``."""
        shown = ", ".join(k.hex() for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        e = cls(
            err,
            f"put back: {where}: {len(keys)} drained elements could not be put back and are "
            f"lost (keys {shown}): {strerror(err)}",
        )
        e.op, e.lost, e.keys = "put back", len(keys), keys
        return e


_CLASS_BY_ERRNO: dict[int, type[BpfError]] = {
    errno.ENOENT: BpfNotFoundError,
    errno.EPERM: BpfPermissionError,
    errno.EACCES: BpfPermissionError,
    ENOTSUPP: BatchNotSupportedError,
    errno.EOPNOTSUPP: BatchNotSupportedError,
}


def strerror(err: int) -> str:
    """os.strerror(), with a name for ENOTSUPP instead of 'Unknown error 524'."""
    if err == ENOTSUPP:
        return "Operation not supported for this map type (ENOTSUPP)"
    return os.strerror(err)


def error_from_errno(err: int, op: str, where: str = "") -> BpfError:
    """The BpfError subclass for ``err``, with a message naming ``op`` and ``where``."""
    subject = f"{op}: {where}" if where else op
    e = _CLASS_BY_ERRNO.get(err, BpfError)(err, f"{subject}: {strerror(err)}")
    e.op = op
    return e


def named_call(where: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a BpfError it raises naming ``where``: the one way errors get context."""
    try:
        return fn(*args)
    except BpfError as e:
        raise e.at(where) from None
