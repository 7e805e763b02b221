"""Why a run ended: the kinds of stop and the record `Machine.run()` returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class StopKind(enum.Enum):
    POWER_OFF = "power-off"
    TICKS = "ticks reached"
    UNTIL = "text appeared"
    PAUSED = "paused"
    BREAKPOINT = "breakpoint"
    ISOLATION = "isolation violation"
    STORM = "interrupt storm"
    PANIC = "kernel panic"
    TRIPLE_FAULT = "triple fault"
    BUDGET = "budget exhausted"
    WALL = "wall-clock guard"
    MACHINE_FAULT = "machine fault"
    HANG = "hang"
    RESET = "reset"


# Stops after which `run()` may be called again to go on (the others end the machine's life).
RESUMABLE = frozenset({StopKind.TICKS, StopKind.UNTIL, StopKind.PAUSED, StopKind.BREAKPOINT, StopKind.BUDGET,
                       StopKind.WALL})


@dataclass
class Stop:
    """Why a run ended, where, and what the harness could find out about it."""

    kind: StopKind
    message: str
    time_ns: int
    rip: int = 0
    backtrace: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kind in (StopKind.POWER_OFF, StopKind.TICKS, StopKind.UNTIL, StopKind.PAUSED,
                             StopKind.BREAKPOINT)
