"""The deterministic virtual clock: guest time measured in executed instructions.

Virtual time = instructions executed x `ClockCosts.ns_per_instruction` + time skipped while the CPU was halted.
The instruction count is kept by our engine inside the translated code (engine/README.md, instruction-clock
patch), in the spirit of QEMU's icount: each translation block knows its instruction count when it is
translated, adds it to the counter when it starts, and gives back what did not run when it is left early (a
fault, a stop); the same inline code compares the counter with a deadline and hands control back to the harness
only when it is reached. The count never depends on the host, so the same kernel, programs and inputs give the
same run on any machine; and no hook runs per block or per instruction.

The costs are one knob each in `ClockCosts` (today only the instruction; the calibration of per-event costs
builds on it).

This module also builds the harness's own small native library (native/fastpath.c, used by fastpath.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unicorn import Uc

from . import engine

NATIVE_DIR = Path(__file__).with_name("native")
NATIVE_SOURCES = ("fastpath.c",)  # the hot paths (fastpath.py)
NEVER = (1 << 64) - 1


@dataclass(frozen=True)
class ClockCosts:
    """What each thing the guest does costs in virtual time: one knob per cost.

    10 ns per instruction makes a 100 MHz CPU that runs one instruction per cycle; the course's 100 Hz LAPIC
    timer then ticks every million instructions (about as often as the block clock of 20 ns per block did).
    """

    ns_per_instruction: int = 10

    def __post_init__(self) -> None:
        if self.ns_per_instruction < 1:
            raise ValueError("ns_per_instruction must be at least 1")


class ClockState(ctypes.Structure):
    """Mirror of `struct vclock` in native/vclock.h: what the native hot paths need to timestamp events."""

    _fields_ = [
        ("engine", ctypes.POINTER(engine.EngineCounter)),
        ("ns_per_instruction", ctypes.c_uint64),
        ("skipped_ns", ctypes.c_uint64),
    ]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weensy-harness"


def native_library_path() -> Path | None:
    """Build (once per source version) and return the harness's native library, or None if no C compiler."""
    digest = hashlib.sha256(sys.platform.encode())
    for path in sorted(NATIVE_DIR.iterdir()):
        if path.suffix in (".c", ".h"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    tag = digest.hexdigest()[:16]
    target = _cache_dir() / f"native-{tag}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a private temporary name, then rename: parallel test workers never see a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", tmp, *(str(NATIVE_DIR / s) for s in NATIVE_SOURCES)],
                       check=True, capture_output=True)
        os.replace(tmp, target)
    except (OSError, subprocess.CalledProcessError):
        Path(tmp).unlink(missing_ok=True)
        return None
    return target


_native: ctypes.CDLL | None | bool = False  # False: not tried yet


def _load_native() -> ctypes.CDLL | None:
    global _native
    if _native is False:
        path = native_library_path()
        try:
            _native = ctypes.CDLL(str(path)) if path else None
        except OSError:
            _native = None
    return _native  # type: ignore[return-value]


class VirtualClock:
    """The instruction clock of one engine, turned into virtual nanoseconds.

    Devices read `now_ns()`; the run loop arms `stop_at_ns()` before each `emu_start` and the engine stops at the
    start of the first block that begins at or after that time. `deadlines_changed` is set by the machine to
    re-arm when a device reprograms a timer in the middle of a run slice.
    """

    def __init__(self, uc: Uc, costs: ClockCosts | None = None,
                 switched_off: frozenset[str] = frozenset()) -> None:
        self.costs = costs = costs or ClockCosts()
        self.counter = engine.configure(uc._uch, switched_off)  # the engine's counter, deadline and stops
        self.state_for_native = ClockState(ctypes.pointer(self.counter), costs.ns_per_instruction, 0)
        self.on_deadlines_changed: Callable[[], None] = lambda: None

    @property
    def ns_per_instruction(self) -> int:
        return self.costs.ns_per_instruction

    @property
    def instructions(self) -> int:
        """Guest instructions executed since power-on (exact)."""
        return self.counter.instructions

    @property
    def skipped_ns(self) -> int:
        """Virtual time jumped over while the CPU was halted."""
        return self.state_for_native.skipped_ns

    @skipped_ns.setter
    def skipped_ns(self, value: int) -> None:
        self.state_for_native.skipped_ns = value

    # -- the Clock protocol that devices use --------------------------------------------------------------
    def now_ns(self) -> int:
        return self.counter.instructions * self.costs.ns_per_instruction + self.state_for_native.skipped_ns

    def deadlines_changed(self) -> None:
        self.on_deadlines_changed()

    # -- the run loop's side -------------------------------------------------------------------------------
    @property
    def deadline_stops(self) -> int:
        return self.counter.stops

    def stop_at_ns(self, when_ns: int | None) -> None:
        """Arm the engine to stop once virtual time reaches `when_ns` (None: never)."""
        if when_ns is None:
            self.counter.deadline = NEVER
            return
        due = -(-(when_ns - self.skipped_ns) // self.costs.ns_per_instruction)
        # The engine stops at the start of a block; a slice must run at least one block, or a deadline due now
        # would stop every slice with no progress.
        self.counter.deadline = max(self.counter.instructions + 1, due)

    def stop_at_next_block(self) -> None:
        """Stop at the start of the next block (the current block has been charged already)."""
        self.counter.deadline = self.counter.instructions

    def count_emulated_instruction(self) -> None:
        """The harness did an instruction's work in a hook and moved the PC past it: it counts as one."""
        self.counter.instructions += 1

    def skip_to_ns(self, when_ns: int) -> None:
        """Jump over idle time (the CPU is halted): advance the clock without executing anything."""
        now = self.now_ns()
        if when_ns > now:
            self.skipped_ns += when_ns - now

    def state(self) -> dict[str, int]:
        return {"instructions": self.counter.instructions, "skipped_ns": self.skipped_ns,
                "stops": self.counter.stops}

    def restore(self, state: dict[str, int]) -> None:
        self.counter.instructions = state["instructions"]
        self.skipped_ns = state["skipped_ns"]
        self.counter.stops = state["stops"]
        self.counter.deadline = NEVER
