"""The virtual-page-allocation check's probe: `page_alloc(addr)` must map a fresh, zero-filled physical page at
`addr`, the address the process asked for, user-accessible and writable, in the caller's page table alone and
at no other address, and change no other mapping; over a page already there it gives a fresh page in its place
and frees the old one.

The harness asks itself, as the confused-deputy probe does: it runs `allocators` to the first system call of
the first process and lets it return; then, from that process, it makes the calls, each by putting the process
back on its `syscall` instruction with other arguments: `page_alloc` of the lowest page of user memory the
process does not map, `page_alloc` of that page again (the harness first fills the page it got with a pattern:
the new page must not show it), and `page_alloc` of the highest unmapped page below the top of user memory.
Before and after each call every live process's page table is walked (the auditor's walk) and the kernel's
page accounting read (`physpages` through DWARF, where the kernel has it).

The call's number comes from the build's system-call table when the kernel speaks it, else from the course's
numbering (`page_alloc` is 4 in both course trees).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unicorn.x86_const import UC_X86_REG_CS, UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RIP

from ...api import boot_machine
from ...machine import Machine, StopKind
from ...observe.audit import CONSOLE_PAGE, OWNER_KERNEL, OWNER_RESERVED, Leaf, kernel_views, user_mappings
from ...observe.kernelview import KernelView
from ...observe.syscalls import choose_table
from ...pc.events import Kind
from ...pc.paging import PageFault, PhysicalFault
from .layout import PAGE, STACK_PAGE, USER_END, USER_START
from .oom import NO_PROCESSES, PROGRAM, WORKLOAD
from .target import Target

PROBE_BUDGET_NS = 1_000_000_000
FOREIGN_STOPS = 64  # other processes passing the return address before the caller is back: then give up
COURSE_TABLE = Path("course-pset3")  # a shipped table: the course's numbering
SYSCALL_INSTRUCTION = b"\x0f\x05"
PATTERN = b"\xa5"  # what the harness writes into a page before page_alloc replaces it
ADVICE = ("page_alloc must map a fresh, zero-filled page at the address the process asked for, user-accessible "
          "and writable, and nowhere else")


@dataclass
class PageAllocRun:
    calls: list[str]  # the calls made, as shown
    finding: str | None = None
    missing: str | None = None
    machine: Machine | None = None
    accounted: bool = False  # the kernel's page accounting was read (the replaced page checked freed)


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


@dataclass(frozen=True)
class _World:
    """Every live process's user pages (by VA) and every page-table page, at one moment."""

    pages: dict[int, dict[int, Leaf]]
    tables: set[int]


