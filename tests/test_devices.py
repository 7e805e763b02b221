"""Behaviour of the device models, one group per device, driven only through their public interfaces."""

from __future__ import annotations

import time

import pytest

from harness.pc.devices.base import Device
from harness.pc.devices.cga import CgaConsole
from harness.pc.devices.ioapic import IoApic
from harness.pc.devices.keyboard import Keyboard8042, scancodes_for_text
from harness.pc.devices.lapic import (
    APIC_BASE_MSR_VALUE,
    LAPIC_BASE,
    LocalApic,
    divisor_for,
)
from harness.pc.devices.parallel import ParallelPort
from harness.pc.devices.pci import AcpiPm, HostBridge, Ich9Lpc, PciFunction, PciHost
from harness.pc.devices.pic import Pic8259
from harness.pc.devices.reset import SystemControlPortA

MS = 1_000_000  # nanoseconds


# --- fakes --------------------------------------------------------------------------------------------------


class FakeClock:
    """Virtual time the test sets by hand; counts how often a device said its deadline moved."""

    def __init__(self, now: int = 0) -> None:
        self.now = now
        self.changes = 0

    def now_ns(self) -> int:
        return self.now

    def deadlines_changed(self) -> None:
        self.changes += 1


class FakeSink:
    def __init__(self) -> None:
        self.vectors: list[int] = []

    def accept_vector(self, vector: int) -> None:
        self.vectors.append(vector)


class FakeBoard:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def power_off(self, source: str) -> None:
        self.events.append(("power_off", source))

    def reset(self, source: str) -> None:
        self.events.append(("reset", source))


class PortBus:
    """Just enough of a port bus to reach devices through their declared PORTS, as the machine will."""

    def __init__(self, *devices: Device) -> None:
        self.ports: dict[int, Device] = {}
        for device in devices:
            for first, count in device.PORTS:  # type: ignore[attr-defined]
                for port in range(first, first + count):
                    assert port not in self.ports, f"port {port:#x} claimed twice"
                    self.ports[port] = device

    def inb(self, port: int) -> int:
        return self.ports[port].io_read(port, 1)

    def inw(self, port: int) -> int:
        return self.ports[port].io_read(port, 2)

    def inl(self, port: int) -> int:
        return self.ports[port].io_read(port, 4)

    def outb(self, port: int, value: int) -> None:
        self.ports[port].io_write(port, 1, value)

    def outw(self, port: int, value: int) -> None:
        self.ports[port].io_write(port, 2, value)

    def outl(self, port: int, value: int) -> None:
        self.ports[port].io_write(port, 4, value)


# --- CGA console --------------------------------------------------------------------------------------------


def put_text(ram: bytearray, row: int, col: int, text: bytes, attr: int = 0x07) -> None:
    for i, ch in enumerate(text):
        addr = 0xB8000 + 2 * (row * 80 + col + i)
        ram[addr] = ch
        ram[addr + 1] = attr


def test_cga_decodes_the_text_buffer_in_guest_ram() -> None:
    ram = bytearray(0x100000)
    cga = CgaConsole(memoryview(ram))
    put_text(ram, 0, 0, b"Hello, world")
    put_text(ram, 2, 5, b"x\x03", attr=0x4F)  # 0x03 is a heart in code page 437
    # Row 1 stays all zero bytes, which read as spaces.

    lines = cga.text_lines()
    assert len(lines) == 25 and all(len(line) == 80 for line in lines)
    assert lines[0] == "Hello, world" + " " * 68
    assert lines[1] == " " * 80
    assert lines[2] == "     x\u2665" + " " * 73
    assert cga.text() == "Hello, world\n\n     x\u2665"
    assert cga.cells()[2][5] == (ord("x"), 0x4F)
    assert cga.cells()[0][0] == (ord("H"), 0x07)
    assert len(cga.cells()) == 25 and all(len(row) == 80 for row in cga.cells())


