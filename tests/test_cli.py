"""The command line as a user meets it: exit statuses, clear one-line errors, the final screen.

Two tests start the real `python -m harness` process (a greeting and its status 0, a panic and its status 3); the
others run the same command line in the test process (tests/cli_in_process.py), with the same status and output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import project

from .cli_in_process import run_cli
from .elfmaker import ElfSpec, make_elf


def harness_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=120)


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


def built(tree: project.BuildTree) -> tuple[str, ...]:
    """Options that point the CLI at the session's build (already built by the fixture)."""
    return ("--no-build", "--build-dir", str(tree.directory))


def test_help_lists_the_commands() -> None:
    result = harness("--help")
    assert result.returncode == 0
    assert "boot" in result.stdout and "build" in result.stdout


def test_boot_hello_headless_prints_the_greeting_and_exits_0(build_tree: project.BuildTree) -> None:
    result = harness_process("boot", "hello", "--headless", *built(build_tree))
    assert result.returncode == 0, result.stderr
    assert "Hello from WeensyOS process 1!" in result.stdout
    assert "power-off" in result.stderr


def test_ticks_reached_is_success(build_tree: project.BuildTree) -> None:
    result = harness("boot", "spinner", "--headless", "--ticks", "5", *built(build_tree))
    assert result.returncode == 0, result.stderr
    assert "5 timer ticks reached" in result.stderr


def test_budget_exhausted_is_a_failure_with_a_diagnosis(build_tree: project.BuildTree) -> None:
    result = harness("boot", "spinner", "--headless", "--max-time", "0.05", *built(build_tree))
    assert result.returncode == 5
    assert "budget exhausted" in result.stderr
    assert "last" in result.stderr and "events" in result.stderr


def test_log_file_receives_the_kernel_log(build_tree: project.BuildTree, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    result = harness("boot", "hello", "--headless", "--log", str(log), *built(build_tree))
    assert result.returncode == 0
    assert log.read_text().splitlines()[-1] == "all processes exited; powering off"


def test_unknown_program_is_one_clear_line(build_tree: project.BuildTree) -> None:
    result = harness("boot", "nosuchprogram", *built(build_tree))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "unknown program 'nosuchprogram'" in result.stderr and "hello" in result.stderr


def test_bad_kernel_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "kernel"
    bad.write_bytes(make_elf(ElfSpec(machine=40)))  # an ARM executable
    result = harness("boot", "--kernel", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == f"harness: error: kernel {bad}: ELF for machine 40, not x86-64 (62)"
    assert "Traceback" not in result.stderr


def test_missing_kernel_file(tmp_path: Path) -> None:
    result = harness("boot", "--kernel", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_bad_program_option() -> None:
    result = harness("boot", "--no-build", "--program", "oops")
    assert result.returncode == 1
    assert "--program wants NAME=ELF" in result.stderr


def test_bad_number_is_a_usage_error() -> None:
    result = harness("boot", "--ticks", "soon")
    assert result.returncode == 2
    assert "not a number" in result.stderr


def test_panic_exits_3_with_a_diagnosis(build_tree: project.BuildTree) -> None:
    result = harness_process("boot", "panicker", "--headless", *built(build_tree))
    assert result.returncode == 3
    assert "kernel panic" in result.stderr and "backtrace:" in result.stderr and "<syscall+" in result.stderr
    assert "Traceback" not in result.stderr


def _stale_copy_of(tree: project.BuildTree, target: Path) -> dict[str, int]:
    """A build the user made: a copy of the build whose files are all older than the sources (make would redo
    them all); returns each file's modification time."""
    shutil.copytree(tree.directory, target, ignore=shutil.ignore_patterns(project.BUILD_STAMP))
    old = 946684800  # 2000-01-01
    for path in target.rglob("*"):
        os.utime(path, (old, old))
    return {str(p): p.stat().st_mtime_ns for p in target.rglob("*")}


def test_build_dir_never_rebuilds_a_build_the_user_made(build_tree: project.BuildTree, tmp_path: Path) -> None:
    mine = tmp_path / "my-build"
    before = _stale_copy_of(build_tree, mine)
    result = harness("boot", "hello", "--headless", "--build-dir", str(mine))
    assert result.returncode == 0, result.stderr
    assert {str(p): p.stat().st_mtime_ns for p in mine.rglob("*")} == before  # not one file touched


def test_build_dir_that_the_harness_built_is_rebuilt_when_stale(build_tree: project.BuildTree,
                                                                  tmp_path: Path) -> None:
    ours = tmp_path / "our-build"
    shutil.copytree(build_tree.directory, ours, ignore=shutil.ignore_patterns(project.BUILD_STAMP))
    old = 946684800  # 2000-01-01: the kernel older than the objects it is linked from (make relinks it)
    os.utime(ours / "kernel", (old, old))
    (ours / project.BUILD_STAMP).touch()  # as `python -m harness build --build-dir` leaves it
    result = harness("boot", "hello", "--headless", "--build-dir", str(ours))
    assert result.returncode == 0, result.stderr
    assert (ours / "kernel").stat().st_mtime > 946684800  # make brought it up to date


def test_the_summary_counts_in_good_english(build_tree: project.BuildTree) -> None:
    result = harness("boot", "fault", "hello", "--headless", *built(build_tree))
    assert result.stderr.rstrip().endswith("[0 timer ticks, 5 system calls, 1 exception]")


def test_a_panic_diagnosis_says_when_its_registers_were_read(build_tree: project.BuildTree) -> None:
    result = harness("boot", "panicker", "--headless", *built(build_tree))
    where = re.search(r"where: (0x[0-9a-f]+)", result.stderr)
    registers = re.search(r"registers when the run stopped \([0-9.]+ s\): rip=(0x[0-9a-f]+)", result.stderr)
    assert where and registers and where[1] != registers[1]  # the panic's place, then where the CPU went on


def test_the_diagnosis_shows_switches_and_console_rows(build_tree: project.BuildTree) -> None:
    result = harness("trace", "spinner", "--max-time", "0.005", *built(build_tree))
    assert result.returncode == 5
    assert re.search(r"    \[0\.\d+\] +switch: -> pid 1\n", result.stderr)
    assert "console: pid 1: spinner 1 running" in result.stderr
    assert not re.search(r"(switch|console):\s*\n", result.stderr)


def test_the_wall_clock_guard_stops_a_run_with_its_own_status_and_a_diagnosis(build_tree: project.BuildTree) -> None:
    """A budget of a virtual day that the guest cannot reach in a fraction of a host second: the guard fires
    first, with exit status 11, says so, and shows where the guest was."""
    result = harness("boot", "spinner", "--headless", "--max-time", "86400", "--max-wall", "0.2",
                     *built(build_tree))
    assert result.returncode == 11, result.stderr
    assert "the wall-clock guard fired" in result.stderr and "limit 0.2 s, --max-wall" in result.stderr
    assert "where: " in result.stderr and "spinner" in result.stderr
