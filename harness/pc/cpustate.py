"""The CPU's architectural state as named, checked fields: what a snapshot saves and restores.

Unicorn's saved CPU state (the blob, a copy of QEMU's `CPUX86State`) also holds host pointers (the hardware
breakpoint list next to the debug registers) and engine-internal values (lazy-flag operators, float rounding
modes) that the engine trusts blindly: a blob read from a file and copied back whole lets the file write
anywhere in the host. A snapshot therefore carries only the fields listed here, each with a type and a range,
and a restore writes them, one by one, into the target machine's own blob (whose pointers stay its own). The
values the engine derives from them (flags, float status, the TLB) are recomputed through Unicorn's API.

The offsets are those of Unicorn 2.1.4 (pinned); `check_layout()` confirms them once by planting marker values
through the API, like `cpu.BlobLayout.calibrate`, and refuses to run if they moved.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from .cpu import CTX_DATA, OFF_EIP, OFF_HFLAGS, OFF_OLD_EXCEPTION, OFF_REGS, OFF_SEGS, SEG_SIZE, Cpu, blob_layout

U16, U32, U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1

# -- offsets in the blob's data (Unicorn 2.1.4), besides those cpu.py already knows ---------------------------
OFF_HFLAGS2 = OFF_HFLAGS + 4
OFF_CR0, OFF_CR2, OFF_CR3, OFF_CR4 = 424, 440, 448, 456
OFF_FPSTT, OFF_FPUS, OFF_FPUC, OFF_FPTAGS, OFF_FPREGS = 604, 608, 610, 612, 624
FPREG_STRIDE, FPREG_BYTES = 16, 10  # an 80-bit register in a 16-byte slot
OFF_MXCSR, OFF_XMM = 816, 824
XMM_STRIDE, XMM_BYTES = 64, 16  # ZMM slots; the CPU model has no AVX, so only the low 128 bits are state
OFF_SYSENTER_CS, OFF_SYSENTER_ESP, OFF_SYSENTER_EIP = 4800, 4808, 4816
OFF_CSTAR, OFF_KERNEL_GS_BASE, OFF_TSC_AUX, OFF_PAT = 4848, 4864, 4896, 5280
OFF_DR = 5400  # dr[0..7]; dr[7] is followed by the host pointers of the breakpoint list, never saved

SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")  # in blob order from OFF_SEGS
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # in blob order

# Bits a field may hold. Anything else is refused: engine modes the harness never uses (SMM, SVM guest, I/O
# breakpoints, MPX, virtual-8086) could reach engine paths that trust their own bookkeeping.
RFLAGS_ALLOWED = 0x3F7FD7 & ~(1 << 17)  # every defined flag but VM
HFLAGS_ALLOWED = ((1 << 17) - 1) | (1 << 18) | (1 << 22) | (1 << 23)  # CPL..RF, AC, OSFXSR, SMAP
HFLAGS2_ALLOWED = 0x7  # GIF, HIF, NMI
CR0_ALLOWED = 0xE005003F  # PE MP EM TS ET NE WP AM NW CD PG
CR4_ALLOWED = 0x7FF | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 20) | (1 << 21)
EFER_ALLOWED = 0xD01  # SCE LME LMA NXE
DR7_ENABLES = 0xFF  # L0-L3 / G0-G3: armed hardware breakpoints live in host pointers, which are never restored
PHYSICAL_LIMIT = 1 << 52


class CpuStateError(ValueError):
    """A field is missing, of the wrong type or out of range (the message names it)."""


@dataclass(frozen=True)
class Field:
    """One named value of the CPU state: where it lives in the blob, its width, the bits it may hold."""

    name: str
    offset: int
    fmt: str  # struct format of the stored value ("<Q", "<I", "<H")
    allowed: int  # mask of the bits the value may have

    def check(self, value: Any) -> int:
        if type(value) is not int:
            raise CpuStateError(f"CPU field {self.name} is not an integer")
        if value < 0 or value & ~self.allowed:
            raise CpuStateError(f"CPU field {self.name} = {value:#x} is out of range (allowed bits {self.allowed:#x})")
        return value


@dataclass(frozen=True)
class BytesField:
    """A register kept as raw bytes (x87 and SSE registers): saved as hex of a fixed length."""

    name: str
    offset: int
    size: int

    def check(self, value: Any) -> bytes:
        if type(value) is not str or len(value) != 2 * self.size:
            raise CpuStateError(f"CPU field {self.name} is not {self.size} bytes of hex")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise CpuStateError(f"CPU field {self.name} is not {self.size} bytes of hex") from None


def _fields() -> tuple[list[Field], list[BytesField]]:
    numbers = [Field(name, OFF_REGS + 8 * i, "<Q", U64) for i, name in enumerate(GPR_NAMES)]
    numbers.append(Field("rip", OFF_EIP, "<Q", U64))
    numbers += [Field("hflags", OFF_HFLAGS, "<I", HFLAGS_ALLOWED), Field("hflags2", OFF_HFLAGS2, "<I", HFLAGS2_ALLOWED)]
    for i, name in enumerate(SEGMENT_NAMES):
        at = OFF_SEGS + SEG_SIZE * i
        numbers += [Field(f"{name}.selector", at, "<I", U16), Field(f"{name}.base", at + 8, "<Q", U64),
                    Field(f"{name}.limit", at + 16, "<I", U32), Field(f"{name}.flags", at + 20, "<I", U32)]
    layout = blob_layout()
    for name, at in (("gdt", layout.gdt), ("idt", layout.idt)):
        numbers += [Field(f"{name}.base", at + 8, "<Q", U64), Field(f"{name}.limit", at + 16, "<I", U16)]
    numbers += [Field("cr0", OFF_CR0, "<Q", CR0_ALLOWED), Field("cr2", OFF_CR2, "<Q", U64),
                Field("cr3", OFF_CR3, "<Q", PHYSICAL_LIMIT - 1), Field("cr4", OFF_CR4, "<Q", CR4_ALLOWED),
                Field("efer", layout.efer, "<Q", EFER_ALLOWED),
                Field("fpstt", OFF_FPSTT, "<I", 7), Field("fpus", OFF_FPUS, "<H", U16 & ~0x3800),
                Field("fpuc", OFF_FPUC, "<H", U16), Field("mxcsr", OFF_MXCSR, "<I", U16)]
    numbers += [Field(f"fptag{i}", OFF_FPTAGS + i, "<B", 1) for i in range(8)]
    numbers += [Field("sysenter_cs", OFF_SYSENTER_CS, "<I", U32), Field("sysenter_esp", OFF_SYSENTER_ESP, "<Q", U64),
                Field("sysenter_eip", OFF_SYSENTER_EIP, "<Q", U64), Field("star", layout.star, "<Q", U64),
                Field("lstar", layout.lstar, "<Q", U64), Field("cstar", OFF_CSTAR, "<Q", U64),
                Field("fmask", layout.fmask, "<Q", U64), Field("kernel_gs_base", OFF_KERNEL_GS_BASE, "<Q", U64),
                Field("tsc_aux", OFF_TSC_AUX, "<I", U32), Field("pat", OFF_PAT, "<Q", U64)]
    numbers += [Field(f"dr{i}", OFF_DR + 8 * i, "<Q", U64) for i in (0, 1, 2, 3)]
    numbers += [Field("dr6", OFF_DR + 48, "<Q", U32), Field("dr7", OFF_DR + 56, "<Q", U32 & ~DR7_ENABLES)]
    raw = [BytesField(f"st{i}", OFF_FPREGS + FPREG_STRIDE * i, FPREG_BYTES) for i in range(8)]
    raw += [BytesField(f"xmm{i}", OFF_XMM + XMM_STRIDE * i, XMM_BYTES) for i in range(16)]
    return numbers, raw


_FIELDS: tuple[list[Field], list[BytesField]] | None = None


def fields() -> tuple[list[Field], list[BytesField]]:
    """(numeric fields, byte fields), their offsets checked against the running Unicorn once."""
    global _FIELDS
    if _FIELDS is None:
        check_layout()
        _FIELDS = _fields()
    return _FIELDS


def field_names() -> list[str]:
    numbers, raw = fields()
    return ["rflags"] + [f.name for f in numbers] + [f.name for f in raw]


def check_layout() -> None:
    """Plant a marker in each field this module adds through Unicorn's API and find it at its offset."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    markers = [(X.UC_X86_REG_CR4, OFF_CR4, 0x6A0), (X.UC_X86_REG_DR0, OFF_DR, 0x1234567890),
               (X.UC_X86_REG_DR7, OFF_DR + 56, 0x400), (X.UC_X86_REG_MXCSR, OFF_MXCSR, 0x1FA0),
               (X.UC_X86_REG_FPCW, OFF_FPUC, 0x37A), (X.UC_X86_REG_XMM0, OFF_XMM, 0x0FEDCBA987654321),
               (X.UC_X86_REG_XMM15, OFF_XMM + 15 * XMM_STRIDE, 0x0123456789ABCDEF)]
    msrs = [(0x174, OFF_SYSENTER_CS, 0x1357), (0x175, OFF_SYSENTER_ESP, 0x2468ACE0),
            (0x176, OFF_SYSENTER_EIP, 0x2468ACE8), (0xC0000083, OFF_CSTAR, 0x13579BDF11),
            (0xC0000102, OFF_KERNEL_GS_BASE, 0x13579BDF22), (0xC0000103, OFF_TSC_AUX, 0x55),
            (0x277, OFF_PAT, 0x0007040600070406)]
    for register, _, value in markers:
        uc.reg_write(register, value)
    for msr, _, value in msrs:
        uc.msr_write(msr, value)
    uc.reg_write(X.UC_X86_REG_FPSW, (5 << 11) | 0x41)
    context = uc.context_save()  # kept alive while its bytes are copied out
    data = ctypes.string_at(context.context, uclib.uc_context_size(uc._uch))[CTX_DATA:]
    wrong = [offset for _, offset, value in markers + msrs
             if data[offset:offset + (2 if offset == OFF_FPUC else 4 if value <= U32 else 8)]
             != value.to_bytes(2 if offset == OFF_FPUC else 4 if value <= U32 else 8, "little")]
    if struct.unpack_from("<IH", data, OFF_FPSTT) != (5, 0x41):
        wrong.append(OFF_FPSTT)
    if wrong:
        raise RuntimeError(f"unicorn CPU-state layout not recognised (offsets {wrong})")