def test_cga_keeps_non_ascii_bytes_as_cp437_and_strips_only_spaces() -> None:
    ram = bytearray(0x100000)
    cga = CgaConsole(memoryview(ram))
    put_text(ram, 0, 0, b"\xc9\xcd\xbb\xff")  # box drawing, then 0xFF (a no-break space in CP437)
    assert cga.text_lines()[0].startswith("\u2554\u2550\u2557\u00a0")
    assert cga.text() == "\u2554\u2550\u2557\u00a0"


def test_cga_cursor_comes_from_crtc_registers_14_and_15() -> None:
    ram = bytearray(0x100000)
    cga = CgaConsole(memoryview(ram))
    bus = PortBus(cga)
    pos = 3 * 80 + 7
    bus.outb(0x3D4, 14)
    bus.outb(0x3D5, pos >> 8)
    bus.outb(0x3D4, 15)
    bus.outb(0x3D5, pos & 0xFF)
    assert cga.cursor() == pos
    assert bus.inb(0x3D5) == pos & 0xFF  # the data port reads back the selected register

    bus.outw(0x3D4, 14 | (0x07 << 8))  # outw idiom: index to 0x3D4, data to 0x3D5
    assert cga.cursor() == 0x0700 | (pos & 0xFF)

    bus.outb(0x3D4, 10)
    bus.outb(0x3D5, 0x20)  # cursor start register bit 5: cursor off
    assert cga.crtc[10] == 0x20 and not cga.cursor_visible()


def test_cga_input_status_toggles_so_retrace_polls_finish() -> None:
    cga = CgaConsole(memoryview(bytearray(0x100000)))
    reads = [cga.io_read(0x3DA, 1) & 0x08 for _ in range(4)]
    assert reads == [0x08, 0, 0x08, 0]


def test_cga_snapshot_round_trip() -> None:
    cga = CgaConsole(memoryview(bytearray(0x100000)))
    cga.io_write(0x3D4, 2, 15 | (42 << 8))
    state = cga.snapshot_state()
    cga.io_write(0x3D4, 2, 15 | (99 << 8))
    cga.restore_state(state)
    assert cga.cursor() == 42


def test_cga_rejects_a_buffer_outside_ram() -> None:
    with pytest.raises(ValueError):
        CgaConsole(memoryview(bytearray(0x1000)))


# --- keyboard -----------------------------------------------------------------------------------------------


def test_scancodes_for_text_types_shifted_and_enter() -> None:
    assert scancodes_for_text("Hi!\n") == bytes(
        [0x2A, 0x23, 0xA3, 0xAA, 0x17, 0x97, 0x2A, 0x02, 0x82, 0xAA, 0x1C, 0x9C]
    )


def test_scancodes_for_text_control_and_special_keys() -> None:
    assert scancodes_for_text("\x03") == bytes([0x1D, 0x2E, 0xAE, 0x9D])  # Ctrl-C
    assert scancodes_for_text("q") == bytes([0x10, 0x90])
    assert scancodes_for_text(" \t\b\x1b") == bytes([0x39, 0xB9, 0x0F, 0x8F, 0x0E, 0x8E, 0x01, 0x81])
    assert scancodes_for_text('"') == bytes([0x2A, 0x28, 0xA8, 0xAA])


def test_scancodes_for_text_refuses_what_it_cannot_type() -> None:
    with pytest.raises(ValueError, match="'é'"):
        scancodes_for_text("caf\u00e9")
    with pytest.raises(ValueError, match="U\\+007F"):
        scancodes_for_text("\x7f")


def test_keyboard_fifo_status_and_irq() -> None:
    irqs: list[int] = []
    kbd = Keyboard8042(irq=lambda: irqs.append(1))
    bus = PortBus(kbd)
    assert bus.inb(0x64) & 0x01 == 0
    assert bus.inb(0x64) & 0x14 == 0x14  # system flag and keyboard unlocked

    kbd.push(bytes([0x10, 0x90]))
    assert len(irqs) == 1  # first byte loaded into the output buffer
    assert bus.inb(0x64) & 0x01
    assert bus.inb(0x60) == 0x10
    assert len(irqs) == 2  # the next byte was loaded
    assert bus.inb(0x64) & 0x01
    assert bus.inb(0x60) == 0x90
    assert bus.inb(0x64) & 0x01 == 0
    assert bus.inb(0x60) == 0x90  # empty: the last byte again
    assert len(irqs) == 2


