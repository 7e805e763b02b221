"""The I/O bus: port and MMIO dispatch from the CPU to device models.

Each port number maps straight to its device (a dict lookup per access). An access nobody claims is harmless,
as on a PC with nothing at that address: reads float high, writes vanish; each such port is
reported once through `on_unclaimed` so a guest poking at missing hardware is visible without flooding. Physical
memory that neither RAM nor a device claims is one empty bus (a few MMIO regions made at start-up): touching it
costs the same whatever the number of pages, and the first pages touched are reported. Each memory-mapped access
is a call into Python; those a guest can loop on to no purpose (the empty bus, a device's `MMIO_CHARGED_WRITES`:
the local APIC's IPI command) are charged to the virtual clock (`on_mmio`, ClockCosts.ns_per_mmio), as port
accesses are, so that such a loop pays for itself in virtual time. The registers a kernel uses every tick (the
EOI) are not charged: the speed model was fitted without them.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import Uc

from .devices.base import Device

PHYSICAL_LIMIT = 1 << 52  # the widest physical address a 64-bit page-table entry can hold
EMPTY_PAGES_REPORTED = 16  # pages of empty space reported one by one; beyond that a guest scan is quiet


class Bus:
    def __init__(self) -> None:
        self.ports: dict[int, Device] = {}
        self.mmio: list[tuple[int, int, Device]] = []
        self.on_unclaimed: Callable[[str], None] = lambda message: None
        self.on_mmio: Callable[[], None] = lambda: None  # charges one memory-mapped access (the board sets it)
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
        charged: frozenset[int] = getattr(device, "MMIO_CHARGED_WRITES", frozenset())

        def read(uc: Uc, offset: int, size: int, user_data: object) -> int:
            return device.mmio_read(offset, size)

        def write(uc: Uc, offset: int, size: int, value: int, user_data: object) -> None:
            if offset in charged:
                self.on_mmio()
            device.mmio_write(offset, size, value)

        uc.mmio_map(base, size, read, None, write, None)
        self.mmio.append((base, size, device))

    def map_empty_space(self, uc: Uc, start: int, end: int = PHYSICAL_LIMIT) -> None:
        """Back every physical address in [start, end) that no device claims with an empty bus: reads float
        high, writes vanish. A handful of MMIO regions (the gaps between devices) made once, so the cost of
        the guest touching it does not grow with how many pages it touches. Call after every `add_mmio`."""
        claimed = sorted((base, base + size) for base, size, _ in self.mmio if base + size > start and base < end)
        gaps, at = [], start
        for base, top in claimed:
            if base > at:
                gaps.append((at, base))
            at = max(at, top)
        if at < end:
            gaps.append((at, end))
        for first, last in gaps:

            def read(uc: Uc, offset: int, size: int, user_data: object, first: int = first) -> int:
                self.on_mmio()
                self._touch_empty(first + offset)
                return (1 << (8 * size)) - 1

            def write(uc: Uc, offset: int, size: int, value: int, user_data: object, first: int = first) -> None:
                self.on_mmio()
                self._touch_empty(first + offset)

            uc.mmio_map(first, last - first, read, None, write, None)

    def add_unassigned_page(self, uc: Uc | None, address: int, report: bool = True) -> None:
        """Record that the page of `address` (empty space) was touched, reporting it unless `report` is false
        (a snapshot restores the record). The empty bus itself is always there (map_empty_space)."""
        page = address & ~0xFFF
        if page in self.unassigned_pages or len(self.unassigned_pages) >= EMPTY_PAGES_REPORTED:
            return
        self.unassigned_pages.add(page)
        if report:
            more = "" if len(self.unassigned_pages) < EMPTY_PAGES_REPORTED else \
                f"; the first {EMPTY_PAGES_REPORTED} pages touched are reported, no more"
            self.on_unclaimed(f"access to unassigned physical address {address:#x}; reads as all ones, "
                              f"writes ignored, reported once per page{more}")

    def _touch_empty(self, address: int) -> None:
        if len(self.unassigned_pages) < EMPTY_PAGES_REPORTED:
            self.add_unassigned_page(None, address)

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
