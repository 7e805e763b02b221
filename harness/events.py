"""The event stream: one record per system call, exception, interrupt and machine event.

Every output (diagnoses now; traces, tests and golden files later) reads this one stream. It is a bounded ring,
so a run of billions of instructions keeps a flat memory footprint; `counts` keeps totals per kind.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    SYSCALL = "syscall"
    EXCEPTION = "exception"
    INTERRUPT = "interrupt"
    HALT = "halt"
    LOG = "log"
    MACHINE = "machine"  # power-off, reset, unknown device access, budget


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, at virtual time `time_ns`."""

    time_ns: int
    kind: Kind
    rip: int = 0
    cr3: int = 0
    number: int = -1  # syscall number or vector
    error_code: int | None = None
    address: int | None = None  # CR2 for page faults
    args: tuple[int, ...] = ()
    text: str = ""


class EventLog:
    """A ring of the most recent events plus per-kind totals."""

    def __init__(self, capacity: int = 4096) -> None:
        self.ring: deque[Event] = deque(maxlen=capacity)
        self.counts: Counter[Kind] = Counter()

    def add(self, event: Event) -> None:
        self.ring.append(event)
        self.counts[event.kind] += 1

    def __iter__(self) -> Iterator[Event]:
        return iter(self.ring)

    def __len__(self) -> int:
        return len(self.ring)

    def last(self, n: int) -> list[Event]:
        return list(self.ring)[-n:]

    def of_kind(self, kind: Kind) -> list[Event]:
        return [event for event in self.ring if event.kind is kind]
