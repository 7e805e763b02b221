"""A pytest plugin for kernel tests: boot WeensyOS (or any kernel built to the course's contract), drive it,
and assert on the screen, the log, the trace and the kernel's own state, with failures that explain themselves.

Installed with the package (entry point `pytest11`), so any test suite gets the fixtures:

    def test_hello(weensyos):
        guest = weensyos.boot("hello")
        guest.run()                                     # to power-off, within a budget of virtual time
        assert guest.screen.contains("Hello from WeensyOS process 1!")
        assert guest.stop.kind is StopKind.POWER_OFF

    def test_pipe(weensyos):
        guest = weensyos.boot("pipe")
        guest.run(until_syscall="piperead")             # or until="text", until_fault=True, until_exit=2, ...
        assert len(guest.syscalls("pipewrite")) >= 1

Boot once, reset many: the first boot of a (kernel, command, seed) in a worker process is snapshotted, and
later tests restore that snapshot into a pooled machine instead of building a new one.

When a test that booted a guest fails, its report carries each guest's screen, log tail and last events.
Options: --weensy-build-dir, --weensy-kernel, --weensy-seed, --weensy-results FILE (JSON for autograders),
--update-golden (rewrite golden traces instead of comparing).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import project
from .machine import Machine, MachineConfig, Stop, StopKind
from .observe.diagnosis import format_event
from .observe.kernelview import KernelView, PageAccounting, ProcInfo
from .observe.syscalls import SyscallTable, choose_table
from .observe.traceformat import jsonl_record
from .pc.events import Event, Kind
from .pc.loader import Module, read_elf
from .pc.snapshot import Snapshot

DEFAULT_BUDGET_S = 10.0


class Screen:
    """The 80x25 text screen: characters and attributes, with helpers that read well in asserts."""

    def __init__(self, cells: list[list[tuple[int, int]]], text_lines: list[str]) -> None:
        self.cells = cells
        self.lines = text_lines  # 25 strings of 80 characters

    @property
    def text(self) -> str:
        lines = [line.rstrip() for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    def contains(self, text: str) -> bool:
        return text in self.text

    def find(self, text: str) -> tuple[int, int] | None:
        """(row, column) of the first occurrence of `text` on one row."""
        for row, line in enumerate(self.lines):
            column = line.find(text)
            if column >= 0:
                return row, column
        return None

    def char(self, row: int, column: int) -> str:
        return self.lines[row][column]

    def attribute(self, row: int, column: int) -> int:
        return self.cells[row][column][1]

    def __str__(self) -> str:
        return self.text


@dataclass
class Guest:
    """One booted machine in a test."""

    machine: Machine
    command: str
    syscall_table: SyscallTable
    trace: list[Event] = field(default_factory=list)  # every finished event since boot, in order
    stop: Stop | None = None

    # -- driving ---------------------------------------------------------------------------------------------
    def run(self, *, ticks: int | None = None, until: str | None = None, until_syscall: str | int | None = None,
            until_fault: bool = False, until_exit: int | None = None, until_pids: int | None = None,
            max_time: float = DEFAULT_BUDGET_S, max_wall: float | None = None) -> Stop:
        """Run until power-off or the first condition given; a budget of `max_time` virtual seconds (and a
        wall-clock guard of `max_wall` host seconds, by default scaled to it)."""
        table = self.syscall_table
        tracer = self.machine.tracer

        def condition(event: Event) -> bool:
            if until_syscall is not None and event.kind is Kind.SYSCALL:
                wanted = until_syscall if isinstance(until_syscall, int) else table.by_name[until_syscall].number
                if event.number == wanted:
                    return True
            if until_fault and event.kind is Kind.EXCEPTION:
                return True
            exited = event.kind is Kind.PROCESS and event.detail.get("event") == "exited"
            if until_exit is not None and exited and event.pid == until_exit:
                return True
            # The process table is complete after a scan (reported by a switch) and right after an exit.
            return until_pids is not None and (exited or event.kind is Kind.SWITCH) and \
                len(tracer._names) == until_pids

        watching = until_syscall is not None or until_fault or until_exit is not None or until_pids is not None
        self.stop = self.machine.run(ticks=ticks, until=until, max_time_ns=int(max_time * 1e9),
                                     until_event=condition if watching else None, max_wall_s=max_wall)
        return self.stop

    def type(self, text: str) -> None:
        """Type text now (named keys as in --keys: `<enter>`, `<ctrl-c>`, ...)."""
        from .pc.keys import text_to_scancodes

        self.machine.type_keys(text_to_scancodes(text))

    # -- looking -----------------------------------------------------------------------------------------------
    @property
    def screen(self) -> Screen:
        return Screen(self.machine.console.cells(), self.machine.console.text_lines())

    @property
    def log(self) -> list[str]:
        return self.machine.log.lines()

    def syscalls(self, name: str | None = None, pid: int | None = None) -> list[Event]:
        """Finished system calls (each once), optionally of one name and one process."""
        out = []
        for event in self.trace:
            if event.kind is not Kind.SYSCALL or event.detail.get("unfinished"):
                continue  # a call that blocked is listed once, complete: its resolution, in the place of its entry
            if name is not None and self.syscall_table.name(event.number) != name:
                continue
            if pid is not None and event.pid != pid:
                continue
            out.append(event)
        return sorted(out, key=lambda event: event.detail.get("resumes", event.seq))

    def events(self, kind: Kind | None = None) -> list[Event]:
        return [e for e in self.trace if kind is None or e.kind is kind]

    def processes(self) -> list[ProcInfo]:
        """The kernel's process table, read from its own memory."""
        image = self.machine.kernel_image
        view = KernelView(self.machine.memory, self.machine.symbols, image.data if image else None)
        return view.processes(self.machine.cpu.cr3.value)

    def free_pages(self) -> int:
        """Free physical pages according to the kernel's own `physpages` array."""
        image = self.machine.kernel_image
        return PageAccounting(self.machine.memory, self.machine.symbols, image.data if image else None).free_pages()

    def jsonl(self) -> list[str]:
        """The trace as JSON lines (the `trace --format jsonl` schema)."""
        return [json.dumps(jsonl_record(self.machine.tracer, event)) for event in self.trace]

    def explain(self, events: int = 15, log_lines: int = 15) -> str:
        """Screen, log tail and last events: what a failing test needs to show."""
        parts = [f"command: {self.command!r}"]
        if self.stop is not None:
            parts.append(f"stopped: {self.stop.kind.value}: {self.stop.message} at "
                         f"{self.stop.time_ns / 1e9:.6f} s virtual time")
        parts.append("screen:\n" + "\n".join(f"  |{line}|" for line in self.screen.text.splitlines()))
        parts.append("log tail:\n" + "\n".join(f"  {line}" for line in self.log[-log_lines:]))
        recent = self.machine.events.last(events)
        parts.append("last events:\n" + "\n".join(
            f"  {format_event(self.machine, event, self.syscall_table)}" for event in recent))
        return "\n".join(parts)


