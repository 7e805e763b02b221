"""The overlapping-address-spaces observer: where each process's image and stack are, as the kernel loaded them.

The course's memory layout puts every process at the same virtual addresses: its program's code and data where
the program was linked (its ELF's loadable segments), its stack page at the top of user memory (VA 0x2FF000,
MEMSIZE_VIRTUAL minus a page), and each process's pages at those addresses are its own physical pages. The
handout's layout does the opposite (each process in its own slot of identity-mapped memory, stacks at
different addresses); moving to the overlapping layout is a step of the course's problem set.

Processes that the kernel starts itself (`allocators`: four of them, alive together) are what shows it: forked
children inherit their parent's layout whatever the kernel does. Each process is looked at once, at the first
event after it appears in the kernel's `ptable` (read through DWARF), entered from user mode, so the kernel is
between operations: its page table is walked (the auditor's walk), its program found by the bytes of its code
at its link address (its name too, where `struct proc` has one), and at that moment every other live process's
pages at the same addresses are compared with its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...observe.audit import Leaf, user_mappings
from ...observe.kernelview import KernelView, ProcInfo
from ...pc.errors import HarnessError
from ...pc.events import Event, Kind
from ...pc.loader import ElfImage, read_elf

PAGE = 0x1000
USER_START = 0x100000  # PROC_START_ADDR: user memory starts here in the course's layout
USER_END = 0x300000  # MEMSIZE_VIRTUAL: the top of user memory
STACK_PAGE = USER_END - PAGE  # every process's stack page


@dataclass(frozen=True)
class LayoutFinding:
    """Something wrong with where a process is (or whose pages it has), in words a student can act on."""

    pid: int
    text: str


@dataclass
class LayoutSeen:
    processes: dict[int, str] = field(default_factory=dict)  # pid -> its program, for every process looked at
    findings: list[LayoutFinding] = field(default_factory=list)
    together: int = 0  # the most processes looked at alive at once
    shared_vas: int = 0  # addresses two processes alive together both map, each to its own page (per pair)


def _pages(leaves: list[Leaf]) -> dict[int, Leaf]:
    """The user-accessible 4 KiB pages of user memory, by VA."""
    return {leaf.va + offset: Leaf(leaf.va + offset, leaf.pa + offset, PAGE, True, leaf.writable)
            for leaf in leaves if leaf.user for offset in range(0, leaf.size, PAGE)
            if USER_START <= leaf.va + offset < USER_END}


def _span(image: ElfImage) -> str:
    low = min(seg.vaddr for seg in image.segments) & ~(PAGE - 1)
    high = max(seg.vaddr + seg.memsz for seg in image.segments)
    return f"{low:#x}-{high - 1:#x}"


class LayoutWatch:
    """Looks at each process once (see the module); `seen` holds what it found."""

    def __init__(self, memory: memoryview, kernel: KernelView, programs: dict[str, Path], expected: str) -> None:
        self.memory = memory
        self.kernel = kernel
        self.expected = expected  # the program the workload starts (named when no program's code is found)
        self.images: dict[str, ElfImage] = {}
        for name, path in programs.items():
            try:
                self.images[name] = read_elf(path, "program")
            except HarnessError:
                continue  # not a program this kernel could run either
        self.seen = LayoutSeen()

    def observe(self, event: Event) -> None:
        """At an entry from user mode: look at the processes that appeared since the last one."""
        if not event.user or event.kind not in (Kind.SYSCALL, Kind.EXCEPTION, Kind.INTERRUPT):
            return
        live = [proc for proc in self.kernel.processes(event.cr3) if proc.pagetable]
        new = [proc for proc in live if proc.pid not in self.seen.processes]
        if not new:
            return
        pages = {proc.pid: _pages(user_mappings(self.memory, proc.pagetable)[0]) for proc in live}
        for proc in new:
            self.seen.processes[proc.pid] = self._look_at(proc, pages[proc.pid])
        looked_at = [proc.pid for proc in live if proc.pid in self.seen.processes]
        self.seen.together = max(self.seen.together, len(looked_at))
        self._compare(new, looked_at, pages)

    def _program(self, proc: ProcInfo, pages: dict[int, Leaf]) -> ElfImage | None:
        """The program whose code the process maps at the program's link address (its name first, if known)."""
        named = self.images.get(proc.name or "")
        candidates = [named] if named is not None else list(self.images.values())
        for image in candidates:
            if self._code_matches(image, pages):
                return image
        return None

    def _code_matches(self, image: ElfImage, pages: dict[int, Leaf]) -> bool:
        """Do the program's executable segments (code is never written) hold the file's bytes, as mapped?"""
        code = [seg for seg in image.segments if seg.executable]
        for seg in code:
            start, end = seg.vaddr, seg.vaddr + seg.filesz
            while start < end:
                page = pages.get(start & ~(PAGE - 1))
                if page is None:
                    return False
                stop = min((start & ~(PAGE - 1)) + PAGE, end)
                at = page.pa + (start & (PAGE - 1))
                if bytes(self.memory[at:at + stop - start]) != \
                        image.data[seg.offset + start - seg.vaddr:seg.offset + stop - seg.vaddr]:
                    return False
                start = stop
        return bool(code)

    def _look_at(self, proc: ProcInfo, pages: dict[int, Leaf]) -> str:
        """Find the process's program and check its image and stack; returns the program's name ('?' if none)."""
        image = self._program(proc, pages)
        if image is None:
            linked = self.images.get(self.expected)
            where = f" (`{self.expected}` is linked at {_span(linked)})" if linked is not None else ""
            self._finding(proc.pid, f"process {proc.pid} maps no program's code at the address the program was "
                                    f"linked at{where}: a process's code and data must be at its program's link "
                                    f"addresses, the same in every process")
            name = "?"
        else:
            name = next(n for n, i in self.images.items() if i is image)
            for seg in image.segments:
                for va in range(seg.vaddr & ~(PAGE - 1), seg.vaddr + seg.memsz, PAGE):
                    if va not in pages:
                        self._finding(proc.pid, f"process {proc.pid} ({name}) does not map VA {va:#x} of its "
                                                f"program's image ({name} is linked at {_span(image)}): every page "
                                                f"of a program must be at its link address")
                        break
        stack = pages.get(STACK_PAGE)
        if stack is None or not stack.writable:
            highest = max((va for va, page in pages.items() if page.writable), default=None)
            instead = f"; its highest writable page is at VA {highest:#x}" if highest is not None else ""
            what = "no stack page" if stack is None else "a read-only page"
            self._finding(proc.pid, f"process {proc.pid} ({name}) has {what} at VA {STACK_PAGE:#x}{instead}: every "
                                    f"process's stack must be the page at the top of user memory, VA "
                                    f"{STACK_PAGE:#x} (%rsp starting at {USER_END:#x}), the same address in every "
                                    f"process")
        return name

    def _compare(self, new: list[ProcInfo], looked_at: list[int], pages: dict[int, dict[int, Leaf]]) -> None:
        """Each new process against every other one alive (each pair once): at the same address, writable pages
        must be distinct physical pages."""
        compared: set[frozenset[int]] = set()
        for proc in new:
            for other in looked_at:
                pair = frozenset((proc.pid, other))
                if other == proc.pid or pair in compared:
                    continue
                compared.add(pair)
                for va, page in pages[proc.pid].items():
                    theirs = pages[other].get(va)
                    if theirs is None:
                        continue
                    if theirs.pa != page.pa:
                        self.seen.shared_vas += 1
                    elif page.writable or theirs.writable:
                        self._finding(proc.pid, f"processes {other} and {proc.pid} both map VA {va:#x} to the same "
                                                f"physical page {page.pa:#x}, writable: at the same virtual "
                                                f"address each process must have its own physical page")
                        return

    def _finding(self, pid: int, text: str) -> None:
        self.seen.findings.append(LayoutFinding(pid, text))
