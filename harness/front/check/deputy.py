"""The confused-deputy check: system calls given kernel pointers must be refused, and nothing of the kernel read
or written for the caller.

No program of the course passes kernel pointers on purpose, so the harness does it: it runs `hello` to its first
system call, stops at the kernel's system-call entry (the caller's registers not yet saved by the kernel) and,
from a snapshot of that moment, makes the call again and again with other arguments: `page_alloc` of a kernel
page, `getsysname` into the kernel's text, `pipewrite` from it. Each returns to the caller's next instruction
(a breakpoint there); the kernel's text must be unchanged, nothing mapped at the kernel page, and each call an
error. The kernel's text is the target because nothing legitimately changes it while the kernel runs; when the
process may itself reach it (kernel isolation broken), the check does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RSI

from ...api import boot_machine
from ...machine import Machine, StopKind
from ...observe.audit import user_mappings
from ...observe.syscalls import choose_table
from ...pc.events import Kind
from .target import Target

PROBE_BUDGET_NS = 1_000_000_000
PROBE_BYTES = 64
PAGE = 0x1000


@dataclass(frozen=True)
class Probe:
    call: str
    explain: str  # what it would mean if the kernel accepted the call


PROBES = [
    Probe("page_alloc", "the kernel mapped a page at a kernel address for a process"),
    Probe("getsysname", "the kernel wrote into its own memory for a process"),
    Probe("pipewrite", "the kernel read its own memory into the pipe for a process"),
]


@dataclass(frozen=True)
class DeputyFinding:
    call: str
    text: str


@dataclass
class DeputyRun:
    probed: list[str]
    findings: list[DeputyFinding]
    missing: str | None = None
    machine: Machine | None = None


def _signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def probe_kernel(target: Target) -> DeputyRun:
    """Every probe the kernel's system-call table allows, from one snapshot at hello's first system call."""
    if target.kernel is None:
        return DeputyRun([], [], f"it starts `hello` itself, and {target.disk_reason}")
    if "hello" not in target.programs:
        return DeputyRun([], [], "it needs the program(s) hello, which the target does not have")
    machine = boot_machine(target.kernel, "hello", target.programs)
    assert machine.kernel_image is not None
    table = choose_table(machine.kernel_image, None, target.kernel.parent / "syscalls.json")
    numbers = {name: spec.number for name, spec in table.by_name.items()}
    probes = [probe for probe in PROBES if probe.call in numbers]
    if not probes:
        return DeputyRun([], [], "the kernel's system-call table has none of page_alloc, getsysname, pipewrite")
    stop = machine.run(max_time_ns=PROBE_BUDGET_NS, until_event=lambda e: e.kind is Kind.SYSCALL)
    if stop.kind is not StopKind.UNTIL:
        return DeputyRun([], [], f"hello made no system call ({stop.kind.value}: {stop.message})")
    kernel_page = machine.kernel_image.entry & ~(PAGE - 1)
    machine.cpu.save()
    leaves, _ = user_mappings(machine.memory, machine.cpu.cr3.value)  # the caller's page table, at entry
    if any(leaf.user and leaf.va <= kernel_page < leaf.va + leaf.size for leaf in leaves):
        return DeputyRun([], [], f"the kernel's text at {kernel_page:#x} is user-accessible to the process (kernel "
                                 f"isolation is broken), so a kernel pointer is the process's own to pass")
    start = machine.snapshot()
    return_address = machine.uc.reg_read(UC_X86_REG_RCX)
    findings = []
    for probe in probes:
        machine.restore(start)
        found = _one(machine, probe, numbers[probe.call], kernel_page, return_address)
        if found is not None:
            findings.append(found)
    return DeputyRun([probe.call for probe in probes], findings, machine=machine)


def _one(machine: Machine, probe: Probe, number: int, kernel_page: int, return_address: int) -> DeputyFinding | None:
    uc = machine.uc
    before = bytes(machine.memory[kernel_page:kernel_page + PAGE])
    uc.reg_write(UC_X86_REG_RAX, number)
    uc.reg_write(UC_X86_REG_RDI, kernel_page)
    uc.reg_write(UC_X86_REG_RSI, PROBE_BYTES)
    machine.add_breakpoint(return_address)
    try:
        stop = machine.run(max_time_ns=PROBE_BUDGET_NS)
    finally:
        machine.remove_breakpoint(return_address)
    shown = f"{probe.call}({kernel_page:#x}{', ' + str(PROBE_BYTES) if probe.call == 'pipewrite' else ''})"
    if stop.kind is not StopKind.BREAKPOINT:
        return DeputyFinding(probe.call, f"{shown} did not return to the caller ({stop.kind.value}: "
                                         f"{stop.message}): a bad pointer must be an error, not the end of the "
                                         f"system")
    result = _signed(uc.reg_read(UC_X86_REG_RAX))
    after = bytes(machine.memory[kernel_page:kernel_page + PAGE])
    if before != after:
        changed = sum(1 for a, b in zip(before, after, strict=False) if a != b)
        return DeputyFinding(probe.call, f"{shown} returned {result} and changed {changed} bytes of the kernel's "
                                         f"text at {kernel_page:#x}: {probe.explain}")
    machine.cpu.save()
    leaves, _ = user_mappings(machine.memory, machine.cpu.cr3.value)
    if any(leaf.user and leaf.va <= kernel_page < leaf.va + leaf.size for leaf in leaves):
        return DeputyFinding(probe.call, f"{shown} returned {result} and the caller now maps VA {kernel_page:#x} "
                                         f"user-accessible: {probe.explain}")
    if result >= 0:
        return DeputyFinding(probe.call, f"{shown} returned {result}, not an error: {probe.explain}")
    return None
