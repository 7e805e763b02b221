"""The checks: each a name, what it verifies (its documentation), and a function from runs to a verdict.

Checks read runs; runs are booted once per target and shared (`Runs`), so `--only NAME` boots only what that
check needs and a full check boots each workload once. A check that lacks what it needs (a program to run, the
kernel's `ptable` or `physpages` through symbols and DWARF, a command line) is N/A with the reason: never PASS.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ...api import boot_machine
from ...machine import Machine, MachineConfig, Stop, StopKind
from ...pc.diskimage import open_image
from . import oom
from .deputy import DeputyRun, probe_kernel
from .layout import STACK_PAGE
from .pagealloc import PageAllocRun, probe_page_alloc
from .target import Target
from .watch import Watcher

SECOND_NS = 1_000_000_000
CRASH_BUDGET_NS = 20 * SECOND_NS  # virtual: the no-crash workload powers off in well under a second
MEMORY_BUDGET_NS = 20 * SECOND_NS
WALL_GUARD_S = 120.0
CRASH_WORKLOAD = "fork hello fault"  # fork fills memory to the end; fault touches the kernel and is killed
MEMORY_WORKLOAD = "forkexit"
CYCLES = 30  # fork+exit cycles the memory run watches (at least: it stops when the first process is next alone)

KERNEL_RULES = ("kernel page user-accessible", "page-table page user-accessible")
PROCESS_RULES = ("page writable in two processes",)


class Status(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    NA = "N/A"


@dataclass(frozen=True)
class Verdict:
    name: str
    status: Status
    explanation: str
    machine: Machine | None = field(default=None, compare=False, repr=False)  # the run it came from (--screens)


@dataclass
class MemoryRun:
    """The memory workload run once with the watcher (watch.py), or why it could not be."""

    stop: Stop | None = None
    watcher: Watcher | None = None
    machine: Machine | None = None
    missing: str | None = None


class Runs:
    """The runs of one target, booted on first use and shared by the checks."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._crash: tuple[Machine, Stop] | None = None
        self._memory: MemoryRun | None = None
        self._deputy: DeputyRun | None = None
        self._memory_full: oom.MemoryFullRun | None = None
        self._page_alloc: PageAllocRun | None = None

    def page_alloc(self) -> PageAllocRun:
        if self._page_alloc is None:
            self._page_alloc = probe_page_alloc(self.target)
        return self._page_alloc

    def memory_full(self) -> oom.MemoryFullRun:
        if self._memory_full is None:
            self._memory_full = oom.fill_memory(self.target)
        return self._memory_full

    def deputy(self) -> DeputyRun:
        if self._deputy is None:
            self._deputy = probe_kernel(self.target)
        return self._deputy

    def _boot(self, command: str | None) -> Machine:
        target = self.target
        if target.disk is not None:
            machine = Machine(MachineConfig())
            machine.boot_disk(open_image(target.disk), target.image_kernel, label=f"disk image {target.disk}")
            return machine
        assert target.kernel is not None
        return boot_machine(target.kernel, command, target.programs)

    def missing_programs(self, command: str) -> str | None:
        if self.target.disk is not None:
            return f"it starts `{command}` itself, and {self.target.disk_reason}"
        absent = [word for word in command.split() if word not in self.target.programs]
        if absent:
            return f"it needs the program(s) {', '.join(absent)}, which the target does not have"
        return None

    def crash(self) -> tuple[Machine, Stop]:
        if self._crash is None:
            machine = self._boot(None if self.target.disk is not None else CRASH_WORKLOAD)
            self._crash = machine, machine.run(max_time_ns=CRASH_BUDGET_NS, max_wall_s=WALL_GUARD_S)
        return self._crash

    def memory(self) -> MemoryRun:
        if self._memory is not None:
            return self._memory
        missing = self.missing_programs(MEMORY_WORKLOAD)
        if missing is not None:
            self._memory = MemoryRun(missing=missing)
            return self._memory
        machine = self._boot(MEMORY_WORKLOAD)
        try:
            watcher = Watcher.attach(machine)
        except RuntimeError:
            self._memory = MemoryRun(missing="the kernel has no `current` and `ptable` symbols with DWARF (or "
                                             "the course's layout), so its processes cannot be seen")
            return self._memory
        seen = watcher.seen

        def enough(_: object) -> bool:
            return seen.children >= CYCLES and bool(seen.free_samples) and seen.free_samples[-1].cycle >= CYCLES

        stop = machine.run(max_time_ns=MEMORY_BUDGET_NS, max_wall_s=WALL_GUARD_S, until_event=enough)
        if stop.kind is StopKind.POWER_OFF:  # every process exited: what they held must all be free again
            watcher.note_end()
        self._memory = MemoryRun(stop, watcher, machine)
        return self._memory


