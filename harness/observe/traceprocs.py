"""The kernel's process table as the tracer follows it: process creation and exit events for what changed since
the last look (at every context switch, and at the end), with the exit status of the process's last call or the
page fault it was killed for. A mixin of the tracer (trace.py), which has the events and the waiting calls and
faults. The table is read by the native path when the machine has one (fastpath.c's `fastpath_scan`, which also
finds the changes at the switches it records), else here through KernelView.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pc.events import Event, Kind
from .syscallview import signed

if TYPE_CHECKING:
    from ..pc.events import EventLog
    from ..pc.fastpath import FastPath
    from .kernelview import KernelView

# A change of the process table: (pid, name, seq): name False for a process that left (a new one's name may be
# None: the kernel keeps none); seq: its event's, when the native path numbered it (else None).
ProcessChange = tuple[int, str | None | bool, int | None]


def process_name(raw: bytes) -> str | None:
    """A process name as the kernel stores it (NUL-terminated), as KernelView.live_names reads it."""
    return raw.split(b"\0")[0].decode("latin-1") or None


class ProcessTable:
    """The tracer's view of the process table (see the module's docstring)."""

    kernel: KernelView | None
    native_scan: FastPath | None
    events: EventLog
    _names: dict[int, str | None]
    seen_pids: set[int]
    _pending_syscall: dict[int | None, Event]
    _pending_fault: dict[int | None, Event]
    _exit_status: dict[int | None, int | None]

    if TYPE_CHECKING:  # the tracer's
        def _now(self) -> int: ...
        def _never_returns(self, call: Event) -> bool: ...
        def _record(self, time_ns: int, kind: Kind, rip: int = 0, cr3: int = 0, text: str = "",
                    pid: int | None = None, user: bool = False, detail: Any = ..., seq: int | None = None) -> None: ...

    def _scan_processes(self, cr3: int, now: int | None = None, recorded: list[ProcessChange] | None = None,
                        ) -> None:
        """Process creation and exit events for what changed in the kernel's process table since the last look
        (at every context switch, and at the end). `recorded`: the changes the native path found at a switch
        it recorded (with their events' seqs), at `now`; else the table is looked at now, by the native scan
        when the machine has it (it keeps the list of live processes: `_names` follows it), else here."""
        if self.kernel is None:
            return
        if recorded is not None:
            changes = recorded
        elif self.native_scan is not None:
            changes = [(pid, process_name(name) if created else False, None)
                       for pid, created, name in self.native_scan.scan(cr3)]
        else:
            changes = self._table_changes(cr3)
        if not changes:
            return
        if now is None:
            now = self._now()
        for pid, name, seq in changes:
            if name is not False:
                self._names[pid] = name
                self.seen_pids.add(pid)
                self._record(now, Kind.PROCESS, pid=pid, text=f"created {name or ''}".strip(),
                             detail={"event": "created", "name": name}, seq=seq)
                continue
            name = self._names.pop(pid)
            call = self._pending_syscall.pop(pid, None)
            status = self._exit_status.pop(pid, None)
            if call is not None:
                if self._never_returns(call):
                    status = signed(call.args[0]) if call.args else None
                self.events.finish(call, now)
            fault = self._pending_fault.pop(pid, None)
            text = "exited" + (f" with {status}" if status is not None else "")
            if fault is not None:
                fault.detail["outcome"] = "the kernel killed the process"
                self.events.finish(fault)
                text = "killed after a page fault"
            self._record(now, Kind.PROCESS, pid=pid, text=text,
                         detail={"event": "exited", "name": name, "status": status}, seq=seq)

    def _table_changes(self, cr3: int) -> list[ProcessChange]:
        """The changes since the last look, read here (the reference for the native scan): new processes in
        table order, then gone ones in the order they appeared."""
        assert self.kernel is not None
        live = self.kernel.live_names(cr3)
        if live.keys() == self._names.keys():
            return []  # the same processes as at the last look
        created: list[ProcessChange] = [(pid, name, None) for pid, name in live.items() if pid not in self._names]
        return created + [(pid, False, None) for pid in self._names if pid not in live]
