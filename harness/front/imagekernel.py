"""Which kernel ELF gives symbols for a disk image's kernel.

A disk image carries its kernel without symbols or DWARF (only what the loader needs). When the image was
made from our build, the build's own kernel ELF has exactly the same loadable bytes: its symbols then name
functions and, through DWARF, the kernel's `current` and `ptable`, so a trace of the image can say which
process did what.
"""

from __future__ import annotations

from ..pc.errors import HarnessError
from ..pc.loader import ElfImage, find_kernel_in_image, read_elf
from ..pc.symbols import SymbolTable
from ..project import BuildTree


def _loadable(image: ElfImage) -> list[tuple[int, int, bytes]]:
    return [(seg.vaddr, seg.memsz, image.data[seg.offset:seg.offset + seg.filesz]) for seg in image.segments]


def symbols_for_image(disk: bytes, tree: BuildTree) -> ElfImage | None:
    """The kernel ELF with symbols for a disk image's kernel: the image's own if it has them, else a kernel of
    the build (`kernel`, `kernel-course`) whose loadable bytes are the image's; None if neither."""
    embedded = find_kernel_in_image(disk)
    if embedded is None:
        return None
    if SymbolTable.from_elf(embedded.data).symbols:
        return embedded
    for path in (tree.kernel, tree.directory / "kernel-course"):
        if path.is_file():
            try:
                candidate = read_elf(path, "kernel")
            except HarnessError:
                continue
            if _loadable(candidate) == _loadable(embedded):
                return candidate
    return None
