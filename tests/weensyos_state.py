"""Reading our WeensyOS kernel's state from the outside, as a debugger would: its symbols and guest RAM.

Tests use this to check what the kernel claims (its log, the memory viewer) against what is really in memory:
the physical page table `physpages`, the process table `ptable`, and each process's page table.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from harness.machine import Machine
from harness.pc.paging import walk

NPAGES = 512  # MEMSIZE_PHYSICAL / PAGESIZE
PAGESIZE = 4096
NPROC = 16
PROC_START_ADDR = 0x100000
MEMSIZE_VIRTUAL = 0x300000
CONSOLE_ADDR = 0xB8000
PO_FREE, PO_RESERVED, PO_KERNEL = 0, -1, -2
P_FREE = 0


def _symbol(machine: Machine, name: str) -> tuple[int, int]:
    address = machine.symbols.address_of(name)
    assert address is not None, f"kernel has no symbol {name}"
    symbol = machine.symbols.lookup(address)
    assert symbol is not None and symbol.size
    return address, symbol.size


def page_owners(machine: Machine) -> list[int]:
    """`physpages[pn].owner` for every physical page: a pid, or PO_FREE / PO_RESERVED / PO_KERNEL."""
    address, size = _symbol(machine, "physpages")
    assert size == NPAGES * 2, "struct physpageinfo is {int8_t owner; uint8_t refcount;}"
    return [struct.unpack_from("<b", machine.memory, address + 2 * pn)[0] for pn in range(NPAGES)]


def free_pages(machine: Machine) -> int:
    """How many physical pages the kernel's allocator holds free, counted from physpages itself."""
    return page_owners(machine).count(PO_FREE)


@dataclass(frozen=True)
class Process:
    pid: int
    state: int
    pagetable: int  # physical address of the top-level page table


def processes(machine: Machine) -> dict[int, Process]:
    """Live slots of `ptable` (struct proc: pagetable at 0, pid at 8, state at 12; fixed by the kernel)."""
    address, size = _symbol(machine, "ptable")
    stride = size // NPROC
    out = {}
    for slot in range(1, NPROC):
        base = address + slot * stride
        pagetable, pid, state = struct.unpack_from("<Qii", machine.memory, base)
        if state != P_FREE:
            out[pid] = Process(pid, state, pagetable)
    return out


@dataclass(frozen=True)
class Mapping:
    va: int
    pa: int
    writable: bool
    user: bool


def mappings(machine: Machine, pagetable: int) -> list[Mapping]:
    """Every present 4 KiB mapping of [0, MEMSIZE_VIRTUAL) in the page table at `pagetable`."""
    out = []
    for va in range(0, MEMSIZE_VIRTUAL, PAGESIZE):
        m = walk(machine.memory, pagetable, va)
        if m is not None:
            out.append(Mapping(va, m.pa & ~(PAGESIZE - 1), m.writable, m.user))
    return out


# -- the kernel's log --------------------------------------------------------------------------------------------

EXIT_RE = re.compile(r"process (\d+) \((\w+)\) exited with status (-?\d+); free pages (\d+)$")


def baseline_free_pages(machine: Machine) -> int:
    """The free-page count the kernel logs once it is up, before any process starts."""
    for line in machine.log.lines():
        m = re.fullmatch(r"weensyos: (\d+) free pages", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no 'weensyos: N free pages' line in the log")


def exits(machine: Machine) -> list[tuple[int, str, int, int]]:
    """(pid, name, status, free pages after) for every process exit in the log, in order."""
    return [(int(m[1]), m[2], int(m[3]), int(m[4]))
            for m in map(EXIT_RE.match, machine.log.lines()) if m]


def pagetable_pages(machine: Machine, pagetable: int) -> set[int]:
    """Physical addresses of every page-table page of the lower half of `pagetable`, the top level included."""
    out = {pagetable}

    def visit(table: int, level: int, entries: int) -> None:
        for i in range(entries):
            entry = struct.unpack_from("<Q", machine.memory, table + 8 * i)[0]
            if entry & 1 and not (level < 3 and entry & 0x80) and level > 0:
                child = entry & 0x000F_FFFF_FFFF_F000
                out.add(child)
                visit(child, level - 1, 512)

    visit(pagetable, 3, 256)
    return out
