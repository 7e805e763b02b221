"""Screenshots of the CGA text screen: a PNG drawn with our 8x16 font, and saving any format by file extension.

The PNG is written by hand (zlib + struct, no imaging library): 8-bit RGB, no interlace, every scanline with
filter type 0, because a text screen is so repetitive that zlib alone compresses it to a few kilobytes. Each
cell is 8x16 pixels, so the 80x25 screen is 640x400 at scale 1; the cursor is drawn as the underline of VGA's
default cursor shape (pixel rows 14-15 of its cell, in the cell's foreground colour), and blinking cells are
drawn steadily.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from ..pc.errors import HarnessError
from .font8x16 import GLYPH_HEIGHT, GLYPH_WIDTH, GLYPHS
from .render import PALETTE, Attribute, Cells, ansi_frame, cursor_position, html_frame, text_frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURSOR_ROWS = (14, 15)  # pixel rows of a cell that the underline cursor covers
IDAT_CHUNK_BYTES = 1 << 16  # compressed data is split into IDAT chunks of at most this size

_COLOUR_TYPE_RGB = 2
_FILTER_NONE = b"\x00"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, and the CRC-32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, scanlines: bytes) -> bytes:
    """A complete PNG file for 8-bit RGB `scanlines` (each already prefixed with its filter-type byte)."""
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE_RGB, 0, 0, 0)
    compressed = zlib.compress(scanlines, 9)
    idats = [
        _png_chunk(b"IDAT", compressed[i : i + IDAT_CHUNK_BYTES])
        for i in range(0, max(len(compressed), 1), IDAT_CHUNK_BYTES)
    ]
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + b"".join(idats) + _png_chunk(b"IEND", b"")


def _rasterise(cells: Cells, cursor: int | None, scale: int) -> tuple[int, int, bytes]:
    """Width, height and filtered scanlines of the screen drawn with `GLYPHS`."""
    columns = len(cells[0]) if cells else 0
    if any(len(row) != columns for row in cells):
        raise ValueError("screen rows differ in length")
    position = cursor_position(cells, cursor)
    # One horizontal strip (8 * scale pixels) per (glyph row bits, fg, bg) seen: the screen reuses very few.
    strips: dict[tuple[int, int, int], bytes] = {}

    def strip(bits: int, fg: int, bg: int) -> bytes:
        key = (bits, fg, bg)
        if key not in strips:
            ink, paper = bytes(PALETTE[fg]) * scale, bytes(PALETTE[bg]) * scale
            strips[key] = b"".join(ink if bits & (0x80 >> x) else paper for x in range(GLYPH_WIDTH))
        return strips[key]

    lines: list[bytes] = []
    for row_index, row in enumerate(cells):
        looks = [(GLYPHS[char], Attribute.decode(attr)) for char, attr in row]
        cursor_column = position[1] if position and position[0] == row_index else None
        for y in range(GLYPH_HEIGHT):
            parts = [_FILTER_NONE]
            for column, (glyph, a) in enumerate(looks):
                bits = 0xFF if column == cursor_column and y in CURSOR_ROWS else glyph[y]
                parts.append(strip(bits, a.foreground, a.background))
            lines.extend([b"".join(parts)] * scale)
    return columns * GLYPH_WIDTH * scale, len(cells) * GLYPH_HEIGHT * scale, b"".join(lines)


def png_frame(cells: Cells, cursor: int | None, scale: int = 1) -> bytes:
    """The screen as a PNG image: 8x16 pixels per cell times `scale` (640x400 for 80x25 at scale 1)."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, not {scale!r}")
    width, height, scanlines = _rasterise(cells, cursor, scale)
    return encode_png(width, height, scanlines)


# --- saving by extension ----------------------------------------------------------------------------------

_Writer = Callable[[Cells, int | None, int], bytes]

_WRITERS: dict[str, _Writer] = {
    ".txt": lambda cells, cursor, scale: (text_frame(cells) + "\n").encode("utf-8"),
    ".ansi": lambda cells, cursor, scale: (ansi_frame(cells, cursor) + "\n").encode("utf-8"),
    ".html": lambda cells, cursor, scale: html_frame(cells, cursor).encode("utf-8"),
    ".htm": lambda cells, cursor, scale: html_frame(cells, cursor).encode("utf-8"),
    ".png": lambda cells, cursor, scale: png_frame(cells, cursor, scale),
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_WRITERS)


def save_screen(path: Path, cells: Cells, cursor: int | None, *, scale: int = 1) -> None:
    """Write the screen to `path` in the format its extension names (.txt, .ansi, .html/.htm, .png).

    Text formats are UTF-8. `scale` applies to PNG only. An unknown extension or a file that cannot be written
    is a `HarnessError` whose message is one line.
    """
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise HarnessError(
            f"cannot save the screen to {path}: unknown extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    data = writer(cells, cursor, scale)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise HarnessError(f"cannot save the screen to {path}: {exc.strerror or exc}") from exc
