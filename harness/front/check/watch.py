"""The observer the memory checks share: at every return to user mode, every process's page table and the
kernel's page ownership, read from outside the kernel.

It is the isolation auditor (observe/audit.py) kept going after a violation: where `--audit` stops at the first
broken rule, a grader needs each rule's first violation, so that a kernel that breaks one property fails that
check and no other. Besides the auditor's rules it records what the fork and exit checks need: each fork's
parent and child as the child first appears (neither has run a user instruction since the fork, so their
memories must be equal), and the free page count whenever one process alone is left (the baseline a fork+exit
cycle must come back to), and once every process has exited, the free page count to compare with the baseline
plus what the first process held.

The first process is known by its pid only while it lives: pids are reused, so once its pid leaves the table
a later process given the same pid (a child, alone because the first process exited before it) is not "the
first process alone", and its pages are no leak: no sample is taken for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, Uc
from unicorn.x86_const import UC_X86_REG_CR3

from ...observe.audit import (
    CONSOLE_PAGE,
    OWNER_KERNEL,
    OWNER_RESERVED,
    IsolationAuditor,
    Leaf,
    LeafCache,
    Violation,
)
from ...observe.kernelview import ProcInfo

if TYPE_CHECKING:
    from ...machine import Machine


@dataclass(frozen=True)
class ForkFinding:
    """Something wrong with a child's memory right after its fork."""

    parent: int
    child: int
    va: int
    detail: str


@dataclass(frozen=True)
class FreeSample:
    """The free page count when one process alone was alive, after `cycle` children had been created (or, with
    pid 0, when no process was left)."""

    cycle: int
    free: int
    pid: int
    held: int = 0  # the pages the process held then: its page-table pages and its own user pages


@dataclass
class Observations:
    violations: dict[str, Violation] = field(default_factory=dict)  # the first violation of each rule
    forks_checked: int = 0
    fork_findings: list[ForkFinding] = field(default_factory=list)
    free_samples: list[FreeSample] = field(default_factory=list)
    children: int = 0  # processes created after the first
    first_leak: FreeSample | None = None  # the first process seen gone while still owning pages (free: how many)
    first_exited: int | None = None  # the cycle at which the first process was seen gone
    end: FreeSample | None = None  # the free page count once every process had exited (see note_end)
    returns: int = 0


