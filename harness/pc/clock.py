"""The deterministic virtual clock: guest time measured in executed instructions and counted events.

Virtual time = instructions executed x `ClockCosts.ps_per_instruction` + a fixed cost per event the real machine
pays for (system-call entry, interrupt/exception delivery, port I/O, each byte of text memory read or written;
`charge`) + the firmware's boot delay + time skipped while the CPU was halted.
The instruction count is kept by our engine inside the translated code (engine/README.md, instruction-clock
patch), laid out as QEMU's icount: each translation block knows its instruction count when it is translated and
takes it from a 16-bit budget (the instructions left before the deadline) when it starts, and gives back what did
not run when it is left early (a fault, a stop); the same load, subtract and branch also check the engine's exit
request, and control comes back to the harness only when the deadline is reached (the engine refills the budget
itself when the deadline is farther than a budget holds). The count is the engine's base count plus what was
taken from the budget since it was last set, and a deadline is set through the engine, which recomputes the
budget. The count never depends on the host, so the same kernel, programs and inputs give the
same run on any machine; and no hook runs per block or per instruction.

The costs are one knob each in `ClockCosts`, fitted once to QEMU 7.2 TCG runs of our own workloads by
scripts/fit_speed_model.py (docs/speed-model.md: the fit and its residuals) and then fixed here as data: nothing is
measured at run time, so runs stay deterministic. Event charges and the boot delay are added to the same
accumulator as halted time (`skipped_ns`, "time not counted in instructions"), which the snapshot saves: a
resumed run charges exactly as the original did, and the native paths charge with the same arithmetic
(`vclock_charge` in native/vclock.h).

This module also builds the harness's own small native library (native/fastpath.c, used by fastpath.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unicorn import Uc

from . import engine

NATIVE_DIR = Path(__file__).with_name("native")
NATIVE_SOURCES = ("fastpath.c", "textwindow.c")  # the hot paths (fastpath.py), the text window (textwindow.py)
NEVER = (1 << 64) - 1
# The clock's range. Every run stays far inside it (2^44 instructions are hours of virtual time and two days of
# host time at 100 million instructions a second), and inside it the engine's and the native paths' 64-bit
# arithmetic cannot wrap: instructions x ps_per_instruction (at most MAX_PS_PER_INSTRUCTION) + skipped_ns < 2^63.
# A snapshot whose clock is outside it is refused (snapshotschema): a count near 2^64 made every deadline wrap
# into the past, so no slice ever advanced.
MAX_INSTRUCTIONS = 1 << 44
MAX_SKIPPED_NS = 1 << 61
MAX_PS_PER_INSTRUCTION = 1 << 18

# The calibrated speed model (fitted by scripts/fit_speed_model.py; docs/speed-model.md has the fit).
PS_PER_INSTRUCTION = 330
NS_PER_SYSCALL = 4_178
NS_PER_DELIVERY = 0  # only the timer's deliveries in the workloads (one a tick): not identifiable, fitted to 0
NS_PER_PORT_IO = 1_040
BOOT_DELAY_NS = 63_813_787
NS_PER_MMIO_BYTE = 27
# Not fitted: a memory-mapped access the bus charges (the empty bus beyond RAM, an IPI sent through the local
# APIC; bus.py) leaves translated code for the device model as a port access does, so it costs the same. Our
# workloads make none; what it buys is that a guest looping on one pays for it in virtual time.
NS_PER_MMIO = NS_PER_PORT_IO


@dataclass(frozen=True)
class ClockCosts:
    """What each thing the guest does costs in virtual time: one knob per cost.

    The defaults are the calibrated speed model (scripts/fit_speed_model.py, docs/speed-model.md): what makes
    the per-tick rates of our workloads (yields, pipe messages, allocated pages, forks, memory viewer redraws,
    boot to the first log line) come out as under QEMU 7.2 TCG on the reference machine class. The instruction
    cost is in picoseconds so that the fit is not rounded to whole nanoseconds.
    """

    ps_per_instruction: int = PS_PER_INSTRUCTION
    ns_per_syscall: int = NS_PER_SYSCALL  # `syscall` entry and its `sysretq`/`iretq` back to user mode
    ns_per_delivery: int = NS_PER_DELIVERY  # an interrupt or exception entered through the IDT
    ns_per_port_io: int = NS_PER_PORT_IO  # an `in` or `out`: QEMU leaves translated code for the device model
    boot_delay_ns: int = BOOT_DELAY_NS  # the firmware's time (BIOS, option ROMs) before the loader hands off
    # Each byte the CPU reads or writes in the text window 0xB8000-0xBFFFF (device memory, textwindow.py):
    # QEMU's VGA serves its text memory one byte per call into the device model, so a console scroll there
    # costs what tens of thousands of instructions do. (The APICs' few accesses a tick are not charged.)
    ns_per_mmio_byte: int = NS_PER_MMIO_BYTE
    ns_per_mmio: int = NS_PER_MMIO  # an access to the empty bus or an IPI sent (the charged ones: bus.py)

    def __post_init__(self) -> None:
        if not 1 <= self.ps_per_instruction <= MAX_PS_PER_INSTRUCTION:
            raise ValueError(f"ps_per_instruction must be between 1 and {MAX_PS_PER_INSTRUCTION}")
        if min(self.ns_per_syscall, self.ns_per_delivery, self.ns_per_port_io, self.boot_delay_ns,
               self.ns_per_mmio_byte, self.ns_per_mmio) < 0:
            raise ValueError("event costs and the boot delay cannot be negative")

    @classmethod
    def instructions_only(cls, ps_per_instruction: int = 10_000) -> ClockCosts:
        """A clock that counts instructions only (no event costs, no boot delay): 10 ns each by default."""
        return cls(ps_per_instruction, 0, 0, 0, 0, 0, 0)


class ClockState(ctypes.Structure):
    """Mirror of `struct vclock` in native/vclock.h: what the native hot paths need to timestamp events."""

    _fields_ = [
        ("engine", ctypes.POINTER(engine.EngineCounter)),
        ("set_clock", ctypes.c_void_p),  # the engine's weensy_engine_set_clock
        ("ps_per_instruction", ctypes.c_uint64),
        ("skipped_ns", ctypes.c_uint64),
        ("ns_per_syscall", ctypes.c_uint64),
        ("ns_per_port_io", ctypes.c_uint64),
        ("ns_per_mmio_byte", ctypes.c_uint64),
        ("deadline_ns", ctypes.c_uint64),  # the virtual time the armed deadline stands for (NEVER: none)
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
    import shutil  # (the build's own modules: a start that finds the library built never needs them)
    import subprocess
    import tempfile

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


# The engine's set_clock called with the counter's address: ctypes checks no pointer type at each call.
_SET_CLOCK_AT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)

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
        self._counter_pointer = ctypes.pointer(self.counter)
        self._set_clock = engine.set_clock_function()
        # The live budget (a 16-bit word in the engine's CPU): the count is base + budget_set - budget.
        self._budget = ctypes.c_uint16.from_address(ctypes.addressof(self.counter.budget.contents))
        self.state_for_native = ClockState(self._counter_pointer, ctypes.cast(self._set_clock, ctypes.c_void_p),
                                           costs.ps_per_instruction, costs.boot_delay_ns, costs.ns_per_syscall,
                                           costs.ns_per_port_io, costs.ns_per_mmio_byte, NEVER)
        self.on_deadlines_changed: Callable[[], None] = lambda: None
        self.charge = self._make_charge()

    @property
    def ps_per_instruction(self) -> int:
        return self.costs.ps_per_instruction

    @property
    def instructions(self) -> int:
        """Guest instructions executed since power-on (exact)."""
        counter = self.counter
        return counter.base + counter.budget_set - self._budget.value

    @property
    def skipped_ns(self) -> int:
        """Virtual time not counted in instructions: the boot delay, event charges, time jumped over while halted."""
        return self.state_for_native.skipped_ns

    @skipped_ns.setter
    def skipped_ns(self, value: int) -> None:
        self.state_for_native.skipped_ns = value

    # -- the Clock protocol that devices use --------------------------------------------------------------
    def now_ns(self) -> int:
        return self.instructions * self.costs.ps_per_instruction // 1000 + self.state_for_native.skipped_ns

    def deadlines_changed(self) -> None:
        self.on_deadlines_changed()

    # -- the run loop's side -------------------------------------------------------------------------------
    @property
    def deadline_stops(self) -> int:
        return self.counter.stops

    def _set_deadline(self, deadline: int) -> None:
        """Move the deadline, in instructions: through the engine, which recomputes its budget from the count and
        the deadline. It stands for no virtual time (`stop_at_ns` sets that after)."""
        self.state_for_native.deadline_ns = NEVER
        self._set_clock(self._counter_pointer, self.instructions, deadline)

    def _due(self, when_ns: int) -> int:
        """The first instruction count at which virtual time reaches `when_ns` (vclock_due in native/vclock.h)."""
        if when_ns <= self.skipped_ns:
            return 0
        return min(NEVER, -(-(when_ns - self.skipped_ns) * 1000 // self.costs.ps_per_instruction))

    def stop_at_ns(self, when_ns: int | None) -> None:
        """Arm the engine to stop once virtual time reaches `when_ns` (None: never). Charges made while it is
        armed bring it closer exactly (`charge`), so the stop is at the first block start at or past `when_ns`."""
        if when_ns is None:
            self._set_deadline(NEVER)
            return
        due = self._due(when_ns)
        # The engine stops at the start of a block; a slice must run at least one block, or a deadline due now
        # would stop every slice with no progress. A deadline beyond the counter's range is never (a wrapped one
        # would be in the past).
        self._set_deadline(min(NEVER, max(self.instructions + 1, due)))
        self.state_for_native.deadline_ns = min(NEVER, max(0, when_ns))

    def stop_at_next_block(self) -> None:
        """Stop at the start of the next block (the current block has been charged already)."""
        self._set_deadline(self.instructions)

    def count_emulated_instruction(self) -> None:
        """The harness did an instruction's work in a hook and moved the PC past it: it counts as one."""
        self._set_clock(self._counter_pointer, self.instructions + 1, self.counter.deadline)

    def _make_charge(self) -> Callable[[int], None]:
        """`charge(ns)`: an event the real machine pays for happened: advance the clock by `ns`, and bring an armed
        deadline closer: one armed for a virtual time (`stop_at_ns`) is recomputed from that time, so that charges
        in the middle of a slice never make it late by their rounding; one armed in instructions only (the next
        block) never moves later. Same arithmetic as `vclock_charge` (native/vclock.h). A closure over the
        clock's parts, with `_due` written out in it and the engine called by its address: the Python paths
        charge at every port access and the Python text window at every access (4 million times in a run of
        `faulter`), and attribute lookups, a method call or ctypes' argument checks would cost as much as the
        work (1.3 us a charge with them, 0.6 us without)."""
        state, counter, budget = self.state_for_native, self.counter, self._budget
        ps_per_instruction = self.costs.ps_per_instruction
        set_clock = _SET_CLOCK_AT(ctypes.cast(self._set_clock, ctypes.c_void_p).value)
        clock_address = ctypes.addressof(counter)

        def charge(ns: int) -> None:
            if ns <= 0:
                return
            skipped = state.skipped_ns + ns
            state.skipped_ns = skipped
            deadline = counter.deadline
            if deadline == NEVER:
                return
            deadline_ns = state.deadline_ns
            if deadline_ns == NEVER:
                moved = max(0, deadline - ns * 1000 // ps_per_instruction)
            elif deadline_ns <= skipped:  # _due(deadline_ns)
                moved = 0
            else:
                moved = -(-(deadline_ns - skipped) * 1000 // ps_per_instruction)
                if moved > NEVER:
                    moved = NEVER
            if moved < deadline:  # (not _set_deadline: the deadline still stands for `deadline_ns`)
                set_clock(clock_address, counter.base + counter.budget_set - budget.value, moved)

        return charge

    def skip_to_ns(self, when_ns: int) -> None:
        """Jump over idle time (the CPU is halted): advance the clock without executing anything."""
        now = self.now_ns()
        if when_ns > now:
            self.skipped_ns += when_ns - now

    def state(self) -> dict[str, int]:
        return {"instructions": self.instructions, "skipped_ns": self.skipped_ns,
                "stops": self.counter.stops}

    def restore(self, state: dict[str, int]) -> None:
        self.state_for_native.deadline_ns = NEVER
        self._set_clock(self._counter_pointer, state["instructions"], NEVER)
        self.skipped_ns = state["skipped_ns"]
        self.counter.stops = state["stops"]
