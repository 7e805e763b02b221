"""The auditor's register rule: a process resumes with the registers it left with, and nobody else's.

The trap frame holds the general-purpose registers, and the page-table rules (audit.py) cover memory. What
remains that a user program can set and read back: the x87/MMX registers, the SSE registers and MXCSR, and the
FS/GS selectors and bases. A kernel that does not keep these per process lets one process read, and change,
another's (issue: "one process reads and overwrites another's MMX registers").

The rule, checked at every return to user mode:
- a process seen before must find exactly the state it had when it last entered the kernel;
- a process returned to for the first time must find a clean state (or the machine's power-on state), or the
  state its creator had at the system call that created it (a fork copies its parent's registers).

The state is read as raw bytes out of Unicorn's saved CPU state (one copy, no register API call per register:
at every system call that matters), at offsets found at start-up by writing each register through the API and
seeing which bytes change, like cpu.BlobLayout.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from ..pc.cpu import CTX_DATA, R_FS, R_GS, Cpu

_FP = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]
_XMM = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
_CONTROL = [X.UC_X86_REG_FPCW, X.UC_X86_REG_FPSW, X.UC_X86_REG_MXCSR]
CLEAN_FCW, CLEAN_MXCSR = 0x037F, 0x1F80


def _blob(uc: Uc) -> bytes:
    context = uc.context_save()  # kept alive while its bytes are copied out
    return bytes(ctypes.string_at(context.context, uclib.uc_context_size(uc._uch)))[CTX_DATA:]


def _changed(before: bytes, after: bytes) -> set[int]:
    return {i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b}


@dataclass(frozen=True)
class StateLayout:
    """Byte ranges of the CPU-state blob that hold the x87, MMX and SSE state (FS/GS are SegmentCaches)."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def calibrate(cls) -> StateLayout:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        offsets: set[int] = set()
        writes: list[tuple[int, object, object]] = [(r, (0, 0), ((1 << 64) - 1, 0x7FFF)) for r in _FP]
        writes += [(r, 0, (1 << 128) - 1) for r in _XMM]
        writes += [(X.UC_X86_REG_FPCW, 0, 0x1F7F), (X.UC_X86_REG_FPSW, 0, 0x3FFF),
                   (X.UC_X86_REG_MXCSR, 0x1F80, 0xFFBF)]
        for register, low, high in writes:
            uc.reg_write(register, low)
            before = _blob(uc)
            uc.reg_write(register, high)
            found = _changed(before, _blob(uc))
            if not found:
                raise RuntimeError("unicorn CPU-state layout not recognised (x87/SSE registers)")
            offsets |= found
            uc.reg_write(register, low)
        ranges: list[list[int]] = []
        for offset in sorted(offsets):
            if ranges and offset <= ranges[-1][1] + 8:  # merge close bytes: fewer, larger slices
                ranges[-1][1] = offset + 1
            else:
                ranges.append([offset, offset + 1])
        return cls(tuple((a, b) for a, b in ranges))


_LAYOUT: StateLayout | None = None


def state_layout() -> StateLayout:
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = StateLayout.calibrate()
    return _LAYOUT


@dataclass(frozen=True)
class UserState:
    """What a user program can see beyond its general-purpose registers (compared as a whole)."""

    fpu_sse: bytes
    fs: tuple[int, int]  # (selector, base) as user mode will see them
    gs: tuple[int, int]

    def differences(self, other: UserState) -> str:
        parts = []
        if self.fpu_sse != other.fpu_sse:
            parts.append("x87/MMX/SSE registers")
        for name, mine, theirs in (("FS", self.fs, other.fs), ("GS", self.gs, other.gs)):
            if mine != theirs:
                parts.append(f"{name} {mine[0]:#x} base {mine[1]:#x} (expected {theirs[0]:#x} base {theirs[1]:#x})")
        return ", ".join(parts)


def _as_user_sees(selector: int, base: int) -> tuple[int, int]:
    """A return to ring 3 nulls FS/GS when they hold a kernel data selector (DPL < 3); a null selector keeps
    its base."""
    if selector & 0xFFFC and selector & 3 != 3:
        return (0, 0)
    return (selector, base)


class RegisterAuditor:
    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.layout = state_layout()
        self.left: dict[int, UserState] = {}  # page table -> the state its process entered the kernel with
        self.first_allowed: dict[int, tuple[UserState, ...]] = {}  # new processes: what they may find
        self.live: set[int] = set()
        self.last_entry: UserState | None = None
        self.power_on = self.read()
        self.clean = self._clean_state()
        self.entries = 0

    def read(self) -> UserState:
        cpu = self.cpu
        cpu.save()
        base = ctypes.cast(cpu.context_pointer, ctypes.c_void_p).value + CTX_DATA
        fpu_sse = b"".join(ctypes.string_at(base + a, b - a) for a, b in self.layout.ranges)
        fs, gs = cpu.segs[R_FS], cpu.segs[R_GS]
        return UserState(fpu_sse, _as_user_sees(fs.selector.value, fs.base.value),
                         _as_user_sees(gs.selector.value, gs.base.value))

    def _clean_state(self) -> UserState:
        """The state after FNINIT with the default MXCSR and zeroed registers, null FS/GS: made on a scratch
        CPU so that it reads exactly as a live one would."""
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        for register in _FP:
            uc.reg_write(register, (0, 0))
        for register in _XMM:
            uc.reg_write(register, 0)
        uc.reg_write(X.UC_X86_REG_FPCW, CLEAN_FCW)
        uc.reg_write(X.UC_X86_REG_FPSW, 0)
        uc.reg_write(X.UC_X86_REG_MXCSR, CLEAN_MXCSR)
        uc.mem_map(0, 0x1000)
        uc.mem_write(0, b"\xdb\xe3")  # fninit: tags all empty, as a kernel's clean image restores them
        uc.emu_start(0, 2)
        blob = _blob(uc)
        return UserState(b"".join(blob[a:b] for a, b in self.layout.ranges), (0, 0), (0, 0))

    def entered(self, cr3: int | None = None) -> None:
        """The process on page table `cr3` (default: the CPU's) enters the kernel (a system call, an exception
        or an interrupt)."""
        state = self.read()
        self.left[(cr3 if cr3 is not None else self.cpu.cr3.value) & ~0xFFF] = state
        self.last_entry = state
        self.entries += 1

    def check(self, cr3: int, live_tables: Iterable[int]) -> str | None:
        """At a return to user mode on `cr3`: what is wrong with the registers the process will see, or None."""
        live = {table & ~0xFFF for table in live_tables}
        for gone in [table for table in self.left if table not in live]:
            del self.left[gone]  # an exited process: its page table may come back for another
        for new in live - self.live - self.left.keys():
            creators = (self.last_entry,) if self.last_entry is not None else ()
            self.first_allowed[new] = (self.clean, self.power_on, *creators)
        for gone in [table for table in self.first_allowed if table not in live]:
            del self.first_allowed[gone]
        self.live = live
        table = cr3 & ~0xFFF
        state = self.read()
        if table in self.left:
            expected = self.left[table]
            if state != expected:
                return f"it resumes with registers it did not leave: {state.differences(expected)}"
            return None
        allowed = self.first_allowed.pop(table, None)
        if allowed is not None and state not in allowed:
            return (f"its first run starts with another process's registers: "
                    f"{state.differences(allowed[0])} differ from a clean state and from its creator's")
        return None
