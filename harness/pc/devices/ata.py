"""The primary ATA (IDE) channel with one hard disk, in PIO mode: enough for a boot loader and a kernel.

Ports 0x1F0-0x1F7 (command block) and 0x3F6 (control block) as on a PC's legacy primary channel. Commands:
READ SECTORS (0x20, LBA28 or CHS), WRITE SECTORS (0x30, into a private copy: the image file is never
modified), IDENTIFY DEVICE (0xEC). Data moves through the 16-bit data port (a 32-bit `insl` reads two words
at once). The disk is always ready: commands complete at once, so status reads DRDY (and DRQ while a sector
is being transferred). IRQ 14 is raised at each DRQ when interrupts are enabled in the device control
register (nIEN clear); a polling loader simply ignores it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from .base import Device, shared_register

PORT_DATA = 0x1F0
PORT_ERROR = 0x1F1  # read: error; write: features
PORT_SECTOR_COUNT = 0x1F2
PORT_LBA_LOW = 0x1F3
PORT_LBA_MID = 0x1F4
PORT_LBA_HIGH = 0x1F5
PORT_DRIVE_HEAD = 0x1F6
PORT_STATUS = 0x1F7  # read: status; write: command
PORT_ALT_STATUS = 0x3F6  # read: alternate status; write: device control

STATUS_ERR = 0x01
STATUS_DRQ = 0x08
STATUS_DSC = 0x10
STATUS_DF = 0x20
STATUS_DRDY = 0x40
STATUS_BSY = 0x80

ERROR_ABRT = 0x04
ERROR_IDNF = 0x10

CONTROL_NIEN = 0x02
CONTROL_SRST = 0x04

CMD_READ_SECTORS = 0x20
CMD_READ_SECTORS_NORETRY = 0x21
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_SECTORS_NORETRY = 0x31
CMD_IDENTIFY = 0xEC

SECTOR = 512
HEADS, SECTORS_PER_TRACK = 16, 63  # the CHS geometry reported by IDENTIFY


class AtaTransfer(ctypes.Structure):
    """The data-port side of the drive in one C-compatible record. The native fast path (native/fastpath.c)
    answers the boot loader's data-port reads from it, all but the last word of each buffer: that one ends the
    sector, which this model handles. It also answers status reads, which change nothing."""

    _fields_ = [("buffer", ctypes.c_void_p), ("position", ctypes.c_uint32), ("length", ctypes.c_uint32),
                ("status", ctypes.c_uint8), ("writing", ctypes.c_uint8), ("drive_head", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 5)]


class AtaDisk(Device):
    """The master drive of the primary channel; `image` is the whole disk."""

    name = "ata0"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_DATA, 8), (PORT_ALT_STATUS, 1))

    def __init__(self, image: bytes, irq: Callable[[], None] | None = None) -> None:
        self.disk = bytearray(image)  # writes land here, never in the file
        self.sectors = len(image) // SECTOR
        self.irq = irq
        self.transfer = AtaTransfer()
        self._buffer = bytearray()
        self._buffer_view: ctypes.Array[ctypes.c_char] | None = None
        self.reset()

    # The transfer state lives in `transfer`, shared with the native fast path.
    @property
    def buffer(self) -> bytearray:
        return self._buffer

    @buffer.setter
    def buffer(self, data: bytearray) -> None:
        self._buffer = data  # a new bytearray each time: the native side keeps its address, never resized
        self._buffer_view = (ctypes.c_char * len(data)).from_buffer(data) if data else None
        self.transfer.buffer = ctypes.addressof(self._buffer_view) if self._buffer_view is not None else None
        self.transfer.length = len(data)

    position = shared_register("transfer", "position")
    status = shared_register("transfer", "status")
    drive_head = shared_register("transfer", "drive_head")
    writing = shared_register("transfer", "writing", bool)

    def reset(self) -> None:
        self.features = 0
        self.sector_count = 1
        self.lba = [1, 0, 0]  # low, mid, high
        self.drive_head = 0xA0
        self.status = STATUS_DRDY | STATUS_DSC
        self.error = 0x01  # "no error" diagnostic code after reset
        self.control = 0
        self.buffer = bytearray()
        self.position = 0
        self.remaining = 0  # sectors still to transfer after the buffer
        self.next_sector = 0
        self.writing = False

    # -- registers -------------------------------------------------------------------------------------------
    def _selected_slave(self) -> bool:
        return bool(self.drive_head & 0x10)

    def _address(self) -> int:
        if self.drive_head & 0x40:  # LBA28
            return self.lba[0] | self.lba[1] << 8 | self.lba[2] << 16 | (self.drive_head & 0x0F) << 24
        cylinder = self.lba[1] | self.lba[2] << 8
        head = self.drive_head & 0x0F
        sector = self.lba[0]
        return (cylinder * HEADS + head) * SECTORS_PER_TRACK + sector - 1

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_DATA:
            return self._read_data(size)
        if self._selected_slave():
            return 0  # no slave drive: floating registers read as 0 (status 0 = "nothing here")
        if port == PORT_ERROR:
            return self.error
        if port == PORT_SECTOR_COUNT:
            return self.sector_count & 0xFF
        if port in (PORT_LBA_LOW, PORT_LBA_MID, PORT_LBA_HIGH):
            return self.lba[port - PORT_LBA_LOW]
        if port == PORT_DRIVE_HEAD:
            return self.drive_head
        return self.status  # PORT_STATUS or PORT_ALT_STATUS

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == PORT_DATA:
            self._write_data(size, value)
        elif port == PORT_ERROR:
            self.features = value & 0xFF
        elif port == PORT_SECTOR_COUNT:
            self.sector_count = value & 0xFF
        elif port in (PORT_LBA_LOW, PORT_LBA_MID, PORT_LBA_HIGH):
            self.lba[port - PORT_LBA_LOW] = value & 0xFF
        elif port == PORT_DRIVE_HEAD:
            self.drive_head = value & 0xFF
        elif port == PORT_STATUS:
            if not self._selected_slave():
                self._command(value & 0xFF)
        elif port == PORT_ALT_STATUS:
            if value & CONTROL_SRST and not self.control & CONTROL_SRST:
                self.reset()
            self.control = value & 0xFF

    # -- commands ----------------------------------------------------------------------------------------------
    def _fail(self, error: int) -> None:
        self.status = STATUS_DRDY | STATUS_DSC | STATUS_ERR
        self.error = error
        self.buffer = bytearray()
        self.remaining = 0

    def _command(self, command: int) -> None:
        self.error = 0
        count = self.sector_count or 256
        if command in (CMD_READ_SECTORS, CMD_READ_SECTORS_NORETRY, CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY):
            first = self._address()
            if first < 0 or first + count > self.sectors:
                self._fail(ERROR_IDNF)
                return
            self.writing = command in (CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY)
            self.next_sector = first
            self.remaining = count
            self._next_buffer()
        elif command == CMD_IDENTIFY:
            self.writing = False
            self.remaining = 0
            self.buffer = self._identify()
            self.position = 0
            self._data_ready()
        else:
            self._fail(ERROR_ABRT)

    def _next_buffer(self) -> None:
        sector = self.next_sector
        if self.writing:
            self.buffer = bytearray(SECTOR)
        else:
            self.buffer = bytearray(self.disk[sector * SECTOR:(sector + 1) * SECTOR])
        self.position = 0
        self.remaining -= 1
        self.next_sector += 1
        self._data_ready()

    def _data_ready(self) -> None:
        self.status = STATUS_DRDY | STATUS_DSC | STATUS_DRQ
        if self.irq is not None and not self.control & CONTROL_NIEN:
            self.irq()

    def _sector_done(self) -> None:
        if self.writing:
            sector = self.next_sector - 1
            self.disk[sector * SECTOR:(sector + 1) * SECTOR] = self.buffer
        if self.remaining:
            self._next_buffer()
        else:
            self.buffer = bytearray()
            self.status = STATUS_DRDY | STATUS_DSC

    def _read_data(self, size: int) -> int:
        if not self.status & STATUS_DRQ or self.writing:
            return (1 << (8 * size)) - 1
        chunk = self.buffer[self.position:self.position + size]
        self.position += size
        if self.position >= len(self.buffer):
            self._sector_done()
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def _write_data(self, size: int, value: int) -> None:
        if not self.status & STATUS_DRQ or not self.writing:
            return
        self.buffer[self.position:self.position + size] = value.to_bytes(size, "little")
        self.position += size
        if self.position >= SECTOR:
            self._sector_done()

    def _identify(self) -> bytearray:
        words = [0] * 256
        cylinders = min(self.sectors // (HEADS * SECTORS_PER_TRACK), 16383)
        words[0] = 0x0040  # fixed disk
        words[1], words[3], words[6] = cylinders, HEADS, SECTORS_PER_TRACK

        def text(first: int, count: int, value: str) -> None:
            padded = value.ljust(count * 2)
            for i in range(count):
                words[first + i] = ord(padded[2 * i]) << 8 | ord(padded[2 * i + 1])

        text(10, 10, "WEENSY0001")
        text(23, 4, "0.1")
        text(27, 20, "WeensyOS harness disk")
        words[49] = 0x0200  # LBA supported
        words[60], words[61] = self.sectors & 0xFFFF, (self.sectors >> 16) & 0x0FFF
        return bytearray(b"".join(w.to_bytes(2, "little") for w in words))

    # -- snapshots ---------------------------------------------------------------------------------------------
    def snapshot_state(self) -> dict[str, Any]:
        return {"features": self.features, "sector_count": self.sector_count, "lba": list(self.lba),
                "drive_head": self.drive_head, "status": self.status, "error": self.error,
                "control": self.control, "buffer": self.buffer.hex(), "position": self.position,
                "remaining": self.remaining, "next_sector": self.next_sector, "writing": self.writing}

    def restore_state(self, state: dict[str, Any]) -> None:
        for key in ("features", "sector_count", "drive_head", "status", "error", "control", "position",
                    "remaining", "next_sector", "writing"):
            setattr(self, key, state[key])
        self.lba = list(state["lba"])
        self.buffer = bytearray.fromhex(state["buffer"])
