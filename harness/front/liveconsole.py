"""The live console: the guest's 80x25 CGA screen in your terminal, and your keyboard as its keyboard.

The screen is drawn in place with its colours (ANSI), redrawn at most `FPS` times a second and only when it
changed; below it a status bar shows the current pid, the virtual time and the run state. Keys are read in
raw mode and typed into the emulated 8042 as scan codes (arrows and F-keys included), so the kernel's own keys
work (`q`, Ctrl-C). Ctrl-] is the harness's escape key: it quits at once. The terminal is restored however the
console ends: normal exit, an exception, or SIGTERM/SIGHUP.

The console draws on the terminal's alternate screen (so that the user's scrollback is not filled with frames),
and when it ends it prints the final screen once more in the normal buffer, as `less -X` or `top` leave their
last page: what the guest printed stays in the terminal, above the harness's summary line (`keep_screen=False`
gives the old behaviour of leaving nothing).

Virtual time is kept from running ahead of wall-clock time (an idle kernel would otherwise race through its
timer ticks), so animations and timeouts look as they would on a real PC.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from types import FrameType
from typing import TextIO

from unicorn.x86_const import UC_X86_REG_CR3

from ..machine import Machine, Stop, StopKind
from ..observe.kernelview import KernelView
from ..pc.keys import terminal_to_scancodes
from .render import row_runs, sgr_for_attribute

ESCAPE_KEY = 0x1D  # Ctrl-]
ESCAPE_NAME = "Ctrl-]"
FPS = 30
SLICE_NS = 5_000_000  # run at most this much virtual time between looks at the keyboard and the screen


class _Terminate(Exception):
    """SIGTERM or SIGHUP: leave through the normal clean-up path."""


@contextlib.contextmanager
def raw_terminal(stdin: TextIO, stdout: TextIO) -> Iterator[None]:
    """Raw input, alternate screen, hidden cursor; everything undone on the way out, whatever happens."""
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminate(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setraw(fd)
        stdout.write("\x1b[?1049h\x1b[?25l\x1b[2J")
        stdout.flush()
        yield
    finally:
        stdout.write("\x1b[0m\x1b[?25h\x1b[?1049l")
        stdout.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class LiveConsole:
    def __init__(self, machine: Machine, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                 keep_screen: bool = True) -> None:
        self.machine = machine
        self.keep_screen = keep_screen
        self.stdin = stdin
        self.stdout = stdout
        self._last_screen: bytes | None = None
        self._last_status = ""
        self.quit_by_user = False
        self.terminated_by: str | None = None  # the signal that ended the console, if any
        image = machine.kernel_image
        self.kernel = KernelView(machine.memory, machine.symbols, image.data if image is not None else None)

    def _status(self, state: str) -> str:
        machine = self.machine
        pid = self.kernel.current_pid(machine.cpu.read_register(UC_X86_REG_CR3)) if self.kernel.available else None
        who = f"pid {pid}" if pid is not None else "pid -"
        text = (f" WeensyOS | {who} | {machine.clock.now_ns() / 1e9:9.3f} s virtual | {state} | "
                f"{ESCAPE_NAME} quits ")
        return text.ljust(80)[:80]

    def draw(self, state: str, force: bool = False) -> None:
        console = self.machine.console
        screen = bytes(self.machine.memory[0xB8000:0xB8000 + 4000])
        status = self._status(state)
        if not force and screen == self._last_screen and status == self._last_status:
            return
        out = ["\x1b[H"]
        cursor = console.cursor() if console.cursor_visible() else None
        cursor_row, cursor_column = divmod(cursor, 80) if cursor is not None and cursor < 2000 else (None, None)
        for row_index, row in enumerate(console.cells()):
            column = cursor_column if row_index == cursor_row else None
            for run in row_runs(row, column):
                style = sgr_for_attribute(run.attr) + ("\x1b[4m" if run.cursor else "")
                out.append(style + run.text)
            out.append("\x1b[0m\r\n")
        out.append("\x1b[0;30;47m" + status + "\x1b[0m")
        self.stdout.write("".join(out))
        self.stdout.flush()
        self._last_screen, self._last_status = screen, status

    def _read_keys(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.stdin], [], [], timeout)
        if not ready:
            return b""
        return os.read(self.stdin.fileno(), 1024)

    def run(self, *, max_time_ns: int | None = None, ticks: int | None = None, until: str | None = None) -> Stop:
        """Run the machine live until it stops, or the user presses the escape key; then leave the final screen
        in the terminal's normal buffer (unless `keep_screen` is off)."""
        with raw_terminal(self.stdin, self.stdout):
            stop = self._run_live(max_time_ns=max_time_ns, ticks=ticks, until=until)
        if self.keep_screen:
            self.leave_screen()
        return stop

    def leave_screen(self) -> None:
        """The guest's screen as coloured text in the normal buffer: rows up to the last one with something on
        it, each ending with a colour reset (text from the CGA glyph table: no control characters)."""
        console = self.machine.console
        rows = console.cells()
        while rows and all(char in (0, 0x20) and not attr & 0x70 for char, attr in rows[-1]):
            rows.pop()
        out = []
        for row in rows:
            while row and row[-1][0] in (0, 0x20) and not row[-1][1] & 0x70:
                row = row[:-1]  # trailing blanks on black: nothing to keep, and no wrap on a narrow terminal
            out.append("".join(sgr_for_attribute(run.attr) + run.text for run in row_runs(row)) + "\x1b[0m\n")
        self.stdout.write("".join(out))
        self.stdout.flush()

    def _run_live(self, *, max_time_ns: int | None, ticks: int | None, until: str | None) -> Stop:
        machine = self.machine
        start_wall = time.monotonic()
        start_virtual = machine.clock.now_ns()
        tick_target = machine.timer_ticks + ticks if ticks is not None else None
        budget_end = start_virtual + max_time_ns if max_time_ns is not None else None
        next_frame = 0.0
        try:
            while True:
                typed = self._read_keys(0)
                if ESCAPE_KEY in typed:
                    self.quit_by_user = True
                    return Stop(StopKind.PAUSED, f"quit with {ESCAPE_NAME}", machine.clock.now_ns(),
                                machine.cpu.rip())
                if typed:
                    machine.type_keys(terminal_to_scancodes(typed))
                # Keep virtual time at or behind wall time.
                ahead = (machine.clock.now_ns() - start_virtual) / 1e9 - (time.monotonic() - start_wall)
                if ahead > 0:
                    typed = self._read_keys(min(ahead, 1 / FPS))
                    if typed:
                        if ESCAPE_KEY in typed:
                            self.quit_by_user = True
                            return Stop(StopKind.PAUSED, f"quit with {ESCAPE_NAME}", machine.clock.now_ns(),
                                        machine.cpu.rip())
                        machine.type_keys(terminal_to_scancodes(typed))
                    continue
                remaining = None if budget_end is None else budget_end - machine.clock.now_ns()
                remaining_ticks = None if tick_target is None else tick_target - machine.timer_ticks
                stop = machine.run(for_ns=SLICE_NS, max_time_ns=remaining, ticks=remaining_ticks, until=until)
                now = time.monotonic()
                if now >= next_frame:
                    self.draw("running")
                    next_frame = now + 1 / FPS
                if stop.kind is not StopKind.PAUSED:
                    return self._finished(stop)
        except _Terminate as signal_name:
            self.terminated_by = str(signal_name)
            return Stop(StopKind.PAUSED, f"terminated by {signal_name}", machine.clock.now_ns(),
                        machine.cpu.rip())

    def _finished(self, stop: Stop) -> Stop:
        """Show the final screen; for a failure, keep it up until the user has read it and pressed a key."""
        self.draw(stop.kind.value if stop.ok else f"{stop.kind.value}: press a key", force=True)
        if not stop.ok:
            while True:
                typed = self._read_keys(None)  # type: ignore[arg-type]
                if typed:
                    break
        return stop
