"""PCI configuration mechanism 1, the q35 functions WeensyOS looks for, and the ICH9 ACPI power management.

WeensyOS powers off the way it would on QEMU's q35 machine: it scans PCI configuration space through ports
0xCF8/0xCFC for the ICH9 LPC bridge (8086:2918, found at 00:1f.0), reads the PMBASE register (config dword
0x40), masks it with 0xFFC0 to get the ACPI I/O block (0x600), and writes SLP_EN | SLP_TYP=0 (0x2000) to
PM1a_CNT at PMBASE + 4 with a 16-bit `outw`. This module models exactly that chain:

* `PciFunction`: a function's 256-byte configuration space with a per-byte write mask;
* `PciHost`: the CONFIG_ADDRESS / CONFIG_DATA port pair (absent functions read as all ones);
* `HostBridge` and `Ich9Lpc`: the q35 functions at 00:00.0 and 00:1f.0;
* `AcpiPm`: the PM1a event/control registers and the 3.579545 MHz PM timer at PMBASE.

PMBASE is read-only here (the ACPI block does not move), so the configuration space always tells the truth.
BARs, capabilities, PCI Express extended configuration space and the other q35 functions are not modelled;
the machine can add further `PciFunction`s (e.g. the PIIX4 IDE controller) with `PciHost.add_function`.
"""

from __future__ import annotations

from typing import Any

from .base import Board, Clock, Device

# --- configuration space layout ---------------------------------------------------------------------------

CONFIG_SPACE_SIZE = 256
CFG_VENDOR_ID = 0x00
CFG_DEVICE_ID = 0x02
CFG_COMMAND = 0x04
CFG_STATUS = 0x06
CFG_REVISION = 0x08
CFG_CLASS_CODE = 0x09  # 3 bytes: programming interface, subclass, class
CFG_CACHE_LINE_SIZE = 0x0C
CFG_LATENCY_TIMER = 0x0D
CFG_HEADER_TYPE = 0x0E
CFG_INTERRUPT_LINE = 0x3C

HEADER_MULTIFUNCTION = 0x80
COMMAND_WRITABLE = 0x0547  # I/O, memory, bus master, parity error response, SERR#, interrupt disable

# --- configuration mechanism 1 ports ----------------------------------------------------------------------

PORT_CONFIG_ADDRESS = 0xCF8
PORT_CONFIG_DATA = 0xCFC
CONFIG_ADDRESS_ENABLE = 0x80000000
CONFIG_ADDRESS_MASK = 0x80FFFFFC  # enable, bus, device, function, dword-aligned register

# --- the q35 functions -------------------------------------------------------------------------------------

INTEL_VENDOR_ID = 0x8086
Q35_HOST_DEVICE_ID = 0x29C0
ICH9_LPC_DEVICE_ID = 0x2918
CLASS_HOST_BRIDGE = 0x060000
CLASS_ISA_BRIDGE = 0x060100
ICH9_LPC_REVISION = 0x02

LPC_PMBASE = 0x40  # dword: ACPI I/O base, bit 0 = I/O space indicator
LPC_ACPI_CNTL = 0x44  # byte: bit 7 = ACPI enable, bits 0-2 = SCI IRQ select
LPC_ACPI_CNTL_WRITABLE = 0x87
PMBASE_IO_SPACE = 0x01
DEFAULT_PMBASE = 0x600
ACPI_CNTL_ENABLE = 0x80

# --- the ACPI power-management I/O block (offsets from PMBASE) ---------------------------------------------

PM_IO_SIZE = 0x80
PM1_STS = 0x00  # 16-bit, write 1 to clear
PM1_EN = 0x02  # 16-bit
PM1_CNT = 0x04  # 16-bit
PM_TMR = 0x08  # 32-bit, read-only

PM1_STS_TMR = 0x0001  # PM timer bit 23 toggled
PM1_STS_PWRBTN = 0x0100
PM1_STS_WAK = 0x8000
PM1_EN_WRITABLE = 0x0521  # TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN

