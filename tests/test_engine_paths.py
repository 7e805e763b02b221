"""The engine's patches for the paths a context switch takes (engine/README.md): code hooks found by address
(`code-hooks`), a TLB flush that clears only what was filled (`tlb-flush`), page-table reads straight from RAM
(`page-walk`). Each is checked on the case it could get wrong, with the patch on and off: the same result.

(tests/test_engine.py also runs whole workloads with each patch off and compares the runs.)
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from unicorn import UC_HOOK_CODE
from unicorn import x86_const as X

from harness.machine import Machine, MachineConfig
from harness.pc.cpu import NOT_AN_ADDRESS

from .test_engine import FOUR_INSTRUCTION_LOOP, PAGE_TABLES_AT_0x10000
from .x86asm import assemble_kernel


def booted(source: str, tmp_path: Path, off: frozenset[str]) -> Machine:
    from harness.pc.loader import read_elf

    machine = Machine(MachineConfig(engine_off=off))
    machine.boot(read_elf(assemble_kernel(source, tmp_path / "kernel"), "kernel"), "", [])
    return machine


def run_engine(machine: Machine, instructions: int) -> None:
    """Run the engine itself (no harness slice loop) for at most `instructions`, or until a hook stops it."""
    machine.clock._set_deadline(machine.clock.instructions + instructions)
    machine.uc.emu_start(machine.uc.reg_read(X.UC_X86_REG_RIP), NOT_AN_ADDRESS)


def run_to_label(machine: Machine, label: str) -> None:
    """Run the engine until the kernel reaches `label` (a code hook there stops it, then goes)."""
    uc = machine.uc
    address = machine.symbols.address_of(label)
    stopper = uc.hook_add(UC_HOOK_CODE, lambda uc_, at, size, data: uc.emu_stop(), None, address, address)
    run_engine(machine, 100_000)
    assert uc.reg_read(X.UC_X86_REG_RIP) == address
    uc.hook_del(stopper)


# -- code-hooks -----------------------------------------------------------------------------------------------

def hook_calls(tmp_path: Path, off: frozenset[str]) -> list[tuple[str, int]]:
    """Hooks on a loop: a range over the loop, one on every byte of it (most inside instructions, never
    called), two at the same address, an all-address hook; one hook deletes a later one and adds a new one at
    its own address the first time it runs. What is called, in order, for the first 120 calls."""
    machine = booted(FOUR_INSTRUCTION_LOOP, tmp_path, off)
    uc = machine.uc
    start = machine.symbols.address_of("loop")
    calls: list[tuple[str, int]] = []
    handles: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202 - a Unicorn callback
        def called(uc_: object, address: int, size: int, user_data: object) -> None:
            calls.append((name, address))
            if name == "editor" and "victim" in handles:
                uc.hook_del(handles.pop("victim"))
                handles["late"] = uc.hook_add(UC_HOOK_CODE, hook("late"), None, address, address)
            if len(calls) >= 120:
                uc.emu_stop()
        return called

    handles["range"] = uc.hook_add(UC_HOOK_CODE, hook("range"), None, start, start + 12)
    for offset in range(14):
        handles[f"byte+{offset}"] = uc.hook_add(UC_HOOK_CODE, hook(f"byte+{offset}"), None, start + offset,
                                                start + offset)
    handles["editor"] = uc.hook_add(UC_HOOK_CODE, hook("editor"), None, start + 3, start + 3)
    handles["twin"] = uc.hook_add(UC_HOOK_CODE, hook("twin"), None, start + 3, start + 3)
    handles["victim"] = uc.hook_add(UC_HOOK_CODE, hook("victim"), None, start + 7, start + 7)
    handles["everywhere"] = uc.hook_add(UC_HOOK_CODE, hook("everywhere"), None, 1, 0)
    run_engine(machine, 100_000)
    return calls


def test_code_hooks_run_at_their_addresses_in_the_order_they_were_added(tmp_path: Path) -> None:
    """The index of code hooks by address calls what the list would: every hook that watches the address, in
    the order the hooks were added; a hook deleted by another is not called again, a hook added by another at
    the same address is called in the same round, as the stock walk of the list does."""
    indexed = hook_calls(tmp_path, frozenset())
    walked = hook_calls(tmp_path, frozenset({"code-hooks"}))
    assert indexed == walked
    start = min(address for name, address in indexed if name == "range")
    in_loop = [(name, address - start) for name, address in indexed if address >= start]
    # inc %rax at +0, add $3,%rbx at +3, lea 1(%rbx),%rcx at +7, jmp at +11: no hook runs inside an instruction
    assert {offset for _, offset in in_loop} == {0, 3, 7, 11}
    first_round = [("range", 0), ("byte+0", 0), ("everywhere", 0),
                   ("range", 3), ("byte+3", 3), ("editor", 3), ("twin", 3), ("everywhere", 3), ("late", 3),
                   ("range", 7), ("byte+7", 7), ("everywhere", 7),  # the victim was deleted before its turn
                   ("range", 11), ("byte+11", 11), ("everywhere", 11)]
    assert in_loop[:15] == first_round
    assert in_loop[15:21] == [("range", 0), ("byte+0", 0), ("everywhere", 0),
                              ("range", 3), ("byte+3", 3), ("editor", 3)]


# -- tlb-flush ------------------------------------------------------------------------------------------------

# Two address spaces that map the same virtual addresses to different pages: 4 MiB is a routine and its data
# (physical 6 MiB in A, 8 MiB in B); 6-8 MiB is 512 pages both share. Each round switches to A, calls the routine
# and reads its data, then to B and does the same; on every other switch it first touches 300 pages and runs 300
# one-jump blocks, more than the flush keeps track of (the TLB's 128 slots, the jump cache's 256), so that both
# the cleared-by-slot and the cleared-whole flushes are taken. What the routines returned and the data read add
# up at 0x9000 and 0x9008.
TWO_ADDRESS_SPACES = PAGE_TABLES_AT_0x10000 + r"""  # the page directory at 0x12000 is A's
    movq $0x600083, 0x12010       # A: 4-6 MiB -> physical 6 MiB
    movq $0x1000083, 0x12018      # A: 6-8 MiB -> physical 16 MiB
    movq $0x14003, 0x13000
    movq $0x15003, 0x14000
    movq $0x000083, 0x15000       # B: 0-2 MiB -> physical 0
    movq $0x800083, 0x15010       # B: 4-6 MiB -> physical 8 MiB
    movq $0x1000083, 0x15018      # B: 6-8 MiB -> physical 16 MiB
    mov $0x10000, %rax
    mov %rax, %cr3
    lea routine_a(%rip), %rsi
    mov $0x400000, %rdi
    mov $6, %ecx
    rep movsb
    movq $0x11, 0x401000
    mov $0x13000, %rax
    mov %rax, %cr3
    lea routine_b(%rip), %rsi
    mov $0x400000, %rdi
    mov $6, %ecx
    rep movsb
    movq $0x22, 0x401000
    xor %r12, %r12
    xor %r13, %r13
    mov $40, %r15
