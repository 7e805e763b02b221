#!/usr/bin/env python3
"""compact-elf.py IN OUT: rewrite an ELF executable with its segments packed together.

Course mode (kernel-course) embeds the programs in the kernel image, which must end below the
kernel stack at 0x7F000. A linked program keeps each segment at a page-aligned file offset and
carries debug sections; the kernel's loader needs neither. The output keeps the ELF header, the
program headers (at offset 64) and each segment's file bytes, placed at the next offset congruent
to its address modulo 16 (so p_align becomes 16). No section headers. Standard library only.
"""

import struct
import sys

HEADER = 64
PHDR = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
ALIGN = 16


def compact(data: bytes) -> bytes:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize != PHDR.size:
        raise ValueError(f"program header size {phentsize}, expected {PHDR.size}")
    headers = [list(PHDR.unpack_from(data, phoff + i * PHDR.size)) for i in range(phnum)]
    body = bytearray()
    position = HEADER + phnum * PHDR.size
    for ph in headers:
        offset, vaddr, filesz = ph[2], ph[3], ph[5]
        if filesz == 0:
            ph[2] = 0
            continue
        if offset + filesz > len(data):
            raise ValueError("segment outside the file")
        gap = (vaddr - position) % ALIGN
        body += bytes(gap) + data[offset:offset + filesz]
        ph[2] = position + gap
        ph[7] = ALIGN
        position += gap + filesz
    out = bytearray(data[:HEADER])
    struct.pack_into("<Q", out, 32, HEADER)  # e_phoff
    struct.pack_into("<Q", out, 40, 0)  # e_shoff: no sections
    struct.pack_into("<HH", out, 60, 0, 0)  # e_shnum, e_shstrndx
    for ph in headers:
        out += PHDR.pack(*ph)
    return bytes(out + body)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: compact-elf.py IN OUT", file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], "rb") as f:
            data = compact(f.read())
        with open(sys.argv[2], "wb") as f:
            f.write(data)
    except (OSError, ValueError, struct.error) as e:
        print(f"compact-elf: {sys.argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
