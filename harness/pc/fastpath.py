"""The native hot paths (native/fastpath.c): system-call entry, the log port, the keyboard poll, IF watches,
and for full tracing the records of calls, returns and context switches (with the process table's changes) and
the look at the screen.

Python's versions of these (cpu.Cpu.hook_syscall, the port hooks, the interrupt-window hooks in machine.py, the
tracer's own reading of the process table and the screen) stay the reference: `MachineConfig(fast_paths=False)`
runs them, and the tests check that both give the same run, event for event. The native versions need the
address of Unicorn's live CPU state, which the API does not give (livestate.py finds it). If anything does not
match, the machine falls back to Python.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from . import clock as clock_module
from .cpu import BlobLayout, blob_layout
from .devices.ata import AtaTransfer
from .devices.parallel import LptState
from .events import Event, Kind
from .livestate import live_state, state_path
from .paging import LEVEL_NAMES


class RawSyscall(ctypes.Structure):
    """One system-call entry (`struct raw_syscall`); pid is -1 when it was not read."""

    _fields_ = [("kind", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("time_ns", ctypes.c_uint64),
                ("rip", ctypes.c_uint64), ("cr3", ctypes.c_uint64), ("number", ctypes.c_uint64),
                ("args", ctypes.c_uint64 * 4), ("pid", ctypes.c_int64), ("ret", ctypes.c_uint64),
                ("end_ns", ctypes.c_uint64)]


_RECORD = struct.Struct("<6Q4Qq2Q")  # RawSyscall as plain bytes (checked against ctypes below)
assert _RECORD.size == ctypes.sizeof(RawSyscall)

RECORD_ENTRY = 0
RECORD_RETURN = 1  # WANT_BATCH: a return to user nothing needed at once (rip: where it resumes, number: RAX)
RECORD_COMPLETE = 2  # an entry whose quiet return came next (ret and end_ns filled in)
# A context switch recorded natively (defer_switches): the process-table changes seen there, each numbered as
# its event, then the switch (rip: where the process resumes; number: RAX; pid: the process now running).
RECORD_CREATED = 3  # pid appeared in the table; args: its name's bytes
RECORD_EXITED = 4  # pid left the table
RECORD_SWITCH = 5
LOOK_CHANGED = 1 << 63  # fastpath_look_screen: the screen changed (rows in bits 0-24, rows with text from bit 32)
LOOK_UNKNOWN = 1 << 62  # fastpath_look_screen: the native path cannot tell
MAX_LIVE = 64  # process-table slots the native scan handles
NAME_BYTES = 32  # a process name's bytes a record carries


class ProcChange(ctypes.Structure):
    """One change of the process table found by the native scan (`struct proc_change`)."""

    _fields_ = [("pid", ctypes.c_int64), ("created", ctypes.c_uint64), ("name", ctypes.c_uint8 * NAME_BYTES)]


def unpack_records(data: bytes) -> Iterator[tuple[int, ...]]:
    """Records as `FastPath.raw_bytes` gave them, as tuples of RawSyscall's fields (args spread out)."""
    return _RECORD.iter_unpack(data)


class UserReturn(ctypes.Structure):
    """A return to user mode at a watched kernel instruction (`struct user_return`)."""

    _fields_ = [("time_ns", ctypes.c_uint64), ("rip", ctypes.c_uint64), ("rax", ctypes.c_uint64),
                ("cr3", ctypes.c_uint64), ("pid", ctypes.c_int64)]


# How the native path hands system-call entries to Python (fastpath.c WANT_*).
WANT_RAW = 0  # raw records, turned into events only when somebody reads the event log
WANT_EACH = 1  # a Python call at every entry (stop conditions look at each one)
WANT_BATCH = 2  # raw records taken by Python at its next call (full tracing)


