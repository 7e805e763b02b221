"""The isolation auditor: after every return to user mode, check every process's page table from outside.

Rules (each violation names the process, the mapping and the rule):
1. no kernel page (other than the console page) is user-accessible;
2. no page-table page is user-accessible;
3. no physical page is writable by two processes;
4. every user page a process maps is owned by that process (in the kernel's own `physpages`);
5. no freed page is still mapped for user access;
6. a process resumes with the x87/MMX/SSE registers and FS/GS it entered the kernel with, and starts with a
   clean set or its creator's (regaudit.py).

It reads the process table (`ptable`: pid and page table of each process) and page ownership (`physpages`)
through the kernel's ELF symbols and DWARF, like the tracer, so it needs no help from the kernel; the kernel's
own pages are those it marks as kernel or reserved, plus every page of the kernel image. The first violation
stops the run (`StopKind.ISOLATION`) with the event that led to it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, Uc

from ..pc.paging import ADDRESS_MASK, PTE_P, PTE_PS, PTE_U, PTE_W
from .kernelview import KernelView, PageAccounting, ProcInfo
from .regaudit import RegisterAuditor

if TYPE_CHECKING:
    from ..pc.board import Board

CONSOLE_PAGE = 0xB8000
OWNER_FREE = 0
OWNER_KERNEL = -2
OWNER_RESERVED = -1
_ENTRIES = struct.Struct("<512Q")
_PRESENT_BYTE = bytes(byte & PTE_P for byte in range(256))  # an entry's low byte -> 1 if present, else 0
PTE_A = 1 << 5  # accessed and dirty: set by the CPU as a process runs, never read by the walk
PTE_D = 1 << 6
REGISTERS_RULE = "registers not private"


@dataclass(frozen=True)
class Violation:
    rule: str
    pid: int
    va: int
    pa: int
    detail: str

    def __str__(self) -> str:
        if self.rule == REGISTERS_RULE:
            return f"isolation violation ({self.rule}): pid {self.pid}: {self.detail}"
        return (f"isolation violation ({self.rule}): pid {self.pid} maps VA {self.va:#x} -> PA {self.pa:#x}: "
                f"{self.detail}")


@dataclass(frozen=True)
class Leaf:
    va: int
    pa: int
    size: int
    user: bool
    writable: bool


LeafCache = dict[tuple[int, int, bool, bool], tuple[bytes, list[Leaf]]]


def user_mappings(memory: memoryview, top: int, cache: LeafCache | None = None) -> tuple[list[Leaf], set[int]]:
    """Every present leaf mapping in the lower (user) half of a page table, and the page-table pages.

    The graders walk every live page table at every return to user mode, and a table holds a handful of present
    entries among 512: the present ones are found from the entries' low bytes (a strided copy and a translation,
    in C), so Python looks only at those. With a `cache` (one per walker), a last-level table whose bytes have
    not changed since the last walk gives the same leaves again without being read entry by entry."""
    leaves: list[Leaf] = []
    tables = {top & ADDRESS_MASK}

    def visit(table: int, level: int, base: int, user: bool, writable: bool) -> None:
        if table + 4096 > len(memory):
            return
        if level == 0 and cache is not None:
            key = (table, base, user, writable)
            raw = memory[table:table + 4096]
            known = cache.get(key)
            if known is not None and known[0] == raw:
                leaves.extend(known[1])
                return
            first = len(leaves)
            read(table, level, base, user, writable)
            cache[key] = (bytes(raw), leaves[first:])
            return
        read(table, level, base, user, writable)

    def read(table: int, level: int, base: int, user: bool, writable: bool) -> None:
        limit = 256 if level == 3 else 512  # the top level: user half only
        present = bytes(memory[table:table + limit * 8:8]).translate(_PRESENT_BYTE)
        index = present.find(1)
        if index < 0:
            return
        entries = _ENTRIES.unpack_from(memory, table)
        span = 1 << (12 + 9 * level)
        while index >= 0:
            entry = entries[index]
            va = base + index * span
            u = user and bool(entry & PTE_U)
            w = writable and bool(entry & PTE_W)
            if level == 0 or (level in (1, 2) and entry & PTE_PS):
                leaves.append(Leaf(va, entry & ADDRESS_MASK & ~(span - 1), span, u, w))
            else:
                child = entry & ADDRESS_MASK
                tables.add(child)
                visit(child, level - 1, va, u, w)
            index = present.find(1, index + 1)

    visit(top & ADDRESS_MASK, 3, 0, True, True)
    return leaves, tables


@dataclass(frozen=True)
class Walk:
    """One page table's walk, and the contents of every table page it read: while those bytes are the same, the
    walk is too (a process's page table changes far less often than it returns to user mode)."""

    leaves: list[Leaf]
    tables: set[int]
    contents: tuple[tuple[int, bytes, int], ...]  # (table page, its bytes, its bits but accessed and dirty bits)

    def still_valid(self, memory: memoryview) -> bool:
        return all(memory[table:table + 4096].tobytes() == data or _walked_bits(memory, table) == bits
                   for table, data, bits in self.contents)


# Every bit of a table page but each entry's accessed and dirty bits, which the CPU sets as the process runs and
# the walk ignores: one integer operation over the page.
_WALKED_BITS = int.from_bytes(struct.pack("<Q", ~(PTE_A | PTE_D) & (1 << 64) - 1) * 512, "little")


def _walked_bits(memory: memoryview, table: int) -> int:
    return int.from_bytes(memory[table:table + 4096], "little") & _WALKED_BITS


def walk_user_mappings(memory: memoryview, top: int, cache: LeafCache | None = None) -> Walk:
    leaves, tables = user_mappings(memory, top, cache)
    contents = tuple((table, memory[table:table + 4096].tobytes(), _walked_bits(memory, table))
                     for table in sorted(tables) if table + 4096 <= len(memory))
    return Walk(leaves, tables, contents)


AuditInput = tuple[list[tuple[int, "Walk"]], "list[int] | None"]  # (pid and walk of each process, page owners)


def _same_audit(before: AuditInput | None, processes: list[tuple[int, Walk]], owners: list[int] | None) -> bool:
    """The page rules would see exactly what they saw last time (the walks are the same objects, kept alive by
    `before`), so their answer is the same."""
    if before is None or before[1] != owners or len(before[0]) != len(processes):
        return False
    return all(pid == old_pid and walk is old_walk for (pid, walk), (old_pid, old_walk) in zip(processes, before[0],
                                                                                                  strict=True))


def kernel_views(machine: Board) -> tuple[KernelView, PageAccounting, set[int]]:
    """What a judge of page tables reads of the kernel: its process table and its page accounting (through
    DWARF), and the physical pages its own image occupies (which no process may map user-accessible)."""
    image = machine.kernel_image
    data = image.data if image is not None else None
    image_pages: set[int] = set()
    for seg in image.segments if image is not None else ():
        image_pages.update(range(seg.paddr & ~0xFFF, seg.paddr + seg.memsz, 0x1000))
    return KernelView(machine.memory, machine.symbols, data), PageAccounting(machine.memory, machine.symbols, data), \
        image_pages


class IsolationAuditor:
    def __init__(self, machine: Board) -> None:
        self.machine = machine
        self.kernel, self.pages, self.kernel_image_pages = kernel_views(machine)
        self.audits = 0
        if not self.kernel.available or self.kernel.nproc == 0:
            raise RuntimeError("the auditor needs the kernel's `current` and `ptable` symbols (and DWARF)")
        self.registers = RegisterAuditor(machine.cpu)
        self._syscall_entry: int | None = None
        self._walks: dict[int, Walk] = {}  # page-table root -> its last walk (for the live processes only)
        self._leaf_cache: LeafCache | None = None  # last-level tables as last walked, for walks made again
        self._clean: AuditInput | None = None  # what the last audit saw, if its page rules found nothing

    def entered_from_user(self, cr3: int) -> None:
        """A process enters the kernel through an exception or interrupt (its registers as it left them)."""
        self.registers.entered(cr3)

    def _watch_syscall_entry(self) -> None:
        """System calls enter at LSTAR, which the kernel has set by its first return to user mode: a code hook
        there records each caller's registers (the native paths take system calls without Python)."""
        lstar = self.machine.cpu.lstar.value  # the blob was saved by the register check just before
        if lstar and lstar != self._syscall_entry:
            self._syscall_entry = lstar
            self.machine.uc.hook_add(UC_HOOK_CODE, self._hook_syscall_entry, None, lstar, lstar)
            self.machine.uc.ctl_flush_tb()

    def _hook_syscall_entry(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if address == self._syscall_entry:
            self.registers.entered()

    def check(self, cr3: int) -> Violation | None:
        """Audit every live process now; the first violation, or None."""
        self.audits += 1
        owners = self.pages.owners() if self.pages.available else None
        writable_by: dict[int, int] = {}
        live = [proc for proc in self.kernel.processes(cr3) if proc.pagetable]
        current, table_pages = self._walk_live(live)
        clean, self._clean = self._clean, None
        if not _same_audit(clean, current, owners):  # else: the same processes, tables and owners, found clean
            for pid, walk in current:
                for leaf in walk.leaves:
                    if not leaf.user:
                        continue
                    for pa in range(leaf.pa, leaf.pa + leaf.size, 0x1000):
                        va = leaf.va + (pa - leaf.pa)
                        violation = self._check_page(pid, va, pa, leaf.writable, owners, table_pages, writable_by)
                        if violation is not None:
                            return violation
        self._clean = (current, owners)
        problem = self.registers.check(cr3, [proc.pagetable for proc in live])
        self._watch_syscall_entry()
        if problem is not None:
            pid = next((p.pid for p in live if p.pagetable & ~0xFFF == cr3 & ~0xFFF), -1)
            return Violation(REGISTERS_RULE, pid, 0, 0, problem)
        return None

    def _walk_live(self, live: list[ProcInfo]) -> tuple[list[tuple[int, Walk]], set[int]]:
        """Each live process's pid and walk (its last walk again while its table pages are unchanged), and every
        table page of them all."""
        memory = self.machine.memory
        walks: dict[int, Walk] = {}
        current: list[tuple[int, Walk]] = []
        table_pages: set[int] = set()
        for proc in live:
            top = proc.pagetable & ADDRESS_MASK
            walk = walks.get(top) or self._walks.get(top)
            if walk is None or not walk.still_valid(memory):
                walk = walk_user_mappings(memory, top, self._leaf_cache)
            walks[top] = walk
            current.append((proc.pid, walk))
            table_pages |= walk.tables
        self._walks = walks
        return current, table_pages

    def _check_page(self, pid: int, va: int, pa: int, writable: bool, owners: list[int] | None,
                    table_pages: set[int], writable_by: dict[int, int]) -> Violation | None:
        if pa == CONSOLE_PAGE:
            return None
        if pa in table_pages:
            return Violation("page-table page user-accessible", pid, va, pa, "a page-table page is user-accessible")
        owner = owners[pa >> 12] if owners is not None and (pa >> 12) < len(owners) else None
        if pa in self.kernel_image_pages or owner in (OWNER_KERNEL, OWNER_RESERVED):
            what = "the kernel image" if pa in self.kernel_image_pages else f"owner {owner}"
            return Violation("kernel page user-accessible", pid, va, pa, f"a kernel page ({what}) is user-accessible")
        if writable:
            other = writable_by.setdefault(pa, pid)
            if other != pid:
                return Violation("page writable in two processes", pid, va, pa,
                                 f"the page is also writable by pid {other}")
        if owner == OWNER_FREE:
            return Violation("freed page still mapped", pid, va, pa, "the kernel records this page as free")
        if owner is not None and owner != pid:
            return Violation("user page owned by another process", pid, va, pa,
                             f"the kernel records pid {owner} as its owner")
        return None
