"""Using the harness like a real machine: the live console, scripted keys, screenshots and gdb."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from harness import project
from harness.front.font8x16 import GLYPHS

from .cli_in_process import run_cli

pytestmark = pytest.mark.cost(1.5)  # seconds, roughly: the session starts the costly modules first


def arguments(tree: project.BuildTree, *args: str) -> list[str]:
    """ARGS for the session's build: headless runs are made in the test process with them (run_cli)."""
    return [*args, "--no-build", "--build-dir", str(tree.directory)]


def cli(tree: project.BuildTree, *args: str) -> list[str]:
    """The real process, for the runs about a terminal, a debugger or a missing one."""
    return [sys.executable, "-m", "harness", *arguments(tree, *args)]


def test_keys_typed_at_a_virtual_time_reach_the_kernel(build_tree: project.BuildTree) -> None:
    result = run_cli(*arguments(build_tree, "boot", "spinner", "--headless", "--keys", "0.08:q"))
    assert result.returncode == 0, result.stderr
    assert "power-off at 0.08" in result.stderr  # the kernel saw `q` within a tick of 80 ms and powered off


def test_screenshots_in_every_format(build_tree: project.BuildTree, tmp_path: Path) -> None:
    for suffix in (".txt", ".ansi", ".html", ".png"):
        path = tmp_path / f"screen{suffix}"
        result = run_cli(*arguments(build_tree, "boot", "fault", "hello", "--headless", "--screen", str(path)))
        assert result.returncode == 0, result.stderr
        assert path.stat().st_size > 0
    assert "Hello from WeensyOS process 2!" in (tmp_path / "screen.txt").read_text()
    assert "Hello from WeensyOS process 2!" in (tmp_path / "screen.html").read_text()
    assert "\x1b[" in (tmp_path / "screen.ansi").read_text()
    png = (tmp_path / "screen.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (640, 400)
    # Decode the (unfiltered) scanlines and check the pixels of the 'f' of "fault:" at row 0, column 0:
    # light grey (the kernel's default attribute 0x07) where the glyph has ink, black elsewhere.
    idat = b""
    at = 8
    while at < len(png):
        length = int.from_bytes(png[at:at + 4], "big")
        if png[at + 4:at + 8] == b"IDAT":
            idat += png[at + 8:at + 8 + length]
        at += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * 3
    for y in range(16):
        row = raw[y * stride + 1:(y + 1) * stride]
        for x in range(8):
            ink = GLYPHS[ord("f")][y] & (0x80 >> x)
            assert row[x * 3:x * 3 + 3] == (b"\xaa\xaa\xaa" if ink else b"\x00\x00\x00"), (x, y)


def test_an_unknown_screenshot_format_is_one_clear_error(build_tree: project.BuildTree) -> None:
    result = subprocess.run(cli(build_tree, "boot", "hello", "--screen", "shot.bmp"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and ".png" in result.stderr


def user_string_address(program: Path, text: bytes) -> int:
    with open(program, "rb") as f:
        section = ELFFile(f).get_section_by_name(".rodata")
        return section["sh_addr"] + section.data().index(text)


def test_gdb_breaks_on_a_kernel_function_and_reads_a_user_variable(build_tree: project.BuildTree) -> None:
    assert shutil.which("gdb"), "gdb is needed (apt-get install gdb; .ci/run installs it)"
    harness = subprocess.Popen(cli(build_tree, "boot", "hello", "--headless", "--gdb", "0"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert harness.stderr is not None
        banner = harness.stderr.readline()
        port = re.search(r"127\.0\.0\.1:(\d+)", banner).group(1)  # type: ignore[union-attr]
        greeting = user_string_address(build_tree.directory / "p-hello", b"Hello from")
        gdb = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote :{port}", "-ex", "break syscall",
                              "-ex", "continue", "-ex", "info registers rip cs", "-ex", f"x/s {greeting:#x}",
                              "-ex", "stepi", "-ex", "delete", "-ex", "continue", str(build_tree.kernel)],
                             capture_output=True, text=True, timeout=60)
        out = gdb.stdout
        assert "Breakpoint 1, syscall" in out, out + gdb.stderr
        assert re.search(r"cs\s+0x8\s", out)  # stopped in the kernel, ring 0
        assert f'{greeting:#x}:\t"Hello from WeensyOS process %d!' in out  # through the process's page table
        assert "exited normally" in out  # continue ran hello to power-off
        stdout, _ = harness.communicate(timeout=60)
        assert harness.returncode == 0
        assert "Hello from WeensyOS process 1!" in stdout
    finally:
        harness.kill()


@dataclass
class TmuxPane:
    """A real 100x30 terminal: one tmux session in a tmux server of its own (`-L`), so that tests in parallel
    workers never share a server, nor race one that exits as another test kills its last session."""

    server: str

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True)
        assert result.returncode == 0, f"tmux {' '.join(args)}: status {result.returncode}: {result.stderr.strip()}"
        return result.stdout

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.server, *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-t", self.server, "-p")


@contextlib.contextmanager
def tmux_pane() -> Iterator[TmuxPane]:
    assert shutil.which("tmux"), "tmux is needed (apt-get install tmux; .ci/run installs it)"
    pane = TmuxPane(f"harness-{uuid.uuid4().hex[:8]}")
    pane.tmux("new-session", "-d", "-s", pane.server, "-x", "100", "-y", "30", "bash", "--norc", "--noprofile")
    socket = Path(pane.tmux("display-message", "-p", "#{socket_path}").strip())
    try:
        yield pane
    finally:
        subprocess.run(["tmux", "-L", pane.server, "kill-server"], capture_output=True)
        socket.unlink(missing_ok=True)  # a killed server leaves its socket behind


def test_live_console_in_a_terminal_shows_the_screen_and_quits_cleanly(build_tree: project.BuildTree) -> None:
    command = " ".join(cli(build_tree, "boot", "spinner"))
    with tmux_pane() as pane:
        pane.send(f"{command}; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x icanon", "Enter")
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline and "spinner 1 running" not in screen:
            time.sleep(0.2)
            screen = pane.screen()
        assert "spinner 1 running" in screen
        assert re.search(r"WeensyOS \| pid 1 \| +\d+\.\d+ s virtual \| running \| Ctrl-\] quits", screen)
        pane.send("C-]")
        while time.monotonic() < deadline and "EXIT=" not in screen:
            time.sleep(0.2)
            screen = pane.screen()
        assert "EXIT=0" in screen and "harness: quit at" in screen
        assert "\nicanon" in screen  # the terminal is back in canonical (cooked) mode


def test_the_kernel_s_own_quit_key_works_on_the_live_console(build_tree: project.BuildTree) -> None:
    command = " ".join(cli(build_tree, "boot", "spinner"))
    with tmux_pane() as pane:
        pane.send(f"{command}; echo EXIT=$?", "Enter")
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline and "spinner 1 running" not in screen:
            time.sleep(0.2)
            screen = pane.screen()
        pane.send("q")
        while time.monotonic() < deadline and "EXIT=" not in screen:
            time.sleep(0.2)
            screen = pane.screen()
        assert "EXIT=0" in screen and "power-off" in screen


def _run_in_tmux(command: str) -> str:
    """Run `command` in a fresh tmux pane (a real terminal) and return the pane once it has ended."""
    with tmux_pane() as pane:
        pane.send(f"clear; {command}; echo EXIT=$?", "Enter")
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline and not re.search(r"^EXIT=\d+", screen, re.M):  # not the echoed command
            time.sleep(0.2)
            screen = pane.screen()
        return screen


def test_the_live_console_leaves_the_guest_s_final_screen_then_the_summary(build_tree: project.BuildTree) -> None:
    screen = _run_in_tmux(" ".join(cli(build_tree, "boot", "hello")))
    lines = [line for line in screen.splitlines() if line.strip()]
    greeting = lines.index("Hello from WeensyOS process 1!")
    assert lines[greeting + 1] == "system: WeensyOS-Unicorn 0.1"
    assert lines[greeting + 2].startswith("harness: power-off at")
    assert "EXIT=0" in screen


def test_the_live_console_can_leave_nothing_behind(build_tree: project.BuildTree) -> None:
    screen = _run_in_tmux(" ".join(cli(build_tree, "boot", "hello", "--no-keep-screen")))
    assert "harness: power-off at" in screen and "EXIT=0" in screen
    assert "Hello from WeensyOS" not in screen
