"""Hostile user programs against our WeensyOS: one user instruction must not stop the machine.

Each test boots a program that attacks from user mode and checks that the kernel saw the architectural
exception, killed only the offender, and that everyone else went on to the normal power-off.
"""

from __future__ import annotations

import re
import struct

from harness.machine import StopKind

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
    machine, stop = boot("friends", ticks=2)
    assert stop.kind is StopKind.TICKS, stop.message
    address = machine.symbols.address_of("ptable")
    stride = machine.symbols.lookup(address).size // NPROC
    for slot in (1, 2):  # struct proc starts with its page table's physical address
        struct.pack_into("<Q", machine.memory, address + slot * stride, 0x7FF000000)
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.MACHINE_FAULT, stop.message
    assert "could not be delivered" in stop.message and "physical 0x7ff000000, outside RAM" in stop.message
