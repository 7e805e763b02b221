"""The isolation auditor: silent on our kernel, and it stops at the first mapping that breaks each rule.

Each broken variant is made by a test-only patch of the running kernel's page tables (the mapping a buggy
kernel would have made), applied while the kernel is about to return to a process; the audit at that return
must catch it and name the rule, the process, the virtual and physical address.
"""

from __future__ import annotations

import struct

from harness import project
from harness.api import boot_machine
from harness.machine import Machine, StopKind
from harness.observe.kernelview import KernelView, PageAccounting
from harness.observe.syscalls import SyscallTable
from harness.pc.events import Kind
from harness.pc.paging import ADDRESS_MASK, PTE_P, PTE_U, PTE_W, walk

from .cli_in_process import run_cli

SPARE_VA = 0x1F0000  # inside the page table that maps the program, never used by it


def pte_address(machine: Machine, top: int, va: int) -> int:
    table = top & ADDRESS_MASK
    for shift in (39, 30, 21):
        entry = struct.unpack_from("<Q", machine.memory, table + ((va >> shift) & 511) * 8)[0]
        assert entry & PTE_P, "the test needs the intermediate tables to exist"
        table = entry & ADDRESS_MASK
    return table + ((va >> 12) & 511) * 8


def audited(build_tree: project.BuildTree, command: str = "pipe") -> tuple[Machine, dict[int, int]]:
    """A machine stopped while two processes exist; returns it and pid -> page table."""
    machine = boot_machine(build_tree.kernel, command, build_tree.programs())
    machine.enable_tracing(SyscallTable.load(build_tree.syscall_table), build_tree.programs())
    machine.enable_audit()
    stop = machine.run(max_time_ns=1_000_000_000,
                       until_event=lambda e: e.kind is Kind.SWITCH and e.detail.get("to") == 2)
    assert stop.kind is StopKind.UNTIL
    view = KernelView(machine.memory, machine.symbols, machine.kernel_image.data)  # type: ignore[union-attr]
    tables = {p.pid: p.pagetable for p in view.processes(machine.cpu.cr3.value) if p.pagetable}
    assert set(tables) >= {1, 2}
    return machine, tables


def expect_violation(machine: Machine, rule: str, pid: int, va: int) -> str:
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.ISOLATION, stop.message
    assert machine.violation is not None
    assert (machine.violation.rule, machine.violation.pid, machine.violation.va) == (rule, pid, va)
    assert machine.violation_cause is not None  # the system call or interrupt that led to it
    return stop.message


def test_the_auditor_is_silent_on_our_kernel(build_tree: project.BuildTree) -> None:
    for command in ("friends", "pipe", "fork", "spawn"):
        machine = boot_machine(build_tree.kernel, command, build_tree.programs())
        machine.enable_audit()
        stop = machine.run(max_time_ns=5_000_000_000)
        assert stop.kind is StopKind.POWER_OFF, (command, stop.message)
        assert machine.auditor is not None and machine.auditor.audits > 50


def test_a_user_accessible_kernel_page(build_tree: project.BuildTree) -> None:
    machine, tables = audited(build_tree)
    slot = pte_address(machine, tables[2], 0x40000)  # kernel text, mapped kernel-only in every process
    entry = struct.unpack_from("<Q", machine.memory, slot)[0]
    struct.pack_into("<Q", machine.memory, slot, entry | PTE_U)
    message = expect_violation(machine, "kernel page user-accessible", 2, 0x40000)
    assert "the kernel image" in message


def test_a_user_accessible_page_table_page(build_tree: project.BuildTree) -> None:
    machine, tables = audited(build_tree)
    table_page = pte_address(machine, tables[1], SPARE_VA) & ~0xFFF
    struct.pack_into("<Q", machine.memory, pte_address(machine, tables[1], SPARE_VA), table_page | PTE_P | PTE_U)
    expect_violation(machine, "page-table page user-accessible", 1, SPARE_VA)


def test_a_page_writable_in_two_processes(build_tree: project.BuildTree) -> None:
    machine, tables = audited(build_tree)
    stack = walk(machine.memory, tables[1], 0x2FF000)
    assert stack is not None and stack.writable
    struct.pack_into("<Q", machine.memory, pte_address(machine, tables[2], SPARE_VA),
                     stack.pa | PTE_P | PTE_W | PTE_U)
    message = expect_violation(machine, "page writable in two processes", 2, SPARE_VA)
    assert "also writable by pid 1" in message


def test_a_page_of_another_process(build_tree: project.BuildTree) -> None:
    machine, tables = audited(build_tree)
    code = walk(machine.memory, tables[1], 0x100000)
    assert code is not None
    struct.pack_into("<Q", machine.memory, pte_address(machine, tables[2], SPARE_VA), code.pa | PTE_P | PTE_U)
    message = expect_violation(machine, "user page owned by another process", 2, SPARE_VA)
    assert "pid 1 as its owner" in message


def test_a_freed_page_still_mapped(build_tree: project.BuildTree) -> None:
    machine, tables = audited(build_tree)
    pages = PageAccounting(machine.memory, machine.symbols, machine.kernel_image.data)  # type: ignore[union-attr]
    free = next(n for n, owner in enumerate(pages.owners()) if owner == 0 and n > 0x100)
    struct.pack_into("<Q", machine.memory, pte_address(machine, tables[1], SPARE_VA), free << 12 | PTE_P | PTE_U)
    expect_violation(machine, "freed page still mapped", 1, SPARE_VA)


def test_cli_audit_passes_our_kernel(build_tree: project.BuildTree) -> None:
    result = run_cli("boot", "pipe", "--headless", "--audit", "--no-build", "--build-dir", str(build_tree.directory))
    assert result.returncode == 0, result.stderr  # our kernel: no violation


def test_a_page_freed_under_an_unchanged_page_table_is_caught(build_tree: project.BuildTree) -> None:
    """The auditor reuses its walk of a page table while the table's pages are unchanged, and its verdict while
    the processes, their walks and the page owners are: here only the kernel's record of the page changes (freed
    while still mapped), and the next audit still sees it."""
    machine, tables = audited(build_tree)
    assert machine.auditor is not None and machine.auditor.audits > 2  # verdicts to reuse were made
    pages = PageAccounting(machine.memory, machine.symbols, machine.kernel_image.data)  # type: ignore[union-attr]
    stack = walk(machine.memory, tables[1], 0x2FF000)
    assert stack is not None and pages.owners()[stack.pa >> 12] == 1
    assert pages.address is not None and pages.layout is not None and pages.field is not None
    offset, size = pages.field
    record = pages.address + (stack.pa >> 12) * pages.layout.element_size + offset
    machine.memory[record:record + size] = bytes(size)  # owner 0: free
    expect_violation(machine, "freed page still mapped", 1, 0x2FF000)
