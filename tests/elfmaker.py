"""Build small ELF files byte by byte, so loader tests can break exactly one thing at a time."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EHDR_SIZE = 64
PHDR_SIZE = 56


@dataclass
class ElfSpec:
    elf_class: int = 2  # 1 = 32-bit, 2 = 64-bit
    data: int = 1  # little-endian
    e_type: int = 2  # ET_EXEC
    machine: int = 62  # EM_X86_64
    entry: int = 0x40000
    # (vaddr, paddr, flags, payload, memsz)
    segments: list[tuple[int, int, int, bytes, int]] = field(
        default_factory=lambda: [(0x40000, 0x40000, 5, b"\xf4" * 16, 0x1000)])


def make_elf(spec: ElfSpec | None = None) -> bytes:
    spec = spec or ElfSpec()
    phoff = EHDR_SIZE
    data_start = phoff + PHDR_SIZE * len(spec.segments)
    ident = b"\x7fELF" + bytes([spec.elf_class, spec.data, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", spec.e_type, spec.machine, 1, spec.entry, phoff, 0, 0,
                                 EHDR_SIZE, PHDR_SIZE, len(spec.segments), 64, 0, 0)
    phdrs = b""
    payloads = b""
    offset = data_start
    for vaddr, paddr, flags, payload, memsz in spec.segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, flags, offset, vaddr, paddr, len(payload), memsz, 0x1000)
        payloads += payload
        offset += len(payload)
    return header + phdrs + payloads
