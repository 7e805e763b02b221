"""The legacy 8259A programmable interrupt controller pair (master at 0x20/0x21, slave at 0xA0/0xA1).

In this machine the 8259s are present only so that code which programs them finds registers that behave: the
ICW1-ICW4 initialisation sequence, the interrupt mask (OCW1, readable back on the data port), EOI and priority
commands (OCW2) and the IRR/ISR read select and poll command (OCW3). **They never deliver an interrupt**: no
device line is wired to them and they have no path to the CPU. WeensyOS masks both chips (`outb(0x21, 0xFF)`,
`outb(0xA1, 0xFF)`) and takes its interrupts through the local APIC, so nothing is lost; a kernel that unmasks
the 8259 and expects IRQ0 from the PIT will not get it here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .base import Device

# Ports.
PORT_MASTER_COMMAND = 0x20
PORT_MASTER_DATA = 0x21
PORT_SLAVE_COMMAND = 0xA0
PORT_SLAVE_DATA = 0xA1

# ICW1 (command port, bit 4 set).
ICW1_INIT = 0x10
ICW1_NEED_ICW4 = 0x01
ICW1_SINGLE = 0x02
ICW1_LEVEL = 0x08

# ICW4.
ICW4_AUTO_EOI = 0x02

# OCW2 (command port, bits 4 and 3 clear): command in bits 7-5, interrupt level in bits 2-0.
OCW2_ROTATE_AEOI_CLEAR = 0x0
OCW2_NONSPECIFIC_EOI = 0x1
OCW2_NOP = 0x2
OCW2_SPECIFIC_EOI = 0x3
OCW2_ROTATE_AEOI_SET = 0x4
OCW2_ROTATE_NONSPECIFIC_EOI = 0x5
OCW2_SET_PRIORITY = 0x6
OCW2_ROTATE_SPECIFIC_EOI = 0x7

# OCW3 (command port, bit 3 set, bit 4 clear).
OCW3_MARKER = 0x08
OCW3_READ_REGISTER = 0x02  # bit 1: act on bit 0
OCW3_READ_ISR = 0x01  # bit 0: 1 = ISR, 0 = IRR
OCW3_POLL = 0x04
OCW3_SPECIAL_MASK = 0x40  # bit 6: act on bit 5
OCW3_SET_SPECIAL_MASK = 0x20

# Power-on state, as firmware leaves the chips: vectors 0x08 and 0x70, cascade on master line 2, all masked.
MASTER_VECTOR_BASE = 0x08
SLAVE_VECTOR_BASE = 0x70
CASCADE_LINE = 2


@dataclass
class PicChip:
    """One 8259A's registers and where it is in the initialisation sequence."""

    vector_base: int
    icw3: int
    imr: int = 0xFF
    irr: int = 0
    isr: int = 0
    icw1: int = ICW1_INIT | ICW1_NEED_ICW4
    icw4: int = 0x01  # 8086 mode
    init_step: int = 0  # 0 = operational; 2, 3, 4 = the ICW expected next on the data port
    read_isr: bool = False
    poll: bool = False
    special_mask: bool = False
    rotate_on_auto_eoi: bool = False
    lowest_priority: int = 7  # the line with the lowest priority (fixed priority: line 0 highest)

    def priority_order(self) -> list[int]:
        """Lines from highest to lowest priority."""
        return [(self.lowest_priority + 1 + i) & 7 for i in range(8)]

    def highest_in_service(self) -> int | None:
        return next((line for line in self.priority_order() if self.isr & (1 << line)), None)

    def write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self.icw1 = value
            self.imr = 0
            self.isr = 0
            self.irr = 0
            self.read_isr = False
            self.poll = False
            self.special_mask = False
            self.lowest_priority = 7
            self.init_step = 2
        elif value & OCW3_MARKER:
            if value & OCW3_READ_REGISTER:
                self.read_isr = bool(value & OCW3_READ_ISR)
            if value & OCW3_SPECIAL_MASK:
                self.special_mask = bool(value & OCW3_SET_SPECIAL_MASK)
            self.poll = bool(value & OCW3_POLL)
        else:
            self._ocw2(value >> 5, value & 7)

    def _ocw2(self, command: int, level: int) -> None:
        if command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            line = self.highest_in_service()
            if line is not None:
                self.isr &= ~(1 << line)
                if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.lowest_priority = line
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.lowest_priority = level
        elif command == OCW2_SET_PRIORITY:
            self.lowest_priority = level
        elif command in (OCW2_ROTATE_AEOI_SET, OCW2_ROTATE_AEOI_CLEAR):
            self.rotate_on_auto_eoi = command == OCW2_ROTATE_AEOI_SET

    def write_data(self, value: int) -> None:
        if self.init_step == 2:
            self.vector_base = value & 0xF8
            self.init_step = 3 if not self.icw1 & ICW1_SINGLE else self._after_icw3()
        elif self.init_step == 3:
            self.icw3 = value
            self.init_step = self._after_icw3()
        elif self.init_step == 4:
            self.icw4 = value
            self.init_step = 0
        else:
            self.imr = value  # OCW1

    def _after_icw3(self) -> int:
        return 4 if self.icw1 & ICW1_NEED_ICW4 else 0

    def read_command(self) -> int:
        if self.poll:
            self.poll = False
            pending = self.irr & ~self.imr
            line = next((n for n in self.priority_order() if pending & (1 << n)), None)
            return 0 if line is None else 0x80 | line
        return self.isr if self.read_isr else self.irr

    def read_data(self) -> int:
        return self.imr


class Pic8259(Device):
    """Master and slave 8259A: programmable, readable, and never a source of interrupts in this machine."""

    name = "i8259"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_MASTER_COMMAND, 2), (PORT_SLAVE_COMMAND, 2))

    def __init__(self) -> None:
        self.master = PicChip(vector_base=MASTER_VECTOR_BASE, icw3=1 << CASCADE_LINE)
        self.slave = PicChip(vector_base=SLAVE_VECTOR_BASE, icw3=CASCADE_LINE)

    def reset(self) -> None:
        self.master = PicChip(vector_base=MASTER_VECTOR_BASE, icw3=1 << CASCADE_LINE)
        self.slave = PicChip(vector_base=SLAVE_VECTOR_BASE, icw3=CASCADE_LINE)

    def _chip(self, port: int) -> PicChip | None:
        if port in (PORT_MASTER_COMMAND, PORT_MASTER_DATA):
            return self.master
        if port in (PORT_SLAVE_COMMAND, PORT_SLAVE_DATA):
            return self.slave
        return None

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):  # an 8-bit device: wider accesses are consecutive byte accesses
            chip = self._chip(port + i)
            byte = 0xFF if chip is None else chip.read_data() if (port + i) & 1 else chip.read_command()
            value |= byte << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            chip = self._chip(port + i)
            if chip is None:
                continue
            byte = (value >> (8 * i)) & 0xFF
            if (port + i) & 1:
                chip.write_data(byte)
            else:
                chip.write_command(byte)

    def snapshot_state(self) -> dict[str, Any]:
        return {"master": dataclasses.asdict(self.master), "slave": dataclasses.asdict(self.slave)}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.master = PicChip(**state["master"])
        self.slave = PicChip(**state["slave"])
