"""System control port A (port 0x92, "PS/2 fast A20 and reset"): the A20 gate bit and a fast CPU reset.

WeensyOS's `reboot()` writes 3 here (A20 on, reset). Bit 1 gates address line 20 and reads back; it is on at
reset because firmware has enabled A20 before any OS runs. The machine's memory is not actually wrapped at
1 MiB when A20 is off; `a20_enabled` is exposed for a machine that wants to report or honour it. Writing bit 0
as 1 requests a system reset through `board.reset`; that bit reads back as 0 (the reset has happened).
"""

from __future__ import annotations

from typing import Any

from .base import Board, Device

PORT_SYSTEM_CONTROL_A = 0x92

BIT_FAST_RESET = 0x01
BIT_A20 = 0x02
RESET_VALUE = BIT_A20

RESET_SOURCE = "port 0x92 fast reset"


class SystemControlPortA(Device):
    """Port 0x92: A20 gate (bit 1) and fast reset (bit 0)."""

    name = "port92"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_SYSTEM_CONTROL_A, 1),)

    def __init__(self, board: Board) -> None:
        self.board = board
        self.value = RESET_VALUE

    def reset(self) -> None:
        self.value = RESET_VALUE

    @property
    def a20_enabled(self) -> bool:
        return bool(self.value & BIT_A20)

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_SYSTEM_CONTROL_A:
            return self.value
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port != PORT_SYSTEM_CONTROL_A:
            return
        self.value = value & 0xFF & ~BIT_FAST_RESET
        if value & BIT_FAST_RESET:
            self.board.reset(RESET_SOURCE)

    def snapshot_state(self) -> dict[str, Any]:
        return {"value": self.value}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