PM1_CNT_SCI_EN = 0x0001  # reads 1: the chipset is already in ACPI mode
PM1_CNT_BM_RLD = 0x0002
PM1_CNT_GBL_RLS = 0x0004  # write-only
PM1_CNT_SLP_TYP_SHIFT = 10
PM1_CNT_SLP_TYP = 0x7 << PM1_CNT_SLP_TYP_SHIFT
PM1_CNT_SLP_EN = 0x2000  # write-only: enter the sleep state in SLP_TYP
PM1_CNT_STORED = PM1_CNT_BM_RLD | PM1_CNT_SLP_TYP
SLP_TYP_SOFT_OFF = 0  # S5 in QEMU's q35 ACPI tables

PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFFFFFF  # a 24-bit counter
PM_TIMER_STATUS_PERIOD = 1 << 23  # TMR_STS is set whenever bit 23 of the counter changes

POWER_OFF_SOURCE = "ACPI PM1a_CNT: SLP_EN with SLP_TYP=0 (soft off)"


def _all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class PciFunction:
    """One PCI function's configuration space: 256 bytes and a mask of the bits the guest may write.

    Vendor, device, revision, class code and header type are read-only; the command register, cache line
    size, latency timer and interrupt line are writable; subclasses open further registers with
    `set_writable`.
    """

    def __init__(
        self, vendor_id: int, device_id: int, class_code: int, header_type: int = 0, revision: int = 0
    ) -> None:
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.write_mask = bytearray(CONFIG_SPACE_SIZE)
        self._put(CFG_VENDOR_ID, 2, vendor_id)
        self._put(CFG_DEVICE_ID, 2, device_id)
        self._put(CFG_REVISION, 1, revision)
        self._put(CFG_CLASS_CODE, 3, class_code)
        self._put(CFG_HEADER_TYPE, 1, header_type)
        self.set_writable(CFG_COMMAND, 2, COMMAND_WRITABLE)
        self.set_writable(CFG_CACHE_LINE_SIZE, 1, 0xFF)
        self.set_writable(CFG_LATENCY_TIMER, 1, 0xFF)
        self.set_writable(CFG_INTERRUPT_LINE, 1, 0xFF)
        self._power_on_config = bytes(self.config)

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset : offset + size] = value.to_bytes(size, "little")

    def set_register(self, offset: int, size: int, value: int) -> None:
        """Set a register's power-on value (for subclasses building their configuration space)."""
        self._put(offset, size, value)
        self._power_on_config = bytes(self.config)

    def set_writable(self, offset: int, size: int, mask: int) -> None:
        """Let the guest write the bits of `mask` in the register at `offset`."""
        self.write_mask[offset : offset + size] = mask.to_bytes(size, "little")

    @property
    def vendor_id(self) -> int:
        return self.config_read(CFG_VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.config_read(CFG_DEVICE_ID, 2)

    @property
    def multifunction(self) -> bool:
        return bool(self.config[CFG_HEADER_TYPE] & HEADER_MULTIFUNCTION)

    def reset(self) -> None:
        self.config[:] = self._power_on_config

    def config_read(self, offset: int, size: int) -> int:
        """Little-endian read of `size` bytes at `offset`; bytes beyond the 256-byte space read 0xFF."""
        value = 0
        for i in range(size):
            index = offset + i
            byte = self.config[index] if 0 <= index < CONFIG_SPACE_SIZE else 0xFF
            value |= byte << (8 * i)
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Little-endian write of `size` bytes at `offset`, changing only the bits the write mask allows."""
        for i in range(size):
            index = offset + i
            if not 0 <= index < CONFIG_SPACE_SIZE:
                continue
            mask = self.write_mask[index]
            byte = (value >> (8 * i)) & 0xFF
            self.config[index] = (self.config[index] & ~mask) | (byte & mask)


class HostBridge(PciFunction):
    """The q35 host bridge (MCH), 8086:29C0 at 00:00.0."""

    def __init__(self) -> None:
        super().__init__(INTEL_VENDOR_ID, Q35_HOST_DEVICE_ID, CLASS_HOST_BRIDGE)


class Ich9Lpc(PciFunction):
    """The ICH9 LPC/ISA bridge, 8086:2918 at 00:1f.0 (multifunction), which holds the ACPI PMBASE."""

    def __init__(self, pmbase: int = DEFAULT_PMBASE) -> None:
        super().__init__(
            vendor_id=INTEL_VENDOR_ID,
            device_id=ICH9_LPC_DEVICE_ID,
            class_code=CLASS_ISA_BRIDGE,
            header_type=HEADER_MULTIFUNCTION,
            revision=ICH9_LPC_REVISION,
        )
        self.set_register(LPC_PMBASE, 4, pmbase | PMBASE_IO_SPACE)
        self.set_register(LPC_ACPI_CNTL, 1, ACPI_CNTL_ENABLE)
        self.set_writable(LPC_ACPI_CNTL, 1, LPC_ACPI_CNTL_WRITABLE)


def pci_location(bus: int, device: int, function: int) -> str:
    """Conventional bus:device.function name, e.g. "00:1f.0"."""
    return f"{bus:02x}:{device:02x}.{function:x}"


class PciHost(Device):
    """Configuration mechanism 1: CONFIG_ADDRESS at 0xCF8 (32-bit) and CONFIG_DATA at 0xCFC-0xCFF."""

    name = "pci-host"
    PORTS: tuple[tuple[int, int], ...] = ((PORT_CONFIG_ADDRESS, 4), (PORT_CONFIG_DATA, 4))

    def __init__(self) -> None:
        self.address = 0
        self.functions: dict[tuple[int, int, int], PciFunction] = {}

    def add_function(self, bus: int, device: int, function: int, fn: PciFunction) -> None:
        if not (0 <= bus < 256 and 0 <= device < 32 and 0 <= function < 8):
            raise ValueError(f"bad PCI location {bus}:{device}.{function}")
        key = (bus, device, function)
        if key in self.functions:
            raise ValueError(f"PCI function {pci_location(*key)} already present")
        self.functions[key] = fn

    def reset(self) -> None:
        self.address = 0
        for fn in self.functions.values():
            fn.reset()

    def _selected(self) -> tuple[PciFunction | None, int]:
        """The function CONFIG_ADDRESS selects (None if disabled or absent) and its dword register offset."""
        if not self.address & CONFIG_ADDRESS_ENABLE:
            return None, 0
        bus = (self.address >> 16) & 0xFF
        device = (self.address >> 11) & 0x1F
        function = (self.address >> 8) & 0x7
        return self.functions.get((bus, device, function)), self.address & 0xFC

    def io_read(self, port: int, size: int) -> int:
        if port == PORT_CONFIG_ADDRESS and size == 4:
            return self.address
        if PORT_CONFIG_DATA <= port < PORT_CONFIG_DATA + 4:
            fn, reg = self._selected()
            if fn is not None:
                return fn.config_read(reg + (port - PORT_CONFIG_DATA), size)
        return _all_ones(size)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == PORT_CONFIG_ADDRESS and size == 4:
            # Only a 32-bit access reaches CONFIG_ADDRESS; narrower ones belong to other chipset registers.
            self.address = value & CONFIG_ADDRESS_MASK
        elif PORT_CONFIG_DATA <= port < PORT_CONFIG_DATA + 4:
            fn, reg = self._selected()
            if fn is not None:
                fn.config_write(reg + (port - PORT_CONFIG_DATA), size, value)

    def snapshot_state(self) -> dict[str, Any]:
        """The address latch and every function's configuration bytes (hex), keyed by "bb:dd.f"."""
        return {
            "address": self.address,
            "functions": {pci_location(*key): bytes(fn.config).hex() for key, fn in self.functions.items()},
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        by_location = {pci_location(*key): fn for key, fn in self.functions.items()}
        if set(state["functions"]) != set(by_location):
            raise ValueError(
                f"snapshot has PCI functions {sorted(state['functions'])}, machine has {sorted(by_location)}"
            )
        self.address = state["address"]
        for location, config in state["functions"].items():
            by_location[location].config[:] = bytes.fromhex(config)


class AcpiPm(Device):
    """The ICH9 ACPI power-management I/O block at PMBASE: PM1a event/control registers and the PM timer.

    Writing PM1a_CNT with SLP_EN and SLP_TYP = 0 powers the machine off through `board.power_off`. Other sleep
    types (S1-S4) are not implemented: each request's SLP_TYP is appended to `unsupported_sleep` (kept across
    reset, as a record of the run) and the guest continues. No SCI is ever raised; TMR_STS is computed so that
    code polling it still sees the timer carry.
    """

    name = "acpi-pm"
    PORTS: tuple[tuple[int, int], ...] = ((DEFAULT_PMBASE, PM_IO_SIZE),)

    def __init__(self, clock: Clock, board: Board, base: int = DEFAULT_PMBASE) -> None:
        self.clock = clock
        self.board = board
        self.base = base
        self.PORTS = ((base, PM_IO_SIZE),)
        self.unsupported_sleep: list[int] = []
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.tmr_sts_epoch = 0  # value of counter // 2**23 when TMR_STS was last cleared
        self.reset()

    def reset(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.tmr_sts_epoch = self._timer_ticks() // PM_TIMER_STATUS_PERIOD

    def _timer_ticks(self) -> int:
        """PM timer ticks since power-on, not wrapped."""
        return self.clock.now_ns() * PM_TIMER_HZ // 1_000_000_000

    def pm_timer(self) -> int:
        """The PM_TMR register: a 24-bit counter at 3.579545 MHz of virtual time."""
        return self._timer_ticks() & PM_TIMER_MASK

    def _read_register(self, reg: int) -> int:
        if reg == PM1_STS:
            timer_carried = self._timer_ticks() // PM_TIMER_STATUS_PERIOD > self.tmr_sts_epoch
            return self.pm1_sts | (PM1_STS_TMR if timer_carried else 0)
        if reg == PM1_EN:
            return self.pm1_en
        if reg == PM1_CNT:
            return self.pm1_cnt | PM1_CNT_SCI_EN
        if reg == PM_TMR:
            return self.pm_timer()
        return 0

    def io_read(self, port: int, size: int) -> int:
        offset = port - self.base
        value = 0
        for i in range(size):
            byte_offset = offset + i
            reg = byte_offset & ~0x3 if byte_offset >= PM_TMR else byte_offset & ~0x1
            byte = (self._read_register(reg) >> (8 * (byte_offset - reg))) & 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        # Split the access into the 16-bit registers it touches, with a mask of the bytes actually written,
        # so that `outw(base + 4, 0x2000)`, `outb(base + 5, 0x20)` and `outl(base, ...)` all behave.
        offset = port - self.base
        written = {offset + i: (value >> (8 * i)) & 0xFF for i in range(size)}
        for reg in (PM1_STS, PM1_EN, PM1_CNT):
            reg_value = enables = 0
            for i in range(2):
                if reg + i in written:
                    reg_value |= written[reg + i] << (8 * i)
                    enables |= 0xFF << (8 * i)
            if enables:
                self._write_register(reg, reg_value, enables)

    def _write_register(self, reg: int, value: int, enables: int) -> None:
        value &= enables
        if reg == PM1_STS:
            self.pm1_sts &= ~value
            if value & PM1_STS_TMR:
                self.tmr_sts_epoch = self._timer_ticks() // PM_TIMER_STATUS_PERIOD
        elif reg == PM1_EN:
            self.pm1_en = (self.pm1_en & ~enables) | (value & PM1_EN_WRITABLE)
        elif reg == PM1_CNT:
            merged = (self.pm1_cnt & ~enables) | value
            self.pm1_cnt = merged & PM1_CNT_STORED
            if value & PM1_CNT_SLP_EN:
                sleep_type = (merged & PM1_CNT_SLP_TYP) >> PM1_CNT_SLP_TYP_SHIFT
                if sleep_type == SLP_TYP_SOFT_OFF:
                    self.board.power_off(POWER_OFF_SOURCE)
                else:
                    self.unsupported_sleep.append(sleep_type)

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "pm1_sts": self.pm1_sts,
            "pm1_en": self.pm1_en,
            "pm1_cnt": self.pm1_cnt,
            "tmr_sts_epoch": self.tmr_sts_epoch,
            "unsupported_sleep": list(self.unsupported_sleep),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.pm1_sts = state["pm1_sts"]
        self.pm1_en = state["pm1_en"]
        self.pm1_cnt = state["pm1_cnt"]
        self.tmr_sts_epoch = state["tmr_sts_epoch"]
        self.unsupported_sleep = list(state["unsupported_sleep"])
