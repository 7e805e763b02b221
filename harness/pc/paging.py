"""The x86-64 4-level page walker, run on the host over guest RAM.

The harness needs to read guest memory by virtual address (IDT, GDT, TSS, stacks, strings, backtraces) without
going through Unicorn, whose own translator checks permissions at the CPU's current privilege level and
overwrites CR2 when it fails. Guest RAM is host memory, so a walk is four `unpack_from` calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_PS = 1 << 7
PTE_NX = 1 << 63
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000

# Page-fault error-code bits
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_FETCH = 1 << 4

_u64 = struct.Struct("<Q")


class PageFault(Exception):
    """A walk that the hardware would turn into #PF: `error_code` as the CPU would push it."""

    def __init__(self, address: int, error_code: int) -> None:
        super().__init__(f"page fault at {address:#x} (error {error_code:#x})")
        self.address = address
        self.error_code = error_code


class PhysicalFault(Exception):
    """A page-table entry or access points outside guest RAM."""

    def __init__(self, address: int) -> None:
        super().__init__(f"physical address {address:#x} is outside RAM")
        self.address = address


@dataclass(frozen=True, slots=True)
class Mapping:
    """Where one virtual address lands, with the permissions accumulated over all levels."""

    va: int
    pa: int
    page_size: int
    writable: bool
    user: bool
    executable: bool


def walk(mem: memoryview, cr3: int, va: int) -> Mapping | None:
    """Translate `va` through the page table at `cr3`; None if it is not mapped."""
    table = cr3 & ADDRESS_MASK
    writable = user = executable = True
    size = len(mem)
    for shift in (39, 30, 21, 12):
        slot = table + ((va >> shift) & 511) * 8
        if slot + 8 > size:
            raise PhysicalFault(slot)
        entry = _u64.unpack_from(mem, slot)[0]
        if not entry & PTE_P:
            return None
        writable = writable and bool(entry & PTE_W)
        user = user and bool(entry & PTE_U)
        executable = executable and not entry & PTE_NX
        if shift in (30, 21) and entry & PTE_PS:
            page = 1 << shift
            base = entry & ADDRESS_MASK & ~(page - 1)
            return Mapping(va, base | (va & (page - 1)), page, writable, user, executable)
        table = entry & ADDRESS_MASK
    return Mapping(va, table | (va & 0xFFF), 4096, writable, user, executable)


def translate(mem: memoryview, cr3: int, va: int, *, write: bool = False, user: bool = False,
              write_protect: bool = True) -> int:
    """Translate like the CPU does for one access, raising PageFault with the hardware error code."""
    mapping = walk(mem, cr3, va)
    error = (PF_WRITE if write else 0) | (PF_USER if user else 0)
    if mapping is None:
        raise PageFault(va, error)
    if (user and not mapping.user) or (write and not mapping.writable and (user or write_protect)):
        raise PageFault(va, error | PF_PRESENT)
    return mapping.pa


def read_virtual(mem: memoryview, cr3: int, va: int, length: int, *, user: bool = False) -> bytes:
    """Read `length` bytes at virtual `va`, page by page (a range may cross pages with different frames)."""
    out = bytearray()
    while length > 0:
        pa = translate(mem, cr3, va, user=user)
        chunk = min(length, 4096 - (va & 0xFFF))
        if pa + chunk > len(mem):
            raise PhysicalFault(pa)
        out += mem[pa:pa + chunk]
        va += chunk
        length -= chunk
    return bytes(out)


def write_virtual(mem: memoryview, cr3: int, va: int, data: bytes, *, user: bool = False) -> None:
    """Write `data` at virtual `va` with the permission checks of a supervisor (or user) store."""
    offset = 0
    while offset < len(data):
        pa = translate(mem, cr3, va + offset, write=True, user=user)
        chunk = min(len(data) - offset, 4096 - ((va + offset) & 0xFFF))
        if pa + chunk > len(mem):
            raise PhysicalFault(pa)
        mem[pa:pa + chunk] = data[offset:offset + chunk]
        offset += chunk


def read_u64(mem: memoryview, cr3: int, va: int) -> int:
    return _u64.unpack_from(read_virtual(mem, cr3, va, 8))[0]


def read_cstring(mem: memoryview, cr3: int, va: int, limit: int = 256) -> bytes | None:
    """The NUL-terminated string at `va` (at most `limit` bytes), or None if unmapped or unterminated."""
    out = bytearray()
    try:
        while len(out) < limit:
            chunk = read_virtual(mem, cr3, va + len(out), min(limit - len(out), 4096 - ((va + len(out)) & 0xFFF)))
            end = chunk.find(b"\0")
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
    except (PageFault, PhysicalFault):
        return None
    return None


LEVEL_NAMES = ("L4 (PML4)", "L3 (PDPT)", "L2 (page directory)", "L1 (page table)")


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One page-table entry visited by a walk."""

    level: str
    index: int
    entry_address: int  # physical address of the entry
    entry: int

    @property
    def flags(self) -> str:
        names = [("P", PTE_P), ("W", PTE_W), ("U", PTE_U), ("PS", PTE_PS)]
        shown = [name for name, bit in names if self.entry & bit]
        if self.entry & PTE_NX:
            shown.append("NX")
        return "|".join(shown) or "-"


def walk_steps(mem: memoryview, cr3: int, va: int) -> tuple[list[WalkStep], str | None]:
    """The entries a walk of `va` visits, and why it stopped early (None if it reached a page).

    A walk stops at a non-present entry, or is refused (for the access the caller checks) at the first level
    without U or W; this lists every level it read so a trace can show which entry decided the fault.
    """
    table = cr3 & ADDRESS_MASK
    steps: list[WalkStep] = []
    for depth, shift in enumerate((39, 30, 21, 12)):
        index = (va >> shift) & 511
        slot = table + index * 8
        if slot + 8 > len(mem):
            return steps, f"{LEVEL_NAMES[depth]} table at {table:#x} lies outside RAM"
        entry = _u64.unpack_from(mem, slot)[0]
        steps.append(WalkStep(LEVEL_NAMES[depth], index, slot, entry))
        if not entry & PTE_P:
            return steps, f"{LEVEL_NAMES[depth]} entry {index} is not present"
        if shift in (30, 21) and entry & PTE_PS:
            return steps, None
        table = entry & ADDRESS_MASK
    return steps, None
