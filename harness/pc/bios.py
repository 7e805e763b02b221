"""The few BIOS services a PC boot loader calls, answered by the harness (there is no BIOS ROM to run).

In real mode an `int n` reaches the harness through Unicorn's interrupt hook. If the interrupt vector table
still points at the BIOS (segment F000, where every entry starts out), the service runs here in Python and the
CPU goes on after the `int` instruction, as if the BIOS handler had returned; a vector the guest installed
itself is entered normally, through the IVT.

Services: int 0x10 (teletype output, cursor, set mode 3), int 0x12 (low memory size), int 0x13 (reset,
CHS and extended reads of the boot disk, drive parameters, extension check), int 0x15 (AX=0xEC00 "OS will run
in long mode", E820 memory map, AH=0x88 extended memory, A20 gate), int 0x16 (no key waiting),
int 0x1A AH=0 (tick count from the virtual clock). Anything else returns with CF set and AH=0x86.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from unicorn import Uc
from unicorn import x86_const as X

from .clock import VirtualClock
from .cpu import Cpu
from .devices.cga import CgaConsole
from .hooks import Recorder
from .loader import blank_text_memory

BIOS_SEGMENT = 0xF000
IRET_STUB = 0xFF53  # F000:FF53 holds an `iret`, where every IVT entry points at power-on
FLAG_CF = 1
UNSUPPORTED = 0x86


class BiosBoard(Protocol):
    """The parts of the board the BIOS uses (a protocol: the board that owns the BIOS is not imported here)."""

    memory: memoryview
    uc: Uc
    cpu: Cpu
    console: CgaConsole
    clock: VirtualClock
    tracer: Recorder


class Bios:
    def __init__(self, machine: BiosBoard, disk: bytes | None = None) -> None:
        self.machine = machine
        self.disk = disk or b""
        self.reported: set[tuple[int, int]] = set()
        self.services: dict[int, Callable[[], None]] = {
            0x10: self._video, 0x12: self._memory_size, 0x13: self._disk, 0x15: self._system,
            0x16: self._keyboard, 0x1A: self._time}

    # -- power-on state ---------------------------------------------------------------------------------------
    def install(self) -> None:
        """IVT entries -> F000:FF53 (an `iret`), the BIOS data area's memory size and boot drive count, and the
        text screen that the BIOS's mode 3 leaves: all of text memory blank in light grey."""
        memory = self.machine.memory
        blank_text_memory(memory)
        for vector in range(256):
            struct.pack_into("<HH", memory, vector * 4, IRET_STUB, BIOS_SEGMENT)
        memory[BIOS_SEGMENT * 16 + IRET_STUB] = 0xCF
        struct.pack_into("<H", memory, 0x413, 639)  # KiB of conventional memory
        memory[0x475] = 1  # one hard disk

    def owns(self, vector: int) -> bool:
        """True while the vector still points into the BIOS (the guest did not install its own handler)."""
        segment = struct.unpack_from("<H", self.machine.memory, vector * 4 + 2)[0]
        return segment == BIOS_SEGMENT and vector in self.services

    def call(self, vector: int) -> None:
        self.services[vector]()

    # -- register helpers -------------------------------------------------------------------------------------
    def _get(self, register: int) -> int:
        return self.machine.cpu.read_register(register)

    def _set(self, register: int, value: int) -> None:
        self.machine.cpu.write_register(register, value)

    def _ah(self) -> int:
        return (self._get(X.UC_X86_REG_RAX) >> 8) & 0xFF

    def _set_ah(self, value: int) -> None:
        rax = self._get(X.UC_X86_REG_RAX)
        self._set(X.UC_X86_REG_RAX, (rax & ~0xFF00) | (value & 0xFF) << 8)

    def _carry(self, on: bool) -> None:
        flags = self._get(X.UC_X86_REG_RFLAGS)
        self._set(X.UC_X86_REG_RFLAGS, flags | FLAG_CF if on else flags & ~FLAG_CF)

    def _ok(self) -> None:
        self._set_ah(0)
        self._carry(False)

    def _unsupported(self, vector: int) -> None:
        function = self._get(X.UC_X86_REG_RAX) & 0xFFFF
        if (vector, function) not in self.reported:
            self.reported.add((vector, function))
            self.machine.tracer.machine_event(f"BIOS int {vector:#x} AX={function:#06x} is not supported; "
                                              f"returned CF=1, AH=0x86 (reported once)")
        self._set_ah(UNSUPPORTED)
        self._carry(True)

    def _linear(self, segment_register: int, offset: int) -> int:
        return (self._get(segment_register) & 0xFFFF) * 16 + (offset & 0xFFFF)

    # -- services ---------------------------------------------------------------------------------------------
    def _video(self) -> None:
        ah = self._ah()
        console = self.machine.console
        memory = self.machine.memory
        if ah == 0x00:  # set video mode: 80x25 text, all of text memory cleared
            blank_text_memory(memory)
            console.set_cursor(0)
        elif ah == 0x02:  # set cursor: DH row, DL column
            dx = self._get(X.UC_X86_REG_RDX)
            console.set_cursor(((dx >> 8) & 0xFF) * 80 + (dx & 0xFF))
        elif ah == 0x03:  # get cursor
            row, column = divmod(console.cursor(), 80)
            self._set(X.UC_X86_REG_RDX, row << 8 | column)
            self._set(X.UC_X86_REG_RCX, 0x0607)
        elif ah == 0x0E:  # teletype output of AL
            self._teletype(self._get(X.UC_X86_REG_RAX) & 0xFF)
        else:
            self._unsupported(0x10)
            return
        self._carry(False)

    def _teletype(self, char: int) -> None:
        console = self.machine.console
        memory = self.machine.memory
        position = console.cursor()
        if char == 0x0D:
            position -= position % 80
        elif char == 0x0A:
            position += 80
        elif char == 0x08:
            position = max(position - 1, 0)
        else:
            memory[0xB8000 + 2 * position] = char
            memory[0xB8000 + 2 * position + 1] = 0x07
            position += 1
        if position >= 2000:  # scroll up one row
            memory[0xB8000:0xB8000 + 3840] = memory[0xB8000 + 160:0xB8000 + 4000]
            memory[0xB8000 + 3840:0xB8000 + 4000] = b"\x20\x07" * 80
            position -= 80
        console.set_cursor(position)

    def _memory_size(self) -> None:
        self._set(X.UC_X86_REG_RAX, 639)

    def _read_disk(self, lba: int, count: int, address: int) -> bool:
        start, end = lba * 512, (lba + count) * 512
        if end > len(self.disk) or address + count * 512 > len(self.machine.memory):
            return False
        self.machine.memory[address:address + count * 512] = self.disk[start:end]
        self.machine.uc.ctl_remove_cache(address, address + count * 512)
        return True

    def _disk(self) -> None:
        ah = self._ah()
        dl = self._get(X.UC_X86_REG_RDX) & 0xFF
        if dl != 0x80 and ah != 0x00:
            self._set_ah(0x01)  # only the boot disk exists
            self._carry(True)
            return
        if ah == 0x00:
            self._ok()
        elif ah == 0x41:  # extensions present?
            if self._get(X.UC_X86_REG_RBX) & 0xFFFF == 0x55AA:
                self._set(X.UC_X86_REG_RBX, 0xAA55)
                self._set(X.UC_X86_REG_RCX, 0x0001)  # packet access
                self._ok()
            else:
                self._unsupported(0x13)
        elif ah == 0x42:  # extended read: DS:SI -> disk address packet
            packet = self._linear(X.UC_X86_REG_DS, self._get(X.UC_X86_REG_RSI))
            _, _, count, offset, segment, lba = struct.unpack_from("<BBHHHQ", self.machine.memory, packet)
            if self._read_disk(lba, count, segment * 16 + offset):
                self._ok()
            else:
                self._set_ah(0x04)  # sector not found
                self._carry(True)
        elif ah == 0x02:  # CHS read: AL sectors, CH/CL cylinder and sector, DH head, ES:BX buffer
            rax, rcx, rdx = (self._get(r) for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))
            count = rax & 0xFF
            cylinder = ((rcx >> 8) & 0xFF) | (rcx & 0xC0) << 2
            sector = rcx & 0x3F
            head = (rdx >> 8) & 0xFF
            lba = (cylinder * 16 + head) * 63 + sector - 1
            if sector and self._read_disk(lba, count, self._linear(X.UC_X86_REG_ES, self._get(X.UC_X86_REG_RBX))):
                self._ok()
            else:
                self._set_ah(0x04)
                self._carry(True)
        elif ah == 0x08:  # drive parameters: 16 heads, 63 sectors per track
            cylinders = max(len(self.disk) // (512 * 16 * 63), 1) - 1
            self._set(X.UC_X86_REG_RCX, (cylinders & 0xFF) << 8 | (cylinders >> 2) & 0xC0 | 63)
            self._set(X.UC_X86_REG_RDX, 15 << 8 | 1)
            self._ok()
        else:
            self._unsupported(0x13)

    def _system(self) -> None:
        rax = self._get(X.UC_X86_REG_RAX) & 0xFFFF
        if rax in (0xEC00, 0x2400, 0x2401):  # "the OS will run in long mode"; A20 gate (always on here)
            self._ok()
        elif rax == 0xE820:
            self._e820()
        elif rax >> 8 == 0x88:
            ram = len(self.machine.memory)
            self._set(X.UC_X86_REG_RAX, min((ram - 0x100000) // 1024, 0xFFFF))
            self._carry(False)
        else:
            self._unsupported(0x15)

    def _e820(self) -> None:
        ram = len(self.machine.memory)
        regions = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, ram - 0x100000, 1)]
        index = self._get(X.UC_X86_REG_RBX) & 0xFFFFFFFF
        if self._get(X.UC_X86_REG_RDX) & 0xFFFFFFFF != 0x534D4150 or index >= len(regions):
            self._unsupported(0x15)
            return
        base, length, kind = regions[index]
        address = self._linear(X.UC_X86_REG_ES, self._get(X.UC_X86_REG_RDI))
        struct.pack_into("<QQI", self.machine.memory, address, base, length, kind)
        self._set(X.UC_X86_REG_RAX, 0x534D4150)
        self._set(X.UC_X86_REG_RCX, 20)
        self._set(X.UC_X86_REG_RBX, index + 1 if index + 1 < len(regions) else 0)
        self._carry(False)

    def _keyboard(self) -> None:
        if self._ah() in (0x01, 0x11):  # no key waiting: ZF set
            flags = self._get(X.UC_X86_REG_RFLAGS)
            self._set(X.UC_X86_REG_RFLAGS, flags | 0x40)
            self._carry(False)
        else:
            self._unsupported(0x16)

    def _time(self) -> None:
        if self._ah() != 0x00:
            self._unsupported(0x1A)
            return
        ticks = self.machine.clock.now_ns() * 182 // 10_000_000_000  # 18.2 Hz since power-on
        self._set(X.UC_X86_REG_RCX, (ticks >> 16) & 0xFFFF)
        self._set(X.UC_X86_REG_RDX, ticks & 0xFFFF)
        self._set_ah(0)
        self._carry(False)
