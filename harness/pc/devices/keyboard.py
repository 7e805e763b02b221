"""Intel 8042 keyboard controller with a PS/2 keyboard behind it, speaking scan code set 1.

The harness types into the guest with `push()` (usually `push(scancodes_for_text("q"))`). The bytes wait in
the keyboard's queue and are moved one at a time into the controller's single-byte output buffer, which the
guest sees through status bit 0 on port 0x64 and reads from port 0x60. Each time a byte is loaded into the
output buffer and the command byte enables IRQ1, the `irq` callback is called (WeensyOS polls instead and
never enables the keyboard interrupt, but the callback keeps the model honest for kernels that do).

Replies to controller and keyboard commands go ahead of queued key bytes, so a guest that talks to the
controller while keys are queued reads its replies first. Queued keys survive a keyboard reset command (a
harness may type ahead before the guest has initialised the keyboard).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .base import Board, Device

# Ports.
PORT_DATA = 0x60
PORT_STATUS = 0x64  # read: status register
PORT_COMMAND = 0x64  # write: controller command

# Status register bits.
STATUS_OUTPUT_FULL = 0x01
STATUS_INPUT_FULL = 0x02
STATUS_SYSTEM = 0x04
STATUS_COMMAND = 0x08  # last write went to the command port
STATUS_UNLOCKED = 0x10
STATUS_AUX_OUTPUT_FULL = 0x20

# Command byte ("controller configuration byte") bits.
CCB_KBD_INT = 0x01  # IRQ1 on output buffer full
CCB_AUX_INT = 0x02
CCB_SYSTEM = 0x04
CCB_KBD_DISABLE = 0x10
CCB_AUX_DISABLE = 0x20
CCB_TRANSLATE = 0x40
CCB_DEFAULT = CCB_KBD_INT | CCB_SYSTEM | CCB_TRANSLATE

# Controller commands (written to 0x64).
CMD_READ_CCB = 0x20
CMD_WRITE_CCB = 0x60
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_WRITE_KBD_OUTPUT = 0xD2
CMD_WRITE_AUX_OUTPUT = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_PULSE_FIRST = 0xF0  # 0xF0-0xFF pulse output-port lines whose bit in the low nibble is 0
CMD_PULSE_RESET = 0xFE

# Commands whose parameter is the next byte written to 0x60.
_COMMANDS_WITH_DATA_BYTE = (
    CMD_WRITE_CCB,
    CMD_WRITE_OUTPUT_PORT,
    CMD_WRITE_KBD_OUTPUT,
    CMD_WRITE_AUX_OUTPUT,
    CMD_WRITE_AUX,
)

# Controller replies.
SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00

# Output port bits.
OUTPUT_PORT_RESET = 0x01  # 0 holds the CPU in reset
OUTPUT_PORT_A20 = 0x02
OUTPUT_PORT_DEFAULT = OUTPUT_PORT_RESET | OUTPUT_PORT_A20

# Keyboard commands (written to 0x60) and replies.
KBD_CMD_IDENTIFY = 0xF2
KBD_CMD_ENABLE_SCANNING = 0xF4
KBD_CMD_DISABLE_SCANNING = 0xF5
KBD_CMD_RESET = 0xFF
KBD_ACK = 0xFA
KBD_SELF_TEST_PASSED = 0xAA
KBD_ID = (0xAB, 0x83)  # MF2 keyboard

# Scan code set 1.
SC_LEFT_SHIFT = 0x2A
SC_LEFT_CTRL = 0x1D
SC_ENTER = 0x1C
SC_BREAK = 0x80  # OR-ed into a make code to form its break code


class Keyboard8042(Device):
    """The i8042 controller (ports 0x60/0x64) and a set-1 PS/2 keyboard, fed by `push()`."""

    name = "i8042"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_DATA, 1), (PORT_STATUS, 1))

    def __init__(self, irq: Callable[[], None] | None = None, board: Board | None = None) -> None:
        self.irq = irq
        self.board = board
        self.keys: deque[int] = deque()  # typed scan codes not yet in the output buffer
        self.replies: deque[int] = deque()  # controller/keyboard replies, delivered before keys
        self.output: int | None = None  # the output buffer; None = empty
        self.last = 0  # what 0x60 reads when the output buffer is empty
        self.ccb = CCB_DEFAULT
        self.pending_command: int | None = None  # controller command waiting for its data byte on 0x60
        self.last_was_command = False
        self.output_port = OUTPUT_PORT_DEFAULT
        self.scanning = True
        self.reset()

    def reset(self) -> None:
        """Power-on state. Keys already typed by the harness are outside input and stay queued."""
        self.replies.clear()
        self.output = None
        self.last = 0
        self.ccb = CCB_DEFAULT
        self.pending_command = None
        self.last_was_command = False
        self.output_port = OUTPUT_PORT_DEFAULT
        self.scanning = True
        self._refill()

    # --- harness side -----------------------------------------------------------------------------------

    def push(self, codes: bytes) -> None:
        """Queue scan-code bytes as if the keyboard had sent them."""
        self.keys.extend(codes)
        self._refill()

    def pending(self) -> int:
        """Bytes the guest has not read yet (output buffer included)."""
        return len(self.keys) + len(self.replies) + (self.output is not None)

    # --- guest side -------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_DATA:
            return self._read_data()
        if port == PORT_STATUS:
            return self._status()
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == PORT_COMMAND:
            self.last_was_command = True
            self._controller_command(value)
        elif port == PORT_DATA:
            self.last_was_command = False
            self._data_write(value)

    def status(self) -> int:
        """What the status register reads now (reading it changes nothing)."""
        return self._status()

    def _status(self) -> int:
        status = STATUS_UNLOCKED | (self.ccb & CCB_SYSTEM)
        if self.output is not None:
            status |= STATUS_OUTPUT_FULL
        if self.last_was_command:
            status |= STATUS_COMMAND
        return status

    def _read_data(self) -> int:
        if self.output is None:
            return self.last
        self.last = self.output
        self.output = None
        self._refill()
        return self.last

    def _refill(self) -> None:
        """Load the next deliverable byte into an empty output buffer, raising IRQ1 if enabled."""
        if self.output is not None:
            return
        if self.replies:
            self.output = self.replies.popleft()
        elif self.keys and self.scanning and not self.ccb & CCB_KBD_DISABLE:
            self.output = self.keys.popleft()
        else:
            return
        self._raise_irq()

    def _raise_irq(self) -> None:
        if self.output is not None and self.ccb & CCB_KBD_INT and self.irq is not None:
            self.irq()

    def _reply(self, *data: int) -> None:
        self.replies.extend(data)
        self._refill()

    def _controller_command(self, cmd: int) -> None:
        self.pending_command = None
        if cmd == CMD_READ_CCB:
            self._reply(self.ccb)
        elif cmd in _COMMANDS_WITH_DATA_BYTE:
            self.pending_command = cmd
        elif cmd == CMD_SELF_TEST:
            self._reply(SELF_TEST_OK)
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self._reply(INTERFACE_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.ccb |= CCB_KBD_DISABLE
        elif cmd == CMD_KBD_ENABLE:
            self.ccb &= ~CCB_KBD_DISABLE
            self._refill()
        elif cmd == CMD_AUX_DISABLE:
            self.ccb |= CCB_AUX_DISABLE
        elif cmd == CMD_AUX_ENABLE:
            self.ccb &= ~CCB_AUX_DISABLE
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._reply(self.output_port)
        elif cmd >= CMD_PULSE_FIRST and not cmd & OUTPUT_PORT_RESET:
            # 0xFE (and the other even 0xF0-0xFF commands) pulse the CPU reset line low.
            self._pulse_reset()
        # Anything else is ignored.

    def _data_write(self, value: int) -> None:
        cmd, self.pending_command = self.pending_command, None
        if cmd == CMD_WRITE_CCB:
            newly_enabled = value & CCB_KBD_INT and not self.ccb & CCB_KBD_INT
            self.ccb = value
            if self.output is not None and newly_enabled:
                self._raise_irq()  # IRQ1 is "output buffer full AND enabled"
            self._refill()
        elif cmd == CMD_WRITE_OUTPUT_PORT:
            self.output_port = value
            if not value & OUTPUT_PORT_RESET:
                self._pulse_reset()
        elif cmd == CMD_WRITE_KBD_OUTPUT:
            self._reply(value)
        elif cmd in (CMD_WRITE_AUX_OUTPUT, CMD_WRITE_AUX):
            pass  # there is no mouse
        else:
            self._keyboard_command(value)

    def _keyboard_command(self, value: int) -> None:
        """A byte for the keyboard itself. Every command and parameter byte is acknowledged."""
        if value == KBD_CMD_RESET:
            self.scanning = True
            self._reply(KBD_ACK, KBD_SELF_TEST_PASSED)
        elif value == KBD_CMD_IDENTIFY:
            self._reply(KBD_ACK, *KBD_ID)
        elif value == KBD_CMD_DISABLE_SCANNING:
            self._reply(KBD_ACK)
            self.scanning = False
        elif value == KBD_CMD_ENABLE_SCANNING:
            self.scanning = True
            self._reply(KBD_ACK)
        else:
            self._reply(KBD_ACK)

    def _pulse_reset(self) -> None:
        if self.board is not None:
            self.board.reset("8042 reset line")

    # --- snapshots --------------------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "replies": list(self.replies),
            "output": self.output,
            "last": self.last,
            "ccb": self.ccb,
            "pending_command": self.pending_command,
            "last_was_command": self.last_was_command,
            "output_port": self.output_port,
            "scanning": self.scanning,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.keys = deque(state["keys"])
        self.replies = deque(state["replies"])
        self.output = state["output"]
        self.last = state["last"]
        self.ccb = state["ccb"]
        self.pending_command = state["pending_command"]
        self.last_was_command = state["last_was_command"]
        self.output_port = state["output_port"]
        self.scanning = state["scanning"]


# --- typing text ------------------------------------------------------------------------------------------

# Unshifted and shifted characters of each key of a US layout, by set-1 make code.
_US_KEYS: tuple[tuple[int, str, str], ...] = (
    (0x02, "1", "!"), (0x03, "2", "@"), (0x04, "3", "#"), (0x05, "4", "$"), (0x06, "5", "%"),
    (0x07, "6", "^"), (0x08, "7", "&"), (0x09, "8", "*"), (0x0A, "9", "("), (0x0B, "0", ")"),
    (0x0C, "-", "_"), (0x0D, "=", "+"),
    (0x10, "q", "Q"), (0x11, "w", "W"), (0x12, "e", "E"), (0x13, "r", "R"), (0x14, "t", "T"),
    (0x15, "y", "Y"), (0x16, "u", "U"), (0x17, "i", "I"), (0x18, "o", "O"), (0x19, "p", "P"),
    (0x1A, "[", "{"), (0x1B, "]", "}"),
    (0x1E, "a", "A"), (0x1F, "s", "S"), (0x20, "d", "D"), (0x21, "f", "F"), (0x22, "g", "G"),
    (0x23, "h", "H"), (0x24, "j", "J"), (0x25, "k", "K"), (0x26, "l", "L"), (0x27, ";", ":"),
    (0x28, "'", '"'), (0x29, "`", "~"),
    (0x2B, "\\", "|"), (0x2C, "z", "Z"), (0x2D, "x", "X"), (0x2E, "c", "C"), (0x2F, "v", "V"),
    (0x30, "b", "B"), (0x31, "n", "N"), (0x32, "m", "M"), (0x33, ",", "<"), (0x34, ".", ">"),
    (0x35, "/", "?"),
)  # fmt: skip

# Keys typed without modifiers that are not on the table above.
_PLAIN_SPECIAL = {" ": 0x39, "\n": SC_ENTER, "\t": 0x0F, "\b": 0x0E, "\x1b": 0x01}


def _build_char_table() -> dict[str, tuple[int, int | None]]:
    """Map each typeable character to (make code, modifier make code or None)."""
    table: dict[str, tuple[int, int | None]] = {}
    for code, plain, shifted in _US_KEYS:
        table[plain] = (code, None)
        table[shifted] = (code, SC_LEFT_SHIFT)
    for ch, code in _PLAIN_SPECIAL.items():
        table[ch] = (code, None)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        ctrl = chr(ord(letter) - ord("a") + 1)
        if ctrl not in table:  # \b, \t, \n keep their own keys
            table[ctrl] = (table[letter][0], SC_LEFT_CTRL)
    return table


_CHAR_TABLE = _build_char_table()


def scancodes_for_text(text: str) -> bytes:
    """Scan code set 1 make/break bytes that type `text` on a US keyboard.

    Shifted characters are wrapped in left-shift make/break, Ctrl-A..Ctrl-Z (0x01-0x1A, except \\b, \\t
    and \\n, which are Backspace, Tab and Enter) in left-ctrl make/break; "\\x1b" is Escape. Raises
    ValueError naming the first character that has no key.
    """
    out = bytearray()
    for pos, ch in enumerate(text):
        entry = _CHAR_TABLE.get(ch)
        if entry is None:
            raise ValueError(
                f"cannot type {ch!r} (U+{ord(ch):04X}) at position {pos}: no key on a US keyboard"
            )
        code, modifier = entry
        if modifier is not None:
            out.append(modifier)
        out += bytes((code, code | SC_BREAK))
        if modifier is not None:
            out.append(modifier | SC_BREAK)
    return bytes(out)
