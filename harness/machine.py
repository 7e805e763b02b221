"""The machine: the PC (harness.pc) with its observers attached, the tracer and, on request, the isolation auditor.

This is the class the API, the CLI, the gdb stub and the pytest plugin use. The board underneath knows nothing
of the observers; here they are handed to it (the tracer as its recorder, hooks.py) and the board's hook points
for returns to user mode are filled in: the tracer finishes system calls there and the auditor checks page
tables. Snapshots live here too, because they also hold the tracer's state.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from .observe.syscalls import SyscallTable
from .observe.trace import Tracer
from .pc.board import PANIC_GRACE_NS, Board, MachineConfig
from .pc.cpu import RAX, RCX, RSP
from .pc.events import Kind
from .pc.loader import find_kernel_in_image
from .pc.panics import PANIC_PREFIXES
from .pc.runloop import POLL_NS, STORM_LIMIT, STORM_WINDOW_NS
from .pc.stop import RESUMABLE, Stop, StopKind

if TYPE_CHECKING:
    from .observe.audit import IsolationAuditor, Violation
    from .pc.snapshot import Snapshot

__all__ = ["Machine", "MachineConfig", "Stop", "StopKind", "RESUMABLE", "find_kernel_in_image", "PANIC_PREFIXES",
           "PANIC_GRACE_NS", "POLL_NS", "STORM_LIMIT", "STORM_WINDOW_NS"]


class Machine(Board):
    """The PC with the tracer recording its events; `enable_tracing()` and `enable_audit()` add the rest."""

    def __init__(self, config: MachineConfig | None = None) -> None:
        self.auditor: IsolationAuditor | None = None
        self.violation: Violation | None = None
        super().__init__(config, Tracer)
        self.tracer: Tracer

    # -- isolation audit ---------------------------------------------------------------------------------------
    def enable_audit(self) -> None:
        """Check every process's page table at every return to user mode; stop at the first violation."""
        from .observe.audit import IsolationAuditor  # imported when used: most runs never audit

        self.auditor = IsolationAuditor(self)
        if self.tracer.kernel is None:
            self.tracer.kernel = self.auditor.kernel  # the return hook reads interrupt frames through it

    # -- full tracing ----------------------------------------------------------------------------------------
    def enable_tracing(self, syscalls: SyscallTable, programs: dict[str, Path] | None = None) -> None:
        """Trace with pids, return values, page-walk explanations, context switches and console output.

        Returns to user mode are seen through one-address code hooks on the kernel's own `iretq` and `sysretq`
        instructions (found in its executable segments), so no per-instruction work is added elsewhere."""
        if self.kernel_image is None:
            raise RuntimeError("boot the machine before enabling tracing")
        self.tracer.enable(syscalls, programs or {}, self.kernel_image.data)
        kernel = self.tracer.kernel
        if self.fast is not None and kernel is not None and kernel.available:
            self.fast.know_kernel(kernel.current_address, kernel.layout.pid if kernel.layout else None)
        if self.fast is not None:
            layout = kernel.layout if kernel is not None else None
            scans = (kernel is not None and layout is not None and layout.size % 4 == 0 and layout.pid % 4 == 0
                     and layout.state is not None and layout.state % 4 == 0  # (KernelView.live_names's own rule)
                     and self.fast.know_process_table(kernel.ptable_address, kernel.nproc, layout.size, layout.pid,
                                                      layout.state, layout.name, layout.name_size))
            self.tracer.use_native(self.fast, scans)
            self.fast.state.memory_calls = self.tracer._memory_calls
        self._sync_tracer_view(screen=True)

    # -- the board's hook points (hooks.py) --------------------------------------------------------------------
    def _record_delivery(self, vector: int, error_code: int | None, rip: int, cr2: int, external: bool,
                         from_user: bool, cr3: int) -> None:
        """A process enters the kernel by an exception or interrupt: the auditor notes its registers first."""
        if from_user and self.auditor is not None:
            self.auditor.entered_from_user(cr3)
        super()._record_delivery(vector, error_code, rip, cr2, external, from_user, cr3)

    def _wants_returns(self) -> bool:
        return self.tracer.full or self.auditor is not None

    def _hook_return_at(self, address: int, size: int, length: int) -> None:
        """The tracer's and the auditor's part of a kernel return, found from the saved CPU state (the Python
        path; the native watch finds the same and calls `_user_return` itself)."""
        if not self.tracer.full and self.auditor is None:
            return
        cpu = self.cpu
        cpu.save()  # one call for CR3, RSP, RCX and RAX
        cr3, regs = cpu.cr3.value, cpu.regs
        if length == 3:  # sysretq: always to user mode, at RCX
            rip = regs[RCX]
        else:
            kernel = self.tracer.kernel
            frame = kernel.read_kernel(cr3, regs[RSP], 16) if kernel is not None else None
            if frame is None:
                return
            rip, cs = struct.unpack("<QQ", frame)
            if cs & 3 != 3:
                return
        self._user_return(rip, regs[RAX], cr3)

    def _user_return(self, rip: int, rax: int, cr3: int, pid: int | None | bool = False) -> None:
        """The CPU returns to user mode at `rip`: the tracer finishes the system call, the auditor checks."""
        if self.tracer.full:
            self.tracer.return_to_user(rip, rax, cr3, pid)
        if self.auditor is not None and self.stop is None:
            violation = self.auditor.check(cr3)
            if violation is not None:
                cause = next((e for e in reversed(self.events.ring) if e.kind in (Kind.SYSCALL, Kind.INTERRUPT,
                                                                                   Kind.EXCEPTION)), None)
                self.violation = violation
                self.violation_cause = cause
                self._request_stop(StopKind.ISOLATION, str(violation))

    def _sync_tracer_view(self, screen: bool = False) -> None:
        """What the native return watch must know of the tracer to tell which returns need Python at once:
        whether a fault waits for its outcome (or the auditor checks), and, after the tracer's view was set
        from elsewhere (`screen`: enabling, a snapshot), which process and screen it last saw."""
        if self.fast is None:
            return
        state = self.fast.state
        tracer = self.tracer
        # With full tracing and nobody watching events as they happen, the native path records context switches
        # too (the process-table scan included): the tracer applies them, in order, at its next call, and a
        # fault's outcome with them, so a waiting fault needs no look at every return.
        defer = tracer.full and tracer.native_scan is not None and not self.events.watched and self.auditor is None
        state.defer_switches = defer
        state.see_every_return = bool(self.auditor is not None or (tracer._pending_fault and not defer))
        if state.raw_consumed == state.raw_total:  # the tracer has applied every record: its open calls are all
            state.memory_pending = tracer.memory_pending_mask() if tracer._pending_syscall else 0
        if screen:
            if tracer.native is not None and len(tracer._screen) == len(state.screen):
                self.fast.saw_screen(tracer._screen)  # the native look compares with what the tracer saw
            else:
                state.screen_valid = 0
            pid = tracer._last_user_pid
            state.last_user_pid = pid if pid is not None else -1
            if tracer.native_scan is not None:
                self.fast.set_live(list(tracer._names))

    # -- snapshots (pc/snapshot.py, imported when used: most runs take none) ----------------------------------
    def snapshot(self) -> Snapshot:
        """The machine's whole state, to `restore()` later (between runs, never during one)."""
        from .pc import snapshot as snapshots

        return snapshots.take(self)

    def restore(self, snapshot: Snapshot) -> None:
        from .pc import snapshot as snapshots

        snapshots.restore(self, snapshot)
        self._refresh_fast_ports()
        self._sync_tracer_view(screen=True)

    def save_snapshot(self, path: Path) -> None:
        from .pc import snapshot as snapshots

        snapshots.save(self.snapshot(), path)

    def load_snapshot(self, path: Path) -> None:
        from .pc import snapshot as snapshots

        self.restore(snapshots.load(path, ram_size=len(self.memory)))
