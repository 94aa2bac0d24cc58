"""libbpf-batch: read and drain eBPF maps batch by batch with libbpf's batch calls."""

from .batch import DEFAULT_BATCH_SIZE, Batch
from .errors import (
    ENOTSUPP, BatchNotSupportedError, BpfError, BpfNotFoundError, BpfPermissionError,
    NotAMapError,
)
from .maps import ElemFlags, Map, MapFlags, MapInfo, MapType, map_ids, possible_cpus
from .btf import Btf, BtfError, MapDecoder
from .objects import BpfObject, Link

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BATCH_SIZE", "ENOTSUPP", "Batch", "BatchNotSupportedError", "BpfError",
    "BpfNotFoundError", "BpfPermissionError", "ElemFlags", "Map", "MapFlags", "MapInfo",
    "MapType", "NotAMapError", "map_ids", "possible_cpus", "__version__",
    "BpfObject", "Btf", "BtfError", "Link", "MapDecoder",
]
