"""The x86 glue on a hand-built machine: IDT delivery, error codes, stack switch, syscall, nested faults.

Each test builds the smallest world that shows one behaviour: a GDT, a TSS, an IDT whose gates all point at
`hlt` stubs, page tables with one user page, and a few instructions of ring-3 code.
"""

from __future__ import annotations

import functools
import struct

import pytest
from unicorn import x86_const as X

from harness.machine import Machine, MachineConfig, StopKind
from harness.pc import runloop
from harness.pc.clock import NEVER, ClockCosts, VirtualClock
from harness.pc.cpu import BP, RSP
from harness.pc.events import Event, Kind
from harness.pc.snapshot import Snapshot
from harness.pc.wallguard import WallGuard

from .x86asm import assemble

pytestmark = pytest.mark.cost(1.5)  # seconds, roughly: the session starts the costly modules first

GDT, TSS, IDT, PML4 = 0x8000, 0x8800, 0x9000, 0x10000
HANDLERS = 0x50000  # handler for vector v at HANDLERS + 16 * v
KERNEL_STACK = 0x80000
USER_CODE, USER_STACK = 0x400000, 0x402000
LSTAR = 0x60000


def descriptor(dpl: int, code: bool) -> int:
    flags = (1 << 44) | (1 << 47) | (dpl << 45) | (0xFFFF | (0xF << 48)) | (1 << 55)
    return flags | ((0xA << 40) | (1 << 53) if code else (0x2 << 40) | (1 << 54))


def build_world(machine: Machine, user_source: str, *, gates_dpl: dict[int, int] | None = None) -> dict[str, int]:
    mem = machine.memory
    struct.pack_into("<5Q", mem, GDT, 0, descriptor(0, True), descriptor(0, False), descriptor(3, True),
                     descriptor(3, False))
    tss_low = 0x67 | ((TSS & 0xFFFFFF) << 16) | (0x9 << 40) | (1 << 47)
    struct.pack_into("<QQ", mem, GDT + 40, tss_low, 0)
    struct.pack_into("<Q", mem, TSS + 4, KERNEL_STACK)
    struct.pack_into("<H", mem, TSS + 0x66, 0x68)  # no I/O bitmap
    for vector in range(256):
        handler = HANDLERS + 16 * vector
        mem[handler] = 0xF4  # hlt
        dpl = (gates_dpl or {}).get(vector, 0)
        low = (handler & 0xFFFF) | (0x08 << 16) | (0xE << 40) | (dpl << 45) | (1 << 47) | ((handler >> 16) << 48)
        struct.pack_into("<QQ", mem, IDT + 16 * vector, low, 0)
    mem[LSTAR] = 0xF4
    # Page tables: 0-2 MiB kernel-only (2 MiB page), 4 MiB..+8 KiB user pages.
    struct.pack_into("<Q", mem, PML4, (PML4 + 0x1000) | 7)
    struct.pack_into("<Q", mem, PML4 + 0x1000, (PML4 + 0x2000) | 7)
    struct.pack_into("<Q", mem, PML4 + 0x2000, 0 | 0x83)  # 0-2 MiB, supervisor
    struct.pack_into("<Q", mem, PML4 + 0x2000 + 16, (PML4 + 0x3000) | 7)  # 4-6 MiB via a page table
    struct.pack_into("<Q", mem, PML4 + 0x3000, 0x300000 | 7)  # VA 0x400000 -> PA 0x300000, user RWX
    struct.pack_into("<Q", mem, PML4 + 0x3000 + 8, 0x301000 | 7)  # VA 0x401000 -> PA 0x301000, user stack
    code, symbols = assemble(user_source, USER_CODE)
    mem[0x300000:0x300000 + len(code)] = code
    uc = machine.uc
    uc.reg_write(X.UC_X86_REG_CR4, 0x30)
    uc.msr_write(0xC0000080, 0xD01)
    uc.reg_write(X.UC_X86_REG_CR3, PML4)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, 0x37, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, IDT, 0xFFF, 0))
    uc.reg_write(X.UC_X86_REG_TR, (0x28, TSS, 0x67, 0x8900))
    uc.msr_write(0xC0000081, (0x08 << 32) | (0x10 << 48))
    uc.msr_write(0xC0000082, LSTAR)
    uc.msr_write(0xC0000084, 0x47700)
    # Enter ring 3 natively with iretq from a kernel stub.
    frame = struct.pack("<5Q", USER_CODE, 0x1B, 0x202, USER_STACK, 0x23)
    mem[KERNEL_STACK - 40:KERNEL_STACK] = frame
    mem[0x70000:0x70002] = b"\x48\xcf"  # iretq
    cpu = machine.cpu
    cpu.save()
    cpu.segs[1].load(0x08, 0, 0xFFFFFFFF, descriptor(0, True) >> 32)
    cpu.restore()
    uc.reg_write(X.UC_X86_REG_RSP, KERNEL_STACK - 40)
    uc.emu_start(0x70000, 0, count=1)
    assert machine.cpu.cpl() == 3 and machine.cpu.rip() == USER_CODE
    uc.ctl_flush_tb()
    return symbols


