"""The I/O APIC at 0xFEC00000: 24 redirection entries that turn device interrupt lines into APIC vectors.

Registers are reached indirectly: the guest writes a register number to IOREGSEL (offset 0x00) and then reads
or writes that register through IOWIN (offset 0x10). WeensyOS only reads the version register (it asserts
version 0x11 or 0x20 with at least 0x17 as the maximum redirection entry) and leaves every entry masked, but
the model forwards interrupts properly for kernels that program it.

Interrupts are modelled as edges with fixed (or lowest-priority, equivalent with one CPU) delivery to the one
local APIC: `raise_irq(line)` sends the entry's vector if the entry is unmasked and drops the edge otherwise,
as hardware does. Level-triggered bookkeeping (remote IRR), polarity and the other delivery modes (SMI, NMI,
INIT, ExtINT) are not modelled; such entries deliver nothing.
"""

from __future__ import annotations

from typing import Any

from .base import Device, InterruptSink

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000

# MMIO offsets.
IOREGSEL = 0x00
IOWIN = 0x10
IOEOI = 0x40  # version 0x20 EOI register: only meaningful for level-triggered entries, ignored

# Indirect registers.
REG_ID = 0x00
REG_VERSION = 0x01
REG_ARBITRATION = 0x02
REG_REDIRECTION = 0x10  # entry n: low dword at 0x10 + 2n, high dword at 0x11 + 2n

ENTRY_COUNT = 24
VERSION_VALUE = ((ENTRY_COUNT - 1) << 16) | 0x20  # 0x00170020, as QEMU's q35 I/O APIC

ID_MASK = 0x0F000000

# Redirection entry bits (low dword).
RTE_VECTOR = 0xFF
RTE_DELIVERY_SHIFT = 8
RTE_DELIVERY_MASK = 0x7 << RTE_DELIVERY_SHIFT
DELIVERY_FIXED = 0
DELIVERY_LOWEST_PRIORITY = 1
RTE_MASKED = 1 << 16
RTE_LOW_RESET = RTE_MASKED
RTE_LOW_WRITABLE = 0x0001AFFF  # vector, delivery mode, destination mode, polarity, trigger mode, mask
RTE_HIGH_WRITABLE = 0xFF000000  # destination field


class IoApic(Device):
    """The I/O APIC: IOREGSEL/IOWIN register window and `raise_irq()` for the machine's interrupt lines."""

    name = "ioapic"
    MMIO_BASE = IOAPIC_BASE
    MMIO_SIZE = IOAPIC_SIZE

    def __init__(self, sink: InterruptSink) -> None:
        self.sink = sink
        self.select = 0
        self.id = 0
        self.redirection_low = [RTE_LOW_RESET] * ENTRY_COUNT
        self.redirection_high = [0] * ENTRY_COUNT
        self.reset()

    def reset(self) -> None:
        self.select = 0
        self.id = 0
        self.redirection_low = [RTE_LOW_RESET] * ENTRY_COUNT
        self.redirection_high = [0] * ENTRY_COUNT

    # --- interrupt lines --------------------------------------------------------------------------------

    def raise_irq(self, line: int) -> None:
        """An edge on input `line` (0-23): deliver the entry's vector to the local APIC unless masked."""
        if not 0 <= line < ENTRY_COUNT:
            raise ValueError(f"I/O APIC has no input line {line}")
        low = self.redirection_low[line]
        if low & RTE_MASKED:
            return
        mode = (low & RTE_DELIVERY_MASK) >> RTE_DELIVERY_SHIFT
        if mode in (DELIVERY_FIXED, DELIVERY_LOWEST_PRIORITY):
            self.sink.accept_vector(low & RTE_VECTOR)

    # --- indirect registers -----------------------------------------------------------------------------

    def read_register(self, reg: int) -> int:
        """Value of indirect register `reg` (what IOWIN reads after IOREGSEL = reg)."""
        if reg == REG_ID:
            return self.id
        if reg == REG_VERSION:
            return VERSION_VALUE
        if reg == REG_ARBITRATION:
            return self.id  # arbitration ID follows the APIC ID after reset
        index = reg - REG_REDIRECTION
        if 0 <= index < 2 * ENTRY_COUNT:
            entries = self.redirection_high if index & 1 else self.redirection_low
            return entries[index >> 1]
        return 0

    def write_register(self, reg: int, value: int) -> None:
        """Write indirect register `reg`, keeping read-only bits."""
        if reg == REG_ID:
            self.id = value & ID_MASK
            return
        index = reg - REG_REDIRECTION
        if 0 <= index < 2 * ENTRY_COUNT:
            if index & 1:
                self.redirection_high[index >> 1] = value & RTE_HIGH_WRITABLE
            else:
                self.redirection_low[index >> 1] = value & RTE_LOW_WRITABLE
        # Version, arbitration and unknown registers are read-only.

    # --- MMIO -------------------------------------------------------------------------------------------

    def _read_dword(self, dword: int) -> int:
        if dword == IOREGSEL:
            return self.select
        if dword == IOWIN:
            return self.read_register(self.select)
        return 0

    def mmio_read(self, offset: int, size: int) -> int:
        shift = 8 * (offset & 0x3)
        return (self._read_dword(offset & ~0x3) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        dword = offset & ~0x3
        if dword not in (IOREGSEL, IOWIN):
            return  # IOEOI and reserved space
        shift = 8 * (offset & 0x3)
        field = ((1 << (8 * size)) - 1) << shift
        full = ((self._read_dword(dword) & ~field) | ((value << shift) & field)) & 0xFFFFFFFF
        if dword == IOREGSEL:
            self.select = full & 0xFF
        else:
            self.write_register(self.select, full)

    # --- snapshots --------------------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "select": self.select,
            "id": self.id,
            "redirection_low": list(self.redirection_low),
            "redirection_high": list(self.redirection_high),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.select = state["select"]
        self.id = state["id"]
        self.redirection_low = list(state["redirection_low"])
        self.redirection_high = list(state["redirection_high"])