_SYSCALL_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_IN_HOOK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                             ctypes.c_void_p)
_RETURN_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def _state_type(native: ctypes.CDLL) -> type[ctypes.Structure]:
    """The ctypes mirror of `struct fastpath`, checked against the compiled library's own sizes."""
    ring_size = native.fastpath_ring_size()
    log_size = native.fastpath_log_size()
    u64, u32, ptr = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p

    class FastPathState(ctypes.Structure):
        _fields_ = [
            ("env", ptr), ("off_efer", ctypes.c_int64), ("off_star", ctypes.c_int64), ("off_lstar", ctypes.c_int64),
            ("off_fmask", ctypes.c_int64), ("off_cr3", ctypes.c_int64), ("clock", ptr), ("lpt", ptr), ("ata", ptr),
            ("reg_read", ptr), ("reg_write", ptr),
            ("slow_syscall", ptr), ("notify_syscall", ptr), ("log_flush", ptr), ("slow_in", ptr),
            ("slow_out", ptr), ("notify_return", ptr),
            ("ram", ptr), ("ram_size", u64), ("current_va", u64), ("pid_offset", ctypes.c_int64),
            ("fast_syscalls", u32), ("want_syscalls", u32), ("fast_ports", u32), ("want_returns", u32),
            ("irq_waiting", u32), ("interrupted", u32), ("kbd_status", u32),
            ("see_every_return", u32), ("screen_valid", u32), ("last_user_pid", ctypes.c_int64),
            ("memory_calls", u64), ("last_entry_number", u64), ("last_entry_pid", ctypes.c_int64),
            ("rflags_regid", u32),
            ("ptable_va", u64), ("proc_size", ctypes.c_int64), ("state_offset", ctypes.c_int64),
            ("name_offset", ctypes.c_int64), ("nproc", u32), ("name_size", u32), ("scan_ready", u32),
            ("defer_switches", u32), ("memory_pending", u64), ("live_count", u32), ("change_count", u32),
            ("tracer_looks", u32), ("blank_bytes", u64 * 4), ("live_pids", ctypes.c_int32 * MAX_LIVE),
            ("changes", ProcChange * (2 * MAX_LIVE)),
            ("next_seq", u64), ("syscalls", u64), ("raw_total", u64), ("raw_consumed", u64), ("run_start", u64),
            ("run_end", u64), ("run_pid", ctypes.c_int64), ("last", RawSyscall),
            ("returned", UserReturn),
            ("log_length", u64), ("log", ctypes.c_uint8 * log_size), ("screen", ctypes.c_uint8 * 4000),
            ("ring", RawSyscall * ring_size), ("table", ctypes.c_uint8 * native.fastpath_table_bytes()),
        ]

    layout = (ctypes.sizeof(FastPathState), FastPathState.ring.offset, FastPathState.log.offset,
              FastPathState.last.offset, FastPathState.returned.offset, FastPathState.changes.offset)
    native_layout = (native.fastpath_size(), native.fastpath_ring_offset(), native.fastpath_log_offset(),
                     native.fastpath_last_offset(), native.fastpath_returned_offset(),
                     native.fastpath_changes_offset())
    if layout != native_layout:
        raise RuntimeError(f"fastpath.c and fastpath.py disagree on struct fastpath: {layout} != {native_layout}")
    return FastPathState


class CodeWatch(ctypes.Structure):
    _fields_ = [("fast", ctypes.c_void_p), ("length", ctypes.c_uint32), ("kind", ctypes.c_uint32)]


class MsrShim(ctypes.Structure):
    """struct msr_shim: the Python callback for an rdmsr of IA32_APIC_BASE."""

    _fields_ = [("fast", ctypes.c_void_p), ("apic_base", ctypes.c_void_p)]


WATCH_RETURN = 0  # iretq / sysretq
WATCH_IF = 1  # sti / popfq


# -- the native library -------------------------------------------------------------------------------------

_STATUS = "not tried yet"


def status() -> str:
    """Whether the last machine made got the native hot paths, and if not why (for reports and benchmarks)."""
    return _STATUS


def _configure_native(native: ctypes.CDLL) -> None:
    native.fastpath_find_env.restype = ctypes.c_int
    native.fastpath_find_env.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                         ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    native.fastpath_env_at.restype = ctypes.c_size_t
    native.fastpath_env_at.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    for name in ("fastpath_size", "fastpath_ring_offset", "fastpath_log_offset", "fastpath_last_offset",
                 "fastpath_returned_offset", "fastpath_ring_size", "fastpath_log_size", "fastpath_changes_offset",
                 "fastpath_table_bytes"):
        getattr(native, name).restype = ctypes.c_size_t
    native.fastpath_scan.restype = ctypes.c_int
    native.fastpath_scan.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    native.fastpath_look_screen.restype = ctypes.c_uint64
    native.fastpath_look_screen.argtypes = [ctypes.c_void_p]
    native.fastpath_current_pid.restype = ctypes.c_int64
    native.fastpath_current_pid.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    native.fastpath_walk.restype = ctypes.c_int
    native.fastpath_walk.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]
    native.fastpath_read.restype = ctypes.c_int
    native.fastpath_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p,
                                     ctypes.c_uint64]


# -- the machine's side --------------------------------------------------------------------------------------

