"""Careless and hostile command lines: each is one clear line on standard error and the documented exit status.

One test per class of input (memory sizes, ports, output paths, key scripts, option combinations, pipes that
close early, requests the run could not honour); none may print a Python traceback. The commands run in this
process (tests/cli_in_process.py) except where the process itself is the subject: standard output on a full disk
at exit, a reader that closes the pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import project
from harness.front.cliargs import MAX_MEMORY_MIB

from .cli_in_process import run_cli

pytestmark = pytest.mark.cost(1)  # seconds, roughly: the session starts the costly modules first


def harness(tree: project.BuildTree, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--no-build", "--build-dir", str(tree.directory))


def harness_process(tree: project.BuildTree, *args: str, stdout: int,
                    env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A real `python -m harness` process, for what happens at its exit."""
    command = [sys.executable, "-m", "harness", *args, "--no-build", "--build-dir", str(tree.directory)]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=env)


def one_error_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0] and all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("mib", ["0", "4095", str(MAX_MEMORY_MIB + 1), "65536", "-5", "lots"])
def test_memory_sizes_outside_the_pc_s_ram_are_usage_errors(build_tree: project.BuildTree, mib: str) -> None:
    one_error_line(harness(build_tree, "boot", "hello", "--headless", f"--memory={mib}"), 2, "--memory")


def test_the_largest_memory_size_boots(build_tree: project.BuildTree) -> None:
    result = harness(build_tree, "boot", "hello", "--headless", "--memory", str(MAX_MEMORY_MIB))
    assert result.returncode == 0, result.stderr


def test_ram_the_host_refuses_is_a_harness_error() -> None:
    from harness.machine import Machine, MachineConfig
    from harness.pc.errors import HarnessError

    with pytest.raises(HarnessError, match="give 1 to"):
        Machine(MachineConfig(ram_size=64 << 30))


@pytest.mark.parametrize("port", ["99999", "-1", "gdb"])
def test_ports_that_are_not_tcp_ports_are_usage_errors(build_tree: project.BuildTree, port: str) -> None:
    one_error_line(harness(build_tree, "boot", "hello", "--headless", f"--gdb={port}"), 2, "--gdb")