class _Prober:
    """Makes page_alloc calls from one process (the caller: the one the CPU is in) and judges each."""

    def __init__(self, machine: Machine, number: int, syscall_at: int) -> None:
        self.machine = machine
        self.kernel, self.accounting, self.kernel_pages = kernel_views(machine)
        self.number = number
        self.syscall_at = syscall_at
        machine.cpu.save()
        self.cr3 = machine.cpu.cr3.value & ~(PAGE - 1)
        self.pid = next((p.pid for p in self.kernel.processes(self.cr3) if (p.pagetable or 0) & ~(PAGE - 1) ==
                         self.cr3), -1)
        self.calls: list[str] = []

    def world(self) -> _World:
        pages: dict[int, dict[int, Leaf]] = {}
        tables: set[int] = set()
        for proc in self.kernel.processes(self.cr3):
            if proc.pagetable:
                leaves, found = user_mappings(self.machine.memory, proc.pagetable)
                tables |= found
                pages[proc.pid] = {leaf.va + o: Leaf(leaf.va + o, leaf.pa + o, PAGE, leaf.user, leaf.writable)
                                   for leaf in leaves for o in range(0, leaf.size, PAGE)
                                   if leaf.va + o < USER_END}
        return _World(pages, tables)

    def _elsewhere(self) -> bool:
        """Is the CPU in another process than the caller (running the same program at the same address)?"""
        self.machine.cpu.save()
        return self.machine.cpu.cr3.value & ~(PAGE - 1) != self.cr3

    def mine(self) -> dict[int, Leaf]:
        return self.world().pages.get(self.pid, {})

    def call(self, va: int, what: str) -> str | None:
        """page_alloc(va) from the process's `syscall` instruction; what is wrong, or None."""
        machine, uc = self.machine, self.machine.uc
        before = self.world()
        shown = f"page_alloc({va:#x})"
        self.calls.append(shown)
        old = before.pages.get(self.pid, {}).get(va)
        if old is not None and old.pa + PAGE <= len(machine.memory):
            machine.memory[old.pa:old.pa + PAGE] = PATTERN * PAGE
        uc.reg_write(UC_X86_REG_RIP, self.syscall_at)
        uc.reg_write(UC_X86_REG_RAX, self.number)
        uc.reg_write(UC_X86_REG_RDI, va)
        back = self.syscall_at + len(SYSCALL_INSTRUCTION)
        machine.add_breakpoint(back)
        try:
            stop = machine.run(max_time_ns=PROBE_BUDGET_NS)
            for _ in range(FOREIGN_STOPS):
                if stop.kind is not StopKind.BREAKPOINT or not self._elsewhere():
                    break
                stop = machine.run(max_time_ns=PROBE_BUDGET_NS)  # another process at the same address
        finally:
            machine.remove_breakpoint(back)
        who = f"{shown} by process {self.pid} ({what})"
        if stop.kind is not StopKind.BREAKPOINT or self._elsewhere():
            return f"{who} did not return to the process ({stop.kind.value}: {stop.message})"
        result = _signed(uc.reg_read(UC_X86_REG_RAX))  # judged as the call returned, before the step below
        if result != 0:
            free = f" with {self.accounting.free_pages()} pages free" if self.accounting.available else ""
            finding: str | None = f"{who} returned {result}{free}: {ADVICE}"
        else:
            finding = self._judge(who, va, old, before, self.world())
        machine.step()  # past the breakpoint, so the next call's return stops there again
        return finding

    def _judge(self, who: str, va: int, old: Leaf | None, before: _World, after: _World) -> str | None:
        mine = after.pages.get(self.pid, {})
        page = mine.get(va)
        if page is None or not page.user or not page.writable:
            state = "nothing" if page is None else ("a kernel-only page" if not page.user else "a read-only page")
            return f"{who} returned 0 but the process maps {state} at VA {va:#x}: {ADVICE}"
        memory = self.machine.memory
        contents = bytes(memory[page.pa:page.pa + PAGE])
        if len(contents) != PAGE:
            return f"{who} returned 0 but mapped VA {va:#x} to PA {page.pa:#x}, beyond memory: {ADVICE}"
        if old is not None and page.pa == old.pa and contents == PATTERN * PAGE:
            return (f"{who} returned 0 but left the page that was there (PA {old.pa:#x}) in place, contents and "
                    f"all: it must be replaced by a fresh zero-filled page, and the old one freed")
        if any(contents):
            offset = next(i for i, byte in enumerate(contents) if byte)
            return f"{who} returned 0 but the page (PA {page.pa:#x}) is not zero-filled, first at VA " \
                   f"{va + offset:#x}: {ADVICE}"
        elsewhere = [f"VA {other.va:#x} of process {pid}" for pid, pages in after.pages.items()
                     for other in pages.values() if other.pa == page.pa and (pid, other.va) != (self.pid, va)]
        owners = self.accounting.owners() if self.accounting.available else None
        owner = owners[page.pa >> 12] if owners is not None and page.pa >> 12 < len(owners) else None
        if page.pa in after.tables:
            elsewhere.append("a page-table page")
        if page.pa in self.kernel_pages or page.pa == CONSOLE_PAGE or owner in (OWNER_KERNEL, OWNER_RESERVED):
            elsewhere.append("a kernel page")
        if elsewhere:
            return (f"{who} mapped PA {page.pa:#x} at VA {va:#x}, but that page is also {', '.join(elsewhere[:3])}: "
                    f"{ADVICE}")
        changed = sorted(v for v in set(before.pages.get(self.pid, {})) | set(mine) if v != va and
                         before.pages.get(self.pid, {}).get(v) != mine.get(v))
        if changed:
            return f"{who} also changed the process's mapping at VA {changed[0]:#x}: {ADVICE}"
        if owners is not None and self.accounting.field is not None and self.accounting.layout is not None:
            owner_field = self.accounting.field == self.accounting.layout.members.get("owner")
            if owner == 0 or (owner_field and owner != self.pid):
                recorded = "free" if owner == 0 else f"owned by {owner}"
                return f"{who} mapped PA {page.pa:#x}, which the kernel records as {recorded}: {ADVICE}"
            if old is not None and old.pa != page.pa:
                still = [f"VA {o.va:#x} of process {pid}" for pid, pages in after.pages.items()
                         for o in pages.values() if o.pa == old.pa]
                if still or (old.pa >> 12 < len(owners) and owners[old.pa >> 12] != 0):
                    where = f"still mapped at {still[0]}" if still else "not freed"
                    return (f"{who} gave a fresh page, but the page it replaced (PA {old.pa:#x}) is {where}: the "
                            f"old page must be freed")
        return None