def run_until(machine: Machine, handler: int) -> None:
    """Run until the CPU halts in the `hlt` stub at `handler`, and leave RIP on that stub."""
    machine.run_slice()
    assert machine.cpu.rip() == handler + 1
    machine.uc.reg_write(X.UC_X86_REG_RIP, handler)


def frame(machine: Machine, words: int) -> list[int]:
    rsp = machine.cpu.read_register(X.UC_X86_REG_RSP)
    return list(struct.unpack_from(f"<{words}Q", machine.memory, rsp))


@pytest.fixture(params=[True, False], ids=["native-paths", "python-paths"])
def machine(request: pytest.FixtureRequest) -> Machine:
    """Each CPU behaviour holds for the native hot paths and for Python's reference versions alike."""
    machine = Machine(MachineConfig(ram_size=8 << 20, fast_paths=request.param))
    assert (machine.fast is not None) == request.param
    return machine


def test_user_page_fault_enters_the_handler_on_the_tss_stack_with_the_error_code(machine: Machine) -> None:
    symbols = build_world(machine, "mov 0x1000, %rax\n")  # a supervisor page
    run_until(machine, HANDLERS + 16 * 14)
    assert machine.cpu.cpl() == 0
    assert machine.cpu.read_register(X.UC_X86_REG_RSP) == KERNEL_STACK - 48
    error, rip, cs, rflags, rsp, ss = frame(machine, 6)
    assert (error, rip, cs, rsp, ss) == (0x5, symbols["_start"], 0x1B, USER_STACK, 0x23)
    assert rflags & 0x200
    assert machine.cpu.read_register(X.UC_X86_REG_CR2) == 0x1000
    assert not machine.cpu.rflags() & 0x200  # an interrupt gate clears IF


def test_a_second_fault_is_not_mistaken_for_a_double_fault(machine: Machine) -> None:
    build_world(machine, "mov 0x1000, %rax\n")
    for _ in range(3):
        run_until(machine, HANDLERS + 16 * 14)
        machine.uc.reg_write(X.UC_X86_REG_RSP, machine.cpu.read_register(X.UC_X86_REG_RSP) + 8)  # pop error
        machine.uc.emu_start(0x70000, 0, count=1)  # iretq back to the faulting instruction
    run_until(machine, HANDLERS + 16 * 14)
    assert machine.events.counts  # every fault was a #PF, none a #DF
    assert {e.number for e in machine.events} == {14}


def test_int_through_a_kernel_only_gate_is_a_general_protection_fault(machine: Machine) -> None:
    symbols = build_world(machine, "nop\nint_insn: int $0x30\n")
    run_until(machine, HANDLERS + 16 * 13)
    error, rip, cs, _, _, _ = frame(machine, 6)
    assert error == 0x30 * 8 + 2 and rip == symbols["int_insn"] and cs == 0x1B


def test_int_through_a_user_gate_is_delivered_as_a_trap(machine: Machine) -> None:
    symbols = build_world(machine, "int $0x30\nafter: nop\n", gates_dpl={0x30: 3})
    run_until(machine, HANDLERS + 16 * 0x30)
    rip, cs, _, _, _ = frame(machine, 5)
    assert rip == symbols["after"] and cs == 0x1B