def test_a_busy_gdb_port_is_one_line(build_tree: project.BuildTree) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        one_error_line(harness(build_tree, "boot", "hello", "--headless", "--gdb", str(port)), 1,
                       f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("target", ["/dev/full", "/nonexistent-dir/trace.txt"])
def test_output_paths_that_cannot_be_written(build_tree: project.BuildTree, target: str) -> None:
    one_error_line(harness(build_tree, "trace", "hello", "-o", target), 1, "cannot write the trace", target)
    one_error_line(harness(build_tree, "boot", "hello", "--headless", "--log", target), 1, "cannot write the log")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_standard_output_that_cannot_be_written(build_tree: project.BuildTree, buffered: bool) -> None:
    """Buffered (Python's default) is the hard case: what is still buffered must not fail again at exit."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        result = harness_process(build_tree, "trace", "hello", stdout=full.fileno(), env=env)
    one_error_line(result, 1, "cannot write the trace to standard output")


@pytest.mark.parametrize("script", ["<nokey>", "-1:q", "1s:", "0.5:<ctrl-1>"])
def test_bad_key_scripts_are_usage_errors(build_tree: project.BuildTree, script: str) -> None:
    one_error_line(harness(build_tree, "boot", "hello", "--headless", "--keys", script), 2, "--keys")


def test_a_time_without_a_leading_zero_is_a_time(build_tree: project.BuildTree) -> None:
    result = harness(build_tree, "boot", "spinner", "--headless", "--keys", ".08:q")
    assert result.returncode == 0 and "power-off at 0.08" in result.stderr, result.stderr


def test_keys_due_after_the_run_ended_are_reported(build_tree: project.BuildTree) -> None:
    result = harness(build_tree, "boot", "hello", "--headless", "--keys", "5:q")
    assert result.returncode == 0
    assert "note: 1 --keys not typed: the first was due at 5 s" in result.stderr


@pytest.mark.parametrize("args, words", [
    (("boot", "--disk", "build/weensyos.img", "hello"), ("--disk", "PROGRAM")),
    (("boot", "--disk", "build/weensyos.img", "--program", "x=y"), ("--program", "--disk")),
    (("trace", "hello", "--format", "perfetto", "--summary"), ("--summary", "Perfetto")),
    (("boot", "hello", "--until", ""), ("--until",)),
    (("trace", "hello", "--pid", "-3"), ("--pid",)),
    (("boot", "--ticks", "0"), ("--ticks",)),
    (("boot", "--max-time", "inf"), ("--max-time",)),
    (("boot", "--max-time", "nan"), ("--max-time",)),
    (("boot", "--max-time", "1e300"), ("--max-time",)),
    (("trace-diff", "--context", "-5", "a", "b"), ("--context",)),
])
def test_option_combinations_and_values_that_make_no_sense(build_tree: project.BuildTree, args: tuple[str, ...],
                                                           words: tuple[str, ...]) -> None:
    one_error_line(harness(build_tree, *args), 2, *words)


def test_a_pid_that_never_ran_is_reported(build_tree: project.BuildTree) -> None:
    result = harness(build_tree, "trace", "hello", "--pid", "99")
    assert result.returncode == 0 and result.stdout == ""
    assert "note: no process 99 ran (pids: 1)" in result.stderr


def test_a_closed_pipe_keeps_the_guest_s_exit_status(build_tree: project.BuildTree) -> None:
    for args in (("trace", "panicker"), ("boot", "panicker", "--headless")):
        command = [sys.executable, "-m", "harness", *args, "--no-build", "--build-dir", str(build_tree.directory)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # the reader goes away at once, like `| head -0`
        stderr = process.stderr.read()
        assert process.wait(timeout=120) == 3, stderr
        assert "kernel panic" in stderr and "Traceback" not in stderr


def test_a_resumed_run_s_log_starts_with_the_lines_before_the_snapshot(build_tree: project.BuildTree,
                                                                      tmp_path: Path) -> None:
    snapshot, log = tmp_path / "mid.snap", tmp_path / "log.txt"
    whole = harness(build_tree, "boot", "spinner", "--headless", "--ticks", "8", "--log", str(tmp_path / "all.txt"))
    assert whole.returncode == 0
    first = harness(build_tree, "boot", "spinner", "--headless", "--ticks", "4", "--save-snapshot", str(snapshot))
    assert first.returncode == 0, first.stderr
    resumed = harness(build_tree, "boot", "spinner", "--headless", "--ticks", "4", "--load-snapshot", str(snapshot),
                      "--log", str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert log.read_text() == (tmp_path / "all.txt").read_text()
    assert log.read_text().startswith('weensyos: booting, command "spinner"\n')


def test_the_audit_says_that_it_ran_and_what_it_checked(build_tree: project.BuildTree) -> None:
    result = harness(build_tree, "boot", "fault", "hello", "--headless", "--audit")
    assert result.returncode == 0, result.stderr
    assert "harness: audit: " in result.stderr and "checks of every process's page table" in result.stderr


# A kernel that prints a hostile panic line on its log port (LPT1: data, then a strobe pulse) and spins.
HOSTILE_LOG = r"""
    lea message(%rip), %rsi
next:
    movb (%rsi), %al
    test %al, %al
    jz done
    mov $0x378, %dx
    out %al, %dx
    mov $0x37a, %dx
    mov $0x0d, %al          # strobe, select, not-init: the byte is printed
    out %al, %dx
    mov $0x0c, %al
    out %al, %dx
    inc %rsi
    jmp next
done:
    jmp done
message:
    .asciz "PANIC: \033]0;pwned\007 \033c\033[2J\r boom\n"
"""


def test_a_guest_s_escape_sequences_reach_the_terminal_as_text(tmp_path: Path) -> None:
    from .x86asm import assemble_kernel

    kernel = assemble_kernel(HOSTILE_LOG, tmp_path / "kernel")
    for command in (["boot", "--headless"], ["trace"]):
        result = run_cli(*command, "--kernel", str(kernel), "--max-time", "0.1")
        assert result.returncode == 3, result.stderr
        for text in (result.stdout, result.stderr):
            assert not any(char in text for char in "\x1b\x07\r"), repr(text)
        assert "PANIC: \\x1b]0;pwned\\x07 \\x1bc\\r boom" in result.stderr


def test_guest_text_cannot_command_the_terminal() -> None:
    """A log line with escape sequences (retitle, reset, clear) is printed with the escapes made visible."""
    from harness.front.termtext import escape_for_terminal

    hostile = "PANIC: \x1b]0;pwned\x07\x1bc\x1b[2J\r\x9b1m done"
    shown = escape_for_terminal(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown and "\x9b" not in shown
    assert shown == "PANIC: \\x1b]0;pwned\\x07\\x1bc\\x1b[2J\\r\\x9b1m done"
    assert escape_for_terminal("line one\nline two\\n") == "line one\nline two\\n"


@pytest.mark.parametrize("args, words", [
    (("boot", "--headless", "--disk", "/dev/null"), ("/dev/null", "not a regular file")),
    (("boot", "--headless", "--disk", "/"), ("disk image /", "not a regular file")),
    (("boot", "--headless", "--log", "/"), ("cannot write the log",)),
    (("boot", "--headless", "--kernel", "/dev/null"), ("not a file",)),
    (("boot", "--headless", "--load-snapshot", "/etc/hostname"), ("not a harness snapshot",)),
    (("boot", "--headless", "--save-snapshot", "/dev/full"), ("cannot write the snapshot",)),
    (("boot", "--headless", "--screen", "/nonexistent-dir/x.png"), ("cannot save the screen",)),
])
def test_files_and_devices_that_cannot_be_used(build_tree: project.BuildTree, args: tuple[str, ...],
                                               words: tuple[str, ...]) -> None:
    one_error_line(harness(build_tree, *args), 1, *words)
