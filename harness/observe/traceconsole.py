"""The screen as the tracer records it: which rows of the CGA text screen changed and show text, and a console
event's text (made when the event is: most are never read). The tracer (trace.py) looks at the screen itself, or
through the native path (fastpath.c's `fastpath_look_screen`, which applies BLANK_BYTES the same way).
"""

from __future__ import annotations

from itertools import compress
from operator import ne
from typing import Any

from ..pc.events import Event, Kind

_ROW_CELLS = tuple(slice(row * 160, row * 160 + 160) for row in range(25))  # each row's bytes on the screen
_ROW_BITS = tuple((row, 1 << row) for row in range(25))  # each row's bit in a native look at the screen
# The character bytes that show as blank (cp437; NUL shows as a space): a row of only these shows no text.
BLANK_BYTES = bytes(byte for byte in range(256) if bytes([byte]).decode("cp437").replace("\0", " ").isspace())


def changed_rows_with_text(screen: bytes, old: bytes) -> list[int]:
    """The rows of `screen` that differ from `old` and show text (a row that was cleared is not an event)."""
    changed = compress(range(25), map(ne, map(screen.__getitem__, _ROW_CELLS), map(old.__getitem__, _ROW_CELLS)))
    return [row for row in changed if row_text(screen, row).strip()]


def rows_with_text(look: int) -> list[int]:
    """The rows a native look found changed and showing text (bit r and bit 32 + r)."""
    both = look & (look >> 32)
    return [row for row, bit in _ROW_BITS if both & bit]


def row_text(screen: bytes, row: int) -> str:
    """The characters of one screen row (cp437: one per byte; NUL shows as a space), trailing blanks cut."""
    return screen[_ROW_CELLS[row]][::2].decode("cp437").replace("\0", " ").rstrip()


def made_console(record: tuple[Any, ...]) -> Event:
    """A console event from (time_ns, seq, pid, screen, rows): the text of the rows that changed and show text."""
    time_ns, seq, pid, screen, rows = record
    return Event(time_ns, Kind.CONSOLE, 0, 0, -1, None, None, (), "\n".join(row_text(screen, row) for row in rows),
                 seq, pid, False, None, None, False, {"rows": rows})
