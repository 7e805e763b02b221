"""Finding Unicorn's live CPU state (the CPUX86State the engine runs on), which the native hot paths
(fastpath.py) read and write directly: the API copies the state out but never says where it lives.

`state_path` looks once per process, on a scratch engine with marker values in every register, for a pointer
of the engine that leads to the same bytes a context save gives (fastpath.c's `fastpath_find_env`), and
`live_state` checks the answer on every machine's engine by writing a register through the API.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from .cpu import CTX_DATA, OFF_OLD_EXCEPTION, OFF_REGS

_GPRS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
         X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
         X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
         X.UC_X86_REG_R15)
_SEARCH_SPAN = 1 << 18  # how far past each pointer of the engine the state may sit (it is ~40 KiB in)
_STATE_BYTES = OFF_OLD_EXCEPTION + 8  # the part of CPUX86State the harness touches


@dataclass(frozen=True)
class StatePath:
    """Where the live CPUX86State is: `uc_offset` bytes into the engine sits a pointer, `env_offset` past it."""

    uc_offset: int
    env_offset: int


_PATH: StatePath | None | bool = False  # False: not looked for yet


def _marker(index: int) -> int:
    return 0x5AFE_0000_0000_0000 | (index << 36) | 0x0C0F_FEE0 + index


def _context_bytes(uc: Uc, length: int) -> bytes:
    context = uc.context_save()  # kept alive while its bytes are copied out
    return ctypes.string_at(ctypes.cast(context.context, ctypes.c_void_p).value + CTX_DATA, length)


def state_path(native: ctypes.CDLL, other: Uc) -> StatePath | None:
    """Look once per process, on a scratch engine with marker values in all sixteen registers; a path counts
    only if it also leads to the state of a second engine, `other` (heap neighbours can fake one engine's
    layout): the machine's own, which the path must fit anyway (a third engine would cost every start ~1 ms)."""
    global _PATH
    if _PATH is False:
        _PATH = None
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        for index, register in enumerate(_GPRS):
            uc.reg_write(register, _marker(index))
        needle = _context_bytes(uc, 16 * 8)
        reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p)
        start = 0
        uc_offset, env_offset = ctypes.c_size_t(), ctypes.c_size_t()
        while native.fastpath_find_env(uc._uch, start, needle, len(needle), _SEARCH_SPAN, reg_write,
                                       X.UC_X86_REG_RBX, 3, ctypes.byref(uc_offset), ctypes.byref(env_offset)):
            path = StatePath(uc_offset.value, env_offset.value)
            if live_state(native, uc, path) is not None and live_state(native, other, path) is not None:
                _PATH = path
                break
            start = path.uc_offset + 8
    return _PATH  # type: ignore[return-value]


def live_state(native: ctypes.CDLL, uc: Uc, path: StatePath) -> int | None:
    """The address of `uc`'s live CPU state if `path` leads to it: same bytes as a context save, and a register
    written through the API shows up there."""
    rbx = uc.reg_read(X.UC_X86_REG_RBX)  # also makes Unicorn create the CPU, which it does on first use
    env = native.fastpath_env_at(uc._uch, path.uc_offset, path.env_offset, _STATE_BYTES)
    if not env:
        return None
    if ctypes.string_at(env, 256) != _context_bytes(uc, 256):
        return None
    try:
        for probe in (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210):
            uc.reg_write(X.UC_X86_REG_RBX, probe)
            if ctypes.c_uint64.from_address(env + OFF_REGS + 3 * 8).value != probe:
                return None
    finally:
        uc.reg_write(X.UC_X86_REG_RBX, rbx)
    return env
