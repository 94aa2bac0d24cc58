"""libbpf-batch: read and drain eBPF maps batch by batch with libbpf's batch calls."""

from ._cdata import Layout
from .batch import DEFAULT_BATCH_SIZE, Batch
from .btf import Btf, BtfError, MapDecoder
from .double_buffer import DoubleBufferedMap, get_include, is_double_buffered
from .errors import (
    ENOTSUPP,
    BatchNotSupportedError,
    BpfError,
    BpfNotFoundError,
    BpfPermissionError,
    NotAMapError,
    PutBackError,
)
from .maps import ElemFlags, Map, MapFlags, MapInfo, MapType, map_ids, possible_cpus
from .objects import BpfObject, Link

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (setuptools dynamic attr)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ENOTSUPP",
    "Batch",
    "BatchNotSupportedError",
    "BpfError",
    "BpfNotFoundError",
    "BpfObject",
    "BpfPermissionError",
    "Btf",
    "BtfError",
    "DoubleBufferedMap",
    "ElemFlags",
    "Layout",
    "Link",
    "Map",
    "MapDecoder",
    "MapFlags",
    "MapInfo",
    "MapType",
    "NotAMapError",
    "PutBackError",
    "__version__",
    "get_include",
    "is_double_buffered",
    "map_ids",
    "possible_cpus",
]
