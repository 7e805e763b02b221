"""CGA/VGA colour text console: the 80x25 text buffer at 0xB8000 and the CRT controller's cursor registers.

The text buffer is ordinary guest RAM: the kernel and user processes store 16-bit cells (`char | attr << 8`)
into it directly, so this device never intercepts those stores; it only reads the buffer when the harness asks
what is on screen. What the device does own is the 6845-style CRT controller behind the index/data port pair
0x3D4/0x3D5, whose registers 14/15 hold the hardware cursor that WeensyOS moves on every kernel entry, and
the input status register 0x3DA, which some code polls waiting for vertical retrace.

The CRTC start-address registers (12/13) are stored but not applied: the screen always shows the buffer from
`base`, which is how every WeensyOS scrolls (by copying rows, not by moving the start address).
"""

from __future__ import annotations

import codecs
from typing import Any

from .base import Device

# Ports.
PORT_CRTC_INDEX = 0x3D4
PORT_CRTC_DATA = 0x3D5
PORT_INPUT_STATUS = 0x3DA

# CRTC register indices.
CRTC_CURSOR_START = 0x0A  # bit 5 = cursor off, bits 0-4 = first scan line of the cursor
CRTC_CURSOR_END = 0x0B
CRTC_START_ADDR_HIGH = 0x0C
CRTC_START_ADDR_LOW = 0x0D
CRTC_CURSOR_HIGH = 0x0E
CRTC_CURSOR_LOW = 0x0F
CRTC_VERTICAL_RETRACE_END = 0x11  # bit 7 write-protects registers 0-7
CRTC_REGISTER_COUNT = 0x19  # VGA CRTC registers 0x00-0x18

CURSOR_DISABLE = 0x20  # bit 5 of CRTC_CURSOR_START
CRTC_PROTECT = 0x80  # bit 7 of CRTC_VERTICAL_RETRACE_END

# Input status register 1 bits that toggle so that retrace-polling loops terminate.
STATUS_DISPLAY_INACTIVE = 0x01
STATUS_VERTICAL_RETRACE = 0x08

# Geometry.
COLUMNS = 80
ROWS = 25
CELLS = COLUMNS * ROWS
CELL_BYTES = 2
BUFFER_BYTES = CELLS * CELL_BYTES
DEFAULT_BASE = 0xB8000

# CRTC contents of VGA text mode 3 (80x25 colour), as firmware leaves the card before the OS boots.
_MODE3_CRTC = bytes(
    (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00,
     0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF)
)  # fmt: skip

# Code page 437 glyphs for bytes 0x01-0x1F and 0x7F, which Python's 'cp437' codec maps to control characters.
_CP437_LOW = (
    "\u0020\u263a\u263b\u2665\u2666\u2663\u2660\u2022\u25d8\u25cb\u25d9\u2642\u2640\u266a\u266b\u263c"
    "\u25ba\u25c4\u2195\u203c\u00b6\u00a7\u25ac\u21a8\u2191\u2193\u2192\u2190\u221f\u2194\u25b2\u25bc"
)
_CP437_DEL = "\u2302"


def _build_cp437_table() -> tuple[str, ...]:
    """One display character per byte value: the CP437 glyph, with byte 0 (an empty cell) shown as a space."""
    table = list(_CP437_LOW)
    table += [chr(b) for b in range(0x20, 0x7F)]
    table.append(_CP437_DEL)
    table += list(bytes(range(0x80, 0x100)).decode("cp437"))
    assert len(table) == 256
    return tuple(table)


CP437 = _build_cp437_table()
_CP437_DECODING = "".join(CP437)  # the same as a charmap decoding table: one C call decodes the whole screen


