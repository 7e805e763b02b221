"""The guest's RAM: anonymous host memory, zero-filled and backed lazily, below the PC's device registers."""

from __future__ import annotations

import mmap

from .devices.ioapic import IOAPIC_BASE
from .errors import HarnessError

RAM_LIMIT = IOAPIC_BASE  # RAM from address 0 must end below the APICs' registers (0xFEC00000), as on a PC


def allocate(size: int) -> mmap.mmap:
    """`size` bytes of guest RAM; a size the PC cannot hold or the host refuses is one HarnessError."""
    if not 0 < size <= RAM_LIMIT:
        raise HarnessError(f"guest RAM of {size >> 20} MiB: give 1 to {RAM_LIMIT >> 20} MiB")
    try:
        return mmap.mmap(-1, size)
    except OSError as e:
        raise HarnessError(f"cannot reserve {size >> 20} MiB of guest RAM on this host ({e.strerror})") from None
