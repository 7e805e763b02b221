"""WeensyOS system calls: argument checking against the caller's own page table (the confused-deputy defence),
spawn, page_alloc, the command line's pseudo-commands, and the programs that exercise them."""

from __future__ import annotations

import re
from pathlib import Path

from harness import project
from harness.api import boot_machine
from harness.machine import StopKind
from harness.pc.events import Kind
from harness.pc.loader import read_elf

from .conftest import BootFn
from .elfmaker import ElfSpec, make_elf
from .weensyos_state import baseline_free_pages, exits, free_pages

SYSCALL_YIELD, SYSCALL_PAGE_ALLOC = 2, 4

# What each of eve's attacks must get back. The kernel checks every byte of every range in eve's own page
# table before touching it: E_FAULT for memory she may not use that way, E_RANGE for a name too long to be a
# program's, E_INVAL for page_alloc outside user space.
EVE_ATTACKS = {
    "getsysname into kernel text": "E_FAULT",
    "getsysname into the kernel stack": "E_FAULT",
    "getsysname into unmapped memory": "E_FAULT",
    "getsysname into read-only text": "E_FAULT",
    "getsysname across the stack top": "E_FAULT",
    "getsysname across the heap end": "E_FAULT",
    "getsysname at a non-canonical address": "E_FAULT",
    "getsysname wrapping around": "E_FAULT",
    "pipewrite from kernel text": "E_FAULT",
    "pipewrite from heap into unmapped": "E_FAULT",
    "pipewrite wrapping into kernel text": "E_FAULT",
    "piperead into the kernel stack": "E_FAULT",
    "piperead into read-only text": "E_FAULT",
    "spawn, name in kernel text": "E_FAULT",
    "spawn, null name": "E_FAULT",
    "spawn, unterminated name": "E_FAULT",
    "spawn, 40-letter name": "E_RANGE",
    "page_alloc over kernel text": "E_INVAL",
    "page_alloc over the console": "E_INVAL",
    "page_alloc at a misaligned address": "E_INVAL",
    "page_alloc past user memory": "E_INVAL",
    "page_alloc at a non-canonical address": "E_INVAL",
    "system call 99": "E_NOSYS",
}
ERRORS = {"E_FAULT": -14, "E_RANGE": -34, "E_INVAL": -22, "E_NOSYS": -38}
EVE_LINE = re.compile(r"eve: (.+?)\s+(-?\d+) (\w+)$")


def test_every_confused_deputy_attack_by_eve_gets_an_error(boot: BootFn, build_tree: project.BuildTree) -> None:
    machine, stop = boot("eve")
    assert stop.kind is StopKind.POWER_OFF, stop.message  # no panic, no fault: the kernel carried on
    results = {m.group(1): (int(m.group(2)), m.group(3))
               for m in map(EVE_LINE.match, machine.screen_text().splitlines()) if m}
    assert results == {what: (ERRORS[error], error) for what, error in EVE_ATTACKS.items()}
    assert f"eve 1: {len(EVE_ATTACKS)} attacks, {len(EVE_ATTACKS)} refused" in machine.screen_text()
    assert exits(machine) == [(1, "eve", 0, baseline_free_pages(machine))]

    # Refused means untouched: the kernel text eve aimed getsysname at is still the kernel's.
    kernel = read_elf(build_tree.kernel, "kernel")
    text = next(seg for seg in kernel.segments if seg.executable)
    image = kernel.data[text.offset:text.offset + 64]
    assert bytes(machine.memory[text.paddr:text.paddr + 64]) == image


