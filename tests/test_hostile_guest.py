"""Hostile user programs against our WeensyOS: one user instruction must not stop the machine.

Each test boots a program that attacks from user mode and checks that the kernel saw the architectural
exception, killed only the offender, and that everyone else went on to the normal power-off.
"""

from __future__ import annotations

import re
import struct

from harness import project
from harness.api import boot_machine
from harness.machine import MachineConfig, StopKind
from harness.pc.clock import ClockCosts
from harness.pc.events import Event, Kind

from .conftest import BootFn
from .weensyos_state import NPROC

GP_REPORT = re.compile(r"Process (\d+) general protection fault \(vector 13, error (0x[0-9a-f]+|0)")
BP_REPORT = re.compile(r"Process (\d+) breakpoint \(vector 3, error 0")


def test_int_n_from_user_mode_kills_only_the_process_for_every_vector(boot: BootFn) -> None:
    """`intall` forks a child per vector; each runs `int $n`. The kernel must see #GP(n*8+2) for every n but 3
    (whose gate is DPL 3: #BP), kill that child, and the parent must finish."""
    machine, stop = boot("intall", max_time=5.0)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    log = machine.log.text()
    errors = sorted(int(m[2], 16) for m in GP_REPORT.finditer(log))
    assert errors == [n * 8 + 2 for n in range(256) if n != 3]
    assert len(BP_REPORT.findall(log)) == 1
    assert "process 1 (intall) exited with status 0" in log
    assert "PANIC" not in log


def test_a_wild_pagetable_pointer_in_the_process_table_is_a_machine_fault_with_its_cause(boot: BootFn) -> None:
    """A kernel bug that leaves a process's `pagetable` pointing outside RAM: the kernel loads it into CR3 when
    it next runs that process. The run ends in a diagnosed machine fault (never a traceback or an emulator
    refusal) that names the missing page table."""
    # The friends must still be running at tick 2: under the speed model they finish before the first tick, so
    # this scenario runs on the plain instruction clock (10 ns an instruction).
    machine, stop = boot("friends", ticks=2, config=MachineConfig(costs=ClockCosts.instructions_only()))
    assert stop.kind is StopKind.TICKS, stop.message
    address = machine.symbols.address_of("ptable")
    stride = machine.symbols.lookup(address).size // NPROC
    for slot in (1, 2):  # struct proc starts with its page table's physical address
        struct.pack_into("<Q", machine.memory, address + slot * stride, 0x7FF000000)
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.MACHINE_FAULT, stop.message
    assert "could not be delivered" in stop.message and "physical 0x7ff000000, outside RAM" in stop.message


def test_processes_cannot_see_each_others_fpu_sse_or_fs_gs_registers(build_tree: project.BuildTree) -> None:
    """Two `regspy`s (and their fork children) load values naming themselves into the x87 control word, MXCSR,
    MMX 0-7, XMM 0-15 and FS or GS, give the CPU away 40 times each (yields and timer preemption) and must
    always find their own values; each starts clean, a fork child starts with its parent's. The auditor's
    register rule watches every return to user mode."""
    machine = boot_machine(build_tree.kernel, "regspy regspy", build_tree.programs())
    machine.enable_audit()
    stop = machine.run(max_time_ns=2_000_000_000)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    log = machine.log.text()
    assert sorted(re.findall(r"process (\d+) \(regspy\) exited with status 0", log)) == ["1", "2", "3", "4"], log
    assert machine.auditor is not None and machine.auditor.registers.entries >= 130


def test_the_auditor_catches_a_kernel_that_lets_registers_change_across_a_switch(
        build_tree: project.BuildTree) -> None:
    """A kernel that changed a waiting process's saved XMM registers (here: the harness, playing a leaky
    kernel, edits pid 1's saved FXSAVE image in its process-table slot while pid 2 runs) is stopped by the
    register rule when pid 1 resumes, before pid 1 can see the value."""
    machine = boot_machine(build_tree.kernel, "regspy regspy", build_tree.programs())
    machine.enable_audit()
    yields = []

    def fourth_yield(event: Event) -> bool:  # by then both have loaded their values
        if event.kind is Kind.SYSCALL and event.number == 2:
            yields.append(event)
        return len(yields) == 4

    stop = machine.run(max_time_ns=2_000_000_000, until_event=fourth_yield)
    assert stop.kind is StopKind.UNTIL, stop.message
    address = machine.symbols.address_of("ptable")
    stride = machine.symbols.lookup(address).size // NPROC
    slot = bytes(machine.memory[address + stride:address + 2 * stride])
    xmm5 = (0x584D4D0000000000 | (1 << 16) | 5).to_bytes(8, "little")  # regspy's marker: pid 1, XMM5
    assert slot.count(xmm5) == 1, "pid 1's saved XMM5 is in its slot"
    at = address + stride + slot.index(xmm5)
    machine.memory[at:at + 8] = (0x1234).to_bytes(8, "little")
    stop = machine.run(max_time_ns=2_000_000_000)
    assert stop.kind is StopKind.ISOLATION, stop.message
    assert stop.message == ("isolation violation (registers not private): pid 1: it resumes with registers it "
                            "did not leave: x87/MMX/SSE registers")
    assert "regspy 1: after a switch: an XMM register" not in machine.screen_text()
