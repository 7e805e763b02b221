"""The hot paths' glue: each hot path in its Python version and its native one (fastpath.py), side by side.

The hot paths are system-call entry, port I/O (the log port and the keyboard status answered natively), the
interrupt-window and return-to-user watches on the kernel's `iretq`/`sysretq`/`sti`/`popfq`, and the batches of
system calls recorded natively. `_install_hot_paths()` chooses one version per machine: with
`MachineConfig(fast_paths=False)` the Python hooks below do the same work event for event, which is what the
equality tests in tests/test_fastpath.py compare. A mixin of the board (board.py).
"""

from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, Uc
from unicorn import x86_const as X

from .cpu import OFF_OLD_EXCEPTION
from .fastpath import (
    WANT_BATCH,
    WANT_EACH,
    WANT_RAW,
    WATCH_IF,
    WATCH_RETURN,
    Callbacks,
    FastPath,
    RawSyscall,
    UserReturn,
)

CHUNK_WORTH = 64  # complete calls of one process side by side worth keeping as the ring's bytes


class HotPaths:
    """Python hooks and native callbacks for the same work; `fast` is None when the Python versions run.

    Both versions feed the same board methods (`cpu.hook_syscall`, `bus`, `_record_syscall`, the recorder's
    `syscall`/`return_to_user`, `_user_return`), so a run is event for event the same either way."""

    def _install_hot_paths(self) -> None:
        """The native paths if the machine can have them (and the config wants them), else the Python hooks."""
        uc, config = self.uc, self.config
        self.fast: FastPath | None = None
        if config.fast_paths:
            self.fast = FastPath.create(uc, self.clock, self.parallel.state, Callbacks(
                slow_syscall=lambda: self.cpu.hook_syscall(uc, None), notify_syscall=self._fast_syscall,
                log_bytes=self.log.write, slow_in=self._fast_slow_in, slow_out=self._fast_slow_out,
                notify_return=self._fast_return), ctypes.addressof(self._ram_anchor), config.ram_size)
        self._pulling = False
        if self.fast is not None:
            self.events.connect_raw(self.fast)
            self.events.before_add = self._pull_syscalls
            self._refresh_fast_ports()
            self.cpu.live_old_exception = ctypes.c_int32.from_address(self.fast.state.env + OFF_OLD_EXCEPTION)
        else:
            uc.hook_add(UC_HOOK_INSN, self.cpu.hook_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
            uc.hook_add(UC_HOOK_INSN, self._hook_in, None, 1, 0, X.UC_X86_INS_IN)
            uc.hook_add(UC_HOOK_INSN, self._hook_out, None, 1, 0, X.UC_X86_INS_OUT)

    # -- which events Python must see, and what the native paths hold when the CPU stops --------------------------
    def _watching(self) -> None:
        """Tell the native paths which events Python must see as they happen (before each slice)."""
        fast = self.fast
        if fast is None:
            return
        state = fast.state
        if self._until is not None or self.events.observers:
            want = WANT_EACH  # stop conditions look at every system call as it happens
        elif self.tracer.full or self.events.sinks:
            want = WANT_BATCH
        else:
            want = WANT_RAW
        if want != state.want_syscalls:
            self.events.settle()  # what the old mode recorded first, in its own way
            fast.take(state.raw_consumed, state.raw_total)
            self.events.raw_taken(state.raw_total)
            state.want_syscalls = want
        state.want_returns = self._wants_returns()
        self._sync_tracer_view()

    def _after_native_run(self) -> None:
        """When the CPU stops: what the native paths still hold goes to Python (a log line not finished yet,
        recorded system calls), and a stop they made on purpose is known."""
        fast = self.fast
        if fast is None:
            return
        fast.flush_log()
        self._pull_syscalls()
        self._slice_interrupted |= bool(fast.state.interrupted)

    def _refresh_fast_ports(self) -> None:
        """Port values the native path answers from a copy: copy them again after the devices changed."""
        if self.fast is not None:
            self.fast.state.kbd_status = self.keyboard.status()

    @property
    def syscall_count(self) -> int:
        """System calls entered since power-on (by either path)."""
        return self.cpu.syscalls + (self.fast.state.syscalls if self.fast is not None else 0)

    @property
    def _irq_waiting(self) -> bool:
        """An interrupt is pending while IF=0: stop as soon as the kernel re-enables them."""
        return bool(self.fast.state.irq_waiting) if self.fast is not None else self._irq_waiting_python

    @_irq_waiting.setter
    def _irq_waiting(self, value: bool) -> None:
        if self.fast is not None:
            self.fast.state.irq_waiting = value
        else:
            self._irq_waiting_python = value

    # -- system-call entry: Python Cpu.hook_syscall (cpu.py) | native, reported here ------------------------------
    def _fast_syscall(self, record: RawSyscall) -> None:
        if self.fast.state.want_syscalls == WANT_BATCH:  # type: ignore[union-attr]
            self._pull_syscalls()  # the ring is half full, or the screen changed before this entry: take it
            self.tracer.observe_console()
            return
        self._record_syscall(record.rip, record.number, record.cr3, tuple(record.args), record.time_ns)

    def _pull_syscalls(self) -> None:
        """WANT_BATCH: turn the system calls the native path recorded since Python last ran into events, before
        anything newer happens in Python (EventLog calls this before each add)."""
        fast = self.fast
        if fast is None or fast.state.want_syscalls != WANT_BATCH or self._pulling:
            return
        state = fast.state
        if state.raw_consumed == state.raw_total:
            return
        self._pulling = True
        events = self.events
        events.before_add = None  # the events added below are the ones it would pull
        try:
            start, stop = state.raw_consumed, state.raw_total
            first, end, pid = fast.take(start, stop)
            events.raw_taken(stop)
            tracer = self.tracer
            if end - first < CHUNK_WORTH:
                tracer.native_records(fast.unpack(start, stop))
                return
            # The usual batch: a process making calls that come straight back, between the return of a call
            # taken before and the entry of one not back yet. The run is kept as the ring's bytes if the tracer
            # can (no record made into a tuple), the rest handed over record by record, in order.
            tracer.native_records(fast.unpack(start, first))
            if not tracer.native_chunk(fast.raw_bytes(first, end), end - first, pid):
                tracer.native_records(fast.unpack(first, end))
            tracer.native_records(fast.unpack(end, stop))
        finally:
            events.before_add = self._pull_syscalls
            self._pulling = False

    # -- port I/O: Python hooks | the native path's calls for ports it does not answer ----------------------------
    def _hook_in(self, uc: Uc, port: int, size: int, user_data: object) -> int:
        if self.fast is None:  # the native hook charged it already (vclock_charge)
            self.clock.charge(self.clock.costs.ns_per_port_io)
        if not self.cpu.io_permitted(port, size):
            self._refuse_io()
            return self.cpu.read_register(X.UC_X86_REG_RAX) & ((1 << (8 * size)) - 1)
        return self.bus.io_read(port, size)

    def _hook_out(self, uc: Uc, port: int, size: int, value: int, user_data: object) -> None:
        if self.fast is None:  # the native hook charged it already (vclock_charge)
            self.clock.charge(self.clock.costs.ns_per_port_io)
        if not self.cpu.io_permitted(port, size):
            self._refuse_io()
            return
        self.bus.io_write(port, size, value)

    def _refuse_io(self) -> None:
        """Unicorn skips the I/O permission check: raise #GP ourselves once the slice has stopped."""
        self._pending_gp = self.cpu.rip()  # the I/O instruction itself
        self._slice_interrupted = True
        self.uc.emu_stop()

    def _fast_slow_in(self, port: int, size: int) -> int:
        self.fast.flush_log()  # type: ignore[union-attr]
        value = self._hook_in(self.uc, port, size, None)
        self._refresh_fast_ports()
        return value

    def _fast_slow_out(self, port: int, size: int, value: int) -> None:
        self.fast.flush_log()  # type: ignore[union-attr]
        self._hook_out(self.uc, port, size, value, None)
        self._refresh_fast_ports()

    # -- the watches on iretq/sysretq/sti/popfq: Python code hooks | native watch ---------------------------------
    def _install_interrupt_window_hooks(self) -> None:
        """Watch the kernel's instructions that turn interrupts back on: `iretq`/`sysretq` (also the tracer's
        view of returns to user mode), `sti` and `popfq`. An interrupt that came due while IF was 0 is then
        delivered right after the instruction that set IF, as the hardware does, instead of at the next
        timer deadline. Each candidate byte pattern gets a one-address hook that checks the decoded length."""
        returns = self._kernel_code_matches((b"\x48\xcf", b"\x48\x0f\x07"))
        enables = self._kernel_code_matches((b"\xfb", b"\x9d"))
        if self.fast is not None:
            self.fast.watch([(address, length, WATCH_RETURN) for address, length in returns]
                            + [(address, length, WATCH_IF) for address, length in enables])
            return
        for address, length in returns:
            self.uc.hook_add(UC_HOOK_CODE, self._hook_return, length, address, address)
        for address, length in enables:
            self.uc.hook_add(UC_HOOK_CODE, self._hook_interrupt_window, length, address, address)

    def _hook_interrupt_window(self, uc: Uc, address: int, size: int, length: object) -> None:
        if self._irq_waiting and size == length:
            self._stop_after_this_block()

    def _hook_return(self, uc: Uc, address: int, size: int, length: object) -> None:
        """At a kernel `iretq`/`sysretq`: end the slice if an interrupt waits for IF=1; if it goes back to user
        mode and tracing is on, tell the tracer (RAX is the result)."""
        if size != length:
            return  # the byte pattern was inside another instruction
        if self._irq_waiting:
            self._stop_after_this_block()  # the iretq ends its block: the CPU stops in the code it returns to
        self._hook_return_at(address, size, length)  # type: ignore[arg-type]

    def _stop_after_this_block(self) -> None:
        """Stop once the current instruction has run: at the next translation block (a code hook's own
        emu_stop would stop before the instruction, which would then never run)."""
        self._slice_interrupted = True
        self.clock.stop_at_next_block()

    def _fast_return(self, record: UserReturn) -> None:
        self._pull_syscalls()
        self._user_return(record.rip, record.rax, record.cr3, record.pid if record.pid >= 0 else None)
        self._sync_tracer_view()