def test_alice_keeps_running_while_eve_attacks(boot: BootFn) -> None:
    machine, stop = boot("friends")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    log = machine.log.lines()
    assert "process 1 started: alice" in log and "process 2 started: eve" in log
    assert [(pid, name, status) for pid, name, status, _ in exits(machine)] == [(2, "eve", 0), (1, "alice", 0)]
    screen = machine.screen_text()
    assert f"eve 2: {len(EVE_ATTACKS)} attacks, {len(EVE_ATTACKS)} refused" in screen
    assert "alice 1: done after 60 rounds" in screen

    # From the CPU's view: alice's system calls (her page table in CR3) go on between eve's first and
    # last attack, one yield per attack.
    calls = machine.events.of_kind(Kind.SYSCALL)
    alice_cr3, eve_cr3 = calls[0].cr3, next(e.cr3 for e in calls if e.cr3 != calls[0].cr3)
    eve_times = [e.time_ns for e in calls if e.cr3 == eve_cr3]
    during = [e for e in calls if e.cr3 == alice_cr3 and eve_times[0] < e.time_ns < eve_times[-1]]
    assert sum(e.number == SYSCALL_YIELD for e in during) >= len(EVE_ATTACKS) - 1
    # Eve passed the kernel-text address itself: the harness saw it in her arguments.
    assert any(e.number == SYSCALL_PAGE_ALLOC and e.args[0] == 0x40000 for e in calls if e.cr3 == eve_cr3)


def test_spawn_refuses_unknown_names_and_pseudo_commands(boot: BootFn) -> None:
    machine, stop = boot("spawn")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    screen = machine.screen_text()
    for name in ("nosuchprogram", "", "friends"):
        assert f'spawn 1: spawn("{name}") = -22 (E_INVAL)' in screen
    assert exits(machine)[0] == (1, "spawn", 0, exits(machine)[0][3])


def test_selftest_checks_page_alloc_getsysname_and_registers_from_user_mode(boot: BootFn) -> None:
    machine, stop = boot("selftest")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert re.search(r"selftest 1: (\d+) of \1 checks passed", machine.screen_text()), machine.screen_text()
    assert "FAILED" not in machine.screen_text()


def test_pseudo_commands_come_from_one_header_for_kernel_and_harness(boot: BootFn,
                                                                     build_tree: project.BuildTree) -> None:
    commands = build_tree.commands()
    assert commands["friends"] == ["alice", "eve"]
    assert commands["pipe"] == ["pipewriter", "pipereader"]
    assert all(word in build_tree.programs() for words in commands.values() for word in words)
    machine, _ = boot("pipe")
    started = [line for line in machine.log.lines() if re.match(r"process \d+ started:", line)]
    assert started == ["process 1 started: pipewriter", "process 2 started: pipereader"]


def test_an_unknown_word_is_reported_and_the_rest_still_runs(boot: BootFn) -> None:
    machine, stop = boot("nosuchprogram hello")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    screen = machine.screen_text()
    assert "cannot start 'nosuchprogram': no such program" in screen
    assert "Hello from WeensyOS process 1!" in screen


def test_yielder_makes_ten_thousand_system_calls_and_exits(boot: BootFn) -> None:
    machine, stop = boot("yielder")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert "yielder 1: 10000 yields" in machine.screen_text()
    assert machine.events.counts[Kind.SYSCALL] == 10_002  # the yields, getpid and exit
    assert free_pages(machine) == baseline_free_pages(machine)


def test_the_kernel_refuses_program_images_that_do_not_fit_user_memory(build_tree: project.BuildTree,
                                                                       tmp_path: Path) -> None:
    """The harness hands over any x86-64 executable; our kernel checks each before loading it."""
    bad = {
        "overkernel": (ElfSpec(entry=0x40000, segments=[(0x40000, 0x40000, 5, b"\xf4" * 16, 0x1000)]),
                       "bad ELF: segment [0x40000, +0x1000) outside user memory [0x100000, 0x2ff000)"),
        "overstack": (ElfSpec(entry=0x2FF000, segments=[(0x2FF000, 0x2FF000, 5, b"\xf4" * 16, 0x1000)]),
                      "bad ELF: segment [0x2ff000, +0x1000) outside user memory [0x100000, 0x2ff000)"),
    }
    programs = dict(build_tree.programs())
    for name, (spec, _) in bad.items():
        programs[name] = tmp_path / name
        programs[name].write_bytes(make_elf(spec))
    machine = boot_machine(build_tree.kernel, " ".join([*bad, "hello"]), programs)
    stop = machine.run(max_time_ns=5_000_000_000)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    for name, (_, why) in bad.items():
        assert f"cannot start '{name}': {why}" in machine.log.lines()  # also on screen, wrapped
    assert "Hello from WeensyOS process 1!" in machine.screen_text()  # the first good program gets pid 1
    assert free_pages(machine) == baseline_free_pages(machine)