def test_keyboard_irq_follows_command_byte_bit_0() -> None:
    irqs: list[int] = []
    kbd = Keyboard8042(irq=lambda: irqs.append(1))
    bus = PortBus(kbd)
    bus.outb(0x64, 0x20)
    ccb = bus.inb(0x60)
    assert ccb & 0x01  # IRQ1 enabled by default
    irqs.clear()
    bus.outb(0x64, 0x60)
    bus.outb(0x60, ccb & ~0x01)
    kbd.push(b"\x1e")
    assert irqs == [] and bus.inb(0x64) & 0x01  # polled mode still works
    bus.outb(0x64, 0x60)
    bus.outb(0x60, ccb)
    assert irqs == [1]  # enabling with a byte waiting raises the line


def test_keyboard_controller_commands() -> None:
    board = FakeBoard()
    kbd = Keyboard8042(board=board)
    bus = PortBus(kbd)
    bus.outb(0x64, 0xAA)
    assert bus.inb(0x60) == 0x55
    bus.outb(0x64, 0xAB)
    assert bus.inb(0x60) == 0x00
    bus.outb(0x60, 0xED)  # set LEDs ...
    assert bus.inb(0x60) == 0xFA
    bus.outb(0x60, 0x02)  # ... parameter
    assert bus.inb(0x60) == 0xFA
    bus.outb(0x60, 0xFF)
    assert [bus.inb(0x60), bus.inb(0x60)] == [0xFA, 0xAA]
    assert board.events == []
    bus.outb(0x64, 0xFE)
    assert board.events == [("reset", "8042 reset line")]


def test_keyboard_replies_go_before_queued_keys_and_disable_holds_keys() -> None:
    kbd = Keyboard8042()
    bus = PortBus(kbd)
    bus.outb(0x64, 0xAD)  # disable keyboard
    kbd.push(b"\x10\x90")
    assert bus.inb(0x64) & 0x01 == 0
    bus.outb(0x64, 0xAA)
    assert bus.inb(0x60) == 0x55
    bus.outb(0x64, 0xAE)
    assert [bus.inb(0x60), bus.inb(0x60)] == [0x10, 0x90]


def test_keyboard_snapshot_round_trip() -> None:
    kbd = Keyboard8042()
    kbd.push(b"\x10\x90\x11")
    state = kbd.snapshot_state()
    assert kbd.io_read(0x60, 1) == 0x10
    kbd.restore_state(state)
    assert [kbd.io_read(0x60, 1) for _ in range(3)] == [0x10, 0x90, 0x11]


# --- local APIC ---------------------------------------------------------------------------------------------

SVR, EOI, TPR, PPR, ESR = 0xF0, 0xB0, 0x80, 0xA0, 0x280
LVT_TIMER, LVT_ERROR, INITIAL, CURRENT, DIVIDE = 0x320, 0x370, 0x380, 0x390, 0x3E0
ISR0, IRR0 = 0x100, 0x200
PERIODIC = 0x20000
MASKED = 0x10000


def weensyos_lapic(clock: FakeClock) -> LocalApic:
    """A local APIC programmed the way the course kernel's init_hardware + init_timer(100) leave it."""
    lapic = LocalApic(clock)
    lapic.mmio_write(SVR, 4, (lapic.mmio_read(SVR, 4) & ~0xFF) | 0x100 | 63)
    lapic.mmio_write(DIVIDE, 4, 0x0B)
    lapic.mmio_write(LVT_TIMER, 4, PERIODIC | 32)
    lapic.mmio_write(INITIAL, 4, 0)
    lapic.mmio_write(0x350, 4, MASKED)
    lapic.mmio_write(0x360, 4, MASKED)
    lapic.mmio_write(LVT_ERROR, 4, 51)
    lapic.mmio_write(ESR, 4, 0)
    lapic.mmio_read(ESR, 4)
    lapic.mmio_write(EOI, 4, 0)
    return lapic