class MachinePool:
    """Per worker process: one post-boot snapshot per (kernel, command, seed) and idle machines to restore it into."""

    def __init__(self) -> None:
        self.snapshots: dict[tuple[Any, ...], Snapshot] = {}
        self.idle: dict[tuple[Any, ...], list[Machine]] = {}

    def acquire(self, key: tuple[Any, ...], create: Callable[[], Machine]) -> Machine:
        idle = self.idle.setdefault(key, [])
        if key in self.snapshots and idle:
            machine = idle.pop()
            machine.restore(self.snapshots[key])
            return machine
        machine = create()
        if key not in self.snapshots:
            self.snapshots[key] = machine.snapshot()
        return machine

    def release(self, key: tuple[Any, ...], machine: Machine) -> None:
        machine.events.sinks.clear()
        machine.events.observers.clear()
        for address in list(machine._breakpoints):
            machine.remove_breakpoint(address)
        self.idle.setdefault(key, []).append(machine)


_POOL = MachinePool()


class WeensyOS:
    """The `weensyos` fixture: boots guests from one build and remembers them for failure reports."""

    def __init__(self, tree: project.BuildTree, kernel: Path, seed: int) -> None:
        self.tree = tree
        self.kernel = kernel
        self.seed = seed
        self.guests: list[Guest] = []
        self._leases: list[tuple[tuple[Any, ...], Machine]] = []
        self._tables: dict[tuple[str, int], SyscallTable] = {}

    def boot(self, command: str = "hello", *, seed: int | None = None, programs: dict[str, Path] | None = None,
             fresh: bool = False) -> Guest:
        """A guest with `command` on its kernel command line, traced, ready to run."""
        seed = self.seed if seed is None else seed
        chosen = programs if programs is not None else self.tree.programs()
        kernel = self.kernel
        key = (str(kernel), kernel.stat().st_mtime_ns, command, seed, tuple(sorted((k, str(v)) for k, v in
                                                                                   chosen.items())))
        table = self._tables.get(key[:2])
        if table is None:  # the build's table only for a kernel that speaks its ABI (observe/syscalls.py)
            table = self._tables[key[:2]] = choose_table(read_elf(kernel, "kernel"), None, self.tree.syscall_table)

        def create() -> Machine:
            machine = Machine(MachineConfig(seed=seed))
            machine.boot(read_elf(kernel, "kernel"), command,
                         [Module(name, read_elf(path, f"program '{name}'")) for name, path in chosen.items()])
            machine.enable_tracing(table, chosen)
            return machine

        machine = create() if fresh else _POOL.acquire(key, create)
        if not fresh:
            self._leases.append((key, machine))
        guest = Guest(machine, command, table)
        machine.events.attach(guest.trace.append)
        self.guests.append(guest)
        return guest

    def release(self) -> None:
        for key, machine in self._leases:
            _POOL.release(key, machine)
        self._leases.clear()