def test_invalid_opcode_is_delivered_as_ud(machine: Machine) -> None:
    symbols = build_world(machine, "nop\nbad: ud2\n")
    run_until(machine, HANDLERS + 16 * 6)
    rip, cs, _, _, _ = frame(machine, 5)
    assert rip == symbols["bad"]


def test_syscall_enters_lstar_in_ring_0_with_rcx_and_r11(machine: Machine) -> None:
    symbols = build_world(machine, "mov $7, %eax\nsyscall\nback: nop\n")
    run_until(machine, LSTAR)
    cpu = machine.cpu
    assert cpu.cpl() == 0
    assert cpu.read_register(X.UC_X86_REG_RCX) == symbols["back"]
    assert cpu.read_register(X.UC_X86_REG_R11) & 0x200
    assert not cpu.rflags() & 0x200  # FMASK cleared IF
    assert cpu.read_register(X.UC_X86_REG_CS) == 0x08 and cpu.read_register(X.UC_X86_REG_SS) == 0x10
    assert machine.syscall_count == 1


def test_device_interrupt_in_user_mode_switches_stacks(machine: Machine) -> None:
    symbols = build_world(machine, "spin: jmp spin\n")
    machine.uc.emu_start(USER_CODE, 0, count=10)
    assert machine.cpu.cpl() == 3
    machine.cpu.deliver(32, external=True)
    assert machine.cpu.rip() == HANDLERS + 16 * 32
    rip, cs, _, rsp, ss = frame(machine, 5)
    assert (rip, cs, rsp, ss) == (symbols["spin"], 0x1B, USER_STACK, 0x23)
    assert machine.cpu.regs[RSP] == KERNEL_STACK - 40


def test_a_missing_handler_stack_is_a_double_fault_then_a_triple_fault(machine: Machine) -> None:
    build_world(machine, "mov 0x1000, %rax\n")
    struct.pack_into("<Q", machine.memory, TSS + 4, 0x7FF000000)  # RSP0 points at unmapped memory
    machine.run_slice()
    assert machine.stop is not None and machine.stop.kind is StopKind.TRIPLE_FAULT
    assert "#PF page fault could not be delivered (pushing the interrupt frame" in machine.stop.message
    assert "#DF double fault could not be delivered" in machine.stop.message
    assert machine.stop.rip == USER_CODE


def run_user_code_until_general_protection(machine: Machine, code: str) -> tuple[dict[str, int], list[Event]]:
    """Run `code` in ring 3 with a #GP handler that powers the machine off (the user's own attempt must not):
    the symbols of `code` and the #GP events."""
    symbols = build_world(machine, code)
    handler = assemble("mov $0x604, %dx\nmov $0x2000, %ax\nout %ax, %dx\nhlt\n", HANDLERS + 16 * 13)[0]
    machine.memory[HANDLERS + 16 * 13:HANDLERS + 16 * 13 + len(handler)] = handler
    machine.uc.ctl_flush_tb()
    stop = machine.run(max_time_ns=10_000_000)
    assert stop.kind is StopKind.POWER_OFF
    return symbols, [e for e in machine.events if e.number == 13]


def test_user_port_io_is_refused_with_general_protection(machine: Machine) -> None:
    symbols, gp = run_user_code_until_general_protection(machine, "mov $0x604, %dx\nmov $0x2000, %ax\n"
                                                                  "bad: out %ax, %dx\n")
    assert len(gp) == 1 and gp[0].rip == symbols["bad"] and gp[0].error_code == 0


def test_user_writes_to_the_log_port_are_refused_too(machine: Machine) -> None:
    """LPT1 is a port the native path answers itself, for ring 0 only: user code still gets #GP."""
    symbols, gp = run_user_code_until_general_protection(machine, "mov $0x378, %dx\nmov $0x41, %al\n"
                                                                  "bad: out %al, %dx\n")
    assert len(gp) == 1 and gp[0].rip == symbols["bad"]
    assert machine.parallel.data == 0