round:
    mov $0x10000, %rax
    mov %rax, %cr3
    mov $0x400000, %rcx
    call *%rcx
    add %rax, %r12
    add 0x401000, %r13
    test $1, %r15
    jz 1f
    call touch
1:  mov $0x13000, %rax
    mov %rax, %cr3
    mov $0x400000, %rcx
    call *%rcx
    add %rax, %r12
    add 0x401000, %r13
    test $2, %r15
    jz 2f
    call touch
2:  dec %r15
    jnz round
    mov %r12, 0x9000
    mov %r13, 0x9008
    cli
    hlt

touch:
    mov $0x600000, %rdx
    mov $300, %ecx
3:  add (%rdx), %r14
    add $0x1000, %rdx
    dec %ecx
    jnz 3b
    .rept 300
    jmp . + 2
    .endr
    ret

routine_a:
    mov $1, %eax
    ret
routine_b:
    mov $2, %eax
    ret
"""


@pytest.mark.parametrize("off", [frozenset(), frozenset({"tlb-flush"})], ids=["by-slot", "whole"])
def test_a_cr3_write_forgets_the_old_address_spaces_pages_and_blocks(tmp_path: Path, off: frozenset[str]) -> None:
    """After a CR3 write the same virtual address runs and reads the new address space's pages, whether the
    flush clears the slots filled since the last one or (past what it keeps track of) everything."""
    from harness.machine import StopKind

    machine = booted(TWO_ADDRESS_SPACES, tmp_path, off)
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.HANG, stop.message
    assert struct.unpack_from("<2Q", machine.memory, 0x9000) == (40 * (1 + 2), 40 * (0x11 + 0x22))


# -- page-walk ------------------------------------------------------------------------------------------------

# Reads the word at virtual 4 MiB (physical 6 MiB through the page directory at 0x12000) into 0x9000, stops at
# `swap` for the test to replace the page directory's memory, flushes its TLB, and reads it again into 0x9008.
REMAPPED_PAGE_TABLE = PAGE_TABLES_AT_0x10000 + r"""
    movq $0x600083, 0x12010       # 4-6 MiB -> physical 6 MiB
    movq $0x800083, 0x12018       # 6-8 MiB -> physical 8 MiB
    mov $0x10000, %rax
    mov %rax, %cr3
    movq $0x11, 0x400000
    movq $0x22, 0x600000
    mov 0x400000, %rax
    mov %rax, 0x9000
swap:
    nop
    mov %cr3, %rax
    mov %rax, %cr3
    mov 0x400000, %rax
    mov %rax, 0x9008
    cli
    hlt
