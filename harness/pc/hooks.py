"""The one interface through which observers see the PC: the board's recorder.

The board (board.py) never imports an observer. It is handed a recorder when it is made (harness.machine hands
it the tracer, harness.observe.trace) and calls it at these hook points, from the Python hooks and from the
native hot paths' batches alike. The recorder turns them into events in `board.events` (events.py), which is
what every other observer (diagnosis, trace formats, stop conditions, the pytest plugin) reads.

Two more hook points are methods the board calls on itself and a subclass may override (see harness.machine):
`_user_return` (the CPU returns to user mode; only while `_wants_returns()` is true) and `_sync_tracer_view`
(tell the native return watch what the observers need to see at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .events import Event


class Recorder(Protocol):
    """What the board reports as it happens. `full`: the recorder wants returns to user mode too."""

    full: bool

    def syscall(self, rip: int, number: int, cr3: int, args: tuple[int, ...], time_ns: int | None = None,
                seq: int | None = None, pid: int | None | bool = False, returned: tuple[int, int] | None = None,
                ) -> None:
        """A system call entered (`time_ns`, `seq`, `pid`, `returned` when recorded earlier natively)."""

    def native_records(self, records: Iterable[tuple[int, ...]]) -> None:
        """A batch of system-call records the native path made (fastpath.RawSyscall's fields, args spread out):
        entries, returns to user mode and complete calls, in order, as `syscall` and `return_to_user` would."""

    def native_chunk(self, data: bytes, count: int, pid: int) -> bool:
        """A batch of `count` complete calls of one process (`pid`, -1: unknown) as the native ring's bytes
        (fastpath.unpack_records reads them): True if the recorder keeps it so, False to have it handed over
        with `native_records`."""

    def delivery(self, vector: int, error_code: int | None, rip: int, cr2: int, external: bool, from_user: bool,
                 cr3: int) -> None:
        """An exception or interrupt was delivered through the guest's IDT."""

    def return_to_user(self, rip: int, rax: int, cr3: int, pid: int | None | bool = False,
                       time_ns: int | None = None, console: bool = True) -> None:
        """The CPU went back to user mode at `rip` with RAX = `rax` (full recording only)."""

    def log_line(self, line: str, rip: int, cr3: int) -> None:
        """The guest wrote a whole line to its log port."""

    def panic(self, message: str, rip: int, cr3: int, backtrace: list[int]) -> None:
        """The guest's log announced a kernel panic."""

    def machine_event(self, text: str) -> None:
        """The machine itself has something to report (a power-off, a fault, an unclaimed port)."""

    def observe_console(self) -> None:
        """Look at the screen now: a change since the last look is console output of the current process."""

    def finish(self) -> None:
        """The machine will not run again: close what never completed."""

    def snapshot_state(self, encode: Callable[[Event], dict[str, Any]]) -> dict[str, Any]:
        """The recorder's own state for a snapshot, JSON-compatible (`encode`: an event as JSON)."""

    def restore_state(self, saved: dict[str, Any], relink: Callable[[dict[str, Any]], Event]) -> None:
        """Take back what `snapshot_state` gave (`relink`: the restored ring's event for a saved one)."""
