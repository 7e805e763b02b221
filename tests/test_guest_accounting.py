"""What the harness reads from a guest it did not write: ticks are the timer interrupts the guest took, the
course's failed kernel assertion is a panic, and a cascade of nested kernel faults is diagnosed by its first fault.
Each is shown with a tiny kernel written for the purpose."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from harness.api import boot_machine
from harness.machine import MachineConfig, StopKind
from harness.observe.diagnosis import collapse_repeats
from harness.pc.clock import ClockCosts
from harness.pc.errors import ExitCode
from harness.pc.panics import is_panic_line
from harness.pc.symbols import SymbolTable

from .cli_in_process import run_cli
from .test_misbehaving_kernels import APIC_TIMER_PRELUDE, SET_GATE
from .x86asm import assemble_kernel

# A LAPIC timer at 100 Hz whose handler counts `ticks`; the kernel waits for its first tick, then either keeps
# interrupts on (IDLE) or masks them for ever (MASK), as a kernel stuck with IF=0 does.
TIMER_KERNEL = APIC_TIMER_PRELUDE + r"""
    movl $0x1ff, 0xf0(%rbx)      # APIC on
    movl $0x0b, 0x3e0(%rbx)      # divide by 1
    movl $0x20020, 0x320(%rbx)   # periodic, vector 32
    movl $10000000, 0x380(%rbx)  # 10 ms at 1 GHz
    sti
first:
    cmpq $0, ticks(%rip)
    je first
    {after_first_tick}
idle:
    jmp idle
timer:
    incq ticks(%rip)
    movl $0, 0xb0(%rbx)          # EOI
    iretq
    .data
    .balign 8
ticks: .quad 0
    .text
""" + SET_GATE

# Print a string on the parallel port (LPT1) as the course kernels do: byte, then a STROBE pulse.
LPT_PRINT = r"""
lpt_print:                       # %rsi: NUL-terminated string
    mov $0x37a, %dx
    mov $0x0c, %al
    out %al, %dx
1:  movb (%rsi), %al
    test %al, %al
    jz 2f
    mov $0x378, %dx
    out %al, %dx
    mov $0x37a, %dx
    mov $0x0d, %al
    out %al, %dx
    mov $0x0c, %al
    out %al, %dx
    inc %rsi
    jmp 1b
2:  ret
"""

# A failed assertion reported the course's way: `FILE:LINE: kernel assertion 'EXPR' failed` and a backtrace on
# the log (no "PANIC"), then a loop that waits for a key, with frame pointers from kernel_start down.
COURSE_ASSERTION = r"""
    mov $0x80000, %rsp
    xor %rbp, %rbp
    call kernel_start
    hlt
kernel_start:
    push %rbp
    mov %rsp, %rbp
    call assert_fail
    hlt
assert_fail:
    push %rbp
    mov %rsp, %rbp
    lea message(%rip), %rsi
    call lpt_print
fail:
    jmp fail
    .data
message: .asciz "kernel.cc:61: kernel assertion 'ticks > 0' failed\n  #1  0x40019  <kernel_start>\n"
    .text
""" + LPT_PRINT

# A page-fault handler that faults again (it reads unmapped memory, like a handler using a pointer that the
# first fault left bad): each fault nests inside the previous handler until the stack, started at 0x20000,
# grows down over the boot GDT at 0x3000 and the CPU can deliver nothing more (as in the course kernel that
# read its command line above 2 MiB).
FAULT_CASCADE = r"""
    movq $0x71003, 0x70000       # page tables at 0x70000: only 0-2 MiB mapped, in one 2 MiB page
    movq $0x72003, 0x71000
    movq $0x000083, 0x72000
    mov $0x70000, %rax
    mov %rax, %cr3
    lidt idtr(%rip)
    mov $14, %rdi
    lea page_fault(%rip), %rsi
    xor %rdx, %rdx
    call set_gate
    mov $0x20000, %rsp
first_read:
    mov 0x300000, %rax           # above 2 MiB: not mapped
    hlt
page_fault:
    mov 0x300008, %rax           # the handler faults too
    iretq