def enter_kernel_code(machine: Machine, source: str) -> None:
    """Put `source` at 0x70000 (identity-mapped) and the CPU there in ring 0, ready to run."""
    code = assemble(source, 0x70000)[0]
    machine.memory[0x70000:0x70000 + len(code)] = code
    machine.cpu.save()
    machine.cpu.segs[1].load(0x08, 0, 0xFFFFFFFF, descriptor(0, True) >> 32)
    machine.cpu.hflags.value &= ~3
    machine.cpu.eip.value = 0x70000
    machine.cpu.restore()
    machine.uc.ctl_flush_tb()


def test_reading_unassigned_physical_memory_is_harmless_and_reported_once(machine: Machine) -> None:
    build_world(machine, "nop\n")
    # Map VA 0x401000 to a physical page far beyond RAM, then read it twice from the kernel side.
    struct.pack_into("<Q", machine.memory, PML4 + 0x3000 + 8, 0xE0000000 | 7)
    enter_kernel_code(machine, "mov 0x401000, %rax\nmov 0x401008, %rbx\nhlt\n")
    machine.run_slice()
    assert machine.stop is None and machine.halted
    assert machine.cpu.read_register(X.UC_X86_REG_RAX) == 0xFFFFFFFFFFFFFFFF
    notes = [e.text for e in machine.events if "unassigned" in e.text]
    assert len(notes) == 1 and "0xe0000000" in notes[0]


def test_executing_unassigned_physical_memory_stops_the_machine(machine: Machine) -> None:
    build_world(machine, "jmp *%rax\n")
    struct.pack_into("<Q", machine.memory, PML4 + 0x3000 + 8, 0xE0000000 | 7)
    machine.uc.reg_write(X.UC_X86_REG_RAX, 0x401000)
    machine.run_slice()
    assert machine.stop is not None and machine.stop.kind is StopKind.MACHINE_FAULT
    assert "instruction fetch from physical address 0xe0000000" in machine.stop.message


@functools.cache
def int_world(fast_paths: bool, user_gates: frozenset[int]) -> tuple[Machine, Snapshot, dict[str, int]]:
    """A machine whose ring-3 code is about to run `int $0x30` (cd 30) at `int_insn`, the gates of `user_gates`
    DPL 3 and the others DPL 0, and a snapshot of that state."""
    machine = Machine(MachineConfig(ram_size=8 << 20, fast_paths=fast_paths))
    symbols = build_world(machine, "nop\nint_insn: int $0x30\nafter: nop\n", gates_dpl=dict.fromkeys(user_gates, 3))
    return machine, machine.snapshot(), symbols


def run_int(vector: int, fast_paths: bool, gates_dpl: dict[int, int]) -> tuple[Machine, dict[str, int]]:
    """The machine of `int_world`, restored to its snapshot, runs `int $vector` instead: until a handler halts.
    Every vector starts from the same state: restoring it costs a fifth of making and setting up a new machine
    (two thirds of these tests' time when each vector had its own)."""
    assert set(gates_dpl.values()) <= {0, 3}
    machine, snapshot, symbols = int_world(fast_paths, frozenset(v for v, dpl in gates_dpl.items() if dpl == 3))
    machine.restore(snapshot)
    machine.memory[0x300000 + symbols["int_insn"] - USER_CODE + 1] = vector  # the immediate of `int`
    machine.uc.ctl_flush_tb()
    machine.run_slice()
    return machine, symbols


def handler_reached(machine: Machine) -> int:
    assert machine.stop is None, machine.stop.message
    return (machine.cpu.rip() - 1 - HANDLERS) // 16


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_int_n_from_user_through_a_kernel_only_gate_is_gp_with_the_idt_selector_for_every_vector(
        fast_paths: bool) -> None:
    """As in WeensyOS, only vector 3 has a DPL-3 gate: every other `int $n` from ring 3 (0, 6, 8, 10-14
    included) is #GP(n*8+2) on the instruction itself, never a double fault or a #UD through a kernel gate."""
    for vector in range(256):
        machine, symbols = run_int(vector, fast_paths, {BP: 3})
        if vector == BP:
            assert handler_reached(machine) == BP, "int $3 through its DPL-3 gate"
            assert frame(machine, 5)[:2] == [symbols["after"], 0x1B]
            continue
        assert handler_reached(machine) == 13, f"int ${vector}"
        error, rip, cs = frame(machine, 3)
        assert (error, rip, cs) == (vector * 8 + 2, symbols["int_insn"], 0x1B), f"int ${vector}"
        assert [e.number for e in machine.events if e.kind is Kind.EXCEPTION] == [13], f"int ${vector}"


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_int_n_through_user_gates_enters_handler_n_with_no_error_code_for_every_vector(fast_paths: bool) -> None:
    """With DPL-3 gates `int $n` enters handler n as a trap: the frame has no error code (not even for 8, 10-14,
    17) and its RIP is the next instruction."""
    for vector in range(256):
        machine, symbols = run_int(vector, fast_paths, dict.fromkeys(range(256), 3))
        assert handler_reached(machine) == vector, f"int ${vector}"
        rip, cs, _, rsp, ss = frame(machine, 5)
        assert (rip, cs, rsp, ss) == (symbols["after"], 0x1B, USER_STACK, 0x23), f"int ${vector}"