class Watcher(IsolationAuditor):
    """The auditor's walk at every return to user mode, recording instead of stopping (see the module)."""

    def __init__(self, machine: Machine, forks_to_compare: int = 8) -> None:
        super().__init__(machine)
        self.seen = Observations()
        self.forks_to_compare = forks_to_compare
        self._live: set[int] | None = None  # the pids alive at the last return (pids are reused)
        self._first: int | None = None  # the first process: the one a fork+exit cycle comes back to
        self._caller_cr3: int | None = None  # the page table of the last process that made a system call
        self._entry_hooked: int | None = None
        self._leaf_cache: LeafCache = {}  # last-level tables as last walked (most do not change between returns)

    @classmethod
    def attach(cls, machine: Machine, forks_to_compare: int = 8) -> Watcher:
        """Install as the machine's auditor (the hook points Machine gives the auditor, as enable_audit does)."""
        watcher = cls(machine, forks_to_compare)
        machine.auditor = watcher
        if machine.tracer.kernel is None:
            machine.tracer.kernel = watcher.kernel
        return watcher

    # The register rule is the auditor's own business (`--audit`); these checks are about memory.
    def entered_from_user(self, cr3: int) -> None:
        return None

    def _hook_caller(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if address == self._entry_hooked:
            self._caller_cr3 = uc.reg_read(UC_X86_REG_CR3) & ~0xFFF

    def _watch_entry(self) -> None:
        """Know who calls fork: a code hook at the system-call entry (LSTAR, set by now) notes the caller's CR3."""
        cpu = self.machine.cpu
        cpu.save()
        lstar = cpu.lstar.value
        if lstar and lstar != self._entry_hooked:
            self._entry_hooked = lstar
            self.machine.uc.hook_add(UC_HOOK_CODE, self._hook_caller, None, lstar, lstar)
            self.machine.uc.ctl_flush_tb()

    def check(self, cr3: int) -> Violation | None:
        seen = self.seen
        seen.returns += 1
        self._watch_entry()
        owners = self.pages.owners() if self.pages.available else None
        live = [proc for proc in self.kernel.processes(cr3) if proc.pagetable]
        walks, table_pages = self._walk_live(live)  # the auditor's: a table walked again only when it changed
        mappings: dict[int, list[Leaf]] = {pid: walk.leaves for pid, walk in walks}
        writable_by: dict[int, int] = {}
        for pid, leaves in mappings.items():
            for leaf in leaves:
                if not leaf.user:
                    continue
                for pa in range(leaf.pa, leaf.pa + leaf.size, 0x1000):
                    violation = self._check_page(pid, leaf.va + (pa - leaf.pa), pa, leaf.writable, owners,
                                                 table_pages, writable_by)
                    if violation is not None:
                        seen.violations.setdefault(violation.rule, violation)
        if self._live is None:
            self._first = live[0].pid if len(live) == 1 else None
        else:
            new = [proc for proc in live if proc.pid not in self._live]  # a child returns to user mode only
            seen.children += len(new)                                    # after its parent has seen its fork
            for child in new:
                self._compare_fork(live, child, mappings, owners)
            gone = self._live - {proc.pid for proc in live}
            self._note_leaks(gone, owners)
            if self._first in gone:  # from now on its pid names another process (see the module)
                self._first = None
                seen.first_exited = seen.children
        self._live = {proc.pid for proc in live}
        if len(live) == 1 and live[0].pid == self._first and self.pages.available:
            free = (owners or []).count(0)
            held = self._held(mappings[live[0].pid], table_pages, owners)
            seen.free_samples.append(FreeSample(seen.children, free, live[0].pid, held))
        return None

    def _held(self, leaves: list[Leaf], tables: set[int], owners: list[int] | None) -> int:
        """The pages a process alone holds: its page-table pages and the user pages that are not the kernel's
        (read from its page table, so that a kernel whose `physpages` keeps only a refcount is measured too)."""
        own = {page.pa for page in _pages(leaves) if not self._kernel_page(page.pa, owners)}
        return len(own | tables)

    def note_end(self) -> None:
        """After the run: when no process is left (every one exited), the free page count now; it must be the
        baseline plus the pages the first process held at the baseline."""
        if not self.pages.available:
            return
        if any(proc.pagetable for proc in self.kernel.processes(self.machine.cpu.cr3.value)):
            return
        free = self.pages.owners().count(0)
        self.seen.end = FreeSample(self.seen.children, free, 0)

    def _note_leaks(self, gone: set[int], owners: list[int] | None) -> None:
        """A process that left the table since the last return (between two returns the kernel was entered
        once, so its pid cannot have been given to a new process yet) must own no page any more."""
        if not gone or owners is None or self.seen.first_leak is not None or not self.owner_field:
            return
        for pid in sorted(gone):
            kept = sum(1 for owner in owners if owner == pid)
            if kept:
                self.seen.first_leak = FreeSample(self.seen.children, kept, pid)
                return

    @property
    def owner_field(self) -> bool:
        """Does `physpages` say who owns a page (ours), rather than only how many map it (the course's)?"""
        layout = self.pages.layout
        return layout is not None and self.pages.field == layout.members.get("owner")

    def _kernel_page(self, pa: int, owners: list[int] | None) -> bool:
        owner = owners[pa >> 12] if owners is not None and (pa >> 12) < len(owners) else None
        return pa == CONSOLE_PAGE or pa in self.kernel_image_pages or owner in (OWNER_KERNEL, OWNER_RESERVED)

    def _compare_fork(self, live: list[ProcInfo], child: ProcInfo, mappings: dict[int, list[Leaf]],
                      owners: list[int] | None) -> None:
        """The child's pages against its parent's, before either has run a user instruction since the fork."""
        if self._caller_cr3 is None or self.seen.forks_checked >= self.forks_to_compare:
            return
        parent = next((proc for proc in live if proc.pagetable & ~0xFFF == self._caller_cr3), None)
        if parent is None or parent.pid == child.pid:
            return  # not a fork (the kernel started it), or the caller already left
        self.seen.forks_checked += 1
        memory = self.machine.memory
        child_pages = {page.va: page for page in _pages(mappings.get(child.pid, []))}
        for page in _pages(mappings.get(parent.pid, [])):
            if self._kernel_page(page.pa, owners):
                continue  # the kernel's pages are not the process's to copy (kernel isolation's business)
            theirs = child_pages.get(page.va)
            if theirs is None:
                self._finding(parent.pid, child.pid, page.va, "the child does not map it")
            elif theirs.pa == page.pa and (page.writable or theirs.writable):
                self._finding(parent.pid, child.pid, page.va,
                              f"the child shares the parent's physical page {page.pa:#x}, writable: a write by "
                              f"one would show in the other; fork must give the child its own copy")
            else:
                mine, copy = bytes(memory[page.pa:page.pa + 0x1000]), bytes(memory[theirs.pa:theirs.pa + 0x1000])
                if mine != copy:
                    offset = next(i for i in range(0x1000) if mine[i] != copy[i])
                    self._finding(parent.pid, child.pid, page.va,
                                  f"the child's copy (PA {theirs.pa:#x}) differs from the parent's (PA {page.pa:#x}), "
                                  f"first at VA {page.va + offset:#x}: fork must copy the whole contents")

    def _finding(self, parent: int, child: int, va: int, detail: str) -> None:
        self.seen.fork_findings.append(ForkFinding(parent, child, va, detail))


def _pages(leaves: list[Leaf]) -> list[Leaf]:
    """User-accessible leaves split into 4 KiB pages."""
    return [Leaf(leaf.va + offset, leaf.pa + offset, 0x1000, leaf.user, leaf.writable)
            for leaf in leaves if leaf.user for offset in range(0, leaf.size, 0x1000)]
