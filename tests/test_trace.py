"""Tracing the guest kernel without changing it: system calls, page faults, switches, in three formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import project
from harness.api import boot_machine
from harness.machine import Machine, MachineConfig
from harness.observe.syscalls import SyscallTable
from harness.observe.traceformat import PerfettoWriter, jsonl_record, record_is_unfinished_entry, strace_lines, summary
from harness.pc.events import Event, Kind

from .cli_in_process import run_cli


def traced(tree: project.BuildTree, command: str, **run: object) -> tuple[Machine, list[Event]]:
    machine = boot_machine(tree.kernel, command, tree.programs())
    machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    events: list[Event] = []
    machine.events.attach(events.append)
    machine.run(max_time_ns=5_000_000_000, **run)  # type: ignore[arg-type]
    return machine, events


@pytest.fixture(scope="module")
def fault_hello(build_tree: project.BuildTree) -> tuple[Machine, list[Event]]:
    return traced(build_tree, "fault hello")


def test_system_calls_carry_pid_decoded_arguments_and_results(fault_hello: tuple[Machine, list[Event]]) -> None:
    machine, events = fault_hello
    calls = [e for e in events if e.kind is Kind.SYSCALL]
    assert [(e.pid, machine.tracer.syscalls.name(e.number)) for e in calls] == [
        (2, "getpid"), (2, "getsysname"), (2, "yield"), (2, "yield"), (2, "exit")]
    getpid, getsysname = calls[0], calls[1]
    assert getpid.ret == 2 and getpid.end_ns is not None and getpid.end_ns > getpid.time_ns
    assert dict(getsysname.detail["args"])["buf"] == '"WeensyOS-Unicorn 0.1"'
    assert calls[-1].ret is None  # exit never returns
    line = strace_lines(machine.tracer, getpid)[0]
    # the speed model: 3.83 us to enter, a few hundred instructions
    assert line.endswith("[pid 2] getpid() = 2 <0.005 ms>")


def test_a_user_page_fault_is_explained_level_by_level(fault_hello: tuple[Machine, list[Event]]) -> None:
    machine, events = fault_hello
    (fault,) = [e for e in events if e.is_page_fault]
    d = fault.detail
    assert fault.pid == 1 and fault.user and fault.address == 0x40000
    assert d["access"] == "read" and d["mode"] == "user"
    assert d["problem"] == "protection: a level is not user-accessible"
    assert [step["level"] for step in d["walk"]] == ["L4 (PML4)", "L3 (PDPT)", "L2 (page directory)",
                                                     "L1 (page table)"]
    assert d["walk"][-1]["flags"] == "P|W"  # present, writable, but not U: the level that refused
    assert d["decided_by"] == "L1 (page table)"
    assert d["instruction"].startswith("mov") and "0x40000" in d["instruction"]
    assert "<process_main+" in d["where"]  # the program's own symbols, not the kernel's
    assert d["outcome"] == "the kernel killed the process"


def test_process_lifetimes_and_switches_come_from_the_kernel_s_own_state(
        fault_hello: tuple[Machine, list[Event]]) -> None:
    _, events = fault_hello
    processes = [(e.pid, e.text) for e in events if e.kind is Kind.PROCESS]
    assert processes == [(1, "created fault"), (2, "created hello"), (1, "killed after a page fault"),
                         (2, "exited with 0")]
    switches = [(e.detail["from"], e.detail["to"]) for e in events if e.kind is Kind.SWITCH]
    assert switches == [(None, 1), (1, 2)]


def test_sinks_see_events_in_order_and_console_output_is_traced(fault_hello: tuple[Machine, list[Event]]) -> None:
    _, events = fault_hello
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    console = "\n".join(e.text for e in events if e.kind is Kind.CONSOLE)
    assert "Hello from WeensyOS process 2!" in console


def test_summary_counts_calls(fault_hello: tuple[Machine, list[Event]]) -> None:
    machine, events = fault_hello
    stats = summary(machine.tracer, events)
    assert {name: s.calls for name, s in stats.items()} == {"getpid": 1, "getsysname": 1, "yield": 2, "exit": 1}
    assert all(s.errors == 0 for s in stats.values())


def test_jsonl_of_a_deterministic_run_is_identical_twice(build_tree: project.BuildTree) -> None:
    runs = []
    for _ in range(2):
        machine, events = traced(build_tree, "fault hello")
        runs.append([json.dumps(jsonl_record(machine.tracer, e)) for e in events])
    assert runs[0] == runs[1]
    assert all(json.loads(line)["v"] == 1 for line in runs[0])


def test_perfetto_has_a_track_per_process_with_syscall_slices(fault_hello: tuple[Machine, list[Event]]) -> None:
    machine, events = fault_hello
    writer = PerfettoWriter(machine.tracer)
    for event in events:
        writer.add(event)
    import io

    out = io.StringIO()
    writer.write(out)
    trace = json.loads(out.getvalue())
    names = {r["pid"]: r["args"]["name"] for r in trace["traceEvents"] if r["ph"] == "M"}
    assert names[1] == "pid 1 (fault)" and names[2] == "pid 2 (hello)"
    slices = [r for r in trace["traceEvents"] if r["ph"] == "X"]
    assert {r["name"] for r in slices} >= {"getpid", "yield"} and all(r["pid"] == 2 for r in slices)
    assert any(r["ph"] == "i" and r["name"] == "page fault" and r["pid"] == 1 for r in trace["traceEvents"])


def trace_cli(tree: project.BuildTree, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("trace", "fault", "hello", "--no-build", "--build-dir", str(tree.directory), *args)


def test_trace_command_writes_strace_text_with_filters(build_tree: project.BuildTree) -> None:
    result = trace_cli(build_tree, "--filter", "syscall", "--pid", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the speed model: 3.83 us to enter, a few hundred instructions
    assert lines[0].endswith("[pid 2] getpid() = 2 <0.005 ms>")
    assert all("[pid 2]" in line for line in lines)


def test_trace_diff_finds_the_first_divergence(build_tree: project.BuildTree, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        result = trace_cli(build_tree, "--format", "jsonl", "-o", str(path))
        assert result.returncode == 0, result.stderr
    assert run_cli("trace-diff", str(a), str(b)).stdout.startswith("identical:")
    records = [json.loads(line) for line in b.read_text().splitlines()]
    records[5]["t_ns"] += 1
    b.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_cli("trace-diff", str(a), str(b))
    assert result.returncode == 1 and "diverge at event 5" in result.stdout


def test_every_confused_deputy_attack_of_eve_is_refused_in_the_trace(build_tree: project.BuildTree) -> None:
    machine, events = traced(build_tree, "friends")
    eve = next(e.pid for e in events if e.kind is Kind.PROCESS and e.detail.get("name") == "eve")
    calls = [e for e in events if e.kind is Kind.SYSCALL and e.pid == eve and not e.detail.get("unfinished")]
    name = machine.tracer.syscalls.name
    attacks = [e for e in calls if name(e.number) not in ("getpid", "yield", "exit")][1:]  # after her own page
    assert len(attacks) >= 20
    refused = [machine.tracer.format_return(e) for e in attacks]
    assert all(r.split()[0].startswith("-") and len(r.split()) == 2 for r in refused), refused
    assert {r.split()[1] for r in refused} <= set(machine.tracer.syscalls.errors.values())
    alice = next(e.pid for e in events if e.kind is Kind.PROCESS and e.detail.get("name") == "alice")
    assert len([e for e in events if e.kind is Kind.SYSCALL and e.pid == alice]) > 50  # alice kept going


def test_the_pipe_moves_each_message_in_at_most_two_system_calls(build_tree: project.BuildTree) -> None:
    machine, events = traced(build_tree, "pipe")
    pipe_calls = [e for e in events if e.kind is Kind.SYSCALL and not record_is_unfinished_entry(e)
                  and machine.tracer.syscalls.name(e.number).startswith("pipe")]  # a blocked call: its resolution
    messages = 200
    assert "200 messages" in machine.screen_text() and "200 intact" in machine.screen_text()
    assert len(pipe_calls) <= 2 * messages
    moved = sum(e.ret for e in pipe_calls if machine.tracer.syscalls.name(e.number) == "piperead" and e.ret)
    written = sum(e.ret for e in pipe_calls if machine.tracer.syscalls.name(e.number) == "pipewrite" and e.ret)
    assert moved == written > 0


def traced_with(tree: project.BuildTree, command: str, fast_paths: bool) -> list[Event]:
    machine = boot_machine(tree.kernel, command, tree.programs(), MachineConfig(fast_paths=fast_paths))
    machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    events: list[Event] = []
    machine.events.attach(events.append)
    machine.run(max_time_ns=5_000_000_000)
    machine.tracer.finish()
    return events


def console_lines(events: list[Event]) -> list[tuple[int | None, str]]:
    return [(e.pid, line) for e in events if e.kind is Kind.CONSOLE for line in e.text.splitlines()]


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native", "python"])
def test_console_text_is_attributed_to_the_process_that_wrote_it(build_tree: project.BuildTree,
                                                                 fast_paths: bool) -> None:
    events = traced_with(build_tree, "fault hello", fast_paths)
    lines = console_lines(events)
    assert (1, "fault: about to touch kernel memory") in lines
    assert (2, "Hello from WeensyOS process 2!") in lines
    written = next(i for i, e in enumerate(events) if e.kind is Kind.CONSOLE and "about to touch" in e.text)
    fault = next(i for i, e in enumerate(events) if e.is_page_fault)
    assert written < fault  # printed before the instruction that faults


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native", "python"])
def test_console_text_comes_between_the_system_calls_it_was_written_between(build_tree: project.BuildTree,
                                                                           fast_paths: bool) -> None:
    events = traced_with(build_tree, "hello", fast_paths)
    order = [e.detail["name"] if e.kind is Kind.SYSCALL else e.text for e in events
             if e.kind in (Kind.SYSCALL, Kind.CONSOLE)]
    assert order[:4] == ["getpid", "Hello from WeensyOS process 1!", "getsysname", "system: WeensyOS-Unicorn 0.1"]


def test_console_text_of_a_panicking_process_comes_before_the_panic(build_tree: project.BuildTree) -> None:
    events = traced_with(build_tree, "panicker", True)
    kinds = [e.kind for e in events]
    panic = kinds.index(Kind.PANIC)
    assert [e.text for e in events[:panic] if e.kind is Kind.CONSOLE] == [
        "panicker 1: about to panic", "USER PANIC: deliberate panic from panicker"]
    assert Kind.CONSOLE not in kinds[panic:]


@pytest.mark.parametrize("command", ["hello", "fault hello", "memviewer friends", "panicker"])
def test_no_console_event_is_empty_or_blank(build_tree: project.BuildTree, command: str) -> None:
    events = traced_with(build_tree, command, True)
    console = [e for e in events if e.kind is Kind.CONSOLE]
    assert console and all(line.strip() for e in console for line in e.text.splitlines())
    assert all(len(e.text.splitlines()) == len(e.detail["rows"]) for e in console)