def test_int3_through_a_kernel_only_gate_is_gp_on_the_int3(machine: Machine) -> None:
    symbols = build_world(machine, "nop\nbreak: int3\nnop\n")
    run_until(machine, HANDLERS + 16 * 13)
    error, rip, _ = frame(machine, 3)
    assert (error, rip) == (3 * 8 + 2, symbols["break"])


def test_int_n_whose_handler_stack_is_unmapped_faults_on_the_int_not_as_a_double_fault(machine: Machine) -> None:
    """A software interrupt is benign for the double-fault rules: a #PF while pushing its frame is a #PF (then
    #DF only because the #PF cannot be pushed either)."""
    build_world(machine, "nop\nint $3\n", gates_dpl={BP: 3})
    struct.pack_into("<Q", machine.memory, TSS + 4, 0x7FF000000)
    machine.run_slice()
    assert machine.stop is not None and machine.stop.kind is StopKind.TRIPLE_FAULT
    assert machine.stop.message.startswith("triple fault: int 0x3 could not be delivered (pushing the interrupt")
    assert "then #PF page fault could not be delivered" in machine.stop.message
    assert machine.stop.rip == USER_CODE + 1  # the int3 itself


def run_kernel_code(machine: Machine, source: str) -> None:
    """Run `source` in ring 0 at 0x70000 (identity-mapped) until it halts."""
    enter_kernel_code(machine, source)
    machine.run(max_time_ns=1_000_000_000)


def test_touching_thousands_of_pages_beyond_ram_costs_no_new_memory_region(machine: Machine) -> None:
    """The empty bus is made once: reading 8,192 distinct pages beyond RAM adds no Unicorn memory region (one
    each made a scan of 8,000 pages take minutes), reads all ones, and the report stays short. Each access is
    a call into Python, so it is charged to the virtual clock like a port access: a scan pays for itself."""
    build_world(machine, "nop\n")
    for index in range(16):  # VA 16 MiB + 32 MiB -> PA 0xE0000000 + 32 MiB, 2 MiB pages, kernel-only
        struct.pack_into("<Q", machine.memory, PML4 + 0x2000 + 8 * (8 + index), (0xE0000000 + (index << 21)) | 0x83)
    regions = len(list(machine.uc.mem_regions()))
    started, skipped = machine.clock.now_ns(), machine.clock.skipped_ns
    run_kernel_code(machine, "mov $0x1000000, %rbx\nmov $8192, %ecx\nloop: mov (%rbx), %rax\nmov %rax, 8(%rbx)\n"
                             "add $0x1000, %rbx\ndec %ecx\njnz loop\nhlt\n")
    # A read and a write a page, each of 8 bytes, which the engine hands the bus as two 4-byte accesses.
    assert machine.clock.skipped_ns - skipped == 4 * 8192 * machine.config.costs.ns_per_mmio
    assert machine.clock.now_ns() - started > 4 * 8192 * ClockCosts().ns_per_mmio
    assert machine.stop is not None and machine.stop.kind is StopKind.HANG  # its hlt, with IF clear
    assert machine.cpu.read_register(X.UC_X86_REG_RAX) == 0xFFFFFFFFFFFFFFFF
    assert len(list(machine.uc.mem_regions())) == regions
    notes = [e.text for e in machine.events if "unassigned" in e.text]
    assert 1 <= len(notes) <= 16 and "0xe0000000" in notes[0] and "no more" in notes[-1]


