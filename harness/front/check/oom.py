"""The allocators run: `allocators` once, watched for the out-of-memory and the overlapping-address-spaces checks.

`allocators` starts four allocators that map pages until `page_alloc` fails, check their pages, and exit.

- Out of memory: the kernel's own page accounting (`physpages`, through DWARF) is read at every event (each
  system call, interrupt and log line) to find the lowest free page count: memory is full when it reaches 0. The
  count at the first system call (the first process is running) is the memory there was to fill.
- Overlapping address spaces: the four are processes the kernel started itself, alive together; layout.py looks
  at each once, where its image and stack are and whose pages it has.

Each observer needs its own part of the kernel's DWARF; the run is made when either can watch it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...api import boot_machine
from ...machine import Machine, Stop
from ...observe.kernelview import KernelView, PageAccounting
from ...pc.events import Event, Kind
from .layout import LayoutWatch
from .target import Target

WORKLOAD = "allocators"
PROGRAM = "allocator"
BUDGET_NS = 20_000_000_000
WALL_GUARD_S = 120.0
NO_PROCESSES = ("the kernel has no `ptable` symbol (with `current`, and DWARF or the course's layout), so its "
                "processes cannot be seen")
NO_ACCOUNTING = ("the kernel has no `physpages` array with an `owner` or `refcount` member in its DWARF, so free "
                 "pages cannot be counted")


@dataclass
class MemoryFullRun:
    stop: Stop | None = None
    lowest_free: int | None = None
    first_free: int | None = None
    missing: str | None = None  # why there is no run at all
    uncounted: str | None = None  # why free pages were not counted
    layout: LayoutWatch | None = None
    unseen: str | None = None  # why the layout was not watched
    machine: Machine | None = None


def fill_memory(target: Target) -> MemoryFullRun:
    if target.kernel is None:
        return MemoryFullRun(missing=f"it starts `{WORKLOAD}` itself, and {target.disk_reason}")
    if PROGRAM not in target.programs:
        return MemoryFullRun(missing=f"it needs the program(s) {PROGRAM}, which the target does not have")
    machine = boot_machine(target.kernel, WORKLOAD, target.programs)
    image = machine.kernel_image
    data = image.data if image is not None else None
    pages = PageAccounting(machine.memory, machine.symbols, data)
    kernel = KernelView(machine.memory, machine.symbols, data)
    run = MemoryFullRun(machine=machine, uncounted=None if pages.available else NO_ACCOUNTING,
                        unseen=None if kernel.available and kernel.nproc else NO_PROCESSES)
    if run.uncounted and run.unseen:
        return MemoryFullRun(uncounted=run.uncounted, unseen=run.unseen)  # nothing to watch it with
    if run.unseen is None:
        run.layout = LayoutWatch(machine.memory, kernel, target.programs, PROGRAM)

    def sample(event: Event) -> bool:
        if run.layout is not None:
            run.layout.observe(event)
        if run.uncounted is None:
            free = pages.free_pages()
            if run.first_free is None and event.kind is Kind.SYSCALL:
                run.first_free = free  # the first process runs: the kernel's own pages are taken
            run.lowest_free = free if run.lowest_free is None else min(run.lowest_free, free)
        return False

    run.stop = machine.run(max_time_ns=BUDGET_NS, max_wall_s=WALL_GUARD_S, until_event=sample)
    return run