""" + SET_GATE


def harness_boot(kernel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("boot", "--headless", "--kernel", str(kernel), *args)


def guest_ticks(machine_memory: memoryview, kernel: Path) -> int:
    address = SymbolTable.from_elf(kernel).address_of("ticks")
    assert address is not None
    return struct.unpack_from("<Q", machine_memory, address)[0]


def test_ticks_count_the_timer_interrupts_the_guest_took(tmp_path: Path) -> None:
    kernel = assemble_kernel(TIMER_KERNEL.replace("{after_first_tick}", ""), tmp_path / "kernel")
    machine = boot_machine(kernel, None, {})
    stop = machine.run(ticks=5, max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.TICKS and machine.timer_ticks == 5
    # The run stops as the fifth interrupt is taken: at the handler's first instruction, four counted.
    assert stop.rip == machine.symbols.address_of("timer") and guest_ticks(machine.memory, kernel) == 4


def test_ticks_while_the_guest_masks_interrupts_are_not_ticks(tmp_path: Path) -> None:
    kernel = assemble_kernel(TIMER_KERNEL.replace("{after_first_tick}", "cli"), tmp_path / "kernel")
    machine = boot_machine(kernel, None, {})
    stop = machine.run(ticks=5, max_time_ns=200_000_000)
    assert stop.kind is StopKind.BUDGET  # 20 periods passed, but the guest took only one of them
    assert machine.timer_ticks == guest_ticks(machine.memory, kernel) == 1
    assert machine.lapic.timer_expirations >= 19
    result = harness_boot(kernel, "--ticks", "5", "--max-time", "0.2")
    assert result.returncode == ExitCode.BUDGET and "[1 timer tick," in result.stderr


def test_the_course_assertion_format_is_a_panic_with_its_message_and_backtrace(tmp_path: Path) -> None:
    kernel = assemble_kernel(COURSE_ASSERTION, tmp_path / "kernel")
    result = harness_boot(kernel, "--max-time", "1")
    assert result.returncode == ExitCode.PANIC, result.stderr
    assert "kernel panic at" in result.stderr
    assert "panic message: kernel.cc:61: kernel assertion 'ticks > 0' failed" in result.stderr
    backtrace = result.stderr.split("  backtrace:\n", 1)[1]
    assert backtrace.startswith("    0x40019 <kernel_start+0x9>\n    0x4000f <_start+0xf>\n")
    assert "  #1  0x40019  <kernel_start>" in result.stderr  # the kernel's own backtrace, in the log tail


def test_which_log_lines_are_panics() -> None:
    assert is_panic_line("PANIC: Kernel page fault on 0x200230 (read, missing page, rip=0x44ab3)")
    assert is_panic_line("USER PANIC: deliberate panic from panicker")
    assert is_panic_line("PANIC: k-alloc.cc:40: assertion 'pa < MEMSIZE_PHYSICAL' failed")  # ours
    assert is_panic_line("kernel.cc:61: kernel assertion 'ticks > 0' failed")  # the course's
    assert not is_panic_line("process 1 (fault) exited with status -1; free pages 387")
    assert not is_panic_line("note: kernel assertion 'x' failed")  # no FILE:LINE: in front


def test_a_fault_cascade_is_diagnosed_by_its_first_fault(tmp_path: Path) -> None:
    kernel = assemble_kernel(FAULT_CASCADE, tmp_path / "kernel")
    symbols = SymbolTable.from_elf(kernel)
    machine = boot_machine(kernel, None, {}, MachineConfig(event_capacity=64))
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.TRIPLE_FAULT
    cascade = machine.events.ongoing_cascade
    assert cascade is not None
    nested = cascade.nested
    assert nested == machine.cpu.deliveries - 1 > 2000  # every delivery after the first one
    assert cascade.frame == 0x20000 - 48 * (nested + 1)  # each #PF frame: SS, RSP, RFLAGS, CS, RIP, error code
    first = cascade.first[0]
    assert first.number == 14 and first.rip == symbols.address_of("first_read") and first.address == 0x300000
    assert [event.rip for event in cascade.first[1:]] == [symbols.address_of("page_fault")] * 3
    assert all(event.rip != first.rip for event in machine.events.ring)  # the ring alone has lost it
    result = harness_boot(kernel, "--max-time", "1")
    assert result.returncode == ExitCode.TRIPLE_FAULT
    assert (f"first fault: #PF page fault at {first.rip:#x} <first_read> (kernel mode), address 0x300000; "
            f"{nested} nested faults followed") in result.stderr
    # the last events, one line; all at power-on (after the firmware's boot delay)
    assert f"    ... the same 10 more times, the last at [{ClockCosts().boot_delay_ns / 1e9:.4f}" in result.stderr


def test_repeated_events_are_shown_once_with_a_count() -> None:
    events = ["[0.1] a", "[0.2] b", "[0.3] b", "[0.4] c", "[0.5] c", "[0.6] c", "[0.7] c", "[0.8] a"]
    assert collapse_repeats(events) == ["[0.1] a", "[0.2] b", "[0.3] b", "[0.4] c",
                                        "... the same 3 more times, the last at [0.7]", "[0.8] a"]
