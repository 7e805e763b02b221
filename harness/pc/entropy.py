"""The guest's time-stamp counter and hardware random numbers, made deterministic.

Unicorn answers `rdtsc`/`rdtscp` with the host's TSC and `rdrand`/`rdseed` with host randomness, so the same
`--seed` would give different runs. Here the TSC counts virtual time (TSC_HZ ticks per virtual second, never
the same value twice, offset by the seed) and the random numbers are a keyed hash of (seed, virtual time,
count of numbers drawn).

How, on stock Unicorn 2.1.4 (measured): its Python binding refuses instruction hooks other than IN, OUT,
SYSCALL, SYSENTER and CPUID, but the C library accepts RDTSC and RDTSCP, so those two are hooked through it
directly (the hook returns 1: the instruction's own result is skipped). RDRAND and RDSEED cannot be hooked at
all; both are refused (#UD) by a CPU model without the RDRAND feature bit, so the machine uses Sandy Bridge
(Haswell minus RDRAND, FSGSBASE, BMI, AVX2, SMEP, MOVBE, F16C, FMA: nothing our guests use), and the CPU glue
hands every #UD to `emulate_invalid` first, which runs them here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_INSN, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from .clock import VirtualClock

CPU_MODEL = X.UC_CPU_X86_SANDYBRIDGE  # no RDRAND feature bit: rdrand/rdseed raise #UD and come here
TSC_HZ = 2_000_000_000  # ticks per virtual second
MASK64 = (1 << 64) - 1
RFLAGS_CLEARED = 0x8D4  # OF, SF, ZF, AF, PF (CF is set: a number is always ready)
FLAG_CF = 1
_GPRS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
         X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI] + [getattr(X, f"UC_X86_REG_R{i}") for i in range(8, 16)]
_INSN_HOOK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def mix64(value: int) -> int:
    """A 64-bit finaliser (splitmix64's): a well-spread, reproducible hash of one integer."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


class GuestEntropy:
    """TSC and RDRAND/RDSEED for one machine: hooks on `uc`, time from `clock`, everything keyed by `seed`."""

    def __init__(self, uc: Uc, clock: VirtualClock, seed: int) -> None:
        self.uc = uc
        self.clock = clock
        self.seed = seed
        self.tsc_offset = mix64(seed) >> 24 if seed else 0  # up to 2^40 ticks: a boot some time after reset
        self.last_tsc = -1
        self.drawn = 0
        self._callbacks: list[Any] = []  # keep the C callbacks alive as long as the hooks
        self._hook(X.UC_X86_INS_RDTSC, lambda: self._answer_tsc(aux=False))
        self._hook(X.UC_X86_INS_RDTSCP, lambda: self._answer_tsc(aux=True))

    def _hook(self, instruction: int, answer: Callable[[], None]) -> None:
        def callback(engine: int, user_data: int) -> int:
            answer()
            return 1  # skip the instruction's own (host) result

        function = _INSN_HOOK(callback)
        self._callbacks.append(function)
        handle = uc_hook_h()
        status = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), UC_HOOK_INSN, function, None,
                                   ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(instruction))
        if status != 0:
            raise RuntimeError(f"unicorn refused an rdtsc/rdtscp hook (error {status})")

    def tsc(self) -> int:
        """The counter now: virtual time in TSC ticks plus the seed's offset, one more than last time at least
        (a loop of rdtsc inside one translation block still sees it move)."""
        value = (self.clock.now_ns() * TSC_HZ // 1_000_000_000 + self.tsc_offset) & MASK64
        self.last_tsc = max(value, self.last_tsc + 1)
        return self.last_tsc

    def _answer_tsc(self, aux: bool) -> None:
        value = self.tsc()
        self.uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self.uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
        if aux:
            self.uc.reg_write(X.UC_X86_REG_RCX, 0)  # IA32_TSC_AUX: CPU 0

    def random(self) -> int:
        self.drawn += 1
        return mix64(mix64(self.seed ^ 0x5EED) ^ mix64(self.drawn) ^ self.clock.now_ns())

    def emulate_invalid(self, rip: int, code: bytes) -> int | None:
        """If `code` (the bytes at `rip`) is rdrand or rdseed with a register operand, run it and return its
        length; else None (the #UD stands)."""
        at = 0
        size = 4
        rex = 0
        while at < len(code) and code[at] == 0x66:
            size, at = 2, at + 1
        if at < len(code) and code[at] & 0xF0 == 0x40:
            rex, at = code[at], at + 1
        if code[at:at + 2] != b"\x0f\xc7" or at + 2 >= len(code):
            return None
        modrm = code[at + 2]
        if modrm >> 6 != 3 or (modrm >> 3) & 7 not in (6, 7):
            return None
        if rex & 8:
            size = 8
        register = _GPRS[(modrm & 7) | (8 if rex & 1 else 0)]
        value = self.random() & ((1 << (8 * size)) - 1)
        if size == 2:  # a 16-bit write keeps the rest; a 32-bit one clears the upper half
            value |= self.uc.reg_read(register) & ~0xFFFF & MASK64
        self.uc.reg_write(register, value)
        rflags = self.uc.reg_read(X.UC_X86_REG_RFLAGS)
        self.uc.reg_write(X.UC_X86_REG_RFLAGS, (rflags & ~RFLAGS_CLEARED) | FLAG_CF)
        length = at + 3
        self.uc.reg_write(X.UC_X86_REG_RIP, rip + length)
        return length

    def state(self) -> dict[str, int]:
        return {"last_tsc": self.last_tsc, "drawn": self.drawn}

    def restore(self, state: dict[str, int]) -> None:
        self.last_tsc = state["last_tsc"]
        self.drawn = state["drawn"]