class CgaConsole(Device):
    """The colour text display: CRTC cursor registers on ports, text cells read from guest RAM on demand."""

    name = "cga"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_CRTC_INDEX, 2), (PORT_INPUT_STATUS, 1))

    def __init__(self, ram: memoryview, base: int = DEFAULT_BASE) -> None:
        if base < 0 or base + BUFFER_BYTES > len(ram):
            raise ValueError(
                f"text buffer {base:#x}+{BUFFER_BYTES:#x} lies outside guest RAM ({len(ram):#x} bytes)"
            )
        self.ram = ram
        self.base = base
        self.crtc = bytearray(CRTC_REGISTER_COUNT)
        self.index = 0
        self.retrace = False
        self.reset()

    def reset(self) -> None:
        self.crtc[:] = _MODE3_CRTC
        self.index = 0
        self.retrace = False

    # --- port I/O ---------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        # The card sits on an 8-bit bus: a wider access is a run of byte accesses to consecutive ports.
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        # `outw(0x3D4, index | data << 8)` is the common idiom: index byte to 0x3D4, data byte to 0x3D5.
        for i in range(size):
            self._write_byte(port + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port: int) -> int:
        if port == PORT_CRTC_INDEX:
            return self.index
        if port == PORT_CRTC_DATA:
            return self.crtc[self.index] if self.index < CRTC_REGISTER_COUNT else 0
        if port == PORT_INPUT_STATUS:
            self.retrace = not self.retrace
            return (STATUS_DISPLAY_INACTIVE | STATUS_VERTICAL_RETRACE) if self.retrace else 0
        return 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        if port == PORT_CRTC_INDEX:
            self.index = value & 0x1F
        elif port == PORT_CRTC_DATA and self.index < CRTC_REGISTER_COUNT:
            if self.index < 8 and self.crtc[CRTC_VERTICAL_RETRACE_END] & CRTC_PROTECT:
                return  # timing registers are write-protected; nothing visible depends on them anyway
            self.crtc[self.index] = value

    # --- what the harness reads -------------------------------------------------------------------------

    def cursor(self) -> int:
        """Cursor cell index from CRTC registers 14/15 (row * 80 + column; 2000 or more is off screen)."""
        return ((self.crtc[CRTC_CURSOR_HIGH] << 8) | self.crtc[CRTC_CURSOR_LOW]) & 0x3FFF

    def set_cursor(self, position: int) -> None:
        """Move the cursor as the video BIOS does (through CRTC registers 14/15)."""
        self.crtc[CRTC_CURSOR_HIGH] = (position >> 8) & 0x3F
        self.crtc[CRTC_CURSOR_LOW] = position & 0xFF

    def cursor_visible(self) -> bool:
        """Whether the cursor is enabled (CRTC register 10 bit 5 clear) and inside the 80x25 screen."""
        return not self.crtc[CRTC_CURSOR_START] & CURSOR_DISABLE and self.cursor() < CELLS

    def _buffer(self) -> bytes:
        return bytes(self.ram[self.base : self.base + BUFFER_BYTES])

    def screen_bytes(self) -> bytes:
        """The 4000 bytes of the screen's cells as they are now (cheap: to see whether the screen changed)."""
        return self._buffer()

    def cells(self) -> list[list[tuple[int, int]]]:
        """The screen as 25 rows of 80 (character byte, attribute byte) pairs."""
        buf = self._buffer()
        row_bytes = COLUMNS * CELL_BYTES
        return [
            [(buf[i], buf[i + 1]) for i in range(row * row_bytes, (row + 1) * row_bytes, CELL_BYTES)]
            for row in range(ROWS)
        ]

    def text_lines(self) -> list[str]:
        """The screen as 25 strings of exactly 80 characters, decoded as code page 437 (byte 0 as a space)."""
        text = codecs.charmap_decode(self._buffer()[0::2], "strict", _CP437_DECODING)[0]
        return [text[row * COLUMNS : (row + 1) * COLUMNS] for row in range(ROWS)]

    def text(self) -> str:
        """The screen as text: rows without trailing spaces, joined by \\n, trailing empty rows dropped."""
        lines = [line.rstrip(" ") for line in self.text_lines()]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    # --- snapshots --------------------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        """The CRTC state (the text itself is RAM and is saved with RAM)."""
        return {"crtc": list(self.crtc), "index": self.index, "retrace": self.retrace}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.crtc[:] = bytes(state["crtc"])
        self.index = int(state["index"])
        self.retrace = bool(state["retrace"])