def test_lapic_identity_registers() -> None:
    lapic = LocalApic(FakeClock())
    assert LAPIC_BASE == LocalApic.MMIO_BASE == 0xFEE00000 and LocalApic.MMIO_SIZE == 0x1000
    assert APIC_BASE_MSR_VALUE & 0xFFFFF000 == LAPIC_BASE and APIC_BASE_MSR_VALUE & 0x900 == 0x900
    assert lapic.mmio_read(0x20, 4) == 0
    assert lapic.mmio_read(0x30, 4) == 0x00050014
    assert lapic.mmio_read(0xE0, 4) == 0xFFFFFFFF
    assert lapic.mmio_read(SVR, 4) == 0xFF
    assert all(lapic.mmio_read(reg, 4) == MASKED for reg in range(0x320, 0x380, 0x10))
    assert lapic.mmio_read(0x30, 2) == 0x0014 and lapic.mmio_read(0x32, 2) == 0x0005  # narrow reads


def test_lapic_divide_configuration_encoding() -> None:
    assert [divisor_for(v) for v in (0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB)] == [2, 4, 8, 16, 32, 64, 128, 1]


def test_lapic_periodic_timer_at_100_hz() -> None:
    clock = FakeClock(now=7 * MS)
    lapic = weensyos_lapic(clock)
    assert lapic.next_deadline_ns() is None  # initial count 0: stopped
    changes = clock.changes
    lapic.mmio_write(INITIAL, 4, 10_000_000)
    assert clock.changes > changes
    assert lapic.next_deadline_ns() == 17 * MS

    clock.now = 12 * MS
    assert lapic.mmio_read(CURRENT, 4) == 5_000_000

    clock.now = 42 * MS  # 35 ms after the start: expiries at 17, 27 and 37 ms
    lapic.advance(clock.now)
    assert lapic.timer_expirations == 3
    assert lapic.mmio_read(CURRENT, 4) == 5_000_000  # halfway through the fourth period
    assert lapic.pending_vector() == 32
    assert lapic.mmio_read(IRR0 + 0x10, 4) == 1  # vector 32 in the second IRR bank, once: coalesced
    assert lapic.next_deadline_ns() == 47 * MS

    lapic.acknowledge(32)  # the CPU takes the interrupt
    assert lapic.pending_vector() is None
    assert lapic.mmio_read(ISR0 + 0x10, 4) == 1
    assert lapic.mmio_read(PPR, 4) == 0x20

    lapic.mmio_write(EOI, 4, 0)
    assert lapic.mmio_read(ISR0 + 0x10, 4) == 0
    assert lapic.mmio_read(PPR, 4) == 0

    clock.now = 47 * MS
    lapic.advance(clock.now)
    assert lapic.timer_expirations == 4 and lapic.pending_vector() == 32


def test_lapic_masked_timer_counts_but_raises_nothing() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(LVT_TIMER, 4, MASKED | PERIODIC | 32)
    lapic.mmio_write(INITIAL, 4, 10_000_000)
    clock.now = 25 * MS
    lapic.advance(clock.now)
    assert lapic.timer_expirations == 2
    assert lapic.pending_vector() is None
    assert lapic.next_interrupt_deadline_ns() is None
    assert lapic.next_deadline_ns() == 30 * MS


def test_lapic_one_shot_fires_once() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(LVT_TIMER, 4, 40)  # one-shot, vector 40
    lapic.mmio_write(INITIAL, 4, 1_000)
    assert lapic.next_deadline_ns() == 1_000
    clock.now = 10 * MS
    lapic.advance(clock.now)
    assert lapic.timer_expirations == 1
    assert lapic.pending_vector() == 40
    assert lapic.next_deadline_ns() is None
    assert lapic.mmio_read(CURRENT, 4) == 0
    lapic.advance(20 * MS)
    assert lapic.timer_expirations == 1


def test_lapic_divider_slows_the_timer() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(DIVIDE, 4, 0x3)  # divide by 16
    lapic.mmio_write(INITIAL, 4, 1_000)
    assert lapic.next_deadline_ns() == 16_000
    clock.now = 8_000
    assert lapic.mmio_read(CURRENT, 4) == 500
    lapic.mmio_write(DIVIDE, 4, 0xB)  # divide by 1 from here: the remaining 500 counts take 500 ns
    assert lapic.next_deadline_ns() == 8_500


