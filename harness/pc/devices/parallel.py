"""LPT1, the parallel port at 0x378 with a printer that is always ready: WeensyOS's log channel.

The guest latches a byte in the data register, then pulses STROBE through the control register; the printer
takes the byte on the pulse and hands it to `output`. The course kernel, for every byte, polls the status
register until /BUSY (bit 7) reads 1, writes the byte to 0x378, then writes 0x0D (SELECT | INIT | STROBE) and
0x0C to 0x37A; before its first byte it writes 0x00 to 0x37A once.

As in QEMU's parallel port, the byte is taken on the control write that turns STROBE from 0 to 1 while SELECT
(bit 3) and /INIT (bit 2) are both 1: a deselected printer, or one held in reset by /INIT = 0, takes nothing.
The printer is never busy and never out of paper, so the status register always reports ready.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from .base import Device, shared_register

# Ports.
PORT_DATA = 0x378
PORT_STATUS = 0x379
PORT_CONTROL = 0x37A

# Status register bits (those starting with "N" are active-low signals: 1 means not asserted).
STATUS_NERROR = 0x08
STATUS_SELECT = 0x10
STATUS_PAPER_OUT = 0x20
STATUS_NACK = 0x40
STATUS_NBUSY = 0x80
STATUS_READY = STATUS_NBUSY | STATUS_NACK | STATUS_SELECT | STATUS_NERROR

# Control register bits.
CONTROL_STROBE = 0x01
CONTROL_AUTOFEED = 0x02
CONTROL_NINIT = 0x04
CONTROL_SELECT = 0x08
CONTROL_IRQ_ENABLE = 0x10
CONTROL_BIDIRECTIONAL = 0x20
CONTROL_WRITABLE = 0x3F
CONTROL_READ_ONES = 0xC0  # unimplemented bits read as 1
CONTROL_RESET = CONTROL_NINIT | CONTROL_SELECT


class LptState(ctypes.Structure):
    """The port's registers in one C-compatible record: the native fast path (native/fastpath.c, which prints
    the kernel's log without calling Python per byte) reads and writes the same record."""

    _fields_ = [("data", ctypes.c_uint8), ("control", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 6),
                ("printed", ctypes.c_uint64)]


class ParallelPort(Device):
    """LPT1 with an always-ready printer that passes each strobed byte to `output(byte)`."""

    name = "lpt1"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_DATA, 3),)

    def __init__(self, output: Callable[[int], None]) -> None:
        self.output = output
        self.state = LptState(0, CONTROL_RESET)

    data = shared_register("state", "data")
    control = shared_register("state", "control")
    bytes_printed = shared_register("state", "printed")

    def reset(self) -> None:
        self.data = 0
        self.control = CONTROL_RESET

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_DATA:
            return self.data
        if port == PORT_STATUS:
            return STATUS_READY
        if port == PORT_CONTROL:
            return self.control | CONTROL_READ_ONES
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == PORT_DATA:
            self.data = value
        elif port == PORT_CONTROL:
            rising = value & CONTROL_STROBE and not self.control & CONTROL_STROBE
            selected = value & CONTROL_SELECT and value & CONTROL_NINIT
            self.control = value & CONTROL_WRITABLE
            if rising and selected:
                self.bytes_printed += 1
                self.output(self.data)

    def snapshot_state(self) -> dict[str, Any]:
        return {"data": self.data, "control": self.control, "bytes_printed": self.bytes_printed}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.data = state["data"]
        self.control = state["control"]
        self.bytes_printed = state["bytes_printed"]
