"""Full tracing on the native path records context switches, process-table changes and page faults without
Python at each one; the tracer applies the records, in order, when it next runs or the ring is read. Those events
are the same events, with the same seq, virtual time, pid and detail, as Python's reference path makes at once
(`MachineConfig(fast_paths=False)`).

The runs here have no sink and no observer (what the bench's traced rows and `Machine.events` readers do), and
a ring large enough to hold every event, so the whole trace is compared, also when it is read in the middle of
a run.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.machine import Machine, MachineConfig
from harness.observe.syscalls import SyscallTable
from harness.pc.events import DEFER_SLACK, Event, Kind

from .conftest import BootFn
from .test_fastpath import fingerprint

pytestmark = pytest.mark.cost(2.5)  # seconds, roughly: the session starts the costly modules first

WHOLE_RUN = 1 << 20  # events a ring holds here: every event of these runs


def traced(boot: BootFn, build_tree: Any, command: str, fast: bool) -> Machine:
    machine, _ = boot(command, config=MachineConfig(fast_paths=fast, event_capacity=WHOLE_RUN), ticks=0)
    machine.enable_tracing(SyscallTable.load(build_tree.syscall_table), build_tree.programs())
    return machine


def whole_trace(machine: Machine) -> list[tuple[Any, ...]]:
    return [fingerprint(e) + (repr(e.detail),) for e in machine.events.ring]


def count_recorded_switches(machine: Machine) -> list[int]:
    """Counts the switches the tracer applied from native records (return_to_user with `switch`)."""
    applied = [0]
    tracer = machine.tracer
    return_to_user = tracer.return_to_user

    def counting(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("switch") is not None:
            applied[0] += 1
        return_to_user(*args, **kwargs)

    tracer.return_to_user = counting  # type: ignore[method-assign]
    return applied


@pytest.mark.parametrize(("command", "ticks"), [("forkexit", 3), ("faulter", 3), ("friends", 10), ("pipe", 40)])
def test_switches_recorded_natively_are_the_same_events(boot: BootFn, build_tree: Any, command: str,
                                                        ticks: int) -> None:
    """Context switches and the process creations and exits seen there (forkexit: exits with a status, faulter:
    processes killed after a fault, friends: two processes taking turns, pipe: calls that block and resume,
    with buffers shown at their return), recorded natively and applied later,
    give the trace Python's reference path gives, event for event, mid-run and at the end."""
    seen = {}
    for fast in (True, False):
        machine = traced(boot, build_tree, command, fast)
        applied = count_recorded_switches(machine)
        traces = []
        for _ in range(2):
            machine.run(ticks=ticks, max_time_ns=5_000_000_000)
            traces.append(whole_trace(machine))
        seen[fast] = (traces, dict(machine.events.counts), machine.events.next_seq, sorted(machine.tracer.seen_pids))
        switches = machine.events.counts[Kind.SWITCH]
        if fast:  # most switches came as records (else this test proves nothing)
            assert switches >= 4 and applied[0] >= switches // 2, (applied[0], switches)
        else:
            assert applied[0] == 0
    assert seen[True] == seen[False]
    trace = seen[True][0][-1]
    assert any(e[2] is Kind.PROCESS and "exited" in e[9] or "killed" in e[9] for e in trace)
    assert all(e[10] is not None for e in trace if e[2] in (Kind.SWITCH, Kind.PROCESS))


def test_a_snapshot_restored_into_a_traced_run_keeps_the_native_process_list(boot: BootFn, build_tree: Any) -> None:
    """The native scan keeps its own list of live processes (the tracer's `_names`): a restore puts the
    snapshot's list back, so the run after it reports the same creations and exits again."""
    machine = traced(boot, build_tree, "forkexit", True)
    machine.run(ticks=2, max_time_ns=5_000_000_000)
    snapshot = machine.snapshot()

    def rest() -> list[tuple[Any, ...]]:
        start = machine.events.next_seq
        machine.run(ticks=2, max_time_ns=5_000_000_000)
        return [fingerprint(e) + (repr(e.detail),) for e in machine.events.ring if e.seq >= start]

    first = rest()
    machine.restore(snapshot)
    second = rest()
    assert first == second
    assert sum(1 for e in first if e[2] is Kind.PROCESS) > 10


def test_events_read_while_records_wait_come_in_order(boot: BootFn, build_tree: Any) -> None:
    """A ring read between slices puts the applied records in their place by seq: unique, increasing."""
    machine = traced(boot, build_tree, "faulter", True)
    machine.run(ticks=4, max_time_ns=5_000_000_000)
    ring: list[Event] = list(machine.events.ring)
    assert [e.seq for e in ring] == list(range(ring[0].seq, ring[0].seq + len(ring)))
    assert machine.events.next_seq == ring[-1].seq + 1


def test_calls_kept_as_the_rings_bytes_are_the_same_events(boot: BootFn, build_tree: Any) -> None:
    """A process that makes calls which come straight back fills the native ring with complete calls side by
    side: those runs are kept as the ring's bytes (Tracer.native_chunk) and made into events when the ring is
    read, the same events as Python's reference path, also when the ring is read mid-run."""
    seen = {}
    for fast in (True, False):
        machine = traced(boot, build_tree, "yielder", fast)
        kept = [0]

        def counting(data: bytes, count: int, pid: int, kept: list[int] = kept,
                     native_chunk: Any = machine.tracer.native_chunk) -> bool:
            taken = native_chunk(data, count, pid)
            kept[0] += count if taken else 0
            return taken

        machine.tracer.native_chunk = counting  # type: ignore[method-assign]
        traces = []
        for _ in range(2):
            machine.run(ticks=3, max_time_ns=5_000_000_000)
            traces.append(whole_trace(machine))
        seen[fast] = (traces, dict(machine.events.counts), machine.events.next_seq)
        calls = machine.events.counts[Kind.SYSCALL]
        assert kept[0] > calls // 2 if fast else kept[0] == 0, (kept[0], calls)
    assert seen[True] == seen[False]
    assert seen[True][1][Kind.SYSCALL] > 1000


def test_the_ring_keeps_the_latest_events_when_calls_are_kept_as_bytes(boot: BootFn, build_tree: Any) -> None:
    """With the usual ring (4,096 events), the deferred chunks older than the ring's reach are forgotten as
    they would have left the ring: the ring is the same as on Python's reference path."""
    rings = {}
    for fast in (True, False):
        machine, _ = boot("yielder", config=MachineConfig(fast_paths=fast), ticks=0)
        machine.enable_tracing(SyscallTable.load(build_tree.syscall_table), build_tree.programs())
        machine.run(ticks=10, max_time_ns=5_000_000_000)
        if fast:
            deferred = machine.events._deferred_events
            assert machine.config.event_capacity <= deferred <= machine.config.event_capacity + DEFER_SLACK + 2048
        rings[fast] = whole_trace(machine)
    assert rings[True] == rings[False]
    assert len(rings[True]) == 4096