# -- options, fixtures and reports ---------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("weensy", "WeensyOS harness")
    group.addoption("--weensy-build-dir", metavar="DIR", help="build directory with kernel and p-* programs "
                    "(default: the repository's build/, or $WEENSY_BUILD_DIR)")
    group.addoption("--weensy-kernel", metavar="ELF", help="boot this kernel instead of the build's")
    group.addoption("--weensy-seed", type=int, default=0, metavar="N", help="timer phase seed for every guest")
    group.addoption("--weensy-results", metavar="FILE", help="write a results JSON for autograders")
    group.addoption("--update-golden", action="store_true", help="rewrite golden traces instead of comparing")


@pytest.fixture(scope="session")
def weensy_build(request: pytest.FixtureRequest) -> project.BuildTree:
    """The guest's build, made once per session (parallel workers take turns on a lock file).

    WEENSY_BUILD_DIR (or --weensy-build-dir) selects the directory; WEENSY_NO_BUILD=1 uses it as it is."""
    option = request.config.getoption("--weensy-build-dir")
    build_dir = Path(option).resolve() if option else project.default_build_dir()
    source = project.default_source_dir()
    if source is not None and not os.environ.get("WEENSY_NO_BUILD") and not option and \
            project.ours_to_build(build_dir):  # never a build the user made
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(build_dir.parent / ".weensyos-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            project.build(source, build_dir)
    tree = project.BuildTree(build_dir)
    if not tree.kernel.exists() and not request.config.getoption("--weensy-kernel"):
        pytest.fail(f"no kernel at {tree.kernel}: build WeensyOS first (python -m harness build)")
    return tree


@pytest.fixture
def weensyos(request: pytest.FixtureRequest, weensy_build: project.BuildTree) -> Iterator[WeensyOS]:
    kernel_option = request.config.getoption("--weensy-kernel")
    kernel = Path(kernel_option).resolve() if kernel_option else weensy_build.kernel
    fixture = WeensyOS(weensy_build, kernel, request.config.getoption("--weensy-seed"))
    yield fixture
    fixture.release()


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, list[str]], None]:
    """golden(name, lines): compare with tests/golden/NAME (or rewrite it under --update-golden)."""
    directory = Path(request.node.fspath).parent / "golden"

    def check(name: str, lines: list[str]) -> None:
        path = directory / name
        text = "".join(line + "\n" for line in lines)
        if request.config.getoption("--update-golden"):
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"no golden file {path}: create it with `pytest {request.node.nodeid} --update-golden`")
        expected = path.read_text().splitlines()
        for index, (want, got) in enumerate(zip(expected, lines, strict=False)):
            if want != got:
                pytest.fail(f"{path.name} differs at line {index + 1}:\n  expected: {want}\n  actual:   {got}\n"
                            f"(regenerate with --update-golden if the change is intended, and review the diff)")
        if len(expected) != len(lines):
            pytest.fail(f"{path.name}: expected {len(expected)} lines, got {len(lines)} "
                        f"(regenerate with --update-golden if intended)")

    return check


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    fixture = getattr(item, "funcargs", {}).get("weensyos")
    if isinstance(fixture, WeensyOS):
        for index, guest in enumerate(fixture.guests):
            report.sections.append((f"WeensyOS guest {index + 1}", guest.explain()))


class ResultsRecorder:
    """Collects one record per test for the results JSON (works under pytest-xdist: the controller records)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.records.setdefault(report.nodeid, {"test": report.nodeid, "outcome": "passed",
                                                         "duration_s": 0.0})
        record["duration_s"] = round(record["duration_s"] + report.duration, 4)
        if report.failed:
            record["outcome"] = "failed" if report.when == "call" else "error"
            record["message"] = str(report.longrepr)[-2000:]
        elif report.skipped and record["outcome"] == "passed":
            record["outcome"] = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        tests = sorted(self.records.values(), key=lambda r: r["test"])
        counts: dict[str, int] = {}
        for record in tests:
            counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"version": 1, "exit_status": int(exitstatus), "counts": counts,
                                         "wall_s": round(time.time() - self.started, 3), "tests": tests},
                                        indent=2) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--weensy-results")
    if path and not hasattr(config, "workerinput"):  # only the controller (or a plain run) writes the file
        config.pluginmanager.register(ResultsRecorder(Path(path)), "weensy-results")


__all__ = ["Guest", "Screen", "WeensyOS", "StopKind"]
