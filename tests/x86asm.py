"""Assemble snippets of x86-64 code with GNU as (binutils, needed anyway to build the kernel)."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=64)
def assemble(source: str, base: int) -> tuple[bytes, dict[str, int]]:
    """Assemble AT&T `source` linked at `base`; returns (flat code, symbol addresses). Cached: the same snippet
    is often assembled for many machines (callers must not change the symbol dictionary)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "s.s").write_text(".text\n.globl _start\n_start:\n" + source + "\n")
        subprocess.run(["as", "--64", "-o", d / "s.o", d / "s.s"], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-N", "-Ttext", hex(base), "-e", "_start", "-o", d / "s.elf",
                        d / "s.o"], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", d / "s.elf", d / "s.bin"], check=True,
                       capture_output=True)
        symbols = {}
        for line in subprocess.run(["nm", d / "s.elf"], check=True, capture_output=True,
                                   text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                symbols[parts[2]] = int(parts[0], 16)
        return (d / "s.bin").read_bytes(), symbols


def assemble_kernel(source: str, path: Path, base: int = 0x40000) -> Path:
    """Assemble a tiny kernel (entry `_start`, with its symbol table) into an ELF file at `path`."""
    work = path.parent
    (work / "k.s").write_text(".text\n.globl _start\n_start:\n" + source + "\n")
    subprocess.run(["as", "--64", "-o", work / "k.o", work / "k.s"], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-N", "--no-warn-rwx-segments", "-Ttext", hex(base), "-e", "_start",
                    "-o", path, work / "k.o"], check=True, capture_output=True)
    return path