@dataclass
class Callbacks:
    """What the native paths call back into (Python's own versions of the same work)."""

    slow_syscall: Callable[[], None]
    notify_syscall: Callable[[RawSyscall], None]
    log_bytes: Callable[[bytes], None]
    slow_in: Callable[[int, int], int]
    slow_out: Callable[[int, int, int], None]
    notify_return: Callable[[UserReturn], None]  # a return to user mode (when want_returns is set)


class FastPath:
    """The native hot paths of one machine: its state record, hooks and Python callbacks.

    Exceptions raised by a callback are handed to the Unicorn binding, which stops emulation and re-raises them
    from `emu_start`, as for its own hooks.
    """

    def __init__(self, native: ctypes.CDLL, uc: Uc, env: int, layout: BlobLayout, clock: clock_module.VirtualClock,
                 lpt: LptState, callbacks: Callbacks, ram: int, ram_size: int) -> None:
        self.native = native
        self.uc = uc
        self.lpt = lpt
        self.callbacks = callbacks
        self.state = state = _state_type(native)()
        self._state_pointer = ctypes.cast(ctypes.pointer(state), ctypes.c_void_p).value
        state.env = env
        state.off_efer, state.off_star, state.off_lstar = layout.efer, layout.star, layout.lstar
        state.off_fmask, state.off_cr3 = layout.fmask, layout.cr3
        state.clock = ctypes.cast(ctypes.pointer(clock.state_for_native), ctypes.c_void_p).value
        state.lpt = ctypes.cast(ctypes.pointer(lpt), ctypes.c_void_p).value
        state.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        state.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
        state.rflags_regid = X.UC_X86_REG_RFLAGS
        state.ram, state.ram_size = ram, ram_size
        state.pid_offset = -1
        self._walk_out = (ctypes.c_uint64 * 9)()
        self._python_hooks = [  # kept alive as long as the engine may call them
            _SYSCALL_HOOK(self._guard(lambda uc, user: callbacks.slow_syscall())),
            _SYSCALL_HOOK(self._guard(lambda uc, user: callbacks.notify_syscall(self.state.last))),
            _SYSCALL_HOOK(self._guard(lambda uc, user: self.flush_log())),
            _IN_HOOK(self._guard(lambda uc, port, size, user: callbacks.slow_in(port, size), 0)),
            _OUT_HOOK(self._guard(lambda uc, port, size, value, user: callbacks.slow_out(port, size, value))),
            _RETURN_HOOK(self._guard(lambda uc, address, size, watch: callbacks.notify_return(self.state.returned))),
        ]
        (state.slow_syscall, state.notify_syscall, state.log_flush, state.slow_in, state.slow_out,
         state.notify_return) = (ctypes.cast(hook, ctypes.c_void_p).value for hook in self._python_hooks)
        state.fast_syscalls = 1
        state.fast_ports = 1
        self._watches: list[ctypes.Array[CodeWatch]] = []
        self._msr_shims: list[tuple[object, MsrShim]] = []
        self._add_hook(UC_HOOK_INSN, native.fast_syscall_hook, 1, 0, X.UC_X86_INS_SYSCALL)
        self._add_hook(UC_HOOK_INSN, native.fast_in_hook, 1, 0, X.UC_X86_INS_IN)
        self._add_hook(UC_HOOK_INSN, native.fast_out_hook, 1, 0, X.UC_X86_INS_OUT)

    @classmethod
    def create(cls, uc: Uc, clock: clock_module.VirtualClock, lpt: LptState, callbacks: Callbacks, ram: int = 0,
               ram_size: int = 0) -> FastPath | None:
        """The fast paths for this engine, or None (see `status()` for why)."""
        global _STATUS
        native = clock_module._load_native()
        if native is None:
            _STATUS = "unavailable: the native library could not be built (no C compiler?)"
            return None
        _configure_native(native)
        path = state_path(native, uc)
        if path is None:
            _STATUS = "unavailable: Unicorn's live CPU state was not found (not Unicorn 2.1.4?)"
            return None
        env = live_state(native, uc, path)
        if env is None:
            _STATUS = "unavailable: this engine's CPU state is not where the first engine's was"
            return None
        _STATUS = f"native (CPU state at engine+{path.uc_offset:#x} -> +{path.env_offset:#x})"
        return cls(native, uc, env, blob_layout(), clock, lpt, callbacks, ram, ram_size)

    def _guard(self, function: Callable[..., object], failed: object = None) -> Callable[..., object]:
        uc = self.uc

        def call(*args: object) -> object:
            try:
                return function(*args)
            except Exception as error:  # noqa: BLE001 - handed over to emu_start, which re-raises it
                if uc._hook_exception is None:
                    uc._hook_exception = error
                uc.emu_stop()
                return failed

        return call

    def _add_hook(self, kind: int, function: object, begin: int, end: int, *extra: int,
                  user_data: int | None = None) -> None:
        handle = ctypes.c_size_t()
        args = [ctypes.c_uint64(begin), ctypes.c_uint64(end)] + [ctypes.c_int(value) for value in extra]
        err = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), kind, ctypes.cast(function, ctypes.c_void_p),
                                ctypes.c_void_p(user_data if user_data is not None else self._state_pointer), *args)
        if err:
            raise RuntimeError(f"cannot install a native hook (unicorn error {err})")

    def watch(self, instructions: list[tuple[int, int, int]]) -> None:
        """Hook kernel instructions (address, length, WATCH_RETURN or WATCH_IF)."""
        if not instructions:
            return
        watches = (CodeWatch * len(instructions))()
        self._watches.append(watches)
        for watch, (address, length, kind) in zip(watches, instructions, strict=True):
            watch.fast, watch.length, watch.kind = self._state_pointer, length, kind
            self._add_hook(UC_HOOK_CODE, self.native.fast_watch_hook, address, address,
                           user_data=ctypes.addressof(watch))

    def msr_shims(self, addresses: list[int], apic_base: Callable[[int, int], None]) -> None:
        """Hook the `0f 32` byte pairs at `addresses`; `apic_base(address, size)` runs (in Python) only where an
        rdmsr of IA32_APIC_BASE is about to run."""
        if not addresses:
            return
        callback = _RETURN_HOOK(self._guard(lambda uc, address, size, user: apic_base(address, size)))
        shim = MsrShim(self._state_pointer, ctypes.cast(callback, ctypes.c_void_p).value)
        self._msr_shims.append((callback, shim))  # kept alive as long as the engine may call them
        for address in addresses:
            self._add_hook(UC_HOOK_CODE, self.native.fast_rdmsr_hook, address, address,
                           user_data=ctypes.addressof(shim))

    def attach_disk(self, transfer: AtaTransfer) -> None:
        """Serve the disk's data-port reads natively too."""
        self._ata = transfer
        self.state.ata = ctypes.addressof(transfer)

    def know_kernel(self, current_va: int | None, pid_offset: int | None) -> None:
        """Where the kernel keeps `current` and where a proc keeps its pid (from its symbols and DWARF)."""
        self.state.current_va = current_va or 0
        self.state.pid_offset = pid_offset if pid_offset is not None else -1

    def know_process_table(self, address: int | None, slots: int, size: int, pid: int, state: int | None,
                           name: int | None, name_size: int) -> bool:
        """Where the kernel's process table is and where a slot keeps its pid, state and name (KernelView's
        layout): the native path then scans it at context switches (`scan`). False if it cannot scan this
        table (Python's scan then runs)."""
        state_ = self.state
        ready = (address is not None and state is not None and 0 < slots <= MAX_LIVE and size > 0
                 and size * slots <= len(state_.table) and 0 <= pid <= size - 4 and 0 <= state <= size - 4
                 and (name is None or not name_size or (name >= 0 and name + name_size <= size
                                                       and name_size <= NAME_BYTES)))
        state_.scan_ready = 0
        if ready:
            state_.ptable_va, state_.nproc, state_.proc_size = address, slots, size
            state_.pid_offset, state_.state_offset = pid, state
            state_.name_offset, state_.name_size = (name, name_size) if name is not None and name_size else (0, 0)
            state_.live_count = 0
            state_.scan_ready = 1
        return ready

    def scan(self, cr3: int) -> list[tuple[int, bool, bytes]]:
        """The process table's changes since the last scan (made here or at a recorded switch): (pid, created,
        name bytes), new processes first in table order, then gone ones in the order they appeared."""
        count = self.native.fastpath_scan(self._state_pointer, cr3)
        changes = self.state.changes
        return [(change.pid, bool(change.created), bytes(change.name)) for change in changes[:max(count, 0)]]

    def look_at_screen(self, blank: bytes) -> Callable[[], int]:
        """From now on the tracer looks at the console through the function returned (fastpath_look_screen: 0
        if the screen is what it last saw, else LOOK_CHANGED with the rows that changed and, from bit 32, those
        that show a character outside `blank`; LOOK_UNKNOWN: compare it yourself, then `saw_screen`)."""
        mask = sum(1 << byte for byte in blank)
        self.state.blank_bytes[:] = [(mask >> (64 * word)) & ((1 << 64) - 1) for word in range(4)]
        self.state.tracer_looks = 1
        return functools.partial(self.native.fastpath_look_screen, self._state_pointer)

    def current_pid(self, cr3: int) -> int | None:
        """The kernel's current->pid read through `cr3` (as at a system call's entry); None if unknown."""
        pid = self.native.fastpath_current_pid(self._state_pointer, cr3)
        return pid if pid >= 0 else None

    def walk(self, cr3: int, va: int) -> tuple[list[tuple[int, int]], str | None]:
        """paging.walk_steps's walk: (entry address, entry) of each level visited, and why it stopped."""
        out = self._walk_out
        result = self.native.fastpath_walk(self._state_pointer, cr3, va, out)
        count = result & 7
        steps = list(zip(out[:count], out[4:4 + count], strict=True))
        if result & 16:
            return steps, f"{LEVEL_NAMES[count]} table at {out[8]:#x} lies outside RAM"
        if result & 8:
            return steps, f"{LEVEL_NAMES[count - 1]} entry {(va >> (48 - 9 * count)) & 511} is not present"
        return steps, None

    def read(self, cr3: int, va: int, length: int) -> bytes | None:
        """paging.read_virtual's bytes (a supervisor read), or None where it would fault."""
        buffer = ctypes.create_string_buffer(length)
        return buffer.raw if self.native.fastpath_read(self._state_pointer, cr3, va, buffer, length) else None

    def saw_screen(self, screen: bytes) -> None:
        """The tracer looked at the console and saw `screen`: what the native path compares it with."""
        ctypes.memmove(self.state.screen, screen, len(self.state.screen))
        self.state.screen_valid = 1

    def set_live(self, pids: list[int]) -> None:
        """The live processes the tracer knows, in the order they appeared (after a snapshot's restore)."""
        pids = pids[:MAX_LIVE]
        self.state.live_pids[:len(pids)] = pids
        self.state.live_count = len(pids)

    def take(self, start: int, stop: int) -> tuple[int, int, int]:
        """WANT_BATCH: Python takes the records `start` to `stop`; the longest run of complete calls of one
        process at their end or before the last few: (first, end, pid), first == end if none."""
        state = self.state
        state.raw_consumed = stop
        first, end = max(state.run_start, start), state.run_end
        return (first, end, state.run_pid) if first < end <= stop else (start, start, -1)

    def raw_bytes(self, start: int, stop: int) -> bytes:
        """Records `start` to `stop` as they lie in the ring (`unpack_records` reads them)."""
        ring = self.state.ring
        size = len(ring)
        first, last = start % size, stop % size
        data = memoryview(ring).cast("B")
        width = ctypes.sizeof(RawSyscall)
        if first < last or start == stop:
            return bytes(data[first * width:last * width])
        return bytes(data[first * width:]) + bytes(data[:last * width])

    def unpack(self, start: int, stop: int) -> Iterator[tuple[int, ...]]:
        """Records number `start` to `stop` (of all ever written) as tuples of RawSyscall's fields in order
        (args spread out): one struct unpack per record, much cheaper than ctypes field reads."""
        ring = self.state.ring
        size = len(ring)
        first, last = max(start, stop - size) % size, stop % size
        data = memoryview(ring).cast("B")
        width = ctypes.sizeof(RawSyscall)
        if first < last or start == stop:
            yield from _RECORD.iter_unpack(data[first * width:last * width])
        else:  # the range wraps around the end of the ring
            yield from _RECORD.iter_unpack(data[first * width:])
            yield from _RECORD.iter_unpack(data[:last * width])

    # -- between slices --------------------------------------------------------------------------------------
    def flush_log(self) -> None:
        """Hand the bytes printed so far to the log."""
        state = self.state
        length = state.log_length
        if length:
            data = ctypes.string_at(ctypes.addressof(state.log), length)
            state.log_length = 0
            self.callbacks.log_bytes(data)

    # -- raw system-call records, for EventLog (events.RawSyscalls) -------------------------------------------
    @property
    def next_seq(self) -> int:
        return self.state.next_seq

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        self.state.next_seq = value

    def total(self) -> int:
        return self.state.raw_total

    def events(self, start: int, stop: int, limit: int) -> list[Event]:
        """WANT_RAW: records `start` to `stop` as system-call events, at most the last `limit`."""
        start = max(start, stop - min(limit, len(self.state.ring)))
        out = []
        for kind, seq, time_ns, rip, cr3, number, a0, a1, a2, a3, _pid, _ret, _end in self.unpack(start, stop):
            if kind != RECORD_RETURN:
                event = Event(time_ns, Kind.SYSCALL, rip, cr3, number, args=(a0, a1, a2, a3), user=True)
                event.seq = seq
                out.append(event)
        return out
