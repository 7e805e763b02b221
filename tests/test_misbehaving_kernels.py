"""Misbehaving kernels: each ends within its budget with a diagnosis (what, where by symbol, the last events)
and its own exit status, never a hang or a Python traceback.

Some are tiny kernels written for the purpose; the others are our WeensyOS with a test-only patch applied to
its running memory (the bug a student might have written).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import replace
from pathlib import Path

from harness import project
from harness.api import boot_machine
from harness.machine import MachineConfig, StopKind
from harness.pc.clock import ClockCosts
from harness.pc.errors import ExitCode
from harness.pc.events import Kind

from .cli_in_process import run_cli
from .x86asm import assemble_kernel

# A gate-setting helper shared by the tiny kernels: set_gate(vector=%rdi, handler=%rsi, ist=%rdx).
SET_GATE = r"""
set_gate:
    mov %rsi, %rax
    and $0xffff, %eax
    or $0x00080000, %eax            # selector 0x08, the boot GDT's 64-bit code segment
    mov %rdx, %rcx
    shl $32, %rcx
    or %rcx, %rax                   # IST index
    movabs $0x00008e0000000000, %rcx   # present, DPL 0, 64-bit interrupt gate
    or %rcx, %rax
    mov %rsi, %rcx
    shr $16, %rcx
    and $0xffff, %ecx
    shl $48, %rcx
    or %rcx, %rax
    shl $4, %rdi
    lea idt(%rip), %rcx
    mov %rax, (%rcx,%rdi)
    mov %rsi, %rax
    shr $32, %rax
    mov %rax, 8(%rcx,%rdi)
    ret
    .data
    .balign 16
idt: .fill 4096, 1, 0
idtr: .word 4095
      .quad idt
    .text
"""

# The start of a kernel that uses the local APIC: a stack, the APIC's 3-4 GiB mapped with a 1 GiB page in the
# boot page table (and the TLB flushed), then, for APIC_TIMER_PRELUDE, an IDT whose vector 32 is `timer` and %rbx
# pointing at the APIC's registers.
APIC_MAPPED = r"""
    mov $0x80000, %rsp
    mov $0xc0000083, %eax        # map 3-4 GiB (the local APIC) with a 1 GiB page in the boot page table
    mov %rax, 0x2018
    mov %cr3, %rax
    mov %rax, %cr3
"""
APIC_TIMER_PRELUDE = APIC_MAPPED + r"""
    lidt idtr(%rip)
    mov $32, %rdi
    lea timer(%rip), %rsi
    xor %rdx, %rdx
    call set_gate
    mov $0xfee00000, %ebx
"""


TRIPLE_FAULT = r"""
    mov $0x80000, %rsp
    lidt empty_idtr(%rip)        # no interrupt descriptor table at all
crash:
    ud2
    .data
empty_idtr: .word 0
    .quad 0
    .text
"""

NOWHERE = r"""
    mov $0x80000, %rsp
    movabs $0x20000000, %rax     # 512 MiB: inside the boot page table's first GiB, but there is no RAM there
jump:
    jmp *%rax
"""

SPIN = r"""
    cli
spin:
    jmp spin
"""

STACK_OVERFLOW = r"""
    # Page tables at 0x10000: identity 0-2 MiB and 4-6 MiB in 2 MiB pages; 2-4 MiB unmapped (the guard).
    movq $0x11003, 0x10000
    movq $0x12003, 0x11000
    movq $0x000083, 0x12000
    movq $0x400083, 0x12010
    mov $0x10000, %rax
    mov %rax, %cr3
    lidt idtr(%rip)
    mov $14, %rdi
    lea page_fault(%rip), %rsi
    xor %rdx, %rdx
    call set_gate
    mov $0x404000, %rsp          # 16 KiB above the guard
recurse:
    call recurse                 # each call pushes 8 bytes, down into the unmapped guard region
page_fault:
    cli
    hlt
""" + SET_GATE

TIMER_STORM = APIC_TIMER_PRELUDE + r"""
    movl $0x1ff, 0xf0(%rbx)      # APIC on, spurious vector 0xff
    movl $0x0b, 0x3e0(%rbx)      # divide by 1
    movl $0x20020, 0x320(%rbx)   # periodic, vector 32
    movl $1, 0x380(%rbx)         # initial count 1: a period of 1 ns
    sti
wait:
    jmp wait
timer:
    movl $0, 0xb0(%rbx)          # EOI
    iretq
