"""The wall-clock guard: every budget of virtual time also has a limit in host seconds.

Virtual time is what keeps runs deterministic, but it does not bound what a run costs the host: a guest can make
each virtual nanosecond expensive (a port or device register read in a loop, floods of interrupts, an audit of
every page table at every return to user mode), and then a budget of 30 virtual seconds could take hours. The
guard is the only place the harness reads the host's clock, and it only ever ends a run: a run it does not stop
is the same on every host. The machine looks at it between slices, and ends a slice at least every
`CHECK_EVERY_NS` of virtual time so that the look comes often enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CHECK_EVERY_NS = 1_000_000  # end a slice at least this often (virtual) to look at the host's clock
BASE_S = 60.0  # the default limit: a minute, plus ...
PER_VIRTUAL_SECOND_S = 50.0  # ... 50 host seconds per virtual second of budget (normal code needs under 10)


def default_limit_s(max_time_ns: int | None) -> float | None:
    """The default wall-clock limit for a virtual budget; None (no guard) when there is no budget."""
    if max_time_ns is None:
        return None
    return BASE_S + PER_VIRTUAL_SECOND_S * max_time_ns / 1e9


@dataclass
class WallGuard:
    """A limit of `limit_s` host seconds from now."""

    limit_s: float
    started: float = field(default_factory=time.monotonic)

    def expired(self) -> bool:
        return time.monotonic() - self.started >= self.limit_s

    def message(self, virtual_ns: int, budget_ns: int | None) -> str:
        spent = time.monotonic() - self.started
        budget = f" (budget {budget_ns / 1e9:g} s)" if budget_ns is not None else ""
        return (f"the wall-clock guard fired: {spent:.1f} s of host time (limit {self.limit_s:g} s, --max-wall) "
                f"for {virtual_ns / 1e9:.6f} s of virtual time{budget}")