def test_lapic_one_nanosecond_period_is_arithmetic() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(INITIAL, 4, 1)
    started = time.perf_counter()
    lapic.advance(1_000_000_000)
    assert time.perf_counter() - started < 0.1
    assert lapic.timer_expirations == 1_000_000_000
    assert lapic.pending_vector() == 32
    assert lapic.next_deadline_ns() == 1_000_000_001


def test_lapic_tpr_blocks_lower_priority_classes() -> None:
    lapic = weensyos_lapic(FakeClock())
    lapic.accept_vector(0x45)
    lapic.mmio_write(TPR, 4, 0x50)
    assert lapic.mmio_read(PPR, 4) == 0x50
    assert lapic.pending_vector() is None
    lapic.mmio_write(TPR, 4, 0x40)  # same class as 0x45: still blocked
    assert lapic.pending_vector() is None
    lapic.mmio_write(TPR, 4, 0x3F)
    assert lapic.pending_vector() == 0x45


def test_lapic_in_service_vector_blocks_its_class_until_eoi() -> None:
    lapic = weensyos_lapic(FakeClock())
    lapic.accept_vector(0x61)
    lapic.acknowledge(0x61)
    lapic.accept_vector(0x62)  # same class as the one in service
    lapic.accept_vector(0x30)  # lower class
    assert lapic.pending_vector() is None
    lapic.accept_vector(0x71)  # higher class preempts
    assert lapic.pending_vector() == 0x71
    lapic.acknowledge(0x71)
    lapic.mmio_write(EOI, 4, 0)  # ends 0x71, the highest in service
    assert lapic.pending_vector() is None
    lapic.mmio_write(EOI, 4, 0)  # ends 0x61
    assert lapic.pending_vector() == 0x62


def test_lapic_software_disabled_delivers_nothing_and_masks_lvts() -> None:
    clock = FakeClock()
    lapic = LocalApic(clock)  # SVR reset value 0xFF: software-disabled
    lapic.accept_vector(0x40)
    assert lapic.pending_vector() is None
    lapic.mmio_write(LVT_TIMER, 4, PERIODIC | 32)
    assert lapic.mmio_read(LVT_TIMER, 4) & MASKED  # cannot be unmasked while disabled
    lapic.mmio_write(SVR, 4, 0x1FF)
    assert lapic.pending_vector() == 0x40


def test_lapic_illegal_vector_sets_esr_and_raises_the_error_lvt() -> None:
    lapic = weensyos_lapic(FakeClock())  # LVT error = vector 51, unmasked
    lapic.accept_vector(3)
    assert lapic.mmio_read(ESR, 4) == 0  # not latched yet
    lapic.mmio_write(ESR, 4, 0)
    assert lapic.mmio_read(ESR, 4) == 0x40  # received illegal vector
    assert lapic.pending_vector() == 51
    assert not lapic.irr & (1 << 3)


def test_lapic_tsc_deadline_mode_is_reported_and_stops_the_timer() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(INITIAL, 4, 1_000)
    lapic.mmio_write(LVT_TIMER, 4, 0x40000 | 32)
    assert lapic.tsc_deadline_requested
    assert lapic.next_deadline_ns() is None
    lapic.advance(10 * MS)
    assert lapic.timer_expirations == 0


def test_lapic_snapshot_round_trip() -> None:
    clock = FakeClock()
    lapic = weensyos_lapic(clock)
    lapic.mmio_write(INITIAL, 4, 10_000_000)
    lapic.accept_vector(0x50)
    state = lapic.snapshot_state()
    lapic.reset()
    assert lapic.next_deadline_ns() is None and lapic.pending_vector() is None
    lapic.restore_state(state)
    assert lapic.next_deadline_ns() == 10 * MS
    assert lapic.pending_vector() == 0x50
    assert lapic.mmio_read(LVT_TIMER, 4) == PERIODIC | 32


# --- I/O APIC -----------------------------------------------------------------------------------------------


