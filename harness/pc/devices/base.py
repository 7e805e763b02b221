"""What every device model shares: the small interface the bus dispatches to.

Devices follow QEMU's device-model shape: one device a file, registers as named constants, all state in the
device object, reads and writes dispatched by port or offset. A device knows nothing about the CPU; it reaches
the rest of the machine only through the narrow objects it is given (an interrupt line, the virtual clock, the
board's power controls).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


def shared_register(record: str, field: str, convert: Callable[[Any], Any] = int) -> property:
    """A device attribute kept in the device's C-compatible record `record` (a ctypes Structure that the native
    fast path reads and writes too), so the model and the native code never hold two copies of it."""

    def get(device: Any) -> Any:
        return convert(getattr(getattr(device, record), field))

    def set_(device: Any, value: Any) -> None:
        setattr(getattr(device, record), field, value)

    return property(get, set_, doc=f"`{field}` of the shared record `{record}`")


class Device:
    """Base class of device models. Subclasses override the access methods they implement."""

    name = "device"

    def reset(self) -> None:
        """Return to power-on state."""

    # Port I/O (x86 in/out). `port` is the absolute port number; `size` is 1, 2 or 4 bytes.
    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        return None

    # Memory-mapped I/O. `offset` is relative to the region's base; `size` is 1, 2 or 4 bytes
    # (Unicorn splits 8-byte accesses into two 4-byte ones).
    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        return None


class Clock(Protocol):
    """The deterministic virtual clock as devices see it."""

    def now_ns(self) -> int:
        """Current virtual time in nanoseconds since power-on."""
        ...

    def deadlines_changed(self) -> None:
        """A device's next event moved: the run loop must recompute when to stop next."""
        ...


class InterruptSink(Protocol):
    """Where an interrupt controller sends a vector (the local APIC implements this)."""

    def accept_vector(self, vector: int) -> None: ...


class Board(Protocol):
    """Machine-level controls a device may trigger (the chipset's power and reset lines)."""

    def power_off(self, source: str) -> None: ...

    def reset(self, source: str) -> None: ...
