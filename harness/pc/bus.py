"""The I/O bus: port and MMIO dispatch from the CPU to device models.

Each port number maps straight to its device (a dict lookup per access). An access nobody claims is harmless,
as on a PC with nothing at that address: reads float high, writes vanish; each such port or address is
reported once through `on_unclaimed` so a guest poking at missing hardware is visible without flooding.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import Uc

from .devices.base import Device


class Bus:
    def __init__(self) -> None:
        self.ports: dict[int, Device] = {}
        self.mmio: list[tuple[int, int, Device]] = []
        self.on_unclaimed: Callable[[str], None] = lambda message: None
        self._reported: set[tuple[str, int]] = set()
        self.unassigned_pages: set[int] = set()

    # -- wiring --------------------------------------------------------------------------------------------
    def add_ports(self, device: Device, first: int, count: int) -> None:
        for port in range(first, first + count):
            if port in self.ports:
                raise ValueError(f"port {port:#x} claimed by both {self.ports[port].name} and {device.name}")
            self.ports[port] = device

    def add_device_ports(self, device: Device) -> None:
        """Claim every (first, count) range in the device's PORTS attribute."""
        for first, count in getattr(device, "PORTS", ()):
            self.add_ports(device, first, count)

    def add_mmio(self, uc: Uc, device: Device, base: int, size: int) -> None:
        def read(uc: Uc, offset: int, size: int, user_data: object) -> int:
            return device.mmio_read(offset, size)

        def write(uc: Uc, offset: int, size: int, value: int, user_data: object) -> None:
            device.mmio_write(offset, size, value)

        uc.mmio_map(base, size, read, None, write, None)
        self.mmio.append((base, size, device))

    def add_unassigned_page(self, uc: Uc, address: int, report: bool = True) -> None:
        """Back one 4 KiB page of nothing: reads float high, writes vanish (like an empty PC bus)."""
        page = address & ~0xFFF

        def read(uc: Uc, offset: int, size: int, user_data: object) -> int:
            return (1 << (8 * size)) - 1

        def write(uc: Uc, offset: int, size: int, value: int, user_data: object) -> None:
            return None

        uc.mmio_map(page, 0x1000, read, None, write, None)
        self.unassigned_pages.add(page)
        if report:
                self.on_unclaimed(f"access to unassigned physical address {address:#x}; reads as all ones, "
                              f"writes ignored, reported once per page")

    # -- dispatch ------------------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        device = self.ports.get(port)
        if device is None:
            self._unclaimed("read", port, size)
            return (1 << (8 * size)) - 1
        return device.io_read(port, size) & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        device = self.ports.get(port)
        if device is None:
            self._unclaimed("write", port, size, value)
            return
        device.io_write(port, size, value & ((1 << (8 * size)) - 1))

    def _unclaimed(self, direction: str, port: int, size: int, value: int | None = None) -> None:
        if (direction, port) in self._reported:
            return
        self._reported.add((direction, port))
        what = f"{direction} of unclaimed port {port:#x} (size {size}"
        what += f", value {value:#x})" if value is not None else ")"
        self.on_unclaimed(what + "; ignored, reported once")
