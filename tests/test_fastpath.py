"""The native hot paths (system-call entry, the log port, the keyboard poll) change speed, never behaviour.

Every run here is made twice: with the native paths (the default) and with Python's reference versions of the
same work (`MachineConfig(fast_paths=False)`), and the two runs must agree instruction for instruction and event
for event.
"""

from __future__ import annotations

from typing import Any

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from harness.machine import Machine, MachineConfig, StopKind
from harness.observe.syscalls import SyscallTable
from harness.pc import fastpath
from harness.pc.clock import VirtualClock, _load_native
from harness.pc.devices.parallel import LptState
from harness.pc.events import Event, Kind

from .conftest import BootFn

pytestmark = pytest.mark.cost(9)  # seconds, roughly: the session starts the costly modules first


def fingerprint(event: Event) -> tuple[Any, ...]:
    return (event.seq, event.time_ns, event.kind, event.rip, event.cr3, event.number, event.error_code,
            event.address, event.args, event.text, event.pid, event.user, event.ret, event.end_ns, event.blocked)


def run_both(boot: BootFn, command: str, **options: Any) -> tuple[Machine, Machine]:
    native, _ = boot(command, config=MachineConfig(fast_paths=True), **options)
    python, _ = boot(command, config=MachineConfig(fast_paths=False), **options)
    assert native.fast is not None and python.fast is None
    return native, python


@pytest.mark.parametrize("command", ["pipe", "forkexit", "friends"])
def test_native_and_python_paths_give_the_same_run(boot: BootFn, command: str) -> None:
    native, python = run_both(boot, command, ticks=30)
    assert native.clock.instructions == python.clock.instructions
    assert native.clock.now_ns() == python.clock.now_ns()
    assert bytes(native.log.data) == bytes(python.log.data)
    assert native.console.cells() == python.console.cells()
    assert native.syscall_count == python.syscall_count > 100
    assert [fingerprint(e) for e in native.events.ring] == [fingerprint(e) for e in python.events.ring]
    assert native.events.counts == python.events.counts
    assert native.events.next_seq == python.events.next_seq
    assert native.parallel.bytes_printed == python.parallel.bytes_printed == len(native.log.data)


@pytest.mark.parametrize("command", ["pipe", "faulter", "forkexit", "friends", "yielder"])
def test_traced_runs_agree_too(boot: BootFn, build_tree: Any, command: str) -> None:
    """Full tracing on the native path (entries and quiet returns taken in batches, pids read in C) gives
    the same events, in the same order, as Python's reference path: blocked calls, switches, faults and
    their outcomes, console changes, buffers shown at entry and at return."""
    table = SyscallTable.load(build_tree.syscall_table)
    seen: dict[bool, list[tuple[Any, ...]]] = {}
    for fast in (True, False):
        machine, _ = boot(command, config=MachineConfig(fast_paths=fast), ticks=0)
        machine.enable_tracing(table, build_tree.programs())
        events: list[Event] = []
        machine.events.attach(events.append)
        machine.run(ticks=15, max_time_ns=5_000_000_000)
        seen[fast] = [fingerprint(e) + (repr(e.detail),) for e in events]
    assert seen[True] == seen[False]
    assert sum(1 for e in seen[True] if e[2] is Kind.SYSCALL) > 100
    assert all(e[10] is not None for e in seen[True] if e[2] is Kind.SYSCALL), "every system call has its pid"


@pytest.mark.parametrize("command", ["yielder", "forkexit"])
def test_traced_calls_kept_as_records_until_read_are_the_same_events(boot: BootFn, build_tree: Any,
                                                                      command: str) -> None:
    """With full tracing and no sink, the native path's calls that came straight back are kept as records and
    become events only when the ring is read (EventLog.defer): the ring, the counts and the numbering are the
    same as on Python's reference path, which makes every event at once, also when the ring is read in the
    middle of the run."""
    table = SyscallTable.load(build_tree.syscall_table)
    seen = {}
    for fast in (True, False):
        machine, _ = boot(command, config=MachineConfig(fast_paths=fast), ticks=0)
        machine.enable_tracing(table, build_tree.programs())
        rings = []
        for ticks in (2, 4):
            machine.run(ticks=ticks, max_time_ns=5_000_000_000)
            if fast:  # the records are there, not yet events (else this test proves nothing)
                assert machine.events._deferred
            rings.append([fingerprint(e) + (repr(e.detail),) for e in machine.events.ring])
        seen[fast] = (rings, dict(machine.events.counts), machine.events.next_seq)
    assert seen[True] == seen[False]
    rings, counts, _ = seen[True]
    assert counts[Kind.SYSCALL] > 100
    assert all(e[10] is not None for e in rings[-1] if e[2] is Kind.SYSCALL), "every system call has its pid"


def test_raw_system_calls_merge_with_python_events_in_order(boot: BootFn) -> None:
    machine, stop = boot("forkexit", config=MachineConfig(fast_paths=True))
    assert stop.kind is StopKind.POWER_OFF
    ring = list(machine.events.ring)
    assert len(ring) == machine.config.event_capacity
    assert [e.seq for e in ring] == sorted(e.seq for e in ring)
    assert len({e.seq for e in ring}) == len(ring)
    kinds = {e.kind for e in ring}
    assert {Kind.SYSCALL, Kind.LOG} <= kinds
    assert machine.events.counts[Kind.SYSCALL] == machine.syscall_count
    assert ring[-1].seq == machine.events.next_seq - 1


