"""The out-of-memory check's run: allocators fill memory until the kernel refuses, and nothing may crash.

`allocators` starts four allocators that map pages until `page_alloc` fails, check their pages, and exit. The
kernel's own page accounting (`physpages`, through DWARF) is read at every event (each system call, interrupt
and log line) to find the lowest free page count: memory is full when it reaches 0. The count at the first
system call (the first process is running) is the memory there was to fill.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...api import boot_machine
from ...machine import Machine, Stop
from ...observe.kernelview import PageAccounting
from ...pc.events import Event, Kind
from .target import Target

WORKLOAD = "allocators"
PROGRAM = "allocator"
BUDGET_NS = 20_000_000_000
WALL_GUARD_S = 120.0


@dataclass
class MemoryFullRun:
    stop: Stop | None = None
    lowest_free: int | None = None
    first_free: int | None = None
    missing: str | None = None
    machine: Machine | None = None


def fill_memory(target: Target) -> MemoryFullRun:
    if target.kernel is None:
        return MemoryFullRun(missing=f"it runs `{WORKLOAD}`, and a disk image runs only the command written in it: "
                                    f"check the kernel ELF or the build directory")
    if PROGRAM not in target.programs:
        return MemoryFullRun(missing=f"it needs the program(s) {PROGRAM}, which the target does not have")
    machine = boot_machine(target.kernel, WORKLOAD, target.programs)
    image = machine.kernel_image
    pages = PageAccounting(machine.memory, machine.symbols, image.data if image is not None else None)
    if not pages.available:
        return MemoryFullRun(missing="the kernel has no `physpages` array with an `owner` or `refcount` member in "
                                     "its DWARF, so free pages cannot be counted")
    run = MemoryFullRun(machine=machine)

    def sample(event: Event) -> bool:
        free = pages.free_pages()
        if run.first_free is None and event.kind is Kind.SYSCALL:
            run.first_free = free  # the first process runs: the kernel's own pages are taken
        run.lowest_free = free if run.lowest_free is None else min(run.lowest_free, free)
        return False

    run.stop = machine.run(max_time_ns=BUDGET_NS, max_wall_s=WALL_GUARD_S, until_event=sample)
    return run