def _ran_out(run: MemoryRun, what: str) -> str | None:
    """Why the memory run says nothing about `what`, if it ended badly before enough was seen."""
    assert run.stop is not None and run.watcher is not None
    if run.stop.ok:
        return None
    return (f"the {MEMORY_WORKLOAD} run ended early ({run.stop.kind.value}: {run.stop.message}) after "
            f"{run.watcher.seen.children} children, so {what} could not be checked (see the no-crash check)")


# -- the checks ---------------------------------------------------------------------------------------------


def check_no_crash(runs: Runs) -> Verdict:
    name = "no-crash"
    machine, stop = runs.crash()
    target = runs.target
    workload = f"`{CRASH_WORKLOAD}`" if target.disk is None else "the program compiled into the image's kernel" \
        if target.image_command is None else f"the image's command `{target.image_command}`"
    seconds = CRASH_BUDGET_NS / SECOND_NS
    if stop.kind is StopKind.POWER_OFF:
        return Verdict(name, Status.PASS, f"{workload} ran to power-off in {stop.time_ns / SECOND_NS:.6f} s of "
                                          f"virtual time (budget {seconds:g} s): no panic, no triple fault")
    advice = {
        StopKind.PANIC: "the kernel panicked: read the panic message and the backtrace",
        StopKind.TRIPLE_FAULT: "triple fault: the CPU could not even deliver a double fault (look at the IDT, "
                               "the kernel stack in the TSS, and the page table loaded at the time)",
        StopKind.BUDGET: f"runaway: the system did not finish within {seconds:g} s of virtual time (a loop that "
                         f"never ends, a process that never exits, or processes waiting on each other)",
        StopKind.HANG: "the CPU halted with interrupts off: nothing could wake it",
        StopKind.MACHINE_FAULT: "the kernel ran or needed memory that does not exist",
    }.get(stop.kind, f"the run ended with {stop.kind.value}")
    where = machine.symbols.describe(stop.rip) if stop.rip else "unknown"
    return Verdict(name, Status.FAIL, f"{workload}: {advice}: {stop.message} (at {where}, "
                                      f"{stop.time_ns / SECOND_NS:.6f} s virtual time)", machine)


def _rule_check(name: str, rules: tuple[str, ...], runs: Runs, what: str, advice: str) -> Verdict:
    run = runs.memory()
    if run.missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {run.missing}")
    assert run.watcher is not None
    found = [run.watcher.seen.violations[rule] for rule in rules if rule in run.watcher.seen.violations]
    if found:
        v = found[0]
        return Verdict(name, Status.FAIL, f"process {v.pid} maps VA {v.va:#x} -> PA {v.pa:#x}: {v.detail}: "
                                          f"{what} is broken ({advice})", run.machine)
    early = _ran_out(run, what)
    if early is not None:  # what was seen held, but a crashed run is no evidence that the property holds
        return Verdict(name, Status.NA, f"not applicable: {early}")
    return Verdict(name, Status.PASS, f"every page table checked at each of {run.watcher.seen.returns} returns "
                                      f"to user mode while `{MEMORY_WORKLOAD}` ran: {what} held")


def check_kernel_isolation(runs: Runs) -> Verdict:
    return _rule_check("kernel-isolation", KERNEL_RULES, runs, "kernel isolation",
                       "a process may map kernel memory and page tables only without PTE_U")


def check_process_isolation(runs: Runs) -> Verdict:
    return _rule_check("process-isolation", PROCESS_RULES, runs, "process isolation",
                       "no physical page may be writable by two processes: give each its own copy")


def check_fork(runs: Runs) -> Verdict:
    name = "fork"
    run = runs.memory()
    if run.missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {run.missing}")
    assert run.watcher is not None
    seen = run.watcher.seen
    if seen.fork_findings:
        f = seen.fork_findings[0]
        more = len(seen.fork_findings) - 1
        return Verdict(name, Status.FAIL, f"after fork, child {f.child} of process {f.parent} at VA {f.va:#x}: "
                                          f"{f.detail}" + (f" (and {more} more such pages)" if more else ""),
                       run.machine)
    if seen.forks_checked == 0:
        reason = _ran_out(run, "fork") or f"no fork was seen while `{MEMORY_WORKLOAD}` ran"
        return Verdict(name, Status.NA, f"not applicable: {reason}")
    return Verdict(name, Status.PASS, f"{seen.forks_checked} forks: each child had every user page of its "
                                      f"parent at the same address, with the same contents, writable pages "
                                      f"in distinct physical pages")