def test_ioapic_version_through_select_and_window() -> None:
    ioapic = IoApic(FakeSink())
    assert IoApic.MMIO_BASE == 0xFEC00000 and IoApic.MMIO_SIZE == 0x1000
    ioapic.mmio_write(0x00, 4, 0x01)
    assert ioapic.mmio_read(0x10, 4) == 0x00170020
    ioapic.mmio_write(0x00, 1, 0x10)
    assert ioapic.mmio_read(0x10, 4) == 0x00010000  # entry 0 low: masked


def test_ioapic_forwards_only_unmasked_entries() -> None:
    sink = FakeSink()
    ioapic = IoApic(sink)
    ioapic.raise_irq(1)
    assert sink.vectors == []
    ioapic.mmio_write(0x00, 4, 0x10 + 2 * 1)  # entry 1, low dword
    ioapic.mmio_write(0x10, 4, 33)  # unmasked, fixed, vector 33
    ioapic.raise_irq(1)
    ioapic.raise_irq(2)  # still masked
    assert sink.vectors == [33]
    state = ioapic.snapshot_state()
    ioapic.reset()
    ioapic.raise_irq(1)
    assert sink.vectors == [33]
    ioapic.restore_state(state)
    ioapic.raise_irq(1)
    assert sink.vectors == [33, 33]


def test_ioapic_delivers_to_the_local_apic() -> None:
    lapic = weensyos_lapic(FakeClock())
    ioapic = IoApic(lapic)
    ioapic.write_register(0x10 + 2 * 4, 0x41)
    ioapic.raise_irq(4)
    assert lapic.pending_vector() == 0x41


# --- 8259 PIC -----------------------------------------------------------------------------------------------


def test_pic_mask_reads_back() -> None:
    pic = Pic8259()
    bus = PortBus(pic)
    bus.outb(0x21, 0xFF)
    bus.outb(0xA1, 0xFF)
    assert (bus.inb(0x21), bus.inb(0xA1)) == (0xFF, 0xFF)
    bus.outb(0x21, 0xFB)
    assert bus.inb(0x21) == 0xFB


def test_pic_initialisation_sequence_and_ocw3() -> None:
    pic = Pic8259()
    bus = PortBus(pic)
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)):
        bus.outb(port, value)
    for port, value in ((0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01)):
        bus.outb(port, value)
    assert (pic.master.vector_base, pic.slave.vector_base) == (0x20, 0x28)
    assert (pic.master.icw3, pic.slave.icw3) == (0x04, 0x02)
    assert bus.inb(0x21) == 0x00  # ICW1 clears the mask
    bus.outb(0x21, 0xA5)  # now OCW1
    assert bus.inb(0x21) == 0xA5 and pic.master.vector_base == 0x20
    bus.outb(0x20, 0x0B)  # OCW3: read ISR
    assert bus.inb(0x20) == 0
    state = pic.snapshot_state()
    pic.reset()
    pic.restore_state(state)
    assert bus.inb(0x21) == 0xA5 and pic.master.read_isr


# --- parallel port ------------------------------------------------------------------------------------------


def test_parallel_port_prints_on_strobe_rising_edges() -> None:
    printed: list[int] = []
    lpt = ParallelPort(printed.append)
    bus = PortBus(lpt)
    bus.outb(0x37A, 0x00)  # once, before the first byte
    for byte in b"OK\n":
        assert bus.inb(0x379) & 0x80  # /BUSY = 1: ready
        bus.outb(0x378, byte)
        bus.outb(0x37A, 0x0D)
        bus.outb(0x37A, 0x0C)
    assert bytes(printed) == b"OK\n"
    bus.outb(0x37A, 0x0D)
    bus.outb(0x37A, 0x0D)  # no new edge
    assert bytes(printed) == b"OK\n\n"
    assert bus.inb(0x379) & 0xD8 == 0xD8
    assert bus.inb(0x378) == ord("\n")


def test_parallel_port_ignores_data_without_strobe_edge() -> None:
    printed: list[int] = []
    lpt = ParallelPort(printed.append)
    lpt.io_write(0x37A, 1, 0x0C)
    lpt.io_write(0x378, 1, ord("a"))
    lpt.io_write(0x378, 1, ord("b"))
    assert printed == []
    lpt.io_write(0x37A, 1, 0x0D)
    assert printed == [ord("b")]


