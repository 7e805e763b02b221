"""Booting our WeensyOS end to end: greeting, log, faults, power-off and determinism."""

from __future__ import annotations

from harness.machine import StopKind
from harness.pc.events import Kind

from .conftest import BootFn


def test_hello_greets_on_screen_and_powers_off(boot: BootFn) -> None:
    machine, stop = boot("hello")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert "Hello from WeensyOS process 1!" in machine.screen_text()


def test_hello_leaves_a_log_of_the_boot_and_the_exit(boot: BootFn) -> None:
    machine, _ = boot("hello")
    log = machine.log.lines()
    assert log[0] == 'weensyos: booting, command "hello"'
    assert "process 1 started: hello" in log
    assert any(line.startswith("process 1 (hello) exited with status 0") for line in log)
    assert log[-1] == "all processes exited; powering off"


def test_hello_makes_system_calls_through_the_syscall_instruction(boot: BootFn) -> None:
    machine, _ = boot("hello")
    numbers = [event.number for event in machine.events.of_kind(Kind.SYSCALL)]
    assert 1 in numbers  # getpid
    assert numbers[-1] == 10  # exit


def test_user_page_fault_is_reported_and_the_kernel_survives(boot: BootFn) -> None:
    machine, stop = boot("fault hello")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    screen = machine.screen_text()
    assert "Process 1 page fault on 0x40000" in screen
    assert "Hello from WeensyOS process 2!" in screen
    faults = [e for e in machine.events.of_kind(Kind.EXCEPTION) if e.number == 14]
    assert faults and faults[0].address == 0x40000 and faults[0].error_code == 0x5  # user read, protection
    assert any(line.startswith("Process 1 page fault on 0x40000") for line in machine.log.lines())
    assert "fault: after" not in screen


def test_timer_ticks_preempt_a_spinning_process(boot: BootFn) -> None:
    machine, stop = boot("spinner", ticks=20)
    assert stop.kind is StopKind.TICKS
    assert machine.timer_ticks == 20
    interrupts = [e for e in machine.events.of_kind(Kind.INTERRUPT) if e.number == 32]
    assert len(interrupts) >= 15
    assert "spinner 1 running" in machine.screen_text()


def test_two_runs_are_identical(boot: BootFn) -> None:
    first, stop1 = boot("fault hello")
    second, stop2 = boot("fault hello")
    assert stop1.time_ns == stop2.time_ns
    assert first.screen_text() == second.screen_text()
    assert bytes(first.log.data) == bytes(second.log.data)
    assert list(first.events) == list(second.events)
    assert first.clock.blocks == second.clock.blocks


def test_a_panic_stops_the_run_with_a_symbolised_backtrace(boot: BootFn) -> None:
    machine, stop = boot("panicker")
    assert stop.kind is StopKind.PANIC
    assert stop.message == "USER PANIC: deliberate panic from panicker"
    frames = [machine.symbols.describe(address) for address in stop.backtrace]
    assert any("<syscall+" in frame for frame in frames), frames
    assert "USER PANIC: deliberate panic from panicker" in machine.screen_text()


def test_a_timer_tick_due_while_the_kernel_runs_is_taken_at_its_iretq(boot: BootFn) -> None:
    """forkexit spends most of its time in the kernel with interrupts off; every tick must still arrive,
    right after the instruction that turns interrupts back on, as on hardware."""
    machine, stop = boot("forkexit", max_time=10.0)
    assert stop.kind is StopKind.POWER_OFF
    ticks = [e for e in machine.events.of_kind(Kind.INTERRUPT) if e.number == 32]
    assert machine.timer_ticks >= 10
    # (the ring keeps the last 4096 events; the totals count all of them)
    assert machine.events.counts[Kind.INTERRUPT] >= machine.timer_ticks - 1  # the last may still be pending
    assert ticks and all(e.user for e in ticks)  # each taken in user mode, right after the kernel's iretq