def check_exit_frees(runs: Runs) -> Verdict:
    name = "exit-frees"
    run = runs.memory()
    if run.missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {run.missing}")
    assert run.watcher is not None and run.machine is not None
    if not run.watcher.pages.available:
        return Verdict(name, Status.NA, "not applicable: the kernel has no `physpages` array with an `owner` or "
                                        "`refcount` member in its DWARF, so free pages cannot be counted")
    seen = run.watcher.seen
    samples = seen.free_samples
    later = [sample for sample in samples if sample.cycle > 0]
    if not samples or (not later and seen.end is None):
        reason = _ran_out(run, "freeing at exit") or ("the first process was never left alone after a fork, "
                                                      "nor did every process exit, to measure against")
        return Verdict(name, Status.NA, f"not applicable: {reason}")
    baseline = samples[0]
    # Measured either when the first process was next alone (the baseline again), or once every process had
    # exited (the baseline plus the pages the first process held then).
    last, expected = (seen.end, baseline.free + baseline.held) if seen.end is not None else \
        (later[-1], baseline.free)
    short_sample = next((sample for sample in later if sample.free < baseline.free), None)
    if last.free >= expected and short_sample is None and seen.first_leak is None:
        when = (f"plus the {baseline.held} pages the first process held then, once every process had exited"
                if seen.end is not None else f"(measured {len(samples)} times, whenever one process was left)")
        return Verdict(name, Status.PASS, f"after {last.cycle} fork+exit cycles the free page count is back to "
                                          f"its baseline of {baseline.free} {when}")
    first = seen.first_leak
    if first is not None:
        when = (f"first leaked at cycle {first.cycle}: process {first.pid} exited still owning {first.free} "
                f"pages")
    else:
        when = f"first seen short after cycle {short_sample.cycle if short_sample else last.cycle}"
    alive = {proc.pid for proc in run.watcher.kernel.processes(run.machine.cpu.cr3.value)}
    dead = Counter(owner for owner in run.watcher.pages.owners() if owner > 0 and owner not in alive) \
        if run.watcher.owner_field else Counter()
    owned = (": owned by exited processes " + ", ".join(f"pid {pid} ({count} pages)" for pid, count in
                                                      sorted(dead.items())[:6])) if dead else ""
    short = expected - last.free
    baseline_text = (f"baseline {baseline.free} + {baseline.held} held by the first process"
                     if seen.end is not None else f"baseline {baseline.free}")
    state = (f"{short} pages are not free ({last.free} free, {baseline_text})" if short > 0 else
             f"the free page count is back to {last.free}, but pages were owned by exited processes")
    return Verdict(name, Status.FAIL, f"after {last.cycle} fork+exit cycles {state}{owned}; {when}: exit must "
                                      f"free every page of the process, its page-table pages included", run.machine)




def check_confused_deputy(runs: Runs) -> Verdict:
    name = "confused-deputy"
    run = runs.deputy()
    if run.missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {run.missing}")
    if run.findings:
        first = run.findings[0]
        others = len(run.findings) - 1
        more = f" (and {others} more call{'s' if others > 1 else ''}: {', '.join(f.call for f in run.findings[1:])})" \
            if others else ""
        return Verdict(name, Status.FAIL, f"{first.text}{more}: the confused deputy: every pointer a process "
                                          f"passes must be checked against the process's own page table "
                                          f"(user-accessible, and writable when the kernel writes)", run.machine)
    return Verdict(name, Status.PASS, f"{', '.join(run.probed)} given a kernel address each returned an error, "
                                      f"read and wrote nothing of the kernel's text and mapped nothing there")



def check_out_of_memory(runs: Runs) -> Verdict:
    name = "out-of-memory"
    run = runs.memory_full()
    missing = run.missing or run.uncounted
    if missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {missing}")
    assert run.stop is not None
    if not run.stop.ok:
        return Verdict(name, Status.FAIL, f"while `{oom.WORKLOAD}` filled memory the run ended with "
                                          f"{run.stop.kind.value}: {run.stop.message}: running out of memory "
                                          f"must make page_alloc fail (E_NOMEM), never crash or hang the system",
                       run.machine)
    if run.lowest_free:
        return Verdict(name, Status.FAIL, f"`{oom.WORKLOAD}` ran to power-off but memory never filled: at least "
                                          f"{run.lowest_free} pages stayed free (of {run.first_free} at the start) "
                                          f"while the allocators asked for more: page_alloc must succeed until "
                                          f"no free page is left", run.machine)
    return Verdict(name, Status.PASS, f"`{oom.WORKLOAD}` filled memory to the last of {run.first_free} free "
                                      f"pages and the system ran on to power-off")