# --- PCI and ACPI power management --------------------------------------------------------------------------


def q35_pci() -> PciHost:
    host = PciHost()
    host.add_function(0, 0, 0, HostBridge())
    host.add_function(0, 0x1F, 0, Ich9Lpc())
    return host


def config_address(bus: int, device: int, function: int, reg: int) -> int:
    return 0x80000000 | bus << 16 | device << 11 | function << 8 | reg


def scan_for(bus_io: PortBus, wanted: set[int]) -> tuple[int, int, int] | None:
    """The course kernel's power-off scan: buses 0-7, honouring the header's multifunction bit."""
    for bus in range(8):
        for device in range(32):
            function = 0
            while function < 8:
                bus_io.outl(0xCF8, config_address(bus, device, function, 0))
                if bus_io.inl(0xCFC) in wanted:
                    return bus, device, function
                bus_io.outl(0xCF8, config_address(bus, device, function, 0x0C))
                header_type = (bus_io.inl(0xCFC) >> 16) & 0xFF
                function += 1 if function == 0 and header_type != 0xFF and header_type & 0x80 else 8
    return None


def test_pci_scan_finds_the_ich9_lpc_and_its_pmbase() -> None:
    host = q35_pci()
    io = PortBus(host)
    assert scan_for(io, {0x71138086, 0x29188086}) == (0, 0x1F, 0)
    io.outl(0xCF8, config_address(0, 0x1F, 0, 0x40))
    assert io.inl(0xCF8) == config_address(0, 0x1F, 0, 0x40)
    assert io.inl(0xCFC) == 0x00000601
    assert io.inl(0xCFC) & 0xFFC0 == 0x600
    io.outl(0xCF8, config_address(0, 0x1F, 0, 0x08))
    assert io.inl(0xCFC) >> 8 == 0x060100
    io.outl(0xCF8, config_address(0, 0x1F, 0, 0x0C))
    assert io.inb(0xCFE) == 0x80  # header type byte through CONFIG_DATA + 2
    io.outl(0xCF8, config_address(0, 0, 0, 0))
    assert io.inw(0xCFC) == 0x8086 and io.inw(0xCFE) == 0x29C0


def test_pci_absent_function_and_disabled_address_read_all_ones() -> None:
    io = PortBus(q35_pci())
    io.outl(0xCF8, config_address(0, 3, 0, 0))
    assert io.inl(0xCFC) == 0xFFFFFFFF
    io.outl(0xCF8, config_address(0, 0x1F, 3, 0))  # the LPC bridge is multifunction; function 3 is absent
    assert io.inl(0xCFC) == 0xFFFFFFFF
    io.outl(0xCF8, config_address(0, 0x1F, 0, 0) & ~0x80000000)
    assert io.inl(0xCFC) == 0xFFFFFFFF
    assert io.inw(0xCFC) == 0xFFFF


def test_pci_config_write_mask_protects_identity_registers() -> None:
    fn = PciFunction(0x1234, 0x5678, 0x030000)
    fn.config_write(0x00, 4, 0xFFFFFFFF)
    assert fn.config_read(0x00, 4) == 0x56781234
    fn.config_write(0x3C, 1, 11)
    assert fn.config_read(0x3C, 1) == 11
    fn.config_write(0x04, 2, 0xFFFF)
    assert fn.config_read(0x04, 2) == 0x0547
    lpc = Ich9Lpc()
    lpc.config_write(0x40, 4, 0xB001)
    assert lpc.config_read(0x40, 4) == 0x601  # PMBASE does not move


def test_pci_snapshot_round_trip() -> None:
    host = q35_pci()
    io = PortBus(host)
    io.outl(0xCF8, config_address(0, 0x1F, 0, 0x3C))
    io.outb(0xCFC, 9)
    state = host.snapshot_state()
    host.reset()
    assert host.address == 0 and host.functions[(0, 0x1F, 0)].config_read(0x3C, 1) == 0
    host.restore_state(state)
    assert io.inl(0xCF8) == config_address(0, 0x1F, 0, 0x3C)
    assert io.inb(0xCFC) == 9


