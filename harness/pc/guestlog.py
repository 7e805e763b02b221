"""The kernel's log: the byte stream it prints on the parallel port, kept whole and split into lines.

Bytes are kept in memory (for tests and diagnoses) and, when a file is given, written through to it line by
line, so nothing is lost if the harness is interrupted. ANSI colour sequences are dropped from the decoded lines,
as the course's log printer does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import BinaryIO

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class GuestLog:
    def __init__(self, sink: BinaryIO | None = None) -> None:
        self.data = bytearray()
        self.sink = sink
        self._line = bytearray()
        self.on_line: Callable[[str], None] = lambda line: None

    def write_byte(self, byte: int) -> None:
        self.write(bytes((byte,)))

    def write(self, data: bytes) -> None:
        """Bytes as printed, in order; each completed line goes to the sink and to `on_line`."""
        self.data += data
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line += data[start:end]
            line = bytes(self._line)
            self._line.clear()
            start = end + 1
            if self.sink is not None:
                self.sink.write(line + b"\n")
                self.sink.flush()
            self.on_line(_ANSI.sub(b"", line).decode("utf-8", "replace").rstrip("\r"))
        self._line += data[start:]

    def flush(self) -> None:
        """Write out a final line that has no newline yet (at the end of a run)."""
        if self.sink is not None and self._line:
            self.sink.write(bytes(self._line))
            self._line.clear()
            self.sink.flush()

    def text(self) -> str:
        return _ANSI.sub(b"", bytes(self.data)).decode("utf-8", "replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()
