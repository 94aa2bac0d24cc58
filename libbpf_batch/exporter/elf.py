"""The programs of a BPF object file, read from its ELF symbol table: (name, section) pairs.

libbpf names a program after its function symbol and attaches it by its section (``SEC()``);
the exporter attaches every program of an object, as ebpf_exporter does.
"""

from __future__ import annotations

import struct
from pathlib import Path

SHF_EXECINSTR = 0x4
STT_FUNC = 2
STB_GLOBAL = 1
SHT_SYMTAB = 2


def programs(path: str | Path) -> list[tuple[str, str]]:
    """Every program of the ELF64 BPF object at ``path``, in symbol table order."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not a 64-bit ELF object")
    order = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    sections = [
        struct.unpack_from(order + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]

    def name_at(table: int, off: int) -> str:
        start = sections[table][4] + off
        return data[start : data.index(b"\0", start)].decode()

    out = []
    for sec in sections:
        if sec[1] != SHT_SYMTAB:
            continue
        strtab, entsize, offset, size = sec[6], sec[9], sec[4], sec[5]
        for pos in range(offset, offset + size, entsize):
            st_name, st_info, _other, st_shndx = struct.unpack_from(order + "IBBH", data, pos)
            if st_info & 0xF != STT_FUNC or st_info >> 4 != STB_GLOBAL:
                continue
            if not 0 < st_shndx < shnum or not sections[st_shndx][2] & SHF_EXECINSTR:
                continue
            section = name_at(shstrndx, sections[st_shndx][0])
            if section != ".text":
                out.append((name_at(strtab, st_name), section))
    return out


__all__ = ["programs"]
