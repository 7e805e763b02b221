"""The wall-clock guard: every budget of virtual time also has a limit in host seconds.

Virtual time is what keeps runs deterministic, but it does not bound what a run costs the host: a guest can make
each virtual nanosecond expensive (a port or device register read in a loop, floods of interrupts, an audit of
every page table at every return to user mode), and then a budget of 30 virtual seconds could take hours. The
guard is the only place the harness reads the host's clock, and it only ever ends a run: a run it does not stop
is the same on every host. The machine looks at it between slices, and ends a slice at least every
`CHECK_EVERY_NS` of virtual time so that the look comes often enough (the watchdog below makes it needless for
the guard's precision; the look is kept as its second line, rare enough to cost nothing).

That look needs the engine to come back. A slice whose virtual clock does not advance (an engine loop that runs
no counted instruction) would never reach its deadline, so the guard also has a watchdog: a thread that, once the
limit has passed, asks the engine to stop (`uc_emu_stop`, which the engine checks at the start of every block and
in its interrupt loop) for as long as the run is inside `emu_start`, until the run loop sees the guard expired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CHECK_EVERY_NS = 100_000_000  # end a slice at least this often (virtual) to look at the host's clock
WATCHDOG_REPEAT_S = 0.05  # once fired, ask again this often (a request made just before emu_start began is lost)
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


class Watchdog:
    """Asks the engine to stop once `guard` has expired, while the run is inside the engine.

    `request_stop` is called from the watchdog's thread; `inside` says whether the run loop is in `emu_start` now.
    The run loop sets `inside` around `emu_start` and reads `fired` after it to know why the engine came back.
    """

    def __init__(self, guard: WallGuard, request_stop: Callable[[], None]) -> None:
        self.guard = guard
        self.request_stop = request_stop
        self.inside = False
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="weensy-wall-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        remaining = self.guard.limit_s - (time.monotonic() - self.guard.started)
        if self._done.wait(max(0.0, remaining)):
            return
        self.fired = True
        while not self._done.is_set():
            if self.inside:
                self.request_stop()
            self._done.wait(WATCHDOG_REPEAT_S)

    def close(self) -> None:
        """The run is over: the thread ends without touching the engine again."""
        self._done.set()
        self._thread.join()
