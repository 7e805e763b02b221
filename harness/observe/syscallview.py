"""How a traced system call shows: its arguments decoded from the caller's registers and memory (strings and
buffers quoted as strace shows them), what a read-like call wrote into the caller's buffer, its return value, and
which calls read the caller's memory (those must be decoded before the process runs on). A mixin of the tracer
(trace.py), which has the machine, the system-call table and the events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pc.events import Event
from ..pc.paging import PageFault, PhysicalFault, read_virtual
from .syscalls import SyscallArg, SyscallTable

if TYPE_CHECKING:
    from ..pc.board import Board

STRING_LIMIT = 32  # characters of a string or buffer shown, like strace -s 32


def _quoted_byte(byte: int) -> str:
    """One byte as `quote` shows it."""
    if byte == 0x0A:
        return "\\n"
    if byte == 0x09:
        return "\\t"
    if byte in (0x22, 0x5C):
        return "\\" + chr(byte)
    if 0x20 <= byte < 0x7F:
        return chr(byte)
    return f"\\x{byte:02x}"


_QUOTED = tuple(_quoted_byte(byte) for byte in range(256))  # each byte as it shows inside a quoted string


def quote(data: bytes, limit: int = STRING_LIMIT) -> str:
    """A C-like quoted string, truncated with "..." after `limit` characters (as strace shows buffers)."""
    return '"' + "".join(map(_QUOTED.__getitem__, data[:limit])) + '"' + ("..." if len(data) > limit else "")


def signed(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


class SyscallView:
    """The tracer's decoding of system calls (see the module's docstring)."""

    machine: Board
    syscalls: SyscallTable

    def _read(self, cr3: int, address: int, length: int) -> bytes | None:
        try:
            return read_virtual(self.machine.memory, cr3, address, length, user=True)
        except (PageFault, PhysicalFault):
            return None

    def _read_string(self, cr3: int, address: int) -> bytes | None:
        out = bytearray()
        while len(out) <= STRING_LIMIT:
            chunk = self._read(cr3, address + len(out), 1)
            if chunk is None:
                return None if not out else bytes(out)
            if chunk == b"\0":
                return bytes(out)
            out += chunk
        return bytes(out)

    def _syscall_detail(self, number: int, args: tuple[int, ...], cr3: int) -> dict[str, Any]:
        """A system call's name and its arguments as the trace shows them at entry."""
        spec = self.syscalls.by_number.get(number)
        if spec is None:
            return {}
        # [name, rendering] pairs (lists: they survive a JSON round trip)
        shown = [[arg.name, self._format_argument(spec.args, i, args, cr3)] for i, arg in enumerate(spec.args)]
        return {"args": shown, "name": spec.name}

    def _format_argument(self, specs: tuple[SyscallArg, ...], index: int, args: tuple[int, ...], cr3: int) -> str:
        arg = specs[index]
        value = args[index] if index < len(args) else 0
        if arg.type == "str":
            text = self._read_string(cr3, value)
            return quote(text) if text is not None else f"{value:#x}"
        following = specs[index + 1] if index + 1 < len(specs) else None
        if arg.type == "ptr" and following is not None and following.type == "size" and arg.ctype.startswith("const"):
            length = args[index + 1] if index + 1 < len(args) else 0
            data = self._read(cr3, value, min(length, STRING_LIMIT + 1))
            return quote(data) if data is not None else f"{value:#x}"
        if arg.type == "ptr":
            return f"{value:#x}"
        if arg.type in ("size", "uint"):
            return str(value) if value < 1 << 32 else f"{value:#x}"  # huge sizes read better in hex
        return str(signed(value))

    def format_return(self, event: Event) -> str:
        if event.ret is None:
            return "?"
        spec = self.syscalls.by_number.get(event.number)
        value = signed(event.ret)
        if spec is not None and spec.returns == "ptr":
            return f"{event.ret:#x}"
        error = self.syscalls.errors.get(value)
        return f"{value} {error}" if error else str(value)

    def reads_user_memory(self, number: int) -> bool:
        """Does tracing system call `number` read the caller's memory (a string or buffer argument shown at
        entry, a buffer it wrote shown at its return)? Those must be read before the process runs on."""
        spec = self.syscalls.by_number.get(number)
        if spec is None:
            return False
        for i, arg in enumerate(spec.args):
            following = spec.args[i + 1] if i + 1 < len(spec.args) else None
            sized = following is not None and following.type == "size"
            if arg.type == "str":  # shown at entry (`_format_argument`)
                return True
            if arg.type == "ptr" and (sized or (arg.ctype == "char*")):
                return True  # a buffer shown at entry (const) or at the return (`_output_buffer`)
        return False

    def _output_buffer(self, event: Event, cr3: int) -> None:
        """After a read-like call returns n > 0, show what it wrote into the caller's buffer."""
        spec = self.syscalls.by_number.get(event.number)
        if spec is None or not spec.args or event.ret is None or signed(event.ret) < 0:
            return
        for i, arg in enumerate(spec.args):
            if arg.type != "ptr" or arg.ctype.startswith("const") or i >= len(event.args):
                continue
            following = spec.args[i + 1] if i + 1 < len(spec.args) else None
            if following is not None and following.type == "size":
                data = self._read(cr3, event.args[i], min(signed(event.ret), STRING_LIMIT + 1))
            elif arg.ctype == "char*":  # an output string, e.g. getsysname's buffer
                data = self._read_string(cr3, event.args[i])
            else:
                continue
            if data is not None:
                args = list(event.detail.get("args", []))
                args[i] = [arg.name, quote(data)]
                event.detail["args"] = args
