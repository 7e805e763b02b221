"""The tracer: turns the machine's hooks into the event stream, with pids, return values and explanations.

Always on (cheap): one event per system call entry, exception, interrupt, log line and machine event, kept in
the machine's ring for diagnoses. With full tracing (`Machine.enable_tracing`), every event also carries the pid
of the process the kernel calls `current` (read through the kernel's ELF symbols and DWARF), system calls get
their decoded arguments, return value and virtual duration (seen when the CPU next returns to user mode in that
process, through hooks on the kernel's own `iretq`/`sysretq` instructions), page faults get their page walk and
what the kernel did next, and context switches, process creation and exit and console output become events.
The kernel is never changed.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterable
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn.x86_const import UC_X86_REG_CR3

from ..pc.events import NO_DETAIL, Event, Kind
from ..pc.fastpath import (
    LOOK_UNKNOWN,
    RECORD_COMPLETE,
    RECORD_CREATED,
    RECORD_EXITED,
    RECORD_RETURN,
    RECORD_SWITCH,
    unpack_records,
)
from ..pc.symbols import SymbolTable
from .pagefault import FaultExplainer
from .syscalls import SyscallTable
from .syscallview import SyscallView, signed
from .traceconsole import BLANK_BYTES, changed_rows_with_text, made_console, rows_with_text
from .traceprocs import ProcessChange, ProcessTable, process_name

if TYPE_CHECKING:
    from ..pc.board import Board
    from ..pc.fastpath import FastPath
    from .kernelview import KernelView

CONSOLE_BYTES = 80 * 25 * 2
CONSOLE_ADDRESS = 0xB8000
_RECORD_KIND, _RECORD_PID = itemgetter(0), itemgetter(10)  # of a native record (fastpath.RawSyscall's fields)
_NAME_WORDS = struct.Struct("<4Q")  # a RECORD_CREATED's args: the process name's bytes
_KERNEL = object()  # `describe`'s key for the kernel's own symbols
DESCRIPTIONS_KEPT = 4096  # addresses `describe` remembers (then forgets all at once)


def _made_event(record: tuple[Any, ...]) -> Event:
    """The event of a record `Tracer._record` deferred: (time_ns, kind, rip, cr3, text, seq, pid, user, detail)."""
    time_ns, kind, rip, cr3, text, seq, pid, user, detail = record
    return Event(time_ns, kind, rip, cr3, -1, None, None, (), text, seq, pid, user, None, None, False, detail)


class Tracer(SyscallView, ProcessTable):
    def __init__(self, machine: Board) -> None:
        self.machine = machine
        self.events = machine.events
        self.full = False
        self.kernel: KernelView | None = None
        self.syscalls = SyscallTable([])
        self.programs: dict[str, Path] = {}
        self._program_symbols: dict[str, SymbolTable] = {}
        self._pending_syscall: dict[int | None, Event] = {}
        self._pending_fault: dict[int | None, Event] = {}
        self._names: dict[int, str | None] = {}  # live processes: pid -> name
        self._exit_status: dict[int | None, int | None] = {}  # exit called, process not yet gone: pid -> status
        self.seen_pids: set[int] = set()  # every process that ever appeared in the kernel's table
        self._last_user_pid: int | None = None
        self._screen = b""
        self._make_complete_call = self._complete_call  # (bound once: a batch's records share it)
        self._make_complete_calls = self._complete_calls
        self._faults = FaultExplainer(machine.memory)
        self._console = machine.memory[CONSOLE_ADDRESS:CONSOLE_ADDRESS + CONSOLE_BYTES]  # the screen, live
        self.native: FastPath | None = None  # the machine's native paths, when it has them (`use_native`)
        self.native_scan: FastPath | None = None  # the same, when they can scan this kernel's process table
        self._native_look: Callable[[], int] | None = None  # the native look at the screen
        self._native_pid: Callable[[int], int | None] | None = None  # the native read of current->pid
        self._memory_calls = 0
        self._descriptions: dict[tuple[object, int], str] = {}  # (program or _KERNEL, address) -> `describe`

    def enable(self, syscalls: SyscallTable, programs: dict[str, Path], kernel_path: Path | bytes | None) -> None:
        self.full = True
        self.syscalls = syscalls
        self.programs = programs
        self._descriptions.clear()  # (named with the programs given before)
        from .kernelview import KernelView  # DWARF reading: imported when tracing starts

        self.kernel = KernelView(self.machine.memory, self.machine.symbols, kernel_path)
        self._screen = bytes(self._console)
        # bit n: tracing call n (below 64) reads the caller's memory (what the native path is told too)
        self._memory_calls = sum(1 << number for number in range(64) if self.reads_user_memory(number))

    def use_native(self, native: FastPath, scans: bool) -> None:
        """Look at the screen through the native path (which then keeps what the tracer saw) and, if `scans`,
        at the process table too (it keeps the list of live processes, which `_names` follows)."""
        self.native = native
        self.native_scan = native if scans else None
        self._faults.native = native
        if self.kernel is not None and self.kernel.available:  # (else the native path knows no `current`)
            self._native_pid = native.current_pid
        self._native_look = native.look_at_screen(BLANK_BYTES)

    # -- helpers -------------------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Apply what the native path recorded and the tracer has not taken yet (before reading its state)."""
        catch_up = self.events.before_add
        if catch_up is not None:
            catch_up()

    def _record(self, time_ns: int, kind: Kind, rip: int = 0, cr3: int = 0, text: str = "", pid: int | None = None,
                user: bool = False, detail: Any = NO_DETAIL, seq: int | None = None, catch_up: bool = True) -> None:
        """A finished event (numbered now, or already: `seq`). With full tracing and nobody watching events as
        they happen, it is kept as a record and made when the ring is read (EventLog.defer_one): most of a long
        run's events leave the ring unread; then (`catch_up` False) the native path's records may wait too, for
        an event that needs no tracer state (numbered after them all the same)."""
        events = self.events
        if self.full and not events.sinks and not events.observers:  # (EventLog.watched, inline: a hot path)
            if seq is None:
                seq = events.take_seq(catch_up)
            events.defer_one(kind, (time_ns, kind, rip, cr3, text, seq, pid, user, detail), _made_event)
            return
        events.add(Event(time_ns, kind, rip, cr3, text=text, pid=pid, user=user, detail=detail), seq=seq)

    def _now(self) -> int:
        return self.machine.clock.now_ns()

    def _pid(self, cr3: int) -> int | None:
        read = self._native_pid
        if read is not None:
            return read(cr3)  # (the same read, as the native path makes it at a call's entry)
        return self.kernel.current_pid(cr3) if self.kernel is not None else None

    def symbols_for(self, pid: int | None, address: int, user: bool) -> SymbolTable:
        """The kernel's symbols, or for a user address those of the program that process runs."""
        if not user:
            return self.machine.symbols
        name = self._names.get(pid) if pid is not None else None
        if name is None or name not in self.programs:
            return SymbolTable([])
        if name not in self._program_symbols:
            self._program_symbols[name] = SymbolTable.from_elf(self.programs[name])
        return self._program_symbols[name]

    def describe(self, pid: int | None, address: int, user: bool) -> str:
        """`address` named by the symbols of the kernel or of the program `pid` runs; remembered by (program,
        address): a program that faults in a loop faults at the same few instructions."""
        program = (self._names.get(pid) if pid is not None else None) if user else _KERNEL
        key = (program, address)
        text = self._descriptions.get(key)
        if text is None:
            if len(self._descriptions) >= DESCRIPTIONS_KEPT:
                self._descriptions.clear()
            text = self._descriptions[key] = self.symbols_for(pid, address, user).describe(address)
        return text

    # -- system calls ----------------------------------------------------------------------------------------
    def syscall(self, rip: int, number: int, cr3: int, args: tuple[int, ...], time_ns: int | None = None,
                seq: int | None = None, pid: int | None | bool = False, returned: tuple[int, int] | None = None,
                ) -> None:
        """A system call entered. `time_ns`, `seq` and `pid` come with calls recorded when they happened and
        taken later (the native fast path's batches); pid False means: read it now. `returned` (RAX, time):
        the call also came back at once to the same process with nothing else to see at its return (the native
        path saw that): finish it now."""
        # Positional: this runs once per system call when tracing (time, kind, rip, cr3, number, error_code,
        # address, args, text, seq, pid, user).
        event = Event(self._now() if time_ns is None else time_ns, Kind.SYSCALL, rip, cr3, number, None, None,
                      args, "", -1, None, True)
        if not self.full:
            self.events.add(event, seq=seq)
            return
        if seq is None:  # seen as it happens: what the process wrote on the screen before this call comes first
            self.observe_console()
        event.pid = self._pid(cr3) if pid is False else pid  # type: ignore[assignment]
        event.detail = self._syscall_detail(number, args, cr3)
        previous = self._pending_syscall.pop(event.pid, None)
        if previous is not None:  # it never returned (should not happen): close it as unfinished
            self.events.finish(previous)
        if returned is not None:
            event.ret, event.end_ns = returned
            self.events.add(event, seq=seq)
            return
        self._pending_syscall[event.pid] = self.events.add(event, finished=False, seq=seq)

    def native_records(self, records: Iterable[tuple[int, ...]]) -> None:
        """A batch the native path recorded (fastpath.RawSyscall's fields in order, args spread out): system-call
        entries, returns to user mode that needed nothing at once, calls that came straight back, and context
        switches (each after the process-table changes found there), applied in order as they would have been
        seen at once.

        A call that came straight back (RECORD_COMPLETE) is finished and, the native path made sure, shows no
        memory of the caller's: with full tracing and nobody watching events as they happen (no sink, no
        observer), it is kept as its record (EventLog.defer) and decoded only when somebody reads the ring,
        into the very event `syscall` would have made now. Most system calls of a traced run are such calls."""
        syscall, returned = self.syscall, self.return_to_user
        pending = self._pending_syscall
        events = self.events
        defer = self.full and not events.sinks and not events.observers  # (EventLog.watched)
        records = list(records)
        if defer and set(map(_RECORD_KIND, records)) == {RECORD_COMPLETE}:  # the usual batch, in C-level passes
            pids = set(map(_RECORD_PID, records))  # none may have a call open (-1: unknown, `syscall`'s None)
            if pending.keys().isdisjoint(pids) and (-1 not in pids or None not in pending):
                self.events.defer(Kind.SYSCALL, records, self._make_complete_call)
                return
        quiet: list[tuple[int, ...]] = []
        changes: list[ProcessChange] = []  # a recorded switch's process-table changes, which come before it
        for record in records:
            kind, pid = record[0], record[10]
            known_pid = pid if pid >= 0 else None  # -1: the native path could not read it
            if kind == RECORD_COMPLETE and defer and known_pid not in pending:
                quiet.append(record)  # (a call still open for that pid is closed by `syscall`)
                continue
            if quiet:  # deferred in seq order: before anything this record makes
                self.events.defer(Kind.SYSCALL, quiet, self._make_complete_call)
                quiet = []
            if kind == RECORD_COMPLETE:
                syscall(record[3], record[5], record[4], record[6:10], record[2], record[1], known_pid,
                        (record[11], record[12]))
            elif kind == RECORD_RETURN:  # rip: where the process resumes; number: RAX
                returned(record[3], record[5], record[4], known_pid, record[2], console=False)
            elif kind == RECORD_CREATED:
                changes.append((pid, process_name(_NAME_WORDS.pack(*record[6:10])), record[1]))
            elif kind == RECORD_EXITED:
                changes.append((pid, False, record[1]))
            elif kind == RECORD_SWITCH:  # as a return seen at once would apply it, with the table as it was
                returned(record[3], record[5], record[4], known_pid, record[2], console=False,
                         switch=(record[1], changes))
                changes = []
            else:
                syscall(record[3], record[5], record[4], record[6:10], record[2], record[1], known_pid)
        self.events.defer(Kind.SYSCALL, quiet, self._make_complete_call)

    def native_chunk(self, data: bytes, count: int, pid: int) -> bool:
        """A batch of complete calls of one process, as the native ring's bytes: with full tracing, nobody
        watching and no call of that process open, kept as it is (EventLog.defer_chunk) and made into events
        only when the ring is read, as `native_records` would defer them one by one."""
        events = self.events
        if not self.full or events.sinks or events.observers or (pid if pid >= 0 else None) in self._pending_syscall:
            return False
        events.defer_chunk(Kind.SYSCALL, count, data, self._make_complete_calls)
        return True

    def _complete_calls(self, data: bytes) -> list[Event]:
        return list(map(self._complete_call, unpack_records(data)))

    def _complete_call(self, record: tuple[int, ...]) -> Event:
        """The event of a RECORD_COMPLETE record, as `syscall` makes it (see `native_records`)."""
        _kind, seq, time_ns, rip, cr3, number, a0, a1, a2, a3, pid, ret, end_ns = record
        args = (a0, a1, a2, a3)
        return Event(time_ns, Kind.SYSCALL, rip, cr3, number, None, None, args, "", seq, pid if pid >= 0 else None,
                     True, ret, end_ns, False, self._syscall_detail(number, args, cr3))

    def memory_pending_mask(self) -> int:
        """Bit p: process p (below 64) has a call open whose trace reads its memory at the return (or whose
        number is beyond the native path's table of such calls): its return must be seen at once."""
        memory_calls = self._memory_calls
        mask = 0
        for pid, call in self._pending_syscall.items():
            number = call.number
            if pid is not None and 0 <= pid < 64 and (number >= 64 or memory_calls >> number & 1):
                mask |= 1 << pid
        return mask

    # -- exceptions and interrupts -------------------------------------------------------------------------------
    def delivery(self, vector: int, error_code: int | None, rip: int, cr2: int, external: bool, from_user: bool,
                 cr3: int) -> None:
        kind = Kind.INTERRUPT if external else Kind.EXCEPTION
        event = Event(self._now(), kind, rip, cr3, vector, error_code, cr2 if vector == 14 and not external else None,
                      user=from_user)
        if not self.full:
            self.events.add(event)
            return
        self._catch_up()  # (the fault's explanation names the process's program: its switch comes first)
        self.observe_console()
        event.pid = self._pid(cr3)
        if event.is_page_fault:
            event.detail = self.explain_page_fault(event)
            self._pending_fault[event.pid] = self.events.add(event, finished=False)
            return
        self.events.add(event)

    def explain_page_fault(self, event: Event) -> dict[str, Any]:
        """The page walk of a fault, which level decided it, the instruction and where it is (pagefault.py)."""
        return self._faults.explain(event.cr3, event.rip, event.address or 0, event.error_code or 0,
                                    self.describe(event.pid, event.rip, event.user))

    # -- returns to user mode (full tracing) -----------------------------------------------------------------------
    def return_to_user(self, rip: int, rax: int, cr3: int, pid: int | None | bool = False,
                       time_ns: int | None = None, console: bool = True,
                       switch: tuple[int, list[ProcessChange]] | None = None) -> None:
        """The CPU went back to user mode at `rip` (RAX = `rax`): finishes that process's system call or fault.
        `pid` and `time_ns` when the native path already read them (False: read the pid now); `console` False
        for a return it recorded after checking that the console had not changed; `switch` for a context switch
        it recorded: the switch event's seq and the process-table changes it found there (numbered too)."""
        if pid is False:
            pid = self._pid(cr3)
        now = self._now() if time_ns is None else time_ns
        if console:  # written by the process that ran last, or by the kernel on its behalf, before this return
            self.observe_console()
        if pid != self._last_user_pid:
            previous = self._last_user_pid
            waiting = self._pending_syscall.get(previous)
            if waiting is not None:
                if self._never_returns(waiting):  # exit: resolved as `= ?` once, never "unfinished"
                    del self._pending_syscall[previous]
                    self._exit_status[previous] = signed(waiting.args[0]) if waiting.args else None
                    self.events.finish(waiting)
                else:
                    waiting.blocked = True
                    self.events.release_unfinished(waiting)
            self._scan_processes(cr3, now, switch[1] if switch is not None else None)
            self._record(now, Kind.SWITCH, rip, cr3, pid=pid, user=True, detail={"from": previous, "to": pid},
                         seq=switch[0] if switch is not None else None)
            self._last_user_pid = pid
        call = self._pending_syscall.pop(pid, None)
        if call is not None:
            call.ret = rax
            call.end_ns = now
            self._output_buffer(call, cr3)
            self.events.finish(call)
        fault = self._pending_fault.pop(pid, None)
        if fault is not None:
            if pid is None and not (self.kernel is not None and self.kernel.available):
                fault.detail["outcome"] = (f"the CPU next returned to user mode at {rip:#x} (in which process is "
                                           f"unknown without the kernel's symbols)")
            elif rip == fault.rip:
                fault.detail["outcome"] = "the kernel fixed the mapping and the instruction was retried"
            else:
                fault.detail["outcome"] = f"the process resumed at {self.describe(pid, rip, True)}"
            self.events.finish(fault)

    def _never_returns(self, call: Event) -> bool:
        return self.syscalls.name(call.number) == "exit"

    def observe_console(self) -> None:
        """Record what changed on the screen since the last look, as one console event of the rows that now
        show text (a row that was cleared is not an event).

        User processes write the CGA memory directly, so no instruction tells when; the tracer looks before
        every event it records live (system call entry, interrupt, exception, log line, return to user mode),
        and the native path asks for a look at a system call's entry when the screen changed. A console event
        therefore carries the pid of the process that ran when the text was written and the time of the first
        kernel entry after it, and comes before that entry in the trace."""
        if not self.full:
            return
        look = self._native_look
        seen = look() if look is not None else LOOK_UNKNOWN  # compared natively with what was seen last
        if not seen:
            return
        self._catch_up()  # what the native path recorded comes first (a switch sets the pid used here)
        if look is not None and not seen & LOOK_UNKNOWN:
            self._screen = screen = bytes(self._console)
            rows = rows_with_text(seen)
            if rows:
                self._console_event(screen, rows)
            return
        screen = bytes(self._console)
        if screen == self._screen:
            return
        old, self._screen = self._screen, screen
        if self.native is not None:
            self.native.saw_screen(screen)  # its quiet returns and switches compare with what was seen here
        rows = changed_rows_with_text(screen, old)
        if rows:
            self._console_event(screen, rows)

    def _console_event(self, screen: bytes, rows: list[int]) -> None:
        """The console event of `rows` of `screen`: its text is made when the event is (deferred, usually)."""
        events = self.events
        if not events.sinks and not events.observers:
            events.defer_one(Kind.CONSOLE, (self._now(), events.take_seq(), self._last_user_pid, screen, rows),
                             made_console)
            return
        events.add(made_console((self._now(), -1, self._last_user_pid, screen, rows)))

    # -- snapshots (pc/snapshot.py keeps this state with the machine's) ----------------------------------------
    def snapshot_state(self, encode: Callable[[Event], dict[str, Any]]) -> dict[str, Any]:
        """What the tracer waits for and has seen, JSON-compatible (`encode` turns an event into JSON)."""
        return {"full": self.full,
                "pending_syscall": [[pid, encode(e)] for pid, e in self._pending_syscall.items()],
                "pending_fault": [[pid, encode(e)] for pid, e in self._pending_fault.items()],
                "names": [[pid, name] for pid, name in self._names.items()],
                "last_user_pid": self._last_user_pid,
                "exit_status": [[pid, status] for pid, status in self._exit_status.items()],
                "screen": base64.b64encode(self._screen).decode()}

    def restore_state(self, saved: dict[str, Any], relink: Callable[[dict[str, Any]], Event]) -> None:
        """Take back `snapshot_state()`'s state if both the snapshot and this tracer trace fully (`relink`: the
        restored ring's event for a saved one, so a pending call is the very event in the ring)."""
        if not (saved["full"] and self.full):
            return
        self._pending_syscall = {pid: relink(e) for pid, e in saved["pending_syscall"]}
        self._pending_fault = {pid: relink(e) for pid, e in saved["pending_fault"]}
        self._names = {pid: name for pid, name in saved["names"]}
        self._last_user_pid = saved["last_user_pid"]
        self._exit_status = {pid: status for pid, status in saved.get("exit_status", [])}
        self._screen = base64.b64decode(saved["screen"])

    # -- the rest -------------------------------------------------------------------------------------------------
    def log_line(self, line: str, rip: int, cr3: int) -> None:
        self.observe_console()
        if self.full:  # (no tracer state is read: what the native path recorded before may wait)
            self._record(self._now(), Kind.LOG, rip, cr3, text=line, pid=self._pid(cr3), catch_up=False)
            return
        self.events.add(Event(self._now(), Kind.LOG, rip, cr3, text=line))

    def panic(self, message: str, rip: int, cr3: int, backtrace: list[int]) -> None:
        self._catch_up()
        self.observe_console()
        for fault in self._pending_fault.values():
            fault.detail["outcome"] = "the kernel panicked"
            self.events.finish(fault)
        self._pending_fault.clear()
        self.events.add(Event(self._now(), Kind.PANIC, rip, cr3, text=message,
                              detail={"backtrace": [self.machine.symbols.describe(a) for a in backtrace]}))

    def machine_event(self, text: str) -> None:
        self.observe_console()
        self.events.add(Event(self._now(), Kind.MACHINE, text=text))

    def finish(self) -> None:
        """The run ended: record the last screen and process changes, and close what never completed."""
        if not self.full:
            return
        self._catch_up()
        self.observe_console()
        cr3 = self.machine.cpu.read_register(UC_X86_REG_CR3)
        self._scan_processes(cr3)
        for pending in (self._pending_syscall, self._pending_fault):
            for event in pending.values():
                if event.is_page_fault:
                    event.detail.setdefault("outcome", "the run ended before the process resumed")
                self.events.finish(event, self._now())
            pending.clear()