def test_acpi_outw_0x2000_to_pm1a_cnt_powers_off() -> None:
    board = FakeBoard()
    io = PortBus(AcpiPm(FakeClock(), board))
    assert io.inw(0x604) & 0x0001  # SCI_EN
    io.outw(0x604, 0x2000)
    assert board.events == [("power_off", "ACPI PM1a_CNT: SLP_EN with SLP_TYP=0 (soft off)")]


def test_acpi_other_sleep_types_are_recorded_not_performed() -> None:
    board = FakeBoard()
    pm = AcpiPm(FakeClock(), board)
    io = PortBus(pm)
    io.outw(0x604, 0x2000 | (1 << 10))  # S1
    assert board.events == []
    assert pm.unsupported_sleep == [1]
    io.outw(0x604, 1 << 10)  # SLP_TYP alone does nothing
    assert pm.unsupported_sleep == [1]


def test_acpi_byte_write_to_the_high_half_also_powers_off() -> None:
    board = FakeBoard()
    pm = AcpiPm(FakeClock(), board)
    pm.io_write(0x605, 1, 0x20)
    assert [event for event, _ in board.events] == ["power_off"]


def test_acpi_pm_timer_runs_at_3_579545_mhz_and_wraps_at_24_bits() -> None:
    clock = FakeClock()
    pm = AcpiPm(clock, FakeBoard(), base=0xB000)
    assert pm.PORTS == ((0xB000, 0x80),)
    clock.now = 1_000_000_000
    assert pm.io_read(0xB008, 4) == 3_579_545
    assert pm.io_read(0xB000, 2) & 0x0001 == 0
    clock.now = 5_000_000_000  # 17.9 M ticks: wrapped, and bit 23 has toggled
    assert pm.io_read(0xB008, 4) == (5 * 3_579_545) & 0xFFFFFF
    assert pm.io_read(0xB000, 2) & 0x0001  # TMR_STS
    pm.io_write(0xB000, 2, 0x0001)  # write 1 to clear
    assert pm.io_read(0xB000, 2) & 0x0001 == 0


def test_acpi_status_bits_are_write_one_to_clear() -> None:
    pm = AcpiPm(FakeClock(), FakeBoard())
    pm.restore_state(pm.snapshot_state() | {"pm1_sts": 0x8100})  # WAK_STS and PWRBTN_STS latched
    pm.io_write(0x600, 2, 0x0100)
    assert pm.io_read(0x600, 2) == 0x8000
    pm.io_write(0x601, 1, 0x80)  # byte write to the high half
    assert pm.io_read(0x600, 2) == 0x0000


# --- port 0x92 ----------------------------------------------------------------------------------------------


def test_port_92_a20_reads_back_and_bit_0_resets() -> None:
    board = FakeBoard()
    port92 = SystemControlPortA(board)
    io = PortBus(port92)
    assert io.inb(0x92) & 0x02 and port92.a20_enabled
    io.outb(0x92, 0x00)
    assert io.inb(0x92) & 0x02 == 0 and not port92.a20_enabled
    assert board.events == []
    io.outb(0x92, 0x03)  # what WeensyOS's reboot() writes
    assert board.events == [("reset", "port 0x92 fast reset")]
    assert io.inb(0x92) == 0x02


# --- wiring -------------------------------------------------------------------------------------------------


def test_port_devices_claim_disjoint_ports() -> None:
    ram = memoryview(bytearray(0x100000))
    board = FakeBoard()
    clock = FakeClock()
    bus = PortBus(
        CgaConsole(ram),
        Keyboard8042(),
        Pic8259(),
        ParallelPort(lambda byte: None),
        PciHost(),
        AcpiPm(clock, board),
        SystemControlPortA(board),
    )
    used_by_weensyos = [0x20, 0x21, 0x60, 0x64, 0x92, 0xA0, 0xA1, 0x378, 0x379, 0x37A, 0x3D4, 0x3D5, 0x3DA]
    used_by_weensyos += [0x604, 0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCFF]
    for port in used_by_weensyos:
        assert port in bus.ports, f"{port:#x} not claimed"
    names = {device.name for device in bus.ports.values()}
    assert len(names) == 7