def check_overlapping_address_spaces(runs: Runs) -> Verdict:
    """Every process at the same virtual addresses, each with its own physical pages there (layout.py): the four
    processes `allocators` starts, each looked at once as it first enters the kernel from user mode."""
    name = "overlapping-address-spaces"
    run = runs.memory_full()
    missing = run.missing or run.unseen
    if missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {missing}")
    assert run.layout is not None and run.stop is not None
    seen = run.layout.seen
    if seen.findings:
        first = seen.findings[0]
        others = sorted({f.pid for f in seen.findings[1:]} - {first.pid})
        more = f" (and processes {', '.join(map(str, others))} too)" if others else ""
        return Verdict(name, Status.FAIL, f"{first.text}{more}", run.machine)
    if seen.together < 2:
        ended = "" if run.stop.ok else f" (the run ended with {run.stop.kind.value}: {run.stop.message})"
        return Verdict(name, Status.NA, f"not applicable: while `{oom.WORKLOAD}` ran, {seen.together} process(es) "
                                        f"were seen alive at once{ended}: address spaces overlap only between "
                                        f"processes alive together")
    programs = sorted(set(seen.processes.values()))
    return Verdict(name, Status.PASS, f"the {len(seen.processes)} processes of `{oom.WORKLOAD}` ({seen.together} "
                                      f"alive at once) each had their program's image ({', '.join(programs)}) at its "
                                      f"link address and their stack page at VA {STACK_PAGE:#x}: the same virtual "
                                      f"addresses, backed by each process's own physical pages ({seen.shared_vas} "
                                      f"same-address page pairs compared)")


def check_virtual_page_allocation(runs: Runs) -> Verdict:
    """User pages where the process asked: three page_alloc calls the harness makes from `allocator`
    (pagealloc.py), each judged from the page tables and the kernel's page accounting before and after."""
    name = "virtual-page-allocation"
    run = runs.page_alloc()
    if run.missing is not None:
        return Verdict(name, Status.NA, f"not applicable: {run.missing}")
    if run.finding is not None:
        return Verdict(name, Status.FAIL, run.finding, run.machine)
    freed = "; the replaced page was freed" if run.accounted else \
        " (the kernel has no `physpages` in its DWARF: whether the replaced page was freed is not known)"
    return Verdict(name, Status.PASS, f"{', '.join(run.calls)} (a page it did not map, the same page again, the "
                                      f"highest free page below the stack) each mapped a fresh zero-filled page at "
                                      f"the address asked for, user-accessible and writable, in the caller alone, "
                                      f"and changed no other mapping{freed}")


@dataclass(frozen=True)
class Check:
    name: str
    doc: str
    run: Callable[[Runs], Verdict]


CHECKS: list[Check] = [
    Check("no-crash", f"`{CRASH_WORKLOAD}` (on a disk image: its command, or the program compiled into its "
                      f"kernel) runs to power-off within "
                      f"{CRASH_BUDGET_NS // SECOND_NS} s of virtual time: no panic, no triple fault, no runaway",
          check_no_crash),
    Check("kernel-isolation", "no process maps a kernel page (other than the console) or a page-table page "
                              "user-accessible, at every return to user mode", check_kernel_isolation),
    Check("process-isolation", "no physical page is writable by two processes", check_process_isolation),
    Check("fork", "right after each fork the child maps every user page of its parent at the same address with "
                  "the same contents, writable pages in its own physical pages", check_fork),
    Check("overlapping-address-spaces", f"every process of `{oom.WORKLOAD}` has its program's image at its link "
                                        f"address and its stack page at VA {STACK_PAGE:#x}, the same virtual "
                                        f"addresses in every process, each backed by its own physical pages",
          check_overlapping_address_spaces),
    Check("virtual-page-allocation", "page_alloc(addr) maps a fresh zero-filled page at addr, user-accessible and "
                                     "writable, nowhere else, changing no other mapping; over a page already "
                                     "there it maps a fresh one and frees the old", check_virtual_page_allocation),
    Check("exit-frees", f"after {CYCLES} fork+exit cycles the free page count is back to its baseline when the "
                        f"first process is next alone, or to the baseline plus the first process's pages once "
                        f"every process has exited (and no page is owned by a dead process)", check_exit_frees),
    Check("confused-deputy", "system calls given a kernel pointer (page_alloc, getsysname, pipewrite at the kernel's "
                             "text) are refused: an error, nothing of the kernel read, written or mapped",
          check_confused_deputy),
    Check("out-of-memory", f"`{oom.WORKLOAD}` fills memory until no page is free, and the system runs on to "
                           f"power-off: no crash, no hang", check_out_of_memory),
]
CHECK_NAMES = [check.name for check in CHECKS]
