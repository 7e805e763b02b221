"""The command line as a user meets it: exit statuses, clear one-line errors, the final screen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import project

from .elfmaker import ElfSpec, make_elf


def harness(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def built(tree: project.BuildTree) -> tuple[str, ...]:
    """Options that point the CLI at the session's build (already built by the fixture)."""
    return ("--no-build", "--build-dir", str(tree.directory))


def test_help_lists_the_commands() -> None:
    result = harness("--help")
    assert result.returncode == 0
    assert "boot" in result.stdout and "build" in result.stdout


def test_boot_hello_headless_prints_the_greeting_and_exits_0(build_tree: project.BuildTree) -> None:
    result = harness("boot", "hello", "--headless", *built(build_tree))
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
    result = harness("boot", "panicker", "--headless", *built(build_tree))
    assert result.returncode == 3
    assert "kernel panic" in result.stderr and "backtrace:" in result.stderr and "<syscall+" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_wall_clock_guard_stops_a_run_with_its_own_status_and_a_diagnosis(build_tree: project.BuildTree) -> None:
    """A budget of a virtual day that the guest cannot reach in a fraction of a host second: the guard fires
    first, with exit status 11, says so, and shows where the guest was."""
    result = harness("boot", "spinner", "--headless", "--max-time", "86400", "--max-wall", "0.2",
                     *built(build_tree))
    assert result.returncode == 11, result.stderr
    assert "the wall-clock guard fired" in result.stderr and "limit 0.2 s, --max-wall" in result.stderr
    assert "where: " in result.stderr and "spinner" in result.stderr
