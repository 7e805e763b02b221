"""The deterministic virtual clock: guest time measured in executed translation blocks.

Virtual time = executed blocks x `ns_per_block` + time skipped while the CPU was halted. It never reads the host
clock, so the same kernel, programs and inputs give the same run on any machine. The block counter is a C hook
(native/blockclock.c) compiled on first use with the machine's C compiler; without a compiler the same counter
runs as a Python hook: slower, but it counts exactly the same blocks, so runs stay identical.
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
from pathlib import Path

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, Uc
from unicorn.unicorn_py3.unicorn import uclib

NATIVE_DIR = Path(__file__).with_name("native")
NATIVE_SOURCES = ("blockclock.c", "fastpath.c")  # one shared library: the clock and the hot paths (fastpath.py)
NEVER = (1 << 64) - 1

# One block is about four instructions; at 20 ns a block the guest runs like a ~200 MHz CPU, so the course's
# 100 Hz LAPIC timer ticks every 500,000 blocks (~2 million instructions). Unicorn runs memory-bound guest code
# at roughly 7 million blocks per second (every load and store takes its slow path), so one virtual second of
# such code costs about 7 s of host time, and compute-bound code far less.
DEFAULT_NS_PER_BLOCK = 20


class BlockCounter(ctypes.Structure):
    """Mirror of `struct block_clock` in native/blockclock.c."""

    _fields_ = [
        ("blocks", ctypes.c_uint64),
        ("deadline", ctypes.c_uint64),
        ("stops", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("ns_per_block", ctypes.c_uint64),
        ("skipped_ns", ctypes.c_uint64),
    ]


_HOOK_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


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
    """Counts executed blocks on one Unicorn engine and turns them into virtual nanoseconds.

    Devices read `now_ns()`; the run loop arms `stop_at_ns()` before each `emu_start` and the hook stops the CPU
    when that time is reached. `deadlines_changed` is set by the machine to re-arm when a device reprograms a
    timer in the middle of a run slice.
    """

    def __init__(self, uc: Uc, ns_per_block: int = DEFAULT_NS_PER_BLOCK, force_python: bool = False) -> None:
        if ns_per_block < 1:
            raise ValueError("ns_per_block must be at least 1")
        self.ns_per_block = ns_per_block
        # The counter also carries the time parameters, so the native hot paths (fastpath.c) timestamp events.
        self.counter = BlockCounter(0, NEVER, 0, ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value,
                                    ns_per_block, 0)
        self.on_deadlines_changed: Callable[[], None] = lambda: None
        self.instructions: ctypes.c_uint64 | None = None  # set by count_instructions()
        handle = ctypes.c_size_t()
        self.hook_handle = handle  # the block hook (the benchmark removes it to measure Unicorn without it)
        native = None if force_python else _load_native()
        self.native = native is not None
        if native is not None:
            callback = ctypes.cast(native.block_clock_hook, ctypes.c_void_p)
            user_data = ctypes.cast(ctypes.pointer(self.counter), ctypes.c_void_p)
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, callback, user_data,
                                    ctypes.c_uint64(1), ctypes.c_uint64(0))
            if err:
                raise RuntimeError(f"cannot install the block-clock hook (unicorn error {err})")
        else:
            counter = self.counter

            def python_hook(uc: Uc, address: int, size: int, user_data: object) -> None:
                counter.blocks += 1
                if counter.blocks >= counter.deadline:
                    counter.deadline = NEVER
                    counter.stops += 1
                    uc.emu_stop()

            uc.hook_add(UC_HOOK_BLOCK, python_hook)

    def count_instructions(self, uc: Uc) -> None:
        """Also count every executed instruction (exact, but slow: for measurements only)."""
        self.instructions = ctypes.c_uint64(0)
        native = _load_native()
        if native is None:
            counter = self.instructions

            def python_hook(uc: Uc, address: int, size: int, user_data: object) -> None:
                counter.value += 1

            uc.hook_add(UC_HOOK_CODE, python_hook)
            return
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_CODE,
                                ctypes.cast(native.instruction_count_hook, ctypes.c_void_p),
                                ctypes.cast(ctypes.pointer(self.instructions), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise RuntimeError(f"cannot install the instruction-count hook (unicorn error {err})")

    @property
    def skipped_ns(self) -> int:
        """Virtual time jumped over while the CPU was halted."""
        return self.counter.skipped_ns

    @skipped_ns.setter
    def skipped_ns(self, value: int) -> None:
        self.counter.skipped_ns = value

    # -- the Clock protocol that devices use --------------------------------------------------------------
    def now_ns(self) -> int:
        return self.counter.blocks * self.ns_per_block + self.skipped_ns

    def deadlines_changed(self) -> None:
        self.on_deadlines_changed()

    # -- the run loop's side -------------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return self.counter.blocks

    @property
    def deadline_stops(self) -> int:
        return self.counter.stops

    def stop_at_ns(self, when_ns: int | None) -> None:
        """Arm the hook to stop the CPU once virtual time reaches `when_ns` (None: never)."""
        if when_ns is None:
            self.counter.deadline = NEVER
            return
        remaining = when_ns - self.now_ns()
        # The hook stops emulation at the start of the block that reaches the deadline, before that block runs;
        # a slice must run at least one block, or a deadline due now would stop every slice with no progress.
        blocks = max(2, -(-remaining // self.ns_per_block) + 1)
        self.counter.deadline = self.counter.blocks + blocks

    def skip_to_ns(self, when_ns: int) -> None:
        """Jump over idle time (the CPU is halted): advance the clock without executing anything."""
        now = self.now_ns()
        if when_ns > now:
            self.skipped_ns += when_ns - now

    def state(self) -> dict[str, int]:
        return {"blocks": self.counter.blocks, "skipped_ns": self.skipped_ns, "stops": self.counter.stops}

    def restore(self, state: dict[str, int]) -> None:
        self.counter.blocks = state["blocks"]
        self.skipped_ns = state["skipped_ns"]
        self.counter.stops = state["stops"]
        self.counter.deadline = NEVER