def data_address(cpu: Cpu) -> int:
    """Host address of the blob's CPUX86State copy."""
    return ctypes.cast(cpu.context_pointer, ctypes.c_void_p).value + CTX_DATA  # type: ignore[operator]


def capture(cpu: Cpu) -> dict[str, Any]:
    """The live CPU's state as {field name: int or hex}, JSON-ready."""
    numbers, raw = fields()
    rflags = cpu.rflags()  # the arithmetic flags are lazy: only the API computes them
    cpu.save()
    data = ctypes.string_at(data_address(cpu), OFF_DR + 64)
    state: dict[str, Any] = {"rflags": rflags}
    for field in numbers:
        (state[field.name],) = struct.unpack_from(field.fmt, data, field.offset)
    for blob_field in raw:
        state[blob_field.name] = data[blob_field.offset:blob_field.offset + blob_field.size].hex()
    return state


def check(state: Any) -> dict[str, Any]:
    """The state with every field type- and range-checked; CpuStateError names the first bad one."""
    if not isinstance(state, dict):
        raise CpuStateError("the CPU state is not a record of named fields")
    numbers, raw = fields()
    expected = {"rflags", *(f.name for f in numbers), *(f.name for f in raw)}
    missing = sorted(expected - state.keys())
    if missing:
        raise CpuStateError(f"CPU field {missing[0]} is missing")
    unknown = sorted(set(state) - expected)
    if unknown:
        raise CpuStateError(f"unknown CPU field {unknown[0]!r}")
    checked: dict[str, Any] = {"rflags": Field("rflags", 0, "<Q", RFLAGS_ALLOWED).check(state["rflags"]) | 2}
    for field in numbers:
        checked[field.name] = field.check(state[field.name])
    for blob_field in raw:
        checked[blob_field.name] = blob_field.check(state[blob_field.name])
    return checked


