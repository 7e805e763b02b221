"""The kernel's log: the byte stream it prints on the parallel port, split into lines.

Everything goes, line by line, to a file when one is given (`--log`), so nothing is lost if the harness is
interrupted. In memory (for tests, diagnoses and snapshots) the log keeps its most recent `memory_limit` bytes,
cut at a line boundary: a guest that prints without end must not grow the harness's memory without end. A line
that never ends is cut into pieces of `line_limit` bytes, each one a line for `on_line` (the file still gets
the bytes exactly as printed). ANSI colour sequences are dropped from the decoded lines, as the course's log
printer does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import BinaryIO

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
MEMORY_LIMIT = 4 << 20  # bytes of the log kept in memory (the file keeps everything)
LINE_LIMIT = 4096  # bytes of an unterminated line before it is passed on as a piece


class GuestLog:
    def __init__(self, sink: BinaryIO | None = None, memory_limit: int = MEMORY_LIMIT,
                 line_limit: int = LINE_LIMIT) -> None:
        self.data = bytearray()
        self.sink = sink
        self.memory_limit = memory_limit
        self.line_limit = line_limit
        self.dropped = 0  # bytes printed but no longer kept in memory (the oldest)
        self._line = bytearray()
        self.on_line: Callable[[str], None] = lambda line: None

    def write_byte(self, byte: int) -> None:
        self.write(bytes((byte,)))

    def write(self, data: bytes) -> None:
        """Bytes as printed, in order; each completed line (or piece of an endless one) goes to the sink and to
        `on_line`."""
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
            self._announce(line)
        self._line += data[start:]
        while len(self._line) >= self.line_limit:  # an endless line: pass it on in pieces
            piece = bytes(self._line[:self.line_limit])
            del self._line[:self.line_limit]
            if self.sink is not None:
                self.sink.write(piece)
                self.sink.flush()
            self._announce(piece)
        if len(self.data) > 2 * self.memory_limit:  # amortised: trim once the log is twice the limit
            self._trim()

    def _announce(self, line: bytes) -> None:
        self.on_line(_ANSI.sub(b"", line).decode("utf-8", "replace").rstrip("\r"))

    def _trim(self) -> None:
        cut = len(self.data) - self.memory_limit
        boundary = self.data.find(b"\n", cut)
        cut = boundary + 1 if 0 <= boundary < cut + self.line_limit else cut
        del self.data[:cut]
        self.dropped += cut

    def attach_sink(self, sink: BinaryIO) -> None:
        """Write what is kept of the log so far to `sink` (complete lines: a resumed run's log starts with the
        lines before its snapshot), then every line as it completes."""
        done = len(self.data) - len(self._line)
        sink.write(bytes(self.data[:max(done, 0)]))
        sink.flush()
        self.sink = sink

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
