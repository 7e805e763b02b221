"""The x86 glue: everything Unicorn leaves out of the CPU, done as the hardware does it.

Unicorn 2.1.4 never delivers an exception or interrupt through the guest's IDT, treats `syscall` as a no-op,
and cannot change privilege through its register API (see the measured findings in the project's reference
notes). This module fills those gaps by editing Unicorn's saved CPU state (a `CPUX86State` copy, "the blob")
with raw ctypes calls on one persistent context:

- exceptions, software interrupts and device interrupts enter the guest's handler through its IDT gate, with
  the TSS stack switch, the error code, IF cleared by interrupt gates, and #DF / triple fault on nested faults;
- `syscall` follows STAR, LSTAR and FMASK; `sysretq` and `iretq` run natively in Unicorn.

The blob offsets are tied to Unicorn 2.1.4 (pinned exactly in pyproject.toml); `BlobLayout.calibrate()`
rediscovers the movable ones at start-up by planting marker values and refuses to run if the layout differs.

Size: the blob layout and the delivery rules it serves are one subject; split, each half would need the other.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from .paging import PageFault, PhysicalFault, translate

# -- Unicorn 2.1.4 blob layout ----------------------------------------------------------------------------
CTX_DATA = 40  # offsetof(struct uc_context, data): the CPUX86State copy starts here
OFF_REGS = 0
OFF_EIP = 128
OFF_EFLAGS = 136  # every RFLAGS bit except the arithmetic ones (lazy) and DF
OFF_DF = 172  # +1 or -1: the direction flag as QEMU keeps it
OFF_HFLAGS = 176
OFF_SEGS = 184  # ES, CS, SS, DS, FS, GS; 24 bytes each
SEG_SIZE = 24
OFF_ERROR_CODE = 5384
OFF_EXCEPTION_IS_INT = 5388
OFF_EXCEPTION_NEXT_EIP = 5392
OFF_OLD_EXCEPTION = 5496  # never reset by Unicorn: must be -1 on every delivery or the 2nd fault becomes #DF

NOT_AN_ADDRESS = 0x8000_0000_0000_0000  # a non-canonical "until" address: emu_start never stops on it

R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11 = range(12)

# hflags bits (QEMU target/i386/cpu.h)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15

# RFLAGS bits
FLAG_CF, FLAG_PF, FLAG_AF, FLAG_ZF, FLAG_SF = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7
FLAG_TF, FLAG_IF, FLAG_DF, FLAG_OF = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FLAG_IOPL = 3 << 12
FLAG_NT, FLAG_RF, FLAG_VM, FLAG_AC = 1 << 14, 1 << 16, 1 << 17, 1 << 18
ARITH_FLAGS = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF

# Descriptor bits, in the high dword of a segment descriptor (QEMU keeps that dword as the cache "flags")
DESC_TYPE_CODE = 1 << 11
DESC_S = 1 << 12
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23
FLAT_CODE64_DPL0 = DESC_G | DESC_L | DESC_P | DESC_S | (0xB << 8)
FLAT_DATA_DPL0 = DESC_G | DESC_B | DESC_P | DESC_S | (0x3 << 8)

CR0_PE = 1 << 0
CR0_PG = 1 << 31

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084
EFER_SCE = 1 << 0

# Vectors
DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC = 0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})
VECTOR_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available", 8: "#DF double fault",
    10: "#TS invalid TSS", 11: "#NP segment not present", 12: "#SS stack fault",
    13: "#GP general protection", 14: "#PF page fault", 16: "#MF x87 error", 17: "#AC alignment check",
    18: "#MC machine check", 19: "#XM SIMD error", 20: "#VE virtualization", 21: "#CP control protection",
}


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector}")


@dataclass(frozen=True)
class BlobLayout:
    """Blob offsets that this module finds at start-up instead of trusting constants."""

    gdt: int
    idt: int
    tr: int
    cr3: int
    efer: int
    star: int
    lstar: int
    fmask: int

    @classmethod
    def calibrate(cls) -> BlobLayout:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x2000)

        def blob() -> bytes:
            context = uc.context_save()  # kept alive while its bytes are copied out
            return bytes(ctypes.string_at(context.context, uclib.uc_context_size(uc._uch)))[CTX_DATA:]

        def find(data: bytes, value: int) -> int:
            at = data.find(struct.pack("<Q", value))
            if at < 0:
                raise RuntimeError(f"unicorn CPU-state layout not recognised (marker {value:#x})")
            return at

        uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
        uc.reg_write(X.UC_X86_REG_RIP, 0x0000123456789ABC)
        uc.msr_write(MSR_STAR, 0x1111222233334444)
        uc.msr_write(MSR_LSTAR, 0x5555666677778888)
        uc.msr_write(MSR_FMASK, 0x00000000000ABCDE)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x123456789A, 0xFFF, 0))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x0FEDCBA987, 0x37, 0))
        uc.reg_write(X.UC_X86_REG_TR, (0x28, 0x0ABCDEF012, 0x67, 0x8900))
        uc.reg_write(X.UC_X86_REG_CR3, 0x7654000)
        first = blob()
        if find(first, 0x1122334455667788) != OFF_REGS or find(first, 0x0000123456789ABC) != OFF_EIP:
            raise RuntimeError("unicorn CPU-state layout not recognised (registers)")
        uc.msr_write(MSR_EFER, 0x501)
        with_sce = blob()
        uc.msr_write(MSR_EFER, 0x500)
        without_sce = blob()
        efer = next((i for i in range(0, len(with_sce) - 8, 8)
                     if struct.unpack_from("<Q", with_sce, i)[0] == 0x501
                     and struct.unpack_from("<Q", without_sce, i)[0] == 0x500), -1)
        if efer < 0:
            raise RuntimeError("unicorn CPU-state layout not recognised (EFER)")
        layout = cls(gdt=find(first, 0x0FEDCBA987) - 8, idt=find(first, 0x123456789A) - 8,
                     tr=find(first, 0x0ABCDEF012) - 8, cr3=find(first, 0x7654000), efer=efer,
                     star=find(first, 0x1111222233334444), lstar=find(first, 0x5555666677778888),
                     fmask=find(first, 0xABCDE))
        cls._check_exception_fields(uc)
        return layout

    @staticmethod
    def _check_exception_fields(uc: Uc) -> None:
        """`int $0x30` records (error 0, is_int 1, next eip) where OFF_ERROR_CODE says."""
        uc.mem_write(0x1000, b"\xcd\x30\xf4")
        uc.hook_add(UC_HOOK_INTR, lambda uc, intno, ud: uc.emu_stop())
        uc.emu_start(0x1000, 0x1003)
        context = uc.context_save()  # kept alive while its bytes are copied out
        data = ctypes.string_at(context.context, uclib.uc_context_size(uc._uch))[CTX_DATA:]
        if struct.unpack_from("<iiQ", data, OFF_ERROR_CODE) != (0, 1, 0x1002):
            raise RuntimeError("unicorn CPU-state layout not recognised (exception fields)")


_LAYOUT: BlobLayout | None = None


def blob_layout() -> BlobLayout:
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = BlobLayout.calibrate()
    return _LAYOUT


class TripleFault(Exception):
    """The CPU failed to deliver a double fault: a real PC resets; the harness stops with a diagnosis."""

    def __init__(self, reason: str, rip: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rip = rip


class MissingMemory(TripleFault):
    """Delivery needed guest memory that does not exist: an IDT, GDT, TSS, handler stack or page table that
    lies (or whose page-table walk leads) outside RAM. A real PC would read all ones there and end in a cascade
    of faults; the harness stops at the first cause instead, as a machine fault (see Machine._triple_fault)."""


class _Unbacked(Exception):
    """A read or write during delivery reached a physical address outside RAM."""

    def __init__(self, what: str, linear: int, physical: int, walking: bool) -> None:
        super().__init__(what)
        where = "a page-table entry for it is at" if walking else "it is at"
        self.text = f"the {what} at linear {linear:#x}: {where} physical {physical:#x}, outside RAM"


class _NestedFault(Exception):
    """A fault raised while delivering another one (a bad gate, an unmapped stack, ...)."""

    def __init__(self, vector: int, error_code: int, address: int | None = None, why: str = "") -> None:
        super().__init__(why)
        self.vector = vector
        self.error_code = error_code
        self.address = address
        self.why = why


class SegmentCache:
    """A live view of one hidden segment register (selector, base, limit, flags) inside the blob."""

    def __init__(self, address: int) -> None:
        self.selector = ctypes.c_uint32.from_address(address)
        self.base = ctypes.c_uint64.from_address(address + 8)
        self.limit = ctypes.c_uint32.from_address(address + 16)
        self.flags = ctypes.c_uint32.from_address(address + 20)

    def load(self, selector: int, base: int, limit: int, flags: int) -> None:
        self.selector.value = selector
        self.base.value = base
        self.limit.value = limit
        self.flags.value = flags


class Cpu:
    """One Unicorn x86-64 CPU plus the glue, working on a persistent CPU-state blob.

    `memory` is all of guest RAM as a host memoryview (for page walks and frame pushes). `on_event` receives
    (kind, details) for every delivered exception, interrupt and system call, so the machine can trace them.
    """

    def __init__(self, uc: Uc, memory: memoryview) -> None:
        self.uc = uc
        self.handle = uc._uch
        self.memory = memory
        layout = blob_layout()
        self.context = uc.context_save()  # persistent: saved into and restored from in place
        self.context_pointer = self.context.context
        base = ctypes.cast(self.context_pointer, ctypes.c_void_p).value + CTX_DATA
        self.regs = (ctypes.c_uint64 * 16).from_address(base + OFF_REGS)
        self.eip = ctypes.c_uint64.from_address(base + OFF_EIP)
        self.eflags = ctypes.c_uint64.from_address(base + OFF_EFLAGS)
        self.df = ctypes.c_int32.from_address(base + OFF_DF)
        self.hflags = ctypes.c_uint32.from_address(base + OFF_HFLAGS)
        self.segs = [SegmentCache(base + OFF_SEGS + SEG_SIZE * i) for i in range(6)]
        self.gdt = SegmentCache(base + layout.gdt)
        self.idt = SegmentCache(base + layout.idt)
        self.tr = SegmentCache(base + layout.tr)
        self.cr2 = ctypes.c_uint64.from_address(base + layout.cr3 - 8)
        self.cr3 = ctypes.c_uint64.from_address(base + layout.cr3)
        self.cr0 = ctypes.c_uint64.from_address(base + layout.cr3 - 24)
        self.efer = ctypes.c_uint64.from_address(base + layout.efer)
        self.star = ctypes.c_uint64.from_address(base + layout.star)
        self.lstar = ctypes.c_uint64.from_address(base + layout.lstar)
        self.fmask = ctypes.c_uint64.from_address(base + layout.fmask)
        self.error_code = ctypes.c_int32.from_address(base + OFF_ERROR_CODE)
        self.exception_is_int = ctypes.c_int32.from_address(base + OFF_EXCEPTION_IS_INT)
        self.exception_next_eip = ctypes.c_uint64.from_address(base + OFF_EXCEPTION_NEXT_EIP)
        self.old_exception = ctypes.c_int32.from_address(base + OFF_OLD_EXCEPTION)
        # The same field in the live CPU state, when the native fast paths have found it (Machine sets it).
        self.live_old_exception: ctypes.c_int32 | None = None
        self._value = ctypes.c_uint64()
        self._value_pointer = ctypes.cast(ctypes.pointer(self._value), ctypes.c_void_p)
        # Observers, set by the machine: called after a successful delivery / syscall entry.
        self.on_delivery: Callable[[int, int | None, int, int, bool, bool, int], None] | None = None
        self.on_syscall: Callable[[int, int, int, tuple[int, ...]], None] | None = None
        self.deliveries = 0
        self.syscalls = 0
        # The speed model's event charges (ClockCosts; the board wires `charge` to VirtualClock.charge).
        self.charge: Callable[[int], None] = lambda ns: None
        self.ns_per_syscall = 0
        self.ns_per_delivery = 0
        self.replay_requested = False
        self.replaying = False
        self.triple_fault: TripleFault | None = None  # raised where an exception could not carry it
        # Real mode: the BIOS services (set by the machine for a disk boot); returns True if it answered.
        self.bios_call: Callable[[int], bool] | None = None
        # Instructions the engine refuses (#UD) but the machine runs itself: (rip, code) -> length or None.
        self.emulate_invalid: Callable[[int, bytes], int | None] | None = None

    # -- raw state access ----------------------------------------------------------------------------------
    def save(self) -> None:
        """Copy the live CPU state into the blob."""
        uclib.uc_context_save(self.handle, self.context_pointer)

    def restore(self) -> None:
        """Make the blob the live CPU state."""
        uclib.uc_context_restore(self.handle, self.context_pointer)

    def read_register(self, register: int) -> int:
        self._value.value = 0  # Unicorn writes only the register's width (2 bytes for a selector)
        uclib.uc_reg_read(self.handle, register, self._value_pointer)
        return self._value.value

    def write_register(self, register: int, value: int) -> None:
        self._value.value = value
        uclib.uc_reg_write(self.handle, register, self._value_pointer)

    def rflags(self) -> int:
        """RFLAGS of the live CPU (the arithmetic flags are computed lazily, so only the API gives them)."""
        return self.read_register(X.UC_X86_REG_RFLAGS)

    def rip(self) -> int:
        return self.read_register(X.UC_X86_REG_RIP)

    def cpl(self) -> int:
        return self.read_register(X.UC_X86_REG_CS) & 3

    def interrupts_enabled(self) -> bool:
        return bool(self.rflags() & FLAG_IF)

    def interrupt_shadow(self) -> bool:
        """True right after `sti` or `mov ss`: the CPU accepts no interrupt before the next instruction."""
        self.save()
        return bool(self.hflags.value & HF_INHIBIT_IRQ)

    # -- memory seen by the CPU ----------------------------------------------------------------------------
    def _read_linear(self, address: int, length: int, what: str = "memory") -> bytes:
        """Supervisor read of linear memory during delivery; a failure is a nested #PF, and memory outside RAM
        (`_Unbacked`) ends delivery."""
        cr3 = self.cr3.value
        out = bytearray()
        while length:
            try:
                pa = translate(self.memory, cr3, address)
            except PageFault as fault:
                raise _NestedFault(PF, fault.error_code, fault.address, f"reading {address:#x}") from None
            except PhysicalFault as missing:
                raise _Unbacked(what, address, missing.address, walking=True) from None
            chunk = min(length, 4096 - (address & 0xFFF))
            if pa + chunk > len(self.memory):
                raise _Unbacked(what, address, pa, walking=False)
            out += self.memory[pa:pa + chunk]
            address += chunk
            length -= chunk
        return bytes(out)

    def _writable_frames(self, address: int, length: int) -> list[tuple[int, int, int]]:
        """Translate a stack range for a supervisor write: [(pa, offset, length)], before anything is written."""
        cr3 = self.cr3.value
        write_protect = bool(self.cr0.value & (1 << 16))
        pieces = []
        offset = 0
        while offset < length:
            try:
                pa = translate(self.memory, cr3, address + offset, write=True, write_protect=write_protect)
            except PageFault as fault:
                raise _NestedFault(PF, fault.error_code, fault.address, "pushing the interrupt frame") from None
            except PhysicalFault as missing:
                raise _Unbacked("handler stack", address + offset, missing.address, walking=True) from None
            chunk = min(length - offset, 4096 - ((address + offset) & 0xFFF))
            if pa + chunk > len(self.memory):
                raise _Unbacked("handler stack", address + offset, pa, walking=False)
            pieces.append((pa, offset, chunk))
            offset += chunk
        return pieces

    # -- delivery ------------------------------------------------------------------------------------------
    def deliver(self, vector: int, *, error_code: int | None = None, software: bool = False,
                instruction_length: int = 0, external: bool = False, eip_bias: int = 0,
                saved: bool = False) -> None:
        """Enter the guest's handler for `vector` through its IDT, as the CPU does.

        `software`: an `int n`/`int3` (RIP is already past the instruction of `instruction_length` bytes; the
        gate's DPL is checked). `external`: a device interrupt. `eip_bias` compensates for Unicorn adding the
        instruction length after a syscall hook. `saved`: the blob already holds the live state.
        Raises TripleFault when even #DF cannot be delivered.
        """
        if not saved:
            self.save()
        if not self.cr0.value & CR0_PE:
            self.old_exception.value = -1
            self.deliver_real_mode(vector)
            return
        if not self.hflags.value & HF_LMA:
            raise TripleFault(f"{vector_name(vector)} in 32-bit protected mode, which the harness does not "
                              f"deliver (only real mode and long mode)", self.eip.value)
        rflags = self.rflags()
        rip = self.eip.value
        from_user = self.hflags.value & HF_CPL_MASK == 3
        cr3 = self.cr3.value
        chain: list[str] = []  # why each delivery failed, for the diagnosis
        for _ in range(3):
            try:
                self._enter_gate(vector, error_code, software, instruction_length, external, rip, rflags)
                break
            except _Unbacked as missing:
                what = f"int {vector:#x}" if software else vector_name(vector)
                chain.append(f"{what} could not be delivered: {missing.text}")
                raise MissingMemory("; then ".join(chain), rip - (instruction_length if software else 0)) \
                    from None
            except _NestedFault as nested:
                if nested.vector == PF and nested.address is not None:
                    self.cr2.value = nested.address
                where = f" at {nested.address:#x}" if nested.address is not None else ""
                what = f"int {vector:#x}" if software else vector_name(vector)
                chain.append(f"{what} could not be delivered ({nested.why}{where})")
                # The double-fault rules classify CPU exceptions only. A software `int n` (whatever n) and a
                # device interrupt are benign: a fault while entering their handler is delivered as itself.
                benign = software or external
                if vector == DF and not benign:
                    raise TripleFault("; then ".join(chain), rip) from None
                if not benign and ((vector == PF and (nested.vector == PF or nested.vector in CONTRIBUTORY))
                                   or (vector in CONTRIBUTORY and nested.vector in CONTRIBUTORY)):
                    vector, error_code = DF, 0
                else:
                    vector, error_code = nested.vector, nested.error_code
                if software:
                    rip -= instruction_length  # an `int n` that could not enter faults on the instruction
                software = external = False
        else:  # pragma: no cover - three nested faults always end in DF or a triple fault above
            raise TripleFault("fault loop during delivery", rip)
        self.eip.value += eip_bias
        self.restore()
        self.deliveries += 1
        self.charge(self.ns_per_delivery)
        if self.on_delivery is not None:
            self.on_delivery(vector, error_code, rip, self.cr2.value, external, from_user, cr3)

    def _enter_gate(self, vector: int, error_code: int | None, software: bool, instruction_length: int,
                    external: bool, rip: int, rflags: int) -> None:
        ext = 1 if external else 0
        cpl = self.hflags.value & HF_CPL_MASK
        if vector * 16 + 15 > self.idt.limit.value:
            raise _NestedFault(GP, vector * 8 + 2 + ext, why=f"vector {vector} is beyond the IDT limit")
        low, high = struct.unpack("<QQ", self._read_linear(self.idt.base.value + vector * 16, 16,
                                                           f"IDT entry {vector}"))
        gate_type = (low >> 40) & 0xF
        if gate_type not in (0xE, 0xF):
            raise _NestedFault(GP, vector * 8 + 2 + ext, why=f"IDT entry {vector} is not an interrupt/trap gate")
        if software and (low >> 45) & 3 < cpl:
            raise _NestedFault(GP, vector * 8 + 2, why=f"int {vector:#x} through a DPL {(low >> 45) & 3} gate")
        if not (low >> 47) & 1:
            raise _NestedFault(NP, vector * 8 + 2 + ext, why=f"IDT entry {vector} is not present")
        selector = (low >> 16) & 0xFFFF
        target = (low & 0xFFFF) | ((low >> 32) & 0xFFFF0000) | ((high & 0xFFFFFFFF) << 32)
        ist = (low >> 32) & 7
        if selector & ~3 == 0 or selector & 4 or (selector & ~7) + 7 > self.gdt.limit.value:
            raise _NestedFault(GP, (selector & ~3) + ext, why=f"bad gate selector {selector:#x}")
        flags = struct.unpack("<I", self._read_linear(self.gdt.base.value + (selector & ~7) + 4, 4,
                                                      f"GDT entry {selector >> 3}"))[0]
        if not flags & DESC_S or not flags & DESC_TYPE_CODE or not flags & DESC_L:
            raise _NestedFault(GP, (selector & ~3) + ext, why=f"selector {selector:#x} is not 64-bit code")
        if not flags & DESC_P:
            raise _NestedFault(NP, (selector & ~3) + ext, why=f"code segment {selector:#x} is not present")
        dpl = (flags >> 13) & 3
        if dpl > cpl:
            raise _NestedFault(GP, (selector & ~3) + ext, why="handler is less privileged than the interrupted code")
        regs = self.regs
        old_rsp = regs[RSP]
        if ist or dpl < cpl:
            slot = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * dpl
            if slot + 7 > self.tr.limit.value:
                raise _NestedFault(TS, (self.tr.selector.value & ~3) + ext, why="TSS too small for the stack")
            new_rsp = struct.unpack("<Q", self._read_linear(self.tr.base.value + slot, 8, "TSS"))[0]
        else:
            new_rsp = old_rsp
        new_rsp &= ~0xF
        frame = [rip, self.segs[R_CS].selector.value, rflags, old_rsp, self.segs[R_SS].selector.value]
        pushes_error = vector in VECTORS_WITH_ERROR_CODE and not software and not external
        if pushes_error:
            frame.insert(0, (error_code or 0) & 0xFFFFFFFF)
        data = struct.pack(f"<{len(frame)}Q", *frame)
        new_rsp -= len(data)
        for pa, offset, length in self._writable_frames(new_rsp, len(data)):
            self.memory[pa:pa + length] = data[offset:offset + length]
        # Commit: nothing above changed the blob, so a nested fault leaves the CPU state untouched.
        regs[RSP] = new_rsp
        self.segs[R_CS].load((selector & ~3) | dpl, 0, 0xFFFFFFFF, flags)
        if dpl < cpl:
            self.segs[R_SS].load(dpl, 0, 0, dpl << 13)  # a null SS with RPL = the new CPL
        hflags = self.hflags.value & ~(HF_CPL_MASK | HF_INHIBIT_IRQ | HF_ADDSEG)
        if hflags & HF_LMA:
            hflags |= HF_CS32 | HF_SS32 | HF_CS64
        self.hflags.value = hflags | dpl
        cleared = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM | (FLAG_IF if gate_type == 0xE else 0)
        self.eflags.value &= ~cleared
        self.eip.value = target
        self.old_exception.value = -1

    # -- Unicorn hooks -------------------------------------------------------------------------------------
    def hook_interrupt(self, uc: Uc, intno: int, user_data: object) -> None:
        """UC_HOOK_INTR: a CPU exception or `int n` raised by guest code."""
        self.save()
        software = bool(self.exception_is_int.value)
        if not self.cr0.value & CR0_PE:
            self._real_mode_interrupt(intno, software)
            return
        if intno == DF and not software and not self.replaying:
            # Not a real double fault: every delivery is ours, so QEMU only makes a #DF out of a fault when its
            # record of a previous exception is stale (see clear_stale_exception, which the machine calls
            # before every run of the CPU, so this should no longer happen). Its vector and error code are
            # lost: stop, and let the machine re-run the instruction alone (`replay_fault`), with the record
            # cleared, which reports the true vector and error code.
            self.old_exception.value = -1
            self.restore()
            self.replay_requested = True
            uc.emu_stop()
            return
        error_code = None
        if intno in VECTORS_WITH_ERROR_CODE and not software:
            error_code = self.error_code.value & 0xFFFFFFFF
        length = 0
        if software:
            length = 2
            if intno in (BP, OF, DB):  # int3 (CC), into (CE), int1 (F1) are one byte long
                try:
                    previous = self._read_linear(self.eip.value - 1, 1)[0]
                except (_NestedFault, _Unbacked):
                    previous = 0
                if previous in (0xCC, 0xCE, 0xF1):
                    length = 1
        self.deliver(intno, error_code=error_code, software=software, instruction_length=length, saved=True)

    # -- real mode (the disk-boot path) -----------------------------------------------------------------------
    def _real_mode_interrupt(self, vector: int, software: bool) -> None:
        """An `int n` or exception before the boot loader leaves real mode: a BIOS service, or the IVT."""
        if software and self.bios_call is not None and self.bios_call(vector):
            return  # the BIOS (in Python) answered; the CPU goes on after the `int`
        self.save()
        self.old_exception.value = -1
        self.deliver_real_mode(vector)

    def deliver_real_mode(self, vector: int) -> None:
        """Real-mode delivery: push FLAGS, CS, IP on SS:SP, clear IF and TF, jump to the IVT entry.
        Expects the blob to hold the live state."""
        flags = self.rflags() & 0xFFFF
        cs, ip = self.segs[R_CS].selector.value & 0xFFFF, self.eip.value & 0xFFFF
        ss_base = self.segs[R_SS].base.value
        sp = (self.regs[RSP] - 6) & 0xFFFF
        frame = struct.pack("<HHH", ip, cs, flags)
        for i, byte in enumerate(frame):
            self.memory[ss_base + ((sp + i) & 0xFFFF)] = byte
        self.regs[RSP] = (self.regs[RSP] & ~0xFFFF) | sp
        offset, segment = struct.unpack_from("<HH", self.memory, vector * 4)
        self.segs[R_CS].load(segment, segment << 4, 0xFFFF, self.segs[R_CS].flags.value)
        self.eip.value = offset
        self.eflags.value &= ~(FLAG_IF | FLAG_TF)
        self.restore()
        self.deliveries += 1
        self.charge(self.ns_per_delivery)
        if self.on_delivery is not None:
            self.on_delivery(vector, None, ip, 0, False, False, 0)

    def enter_real_mode(self, cs: int, ip: int, sp: int, dl: int) -> None:
        """Put the CPU in the state a BIOS leaves before jumping to a boot sector (CS:IP = cs:ip, DL = drive).

        Unicorn's 64-bit engine runs real-mode code once its hidden state says so: paging, protection and
        long mode off, 16-bit segments with base = selector * 16."""
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR0, 0x10)  # ET only
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.msr_write(MSR_EFER, 0)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)
        self.save()
        self.efer.value = 0
        self.hflags.value = (self.hflags.value & ~(HF_CS32 | HF_SS32 | HF_CS64 | HF_LMA | HF_PE | HF_CPL_MASK)) \
            | HF_ADDSEG
        for index, segment in enumerate(self.segs):
            selector = cs if index == R_CS else 0
            kind = 0xB if index == R_CS else 0x3
            segment.load(selector, selector << 4, 0xFFFF, DESC_P | DESC_S | (kind << 8))
        for i in range(16):
            self.regs[i] = 0
        self.regs[RSP] = sp
        self.regs[RDX] = dl
        self.eip.value = ip
        self.gdt.load(0, 0, 0xFFFF, 0)
        self.idt.load(0, 0, 0x3FF, 0)
        self.restore()

    def code_address(self, rip: int) -> tuple[int, bool]:
        """(linear address of `rip`, whether it must go through the page tables)."""
        self.save()
        base = self.segs[R_CS].base.value if not self.hflags.value & HF_CS64 else 0
        return base + rip, bool(self.cr0.value & CR0_PG)

    def clear_stale_exception(self) -> None:
        """Forget the last exception QEMU raised, before the CPU runs again.

        QEMU records each exception it raises (`old_exception`) and resets the record only when its own
        delivery code has entered the handler, which Unicorn never runs. A raise that never reached a
        delivery (an instruction a hook redirected, a fault raised while the engine was stopping) therefore
        leaves the record set, and the guest's next, unrelated fault would be turned into #DF, or into a
        silent triple-fault halt after a #DF. No delivery is ever in progress between two runs of the CPU.
        """
        if self.live_old_exception is not None:
            self.live_old_exception.value = -1
            return
        self.save()
        if self.old_exception.value != -1:
            self.old_exception.value = -1
            self.restore()

    def replay_fault(self) -> None:
        """Re-run the faulting instruction on its own so that Unicorn reports its real exception."""
        self.replay_requested = False
        self.replaying = True
        self.clear_stale_exception()
        try:
            self.uc.emu_start(self.rip(), NOT_AN_ADDRESS, count=1)
        finally:
            self.replaying = False

    def hook_invalid_instruction(self, uc: Uc, user_data: object) -> bool:
        """UC_HOOK_INSN_INVALID: deliver #UD to the guest and tell Unicorn it was handled.

        Unicorn also calls this hook for a software `int $6` (it reports every vector-6 raise as an invalid
        instruction): that one is an `int n` like any other, with its gate's DPL check."""
        self.save()
        if not self.exception_is_int.value and self.emulate_invalid is not None and self.hflags.value & HF_LMA:
            rip = self.eip.value
            if self.emulate_invalid(rip, self._code_bytes(rip)) is not None:
                return True  # an instruction Unicorn refuses but the machine provides (rdrand, rdseed)
        try:
            if self.exception_is_int.value:  # `int $6` (eip still on the instruction): RIP goes past it
                self.eip.value = self.exception_next_eip.value
                self.deliver(UD, software=True, instruction_length=2, saved=True)
            else:
                self.deliver(UD, saved=True)
        except TripleFault as fault:
            # Unicorn would report an unhandled invalid instruction before our exception: keep it for the
            # machine, which checks `triple_fault` when the slice ends.
            self.triple_fault = fault
            uc.emu_stop()
        return True

    def _code_bytes(self, rip: int, length: int = 8) -> bytes:
        """Up to `length` bytes of code at `rip` (fewer where the next page is not mapped)."""
        out = b""
        for address in (rip, (rip | 0xFFF) + 1):
            want = min(length - len(out), 0x1000 - (address & 0xFFF))
            try:
                out += self._read_linear(address, want)
            except (_NestedFault, _Unbacked):
                break
            if len(out) == length:
                break
        return out

    def hook_syscall(self, uc: Uc, user_data: object) -> None:
        """UC_HOOK_INSN(SYSCALL): enter the kernel at LSTAR in ring 0, as the CPU does."""
        rflags = self.rflags()
        self.save()
        if not self.efer.value & EFER_SCE:
            self.deliver(UD, eip_bias=-2, saved=True)  # Unicorn adds 2 after this hook returns
            return
        regs = self.regs
        rip = self.eip.value  # the syscall instruction itself
        regs[RCX] = rip + 2
        regs[R11] = rflags & ~FLAG_RF
        kernel_cs = (self.star.value >> 32) & 0xFFFC
        self.segs[R_CS].load(kernel_cs, 0, 0xFFFFFFFF, FLAT_CODE64_DPL0)
        self.segs[R_SS].load(kernel_cs + 8, 0, 0xFFFFFFFF, FLAT_DATA_DPL0)
        self.hflags.value = (self.hflags.value & ~(HF_CPL_MASK | HF_ADDSEG)) | HF_CS32 | HF_SS32 | HF_CS64
        fmask = self.fmask.value
        self.eflags.value &= ~((fmask & ~(ARITH_FLAGS | FLAG_DF)) | FLAG_RF)
        if fmask & FLAG_DF:
            self.df.value = 1  # QEMU keeps DF as +1 (clear) / -1 (set)
        self.eip.value = self.lstar.value - 2
        self.restore()
        if fmask & ARITH_FLAGS:
            self.write_register(X.UC_X86_REG_RFLAGS, self.rflags() & ~fmask)
        self.syscalls += 1
        self.charge(self.ns_per_syscall)  # as the native fast_syscall_hook charges it
        if self.on_syscall is not None:
            self.on_syscall(rip, regs[RAX], self.cr3.value, (regs[RDI], regs[RSI], regs[RDX], regs[R10]))

    # -- I/O privilege -------------------------------------------------------------------------------------
    def io_permitted(self, port: int, size: int) -> bool:
        """May the current code touch `port`? CPL <= IOPL, or the TSS I/O bitmap clears every bit."""
        cpl = self.cpl()
        if cpl == 0 or cpl <= (self.rflags() & FLAG_IOPL) >> 12:
            return True
        self.save()
        limit = self.tr.limit.value
        base = self.tr.base.value
        try:
            bitmap = struct.unpack("<H", self._read_linear(base + 0x66, 2))[0] if limit >= 0x67 else None
            if bitmap is None or bitmap + (port + size - 1) // 8 > limit:
                return False
            first, last = port // 8, (port + size - 1) // 8
            bits = int.from_bytes(self._read_linear(base + bitmap + first, last - first + 1), "little")
        except (_NestedFault, _Unbacked):
            return False
        mask = ((1 << size) - 1) << (port % 8)
        return not bits & mask