""" + SET_GATE


def run_kernel(source: str, tmp_path: Path, max_time: str = "1") -> subprocess.CompletedProcess[str]:
    kernel = assemble_kernel(source, tmp_path / "kernel")
    return run_cli("boot", "--headless", "--kernel", str(kernel), "--max-time", max_time)


def test_triple_fault(tmp_path: Path) -> None:
    result = run_kernel(TRIPLE_FAULT, tmp_path)
    assert result.returncode == ExitCode.TRIPLE_FAULT
    assert "#UD invalid opcode could not be delivered (vector 6 is beyond the IDT limit)" in result.stderr
    assert "#DF double fault could not be delivered" in result.stderr
    assert "<crash>" in result.stderr and "Traceback" not in result.stderr


def test_jump_to_memory_that_does_not_exist(tmp_path: Path) -> None:
    result = run_kernel(NOWHERE, tmp_path)
    assert result.returncode == ExitCode.MACHINE_FAULT
    assert "instruction fetch from physical address 0x20000000, where there is no RAM or device" in result.stderr


def test_an_infinite_loop_with_interrupts_off_exhausts_its_budget(tmp_path: Path) -> None:
    result = run_kernel(SPIN, tmp_path, max_time="0.05")
    assert result.returncode == ExitCode.BUDGET
    assert "where: " in result.stderr and "<spin>" in result.stderr


def test_a_kernel_stack_overflow_ends_in_a_triple_fault_naming_the_stack(tmp_path: Path) -> None:
    result = run_kernel(STACK_OVERFLOW, tmp_path)
    assert result.returncode == ExitCode.TRIPLE_FAULT
    assert "#PF page fault could not be delivered (pushing the interrupt frame at 0x3f" in result.stderr
    assert "<recurse>" in result.stderr


def test_a_timer_storm_is_stopped_with_its_cause(tmp_path: Path) -> None:
    result = run_kernel(TIMER_STORM, tmp_path)
    assert result.returncode == ExitCode.STORM
    assert "interrupt storm" in result.stderr and "period is 1 ns" in result.stderr
    assert "timer interrupt (vector 32)" in result.stderr  # the last events


def test_a_kernel_page_fault_in_weensyos_is_its_own_panic(build_tree: project.BuildTree) -> None:
    """Test-only patch: `current` points at unmapped memory when the kernel handles a system call."""
    machine = boot_machine(build_tree.kernel, "hello", build_tree.programs())
    machine.run(until_event=lambda e: e.kind is Kind.SYSCALL)  # hello's first call, just entered
    current = machine.symbols.address_of("current")
    assert current is not None
    struct.pack_into("<Q", machine.memory, current, 0x7FFF0000)
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.PANIC
    assert stop.message.startswith("PANIC: Kernel page fault on 0x7fff")
    assert any("<panic" in machine.symbols.describe(address) for address in stop.backtrace)
    fault = next(e for e in machine.events if e.is_page_fault)
    assert not fault.user and "<syscall" in machine.symbols.describe(fault.rip)  # where the kernel faulted


def test_an_invalid_opcode_in_weensyos_is_its_own_panic(build_tree: project.BuildTree) -> None:
    """Test-only patch: `ud2` over the first instruction of the kernel's system-call handler."""
    machine = boot_machine(build_tree.kernel, "hello", build_tree.programs())
    handler = machine.symbols.address_of("syscall")
    assert handler is not None
    machine.memory[handler:handler + 2] = b"\x0f\x0b"
    machine.uc.ctl_flush_tb()
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.PANIC
    assert "6" in stop.message and "PANIC" in stop.message
    assert any(e.kind is Kind.EXCEPTION and e.number == 6 for e in machine.events)


TIMER_ILLEGAL_VECTOR = APIC_MAPPED + r"""
    mov $0xfee00000, %ebx
    movl $0x1ff, 0xf0(%rbx)      # APIC on
    movl $0x0b, 0x3e0(%rbx)      # divide by 1
    movl $0x20005, 0x320(%rbx)   # periodic, vector 5: illegal (below 16), so every expiry is an APIC error
    movl $1, 0x380(%rbx)         # a period of 1 ns
    sti
wait:
    jmp wait
"""


def test_a_timer_with_an_illegal_vector_does_not_stop_the_cpu_at_every_expiry(tmp_path: Path) -> None:
    """Its expiries can do nothing once the error is pending (the error interrupt is masked), so the machine
    does not end a slice for each of them (it did, every other block: 600x slower than the guest's time);
    the budget runs out after a few dozen slices, and every expiry is still counted."""
    kernel = assemble_kernel(TIMER_ILLEGAL_VECTOR, tmp_path / "kernel")
    machine = boot_machine(kernel, "", {})
    stop = machine.run(max_time_ns=50_000_000)
    assert stop.kind is StopKind.BUDGET
    assert machine.clock.deadline_stops < 200  # the budget and the wall-clock guard's looks (every virtual ms)
    assert machine.lapic.esr_pending & (1 << 6)  # "received illegal vector"
    assert machine.lapic.timer_expirations > 40_000_000  # a 1 ns period over 50 ms
    assert machine.timer_ticks == 0  # and none of them is an interrupt the guest took


APIC_REGISTER_LOOP = APIC_MAPPED + r"""
    cli
    mov $0xfee00000, %ebx
    movl $0x1ff, 0xf0(%rbx)      # APIC on: one access
    mov $1000, %ecx
flood:
    movl $0x40040, 0x300(%rbx)   # a self-IPI, again and again: one access each (IPIs are not modelled)
    dec %ecx
    jnz flood
    hlt
"""


def test_a_loop_on_a_local_apic_register_pays_for_each_access_in_virtual_time(tmp_path: Path) -> None:
    """Each access to a memory-mapped device register is a call into Python; charged nothing, a loop writing
    the interrupt command register (sending itself IPIs) ran at 1,100x its virtual time. Each IPI now costs what
    a port access costs; the other registers (the kernel's EOI every tick) stay free."""
    kernel = assemble_kernel(APIC_REGISTER_LOOP, tmp_path / "kernel")

    def halted_at(costs: ClockCosts) -> int:
        machine = boot_machine(kernel, "", {}, config=MachineConfig(costs=costs))
        stop = machine.run(max_time_ns=1_000_000_000)
        assert stop.kind is StopKind.HANG, stop  # halted with interrupts off, after the loop
        return machine.clock.now_ns()

    free = halted_at(replace(ClockCosts(), ns_per_mmio=0))
    assert halted_at(replace(ClockCosts(), ns_per_mmio=1)) - free == 1000  # the IPIs, not the SVR write
    assert halted_at(ClockCosts()) - free == 1000 * ClockCosts().ns_per_mmio > 1_000_000