OUTSIDE_RAM = 0x7FF000000


def point_at_missing_memory(machine: Machine, what: str) -> None:
    """Make one structure that delivering a user #PF needs lie outside RAM (VA 0x405000 -> PA OUTSIDE_RAM)."""
    struct.pack_into("<Q", machine.memory, PML4 + 0x3000 + 8 * 5, OUTSIDE_RAM | 3)
    uc = machine.uc
    if what == "IDT":
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x405000, 0xFFF, 0))
    elif what == "GDT":
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x405000, 0x37, 0))
    elif what == "TSS":
        uc.reg_write(X.UC_X86_REG_TR, (0x28, 0x405000, 0x67, 0x8900))
    elif what == "handler stack":
        struct.pack_into("<Q", machine.memory, TSS + 4, 0x406000)
    elif what == "page table":  # the IDT's own walk goes through a page-table pointer outside RAM
        struct.pack_into("<Q", machine.memory, PML4 + 0x2000 + 8 * 3, OUTSIDE_RAM | 3)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x600000, 0xFFF, 0))


@pytest.mark.parametrize("what", ["IDT", "GDT", "TSS", "handler stack", "page table"])
def test_a_structure_outside_ram_ends_delivery_in_a_machine_fault_with_the_cause(machine: Machine,
                                                                                   what: str) -> None:
    build_world(machine, "nop\nbad: mov 0x1000, %rax\n")
    point_at_missing_memory(machine, what)
    machine.run_slice()
    assert machine.stop is not None and machine.stop.kind is StopKind.MACHINE_FAULT, machine.stop
    message = machine.stop.message
    assert message.startswith("machine fault: #PF page fault could not be delivered: the ")
    assert what.split()[0] in message and "outside RAM" in message
    assert machine.stop.rip == USER_CODE + 1


def test_a_cr3_outside_ram_ends_in_a_machine_fault_not_an_emulator_refusal(machine: Machine) -> None:
    build_world(machine, "nop\n")
    run_kernel_code(machine, f"mov ${OUTSIDE_RAM:#x}, %rax\nmov %rax, %cr3\nnop\nhlt\n")
    assert machine.stop is not None and machine.stop.kind is StopKind.MACHINE_FAULT, machine.stop
    assert "outside RAM" in machine.stop.message and "refused" not in machine.stop.message