def armed_breakpoints(cpu: Cpu) -> bool:
    """Does the machine's own DR7 arm hardware breakpoints (whose host records a restore must not orphan)?"""
    cpu.save()
    return bool(ctypes.c_uint64.from_address(data_address(cpu) + OFF_DR + 56).value & DR7_ENABLES)


def apply(cpu: Cpu, checked: dict[str, Any]) -> None:
    """Write a state returned by `check` into the live CPU, field by field, then let the engine re-derive the
    values it computes from them (lazy flags, float status, the TLB)."""
    numbers, raw = fields()
    cpu.save()
    base = data_address(cpu)
    for field in numbers:
        packed = struct.pack(field.fmt, checked[field.name])
        ctypes.memmove(base + field.offset, packed, len(packed))
    for blob_field in raw:
        ctypes.memmove(base + blob_field.offset, checked[blob_field.name], blob_field.size)
    ctypes.c_int32.from_address(base + OFF_OLD_EXCEPTION).value = -1  # no exception is in flight between runs
    cpu.restore()
    cpu.write_register(X.UC_X86_REG_RFLAGS, checked["rflags"])
    cpu.write_register(X.UC_X86_REG_FPCW, checked["fpuc"])  # recomputes the x87 rounding status
    cpu.write_register(X.UC_X86_REG_MXCSR, checked["mxcsr"])  # and the SSE one
    cpu.write_register(X.UC_X86_REG_CR3, checked["cr3"])  # flushes the TLB of the machine's previous mappings