"""


@pytest.mark.parametrize("off", [frozenset(), frozenset({"page-walk"})], ids=["direct", "address-space"])
def test_the_page_walker_reads_a_page_table_from_the_memory_mapped_now(tmp_path: Path,
                                                                      off: frozenset[str]) -> None:
    """The walker keeps where in the host the page-table pages it read are; when the memory map changes (here
    the page directory's page is unmapped and other memory mapped in its place, as the host may do between
    runs) it must read the new memory, not the old."""
    from unicorn import UC_PROT_ALL

    from harness.machine import StopKind

    machine = booted(REMAPPED_PAGE_TABLE, tmp_path, off)
    uc = machine.uc
    run_to_label(machine, "swap")
    directory = bytearray(machine.memory[0x12000:0x13000])
    struct.pack_into("<Q", directory, 0x10, 0x800083)  # 4-6 MiB -> physical 8 MiB now
    uc.mem_unmap(0x12000, 0x1000)
    uc.mem_map(0x12000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x12000, bytes(directory))
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.HANG, stop.message
    assert struct.unpack_from("<2Q", machine.memory, 0x9000) == (0x11, 0x22)


# -- io-pc ----------------------------------------------------------------------------------------------------

# Port writes after flag-setting instructions, in the middle of blocks: what an I/O hook sees of the CPU.
PORT_WRITES = r"""
    mov $0x3f8, %dx
    mov $5, %ecx
1:  cmp $3, %ecx                  # flags from a compare (lazily kept by the engine) ...
    mov %cl, %al
    out %al, $0x80                # ... then a port write: the hook reads RIP and RFLAGS
    sub $1, %ecx
    outb %al, %dx
    jnz 1b
    cli
    hlt
"""


def port_hook_views(tmp_path: Path, off: frozenset[str]) -> list[tuple[int, int, int, int]]:
    from unicorn import UC_HOOK_INSN

    machine = booted(PORT_WRITES, tmp_path, off)
    uc = machine.uc
    views: list[tuple[int, int, int, int]] = []

    def out(uc_: object, port: int, size: int, value: int, user_data: object) -> None:
        views.append((port, value, uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RFLAGS) & 0x8D5))

    uc.hook_add(UC_HOOK_INSN, out, None, 1, 0, X.UC_X86_INS_OUT)
    run_engine(machine, 1_000_000)  # (each port access is charged as a thousand instructions)
    return views


def test_an_io_hook_sees_the_io_instructions_address_and_flags(tmp_path: Path) -> None:
    """With `io-pc` the I/O instruction stores its PC and the state of its flags itself, instead of the hook's
    caller restoring them from the translated block: a hook sees the same RIP and RFLAGS either way."""
    stored = port_hook_views(tmp_path, frozenset())
    restored = port_hook_views(tmp_path, frozenset({"io-pc"}))
    assert stored == restored
    assert [(port, value) for port, value, _, _ in stored[:4]] == [(0x80, 5), (0x3F8, 5), (0x80, 4), (0x3F8, 4)]
    rips = {port: rip for port, _, rip, _ in stored}
    assert rips[0x80] != rips[0x3F8]  # each at its own instruction
    carry = [flags & 1 for port, value, _, flags in stored if port == 0x80]
    assert carry == [0, 0, 0, 1, 1]  # cmp $3 with 5, 4, 3, 2, 1: a borrow below 3


# The kernel stores to 0x30000, stops at `swap` (the test maps a read-only page there in place of the RAM), and
# stores to it again: that store must meet the new page's permission.
STORE_TO_A_REMAPPED_PAGE = r"""
    movq $0x11, 0x30000
swap:
    nop
    movq $0x22, 0x30000
    cli
    hlt
"""


@pytest.mark.parametrize("off", [frozenset(), frozenset({"page-walk"})], ids=["remembered", "looked-up"])
def test_a_store_meets_the_region_mapped_now(tmp_path: Path, off: frozenset[str]) -> None:
    """Loads and stores off the fast path ask which region holds their page; the answer is kept per page until
    the memory map changes. Here the page is unmapped and a read-only page mapped in its place between runs:
    the next store is refused, as on the stock engine, never let through to the old region."""
    from unicorn import UC_ERR_WRITE_PROT, UC_PROT_ALL, UC_PROT_READ, UcError

    machine = booted(STORE_TO_A_REMAPPED_PAGE, tmp_path, off)
    uc = machine.uc
    run_to_label(machine, "swap")
    assert struct.unpack_from("<Q", machine.memory, 0x30000)[0] == 0x11
    uc.mem_unmap(0x30000, 0x1000)
    for decoy in range(0x50000, 0x58000, 0x2000):  # writable regions made anew first: a forgotten region's
        uc.mem_unmap(decoy, 0x1000)                  # memory would likely be one of them now
        uc.mem_map(decoy, 0x1000, UC_PROT_ALL)
    uc.mem_map(0x30000, 0x1000, UC_PROT_READ)
    with pytest.raises(UcError) as refused:
        run_engine(machine, 100_000)
    assert refused.value.errno == UC_ERR_WRITE_PROT
    assert uc.mem_read(0x30000, 8) == bytes(8)  # the new page, untouched