def test_a_snapshot_taken_on_the_native_path_resumes_identically(boot: BootFn) -> None:
    machine, stop = boot("forkexit", ticks=5)
    assert stop.kind is StopKind.TICKS and machine.fast is not None
    snapshot = machine.snapshot()
    machine.run(max_time_ns=5_000_000_000)
    first = (bytes(machine.log.data), [fingerprint(e) for e in machine.events.ring], machine.clock.instructions)
    machine.restore(snapshot)
    machine.run(max_time_ns=5_000_000_000)
    second = (bytes(machine.log.data), [fingerprint(e) for e in machine.events.ring], machine.clock.instructions)
    assert first == second


def test_the_live_cpu_state_is_found_and_checked_on_every_engine() -> None:
    native = _load_native()
    assert native is not None, "the harness's native library did not build"
    for _ in range(3):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x1000)
        clock = VirtualClock(uc)
        fast = fastpath.FastPath.create(uc, clock, LptState(), fastpath.Callbacks(
            slow_syscall=lambda: None, notify_syscall=lambda record: None, log_bytes=lambda data: None,
            slow_in=lambda port, size: 0, slow_out=lambda port, size, value: None,
            notify_return=lambda address, size, length: None))
        assert fast is not None
        uc.reg_write(X.UC_X86_REG_R12, 0x1234_5678_9ABC_DEF0)
        assert fastpath.ctypes.c_uint64.from_address(fast.state.env + 12 * 8).value == 0x1234_5678_9ABC_DEF0


def test_a_disk_boot_is_the_same_on_both_paths(build_tree: Any) -> None:
    """The boot loader's data-port reads (served natively, all but each sector's last word) load the same
    kernel: same instruction count, log and screen as with every read in Python."""
    image = (build_tree.directory / "weensyos.img").read_bytes()
    runs = []
    for fast in (True, False):
        machine = Machine(MachineConfig(fast_paths=fast))
        machine.boot_disk(image)
        stop = machine.run(max_time_ns=5_000_000_000)
        assert stop.kind is StopKind.POWER_OFF, stop.message
        runs.append((machine.clock.instructions, bytes(machine.log.data), machine.console.cells(),
                     machine.disk.transfer.position if machine.disk else None))
    assert runs[0] == runs[1]
    assert b"weensyos: booting" in runs[0][1] and b"powering off" in runs[0][1]


@pytest.mark.parametrize("fast", [True, False], ids=["native-paths", "python-paths"])
def test_faults_after_many_pauses_are_still_delivered(build_tree: Any, fast: bool) -> None:
    """QEMU's record of the last exception raised outlives runs that end without a delivery (a #GP raised
    by an instruction a hook skipped: one is left over at the start of almost every run of the CPU): the next
    user fault then became a #DF, and after that a silent triple-fault halt ("the emulator stopped for no known
    reason"). The harness clears the record before every run of the CPU. Pausing every 0.1 ms of virtual time
    makes over a thousand runs through faulter's first 150 faults; without the clearing, its first fault is
    already lost, at 64.6 ms, on both paths. (Pausing every 1 ms, as this test did through all 1,000 faults, a
    fault was first lost at 435 ms: ten times the run for fewer runs.)"""
    from harness.api import boot_machine

    machine = boot_machine(build_tree.kernel, "loop faulter", build_tree.programs(), MachineConfig(fast_paths=fast))
    runs = 0
    while machine.events.counts[Kind.EXCEPTION] < 150:
        stop = machine.run(for_ns=100_000, max_time_ns=5_000_000_000)
        assert stop.kind is StopKind.PAUSED, stop.message
        runs += 1
    faults = [e for e in machine.events.of_kind(Kind.EXCEPTION) if e.number == 14]
    assert runs > 1000
    assert faults and all(e.address == 0 and e.error_code == 0x4 for e in faults)  # user read, not present


def test_without_a_c_compiler_everything_runs_in_python_and_the_run_is_the_same(
        boot: BootFn, monkeypatch: pytest.MonkeyPatch) -> None:
    """No native library (no compiler on the machine): no native path is used (the clock is the engine's
    either way), and the run is instruction for instruction the one the native build gives."""
    import harness.pc.clock

    native, _ = boot("forkexit", ticks=3)
    assert fastpath.status().startswith("native (CPU state at engine+")
    monkeypatch.setattr(harness.pc.clock, "_native", None)  # "looked for it, there is none"
    python, _ = boot("forkexit", ticks=3)
    assert fastpath.status() == "unavailable: the native library could not be built (no C compiler?)"
    assert python.fast is None and native.fast is not None
    assert python.clock.instructions == native.clock.instructions
    assert bytes(python.log.data) == bytes(native.log.data)
    assert [fingerprint(e) for e in python.events.ring] == [fingerprint(e) for e in native.events.ring]
