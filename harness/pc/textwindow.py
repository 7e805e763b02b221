"""The CGA text window (physical 0xB8000-0xBFFFF) as device memory, so that what the CPU does there is counted.

QEMU's VGA serves the text window through its device model, one byte per call: a store to text memory costs
there about as much as a hundred instructions, and a console scroll (a few thousand cell loads and stores)
about as much as a whole pipe round trip. A harness that maps the window as plain RAM cannot see those accesses,
let alone charge for them, and a program that prints a line per system call runs several times faster than under
QEMU (docs/speed-model.md). So the window is an MMIO region whose accesses are done on guest RAM itself (the
window stays part of the one RAM buffer that the console, the tracer, snapshots and the debugger read) and
charge `ClockCosts.ns_per_mmio_byte` per byte. The native library does that work (native/textwindow.c); without
it, or with `MachineConfig(fast_paths=False)`, the Python version below does the same work with the same charges.
The engine cannot run code from device memory: a guest that jumps into the window stops with a machine fault
at that address (tests/test_speed_model.py).
"""

from __future__ import annotations

import ctypes

from unicorn import UC_PROT_ALL, Uc
from unicorn.unicorn_py3.unicorn import uclib

from .clock import VirtualClock, _load_native

TEXT_WINDOW = 0xB8000  # the CGA text window: 32 KiB, of which the console shows the first 4000 bytes
TEXT_WINDOW_END = 0xC0000

# The engine's MMIO callbacks (uc_cb_mmio_read_t, uc_cb_mmio_write_t): engine, offset, size, (value,) user data.
_MMIO_READ = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_void_p)
_MMIO_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64,
                               ctypes.c_void_p)


class TextWindowState(ctypes.Structure):
    """Mirror of `struct text_window` in native/textwindow.c."""

    _fields_ = [("base", ctypes.c_void_p), ("clock", ctypes.c_void_p), ("bytes_read", ctypes.c_uint64),
                ("bytes_written", ctypes.c_uint64)]


def map_ram(uc: Uc, ram: int, ram_size: int) -> bool:
    """Map guest RAM (host address `ram`, `ram_size` bytes) into `uc` around the text window; True if the window
    lies in RAM and is left for `TextWindow` to map."""
    if ram_size < TEXT_WINDOW_END:
        uc.mem_map_ptr(0, ram_size, UC_PROT_ALL, ram)
        return False
    uc.mem_map_ptr(0, TEXT_WINDOW, UC_PROT_ALL, ram)
    if ram_size > TEXT_WINDOW_END:
        uc.mem_map_ptr(TEXT_WINDOW_END, ram_size - TEXT_WINDOW_END, UC_PROT_ALL, ram + TEXT_WINDOW_END)
    return True


class TextWindow:
    """The text window of one machine, mapped as device memory that reads and writes guest RAM."""

    def __init__(self, uc: Uc, memory: memoryview, ram: int, clock: VirtualClock, native: bool) -> None:
        self.state = state = TextWindowState(ram + TEXT_WINDOW, ctypes.addressof(clock.state_for_native), 0, 0)
        counted = self._python_counts = [0, 0]  # the Python version's bytes read and written (ctypes fields cost more)
        library = _load_native() if native else None
        if library is not None:
            library.text_window_size.restype = ctypes.c_size_t
            if library.text_window_size() != ctypes.sizeof(TextWindowState):
                raise RuntimeError("textwindow.c and textwindow.py disagree on struct text_window")
            self.native = True
            read = ctypes.cast(library.text_window_read, ctypes.c_void_p)
            write = ctypes.cast(library.text_window_write, ctypes.c_void_p)
            pointer = ctypes.cast(ctypes.pointer(state), ctypes.c_void_p)
            status = uclib.uc_mmio_map(uc._uch, TEXT_WINDOW, TEXT_WINDOW_END - TEXT_WINDOW, read, pointer, write,
                                       pointer)
            if status != 0:
                raise RuntimeError(f"the engine refused to map the text window (error {status})")
            return
        self.native = False
        window = memory[TEXT_WINDOW:TEXT_WINDOW_END]
        charge, ns_per_byte, from_bytes = clock.charge, clock.costs.ns_per_mmio_byte, int.from_bytes

        # The engine calls these once per access, thousands of times per console scroll: they are given to it
        # directly (not through Unicorn's Python hook wrapper, which costs a third as much again), and an
        # exception is handled as that wrapper does (kept, the run stopped, raised again by emu_start).
        def failed(error: BaseException) -> None:
            if uc._hook_exception is None:
                uc._hook_exception = error
            uc.emu_stop()

        def read_bytes(handle: int, offset: int, size: int, user_data: int) -> int:
            try:
                counted[0] += size
                charge(size * ns_per_byte)
                return from_bytes(window[offset:offset + size], "little")
            except BaseException as error:
                failed(error)
                return 0

        def write_bytes(handle: int, offset: int, size: int, value: int, user_data: int) -> None:
            try:
                counted[1] += size
                charge(size * ns_per_byte)
                window[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            except BaseException as error:
                failed(error)

        self._callbacks = (_MMIO_READ(read_bytes), _MMIO_WRITE(write_bytes))  # kept alive as long as the engine
        read, write = (ctypes.cast(callback, ctypes.c_void_p) for callback in self._callbacks)
        status = uclib.uc_mmio_map(uc._uch, TEXT_WINDOW, TEXT_WINDOW_END - TEXT_WINDOW, read, None, write, None)
        if status != 0:
            raise RuntimeError(f"the engine refused to map the text window (error {status})")

    @property
    def bytes_read(self) -> int:
        """Bytes the CPU has loaded from the window since this machine was made (for the fit; not in snapshots)."""
        return self.state.bytes_read if self.native else self._python_counts[0]

    @property
    def bytes_written(self) -> int:
        """Bytes the CPU has stored into the window since this machine was made (for the fit; not in snapshots)."""
        return self.state.bytes_written if self.native else self._python_counts[1]