def _code_at(machine: Machine, address: int, cr3: int) -> bytes | None:
    try:
        return machine.read_virtual(address, len(SYSCALL_INSTRUCTION), cr3)
    except (PageFault, PhysicalFault):
        return None


def probe_page_alloc(target: Target) -> PageAllocRun:
    """The three calls (see the module) from the first process of `allocators`."""
    if target.kernel is None:
        return PageAllocRun([], missing=f"it starts `{WORKLOAD}` itself, and {target.disk_reason}")
    if PROGRAM not in target.programs:
        return PageAllocRun([], missing=f"it needs the program(s) {PROGRAM}, which the target does not have")
    machine = boot_machine(target.kernel, WORKLOAD, target.programs)
    table = choose_table(machine.kernel_image, None, target.kernel.parent / "syscalls.json")
    spec = table.by_name.get("page_alloc") or choose_table(None, COURSE_TABLE, None).by_name.get("page_alloc")
    assert spec is not None, "the shipped course table names page_alloc"
    kernel = KernelView(machine.memory, machine.symbols,
                        machine.kernel_image.data if machine.kernel_image is not None else None)
    if not kernel.available or not kernel.nproc:
        return PageAllocRun([], missing=NO_PROCESSES)
    stop = machine.run(max_time_ns=PROBE_BUDGET_NS, until_event=lambda e: e.kind is Kind.SYSCALL and e.user)
    if stop.kind is not StopKind.UNTIL:
        return PageAllocRun([], missing=f"{PROGRAM} made no system call ({stop.kind.value}: {stop.message})")
    back = machine.uc.reg_read(UC_X86_REG_RCX)  # its own call returns here: the calls are made from there
    syscall_at = back - len(SYSCALL_INSTRUCTION)
    machine.cpu.save()
    cr3 = machine.cpu.cr3.value
    machine.add_breakpoint(back)
    try:
        stop = machine.run(max_time_ns=PROBE_BUDGET_NS)
    finally:
        machine.remove_breakpoint(back)
    if stop.kind is not StopKind.BREAKPOINT or _code_at(machine, syscall_at, cr3) != SYSCALL_INSTRUCTION:
        return PageAllocRun([], missing=f"{PROGRAM}'s first system call did not return to it "
                                        f"({stop.kind.value}: {stop.message})")
    machine.step()
    if machine.uc.reg_read(UC_X86_REG_CS) & 3 != 3:
        return PageAllocRun([], missing=f"{PROGRAM} made another system call at once; no call could be placed")
    prober = _Prober(machine, spec.number, syscall_at)
    mapped = prober.mine()
    free = [va for va in range(USER_START, STACK_PAGE, PAGE) if va not in mapped]
    if len(free) < 2:
        return PageAllocRun([], missing=f"process {prober.pid} maps all of user memory: nothing to ask for")
    finding = (prober.call(free[0], "a page it does not map")
               or prober.call(free[0], "again, over the page it was just given")
               or prober.call(free[-1], "the highest page below the stack it does not map"))
    return PageAllocRun(prober.calls, finding, machine=machine, accounted=prober.accounting.available)
