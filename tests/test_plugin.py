"""The pytest plugin as a kernel-test author meets it: boot, drive, look, and failures that explain themselves."""

from __future__ import annotations

import json

import pytest

from harness import project
from harness.machine import StopKind
from harness.pc.events import Kind
from harness.pytest_plugin import WeensyOS

pytestmark = pytest.mark.cost(1)  # seconds, roughly: the session starts the costly modules first


def test_boot_run_and_look_at_the_screen_and_log(weensyos: WeensyOS) -> None:
    guest = weensyos.boot("fault hello")
    stop = guest.run()
    assert stop.kind is StopKind.POWER_OFF
    assert guest.screen.contains("Hello from WeensyOS process 2!")
    row, column = guest.screen.find("Process 1 page fault")  # type: ignore[misc]
    assert guest.screen.char(row, column) == "P"
    assert guest.screen.attribute(row, column) & 0x0F == 0x0C  # the kernel prints faults in light red
    assert guest.log[-1] == "all processes exited; powering off"


def test_run_until_a_system_call_stops_at_its_entry(weensyos: WeensyOS) -> None:
    guest = weensyos.boot("hello")
    stop = guest.run(until_syscall="getsysname")
    assert stop.kind is StopKind.UNTIL
    calls = [e for e in guest.machine.events if e.kind is Kind.SYSCALL]
    assert guest.syscall_table.name(calls[-1].number) == "getsysname"
    assert "system:" not in guest.screen.text  # hello prints the name only after the call returns
    guest.run()
    assert guest.screen.contains("system: WeensyOS-Unicorn 0.1")


def test_run_until_a_fault_an_exit_or_a_pid_count(weensyos: WeensyOS) -> None:
    guest = weensyos.boot("fault hello")
    assert guest.run(until_fault=True).kind is StopKind.UNTIL
    assert any(e.is_page_fault for e in guest.machine.events)
    assert guest.run(until_exit=1).kind is StopKind.UNTIL
    assert [p.pid for p in guest.processes()] == [2]
    other = weensyos.boot("fault hello", fresh=True)
    assert other.run(until_pids=1).kind is StopKind.UNTIL  # both started, then the faulting one was killed
    assert [p.pid for p in other.processes()] == [2]


def test_kernel_state_free_pages_return_to_the_boot_count(weensyos: WeensyOS) -> None:
    guest = weensyos.boot("fault hello")
    guest.run(until_syscall="getpid")
    during = guest.free_pages()
    assert {p.name for p in guest.processes()} == {"hello"}
    guest.run()
    after = guest.free_pages()
    assert after > during
    boot_line = next(line for line in guest.log if line.endswith("free pages") and line.startswith("weensyos:"))
    assert after == int(boot_line.split()[1])


def test_a_second_boot_is_restored_from_a_snapshot_and_runs_identically(weensyos: WeensyOS) -> None:
    first = weensyos.boot("fault hello")
    first.run()
    weensyos.release()  # give the machine back to the pool, as the end of a test does
    second = weensyos.boot("fault hello")
    assert second.machine is first.machine  # the pooled machine, reset from its post-boot snapshot
    second.run()
    assert second.jsonl() == first.jsonl()
    assert second.screen.text == first.screen.text


def test_the_same_seed_replays_and_another_seed_moves_the_timer(weensyos: WeensyOS) -> None:
    def timer_times(seed: int) -> list[int]:
        guest = weensyos.boot("spinner", seed=seed, fresh=True)
        guest.run(ticks=5)
        return [e.time_ns for e in guest.events(Kind.INTERRUPT)]

    assert timer_times(7) == timer_times(7)
    assert timer_times(7) != timer_times(8)
    assert timer_times(0) != timer_times(7)


INNER_TEST = """
from harness.pytest_plugin import WeensyOS

def test_expects_the_wrong_greeting(weensyos: WeensyOS) -> None:
    guest = weensyos.boot("hello")
    guest.run()
    assert guest.screen.contains("Goodbye"), "no goodbye"

def test_passes(weensyos: WeensyOS) -> None:
    assert weensyos.boot("hello").run().ok
"""


def test_a_failing_kernel_test_shows_screen_log_and_events(pytester: pytest.Pytester,
                                                          build_tree: project.BuildTree) -> None:
    pytester.makepyfile(test_inner=INNER_TEST)
    results = pytester.path / "results.json"
    outcome = pytester.runpytest_subprocess("--weensy-build-dir", str(build_tree.directory),
                                            "--weensy-results", str(results), "-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=1)
    text = outcome.stdout.str()
    assert "WeensyOS guest 1" in text
    assert "|Hello from WeensyOS process 1!" in text  # the screen
    assert "all processes exited; powering off" in text  # the log tail
    assert "syscall exit(0)" in text  # the last events
    report = json.loads(results.read_text())
    assert report["counts"] == {"failed": 1, "passed": 1}
    failed = next(t for t in report["tests"] if t["outcome"] == "failed")
    assert failed["test"].endswith("test_expects_the_wrong_greeting") and "no goodbye" in failed["message"]
