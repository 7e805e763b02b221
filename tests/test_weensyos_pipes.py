"""WeensyOS pipes: a one-page kernel buffer, writers and readers that block instead of polling, and the system
calls per message as the harness sees them (every `syscall` instruction is an event)."""

from __future__ import annotations

import re

from harness.machine import StopKind
from harness.pc.events import Kind

from .conftest import BootFn
from .weensyos_state import exits

SYSCALL_GETPID, SYSCALL_YIELD, SYSCALL_PIPEWRITE, SYSCALL_PIPEREAD = 1, 2, 7, 8
PIPE_SIZE = 4096
MESSAGES = 200  # PIPE_MESSAGES in u-pipemsg.hh


def test_pipe_moves_200_messages_intact_with_at_most_two_system_calls_each(boot: BootFn) -> None:
    machine, stop = boot("pipe")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    calls = machine.events.of_kind(Kind.SYSCALL)
    assert len(calls) == machine.events.counts[Kind.SYSCALL]  # the ring kept every call
    writes = sum(e.number == SYSCALL_PIPEWRITE for e in calls)
    reads = sum(e.number == SYSCALL_PIPEREAD for e in calls)
    summary = re.search(r"pipereader 2: (\d+) messages in (\d+) reads, (\d+) intact$", machine.screen_text())
    assert summary, machine.screen_text()
    assert (int(summary.group(1)), int(summary.group(3))) == (MESSAGES, MESSAGES)
    assert int(summary.group(2)) == reads  # the reader counted what the CPU executed
    assert writes + reads <= 2 * MESSAGES
    assert writes >= MESSAGES  # one write per message at least: nothing was lost on the way
    # Reads take whatever is there, so the reader needs far fewer calls than there are messages; it ends
    # when the writer has gone and nothing else can ever write (end of file).
    assert reads < MESSAGES // 10
    assert "pipe: no process can run; ended 1 pipe wait(s)" in machine.log.lines()
    assert [(name, status) for _, name, status, _ in exits(machine)] == [("pipewriter", 0), ("pipereader", 0)]
    # The last messages are on screen as the reader printed them.
    assert "message 199:" in machine.screen_text()


def test_a_blocked_reader_uses_no_cpu_while_another_process_runs(boot: BootFn) -> None:
    machine, stop = boot("pipereader spinner", ticks=10)
    assert stop.kind is StopKind.TICKS
    calls = machine.events.of_kind(Kind.SYSCALL)
    reader_cr3 = next(e.cr3 for e in calls if e.number == SYSCALL_PIPEREAD)
    # getpid, then one piperead that sleeps: no polling while the spinner runs.
    assert [e.number for e in calls if e.cr3 == reader_cr3] == [SYSCALL_GETPID, SYSCALL_PIPEREAD]
    assert sum(e.number == SYSCALL_YIELD and e.cr3 != reader_cr3 for e in calls) >= 2  # the spinner runs on
    assert "spinner 2 running" in machine.screen_text()


def test_a_lone_reader_sees_end_of_file_instead_of_waiting_forever(boot: BootFn) -> None:
    machine, stop = boot("pipereader")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert "pipereader 1: 0 messages in 1 reads, 0 intact" in machine.screen_text()
    assert exits(machine)[0][:3] == (1, "pipereader", 1)


def test_a_writer_fills_the_pipe_then_blocks_until_nobody_can_read(boot: BootFn) -> None:
    machine, stop = boot("pipewriter")
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert "pipewriter 1: pipewrite returned -32 (E_PIPE)" in machine.screen_text()
    writes = [e.args[:2] for e in machine.events.of_kind(Kind.SYSCALL) if e.number == SYSCALL_PIPEWRITE]
    # Whole messages while they fit; then one that fits only in part, which copies exactly the room left;
    # then one call for the rest of that message, which blocks: no polling.
    *whole, (partial_buf, partial_len), (rest_buf, rest_len) = writes
    room = PIPE_SIZE - sum(n for _, n in whole)
    assert 0 < room < partial_len
    assert (rest_buf, rest_len) == (partial_buf + room, partial_len - room)
    assert "pipe: no process can run; ended 1 pipe wait(s)" in machine.log.lines()