def test_the_wall_clock_guard_ends_an_io_loop_with_no_timer_and_a_far_budget(machine: Machine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel polling PCI configuration space with interrupts off and no timer: every access is a Python
    call and no deadline but the budget would ever end the slice. The guard looks at the host clock at least
    every `CHECK_EVERY_NS` of virtual time (the watchdog thread besides), so it stops the run (its limit is 0:
    the first look fires). The looks are counted with the period set to a virtual millisecond, so that ten of
    them fit in a short run."""
    build_world(machine, "nop\n")
    enter_kernel_code(machine, "loop: mov $0xcf8, %dx\nmov $0x80000000, %eax\nout %eax, %dx\nmov $0xcfc, %dx\n"
                      "in %dx, %eax\njmp loop\n")
    stop = machine.run(max_time_ns=86_400 * 10**9, max_wall_s=0.0)
    assert stop.kind is StopKind.WALL
    assert stop.message.startswith("the wall-clock guard fired") and "budget 86400 s" in stop.message

    looks = []
    period = 1_000_000
    monkeypatch.setattr(runloop, "CHECK_EVERY_NS", period)
    monkeypatch.setattr(WallGuard, "expired", lambda guard: looks.append(machine.clock.now_ns()) or False)
    machine.stop = None
    stop = machine.run(max_time_ns=86_400 * 10**9, max_wall_s=3600, for_ns=10_000_000)
    assert stop.kind is StopKind.PAUSED
    gaps = [b - a for a, b in zip(looks, looks[1:], strict=False)]
    costs = machine.clock.costs  # the slice ends at most a round of the loop late: 6 instructions, 2 accesses
    a_round = -(-6 * costs.ps_per_instruction // 1000) + 2 * costs.ns_per_port_io
    assert len(looks) >= 10 and all(gap <= period + a_round for gap in gaps)


def test_the_wall_clock_guard_ends_a_run_whose_engine_never_comes_back(machine: Machine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is looked at between slices; a slice whose clock never reaches a deadline (here: every deadline
    made unreachable, as a clock stuck at the end of its range once made it) would keep the engine in one
    `emu_start` for ever. The watchdog thread asks the engine to stop once the limit has passed, and the run ends
    with the guard's own stop, not an emulator error."""
    build_world(machine, "nop\n")
    enter_kernel_code(machine, "loop: jmp loop\n")
    monkeypatch.setattr(VirtualClock, "stop_at_ns", lambda clock, when_ns: setattr(clock.counter, "deadline", NEVER))
    slices = []
    run_slice = machine.run_slice
    monkeypatch.setattr(machine, "run_slice", lambda deadline=None: slices.append(deadline) or run_slice(deadline))
    stop = machine.run(max_time_ns=10**9, max_wall_s=0.2)
    assert stop.kind is StopKind.WALL, stop
    assert stop.message.startswith("the wall-clock guard fired") and "budget 1 s" in stop.message
    assert len(slices) == 1  # one emu_start, ended from the watchdog's thread
    assert machine.clock.instructions > 0 and stop.rip == 0x70000


def test_a_run_for_a_while_has_a_wall_clock_guard_too(machine: Machine) -> None:
    """`run(for_ns=...)` without a budget (the live console, the campaign's slices) is guarded too, scaled to the
    time it was asked to run for, so a run that cannot advance its clock still ends."""
    build_world(machine, "nop\n")
    enter_kernel_code(machine, "loop: mov $0xcf8, %dx\nmov $0x80000000, %eax\nout %eax, %dx\njmp loop\n")
    stop = machine.run(for_ns=10**12, max_wall_s=0.0)
    assert stop.kind is StopKind.WALL and "budget" not in stop.message


ENTROPY_CODE = """
rdtsc
shl $32, %rdx
or %rax, %rdx
mov %rdx, %r8
mov $100, %ecx
spin: dec %ecx
jnz spin
rdtscp
shl $32, %rdx
or %rax, %rdx
mov %rdx, %r9
mov %rcx, %r12
rdrand %r10
setc %r13b
rdseed %r11d
mov $0x1111111111111111, %rbx
rdrand %bx
hlt
"""


def entropy_run(seed: int, fast_paths: bool = True) -> dict[str, int]:
    """Run ENTROPY_CODE in ring 3 on a fresh machine with `seed`: the registers it filled."""
    machine = Machine(MachineConfig(ram_size=8 << 20, seed=seed, fast_paths=fast_paths))
    build_world(machine, ENTROPY_CODE)
    run_until(machine, HANDLERS + 16 * 13)  # the user's hlt is #GP
    names = ("r8", "r9", "r10", "r11", "r12", "r13", "rbx")
    return {name: machine.cpu.read_register(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in names}


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_rdtsc_rdtscp_rdrand_rdseed_come_from_virtual_time_and_the_seed(fast_paths: bool) -> None:
    first = entropy_run(7, fast_paths)
    assert first == entropy_run(7, fast_paths)  # host time and host randomness would differ
    other = entropy_run(8, fast_paths)
    assert other["r8"] != first["r8"] and other["r10"] != first["r10"]
    assert 0 < first["r9"] - first["r8"] < 10_000  # the TSC moves with the (virtual) time of the loop
    assert first["r12"] == 0  # rdtscp's IA32_TSC_AUX
    assert first["r13"] == 1  # rdrand reports success (CF)
    assert first["r11"] >> 32 == 0  # a 32-bit destination clears the upper half
    assert first["rbx"] >> 16 == 0x111111111111  # a 16-bit one keeps it
    assert len({first["r10"], first["r11"], first["rbx"] & 0xFFFF}) == 3
    seed0 = entropy_run(0, fast_paths)
    # seed 0: the TSC starts at power-on (virtual time in 2 GHz ticks): the firmware's boot delay and a little
    assert 2 * ClockCosts().boot_delay_ns <= seed0["r8"] < 2 * ClockCosts().boot_delay_ns + 1_000_000
