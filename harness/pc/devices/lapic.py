"""The bootstrap processor's local APIC: interrupt priority logic (IRR/ISR/TPR/PPR/EOI) and the APIC timer.

This is the CPU's only interrupt controller in this machine (the 8259 pair stays masked). Other devices
deliver vectors into it through `accept_vector()`; the run loop asks `pending_vector()` whether the CPU should
take an interrupt (when RFLAGS.IF allows), calls `acknowledge()` when it does, and the guest ends the handler
by writing EOI. The device never touches the CPU itself.

The timer is computed from the virtual clock rather than ticked: its counter runs at 1 GHz divided by the
divide configuration, so the current count, the next expiry and the number of expiries in any interval are
arithmetic on `clock.now_ns()`. The run loop calls `next_deadline_ns()` to know when to stop the CPU and
`advance(now)` to process what expired; a period of 1 ns costs no more than a period of 10 ms. Expiries that
happen while the timer's vector is still pending in IRR coalesce into that one interrupt, as on hardware.

Registers are 32 bits wide at 16-byte strides. Accesses narrower than 4 bytes or not dword-aligned act on the
containing dword (a narrow write is a read-modify-write of it); the other 12 bytes of each 16-byte slot are
reserved and read as 0. Not modelled: IPIs (ICR is stored only), x2APIC, the thermal/performance/LINT
sources (their LVTs are stored only) and TSC-deadline mode (noted in `tsc_deadline_requested`, timer stopped).

Size: one device with its register file, timer arithmetic and snapshot state with its checks; splitting them
would spread one register set over several files.
"""

from __future__ import annotations

from typing import Any

from .base import Clock, Device

LAPIC_BASE = 0xFEE00000
LAPIC_SIZE = 0x1000

# Value of the IA32_APIC_BASE MSR (0x1B): base 0xFEE00000 | global enable (bit 11) | BSP (bit 8).
APIC_BASE_MSR_VALUE = 0xFEE00900

# Register offsets.
REG_ID = 0x020
REG_VERSION = 0x030
REG_TPR = 0x080
REG_APR = 0x090
REG_PPR = 0x0A0
REG_EOI = 0x0B0
REG_LDR = 0x0D0
REG_DFR = 0x0E0
REG_SVR = 0x0F0
REG_ISR = 0x100  # 8 banks of 32 vectors, 16 bytes apart, up to 0x170
REG_TMR = 0x180  # up to 0x1F0
REG_IRR = 0x200  # up to 0x270
REG_ESR = 0x280
REG_ICR_LOW = 0x300
REG_ICR_HIGH = 0x310
REG_LVT_TIMER = 0x320
REG_LVT_THERMAL = 0x330
REG_LVT_PERF = 0x340
REG_LVT_LINT0 = 0x350
REG_LVT_LINT1 = 0x360
REG_LVT_ERROR = 0x370
REG_TIMER_INITIAL = 0x380
REG_TIMER_CURRENT = 0x390
REG_TIMER_DIVIDE = 0x3E0

BANK_COUNT = 8
BANK_STRIDE = 0x10

# Reset and constant values.
VERSION_VALUE = 0x00050014  # version 0x14, max LVT entry 5 (six LVTs)
DFR_RESET = 0xFFFFFFFF
SVR_RESET = 0xFF
LVT_RESET = 0x00010000

# SVR bits.
SVR_ENABLE = 0x100

# LVT bits.
LVT_VECTOR = 0xFF
LVT_MASKED = 1 << 16
TIMER_MODE_SHIFT = 17
TIMER_MODE_MASK = 0x3 << TIMER_MODE_SHIFT
TIMER_ONE_SHOT = 0
TIMER_PERIODIC = 1
TIMER_TSC_DEADLINE = 2

# ESR bits.
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVED_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

# Writable bits of each register (anything else is read-only or reserved).
_WRITE_MASKS = {
    REG_ID: 0xFF000000,
    REG_TPR: 0xFF,
    REG_LDR: 0xFF000000,
    REG_DFR: 0xF0000000,
    REG_SVR: 0x3FF,  # spurious vector, software enable, focus checking
    REG_ICR_LOW: 0x000CCFFF,  # delivery status (bit 12) is read-only
    REG_ICR_HIGH: 0xFF000000,
    REG_LVT_TIMER: 0x000700FF,  # vector, mask, timer mode
    REG_LVT_THERMAL: 0x000107FF,  # vector, delivery mode, mask
    REG_LVT_PERF: 0x000107FF,
    REG_LVT_LINT0: 0x0001A7FF,  # vector, delivery mode, polarity, trigger mode, mask
    REG_LVT_LINT1: 0x0001A7FF,
    REG_LVT_ERROR: 0x000100FF,
    REG_TIMER_INITIAL: 0xFFFFFFFF,
    REG_TIMER_DIVIDE: 0xB,
}
LVT_REGISTERS = (REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR)

TIMER_HZ = 1_000_000_000  # the undivided timer clock: 1 count per nanosecond, as QEMU's LAPIC


def divisor_for(divide_config: int) -> int:
    """Timer divisor for a divide configuration register value (bits 0, 1 and 3; 0b111 means 1)."""
    index = (divide_config & 0x3) | ((divide_config >> 1) & 0x4)
    return 1 if index == 7 else 2 << index


def _highest(bits: int) -> int:
    """Highest set vector in a 256-bit map, or -1 if none."""
    return bits.bit_length() - 1


class LocalApic(Device):
    """The local APIC at 0xFEE00000: the CPU's interrupt controller and its timer."""

    name = "lapic"
    MMIO_BASE = LAPIC_BASE
    MMIO_SIZE = LAPIC_SIZE
    # Writes the bus charges to the virtual clock (bus.py): sending an IPI makes QEMU leave translated code and
    # kick the CPU, and a guest flooding itself with them must pay for each (our kernels never send one).
    MMIO_CHARGED_WRITES = frozenset({REG_ICR_LOW})

    def __init__(self, clock: Clock, phase_seed: int = 0) -> None:
        # A seed other than 0 starts every timer run part-way through its first period (by an amount derived from
        # the seed), as a real timer's phase relative to the CPU is arbitrary: races between the timer and the
        # guest's code show up under different seeds, and the same seed replays exactly.
        self.phase_seed = phase_seed
        self.clock = clock
        # Records of the run rather than hardware state: they survive reset().
        self.timer_expirations = 0  # total expiries processed by advance(), masked or not
        # Timer interrupts the CPU took (acknowledged): what the guest counts as ticks. Fewer than the
        # expirations when the guest keeps IF=0 (a pending interrupt absorbs the expiries after it).
        self.timer_interrupts_taken = 0
        self.tsc_deadline_requested = False  # the guest selected TSC-deadline mode, which is not implemented
        self._init_state()

    def _init_state(self) -> None:
        self.id = 0
        self.tpr = 0
        self.ldr = 0
        self.dfr = DFR_RESET
        self.svr = SVR_RESET
        self.irr = 0  # 256-bit maps, bit n = vector n
        self.isr = 0
        self.tmr = 0
        self.esr = 0  # the value ESR reads (latched by the last ESR write)
        self.esr_pending = 0  # errors detected since the last ESR write
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = dict.fromkeys(LVT_REGISTERS, LVT_RESET)
        self.initial_count = 0
        self.divide_config = 0
        # Timer: counting since `timer_start_ns`, `timer_fired` expiries of the current run already processed.
        self.timer_running = False
        self.timer_start_ns = 0
        self.timer_fired = 0

    def reset(self) -> None:
        """Power-on register state; `timer_expirations` and `tsc_deadline_requested` are kept."""
        self._init_state()
        self.clock.deadlines_changed()

    # --- state queries ----------------------------------------------------------------------------------

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def timer_mode(self) -> int:
        return (self.lvt[REG_LVT_TIMER] & TIMER_MODE_MASK) >> TIMER_MODE_SHIFT

    @property
    def divisor(self) -> int:
        return divisor_for(self.divide_config)

    def ppr(self) -> int:
        """Processor priority: the TPR, or the class of the highest in-service vector if that is higher."""
        isrv = max(_highest(self.isr), 0)
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr
        return isrv & 0xF0

    def pending_vector(self) -> int | None:
        """The vector the CPU should take next (if its IF allows), or None.

        That is the highest vector requested in IRR, provided its priority class is above the processor
        priority class and the APIC is software-enabled.
        """
        if not self.irr or not self.svr & SVR_ENABLE:
            return None
        vector = _highest(self.irr)
        if (vector >> 4) > (self.ppr() >> 4):
            return vector
        return None

    def acknowledge(self, vector: int) -> None:
        """The CPU took `vector` (the one pending_vector() returned): move it from IRR to in-service."""
        bit = 1 << (vector & 0xFF)
        self.irr &= ~bit
        self.isr |= bit
        if vector == self.lvt[REG_LVT_TIMER] & LVT_VECTOR:
            self.timer_interrupts_taken += 1

    # --- interrupt sources ------------------------------------------------------------------------------

    def accept_vector(self, vector: int) -> None:
        """A fixed-delivery interrupt arrives (from the IOAPIC or a local source): request it in IRR."""
        vector &= 0xFF
        if vector < 16:
            self._signal_error(ESR_RECEIVED_ILLEGAL_VECTOR)
            return
        self.irr |= 1 << vector

    def _signal_error(self, bit: int) -> None:
        """Record an APIC error in ESR and raise the LVT error interrupt if that is enabled."""
        self.esr_pending |= bit
        lvt = self.lvt[REG_LVT_ERROR]
        vector = lvt & LVT_VECTOR
        if not lvt & LVT_MASKED and self.software_enabled and vector >= 16:
            self.irr |= 1 << vector

    def _eoi(self) -> None:
        vector = _highest(self.isr)
        if vector >= 0:
            self.isr &= ~(1 << vector)
            self.tmr &= ~(1 << vector)

    # --- timer ------------------------------------------------------------------------------------------

    def _phase(self) -> int:
        """How far into its first period a newly started timer begins (0 without a seed)."""
        period = self._period_ns()
        if not self.phase_seed or not period:
            return 0
        mixed = (self.phase_seed * 0x9E3779B97F4A7C15 + self.initial_count) & ((1 << 64) - 1)
        mixed ^= mixed >> 31
        return mixed % period

    def _period_ns(self) -> int:
        return self.initial_count * self.divisor

    def next_deadline_ns(self) -> int | None:
        """Virtual time of the timer's next expiry, or None if it is stopped (masked or not)."""
        if not self.timer_running:
            return None
        return self.timer_start_ns + (self.timer_fired + 1) * self._period_ns()

    def next_interrupt_deadline_ns(self) -> int | None:
        """Like next_deadline_ns(), but None when an expiry could not raise an interrupt (masked/disabled).

        A run loop may sleep through such expiries: advance() later counts them arithmetically.
        """
        if self.lvt[REG_LVT_TIMER] & LVT_MASKED or not self.software_enabled:
            return None
        return self.next_deadline_ns()

    def next_effective_deadline_ns(self) -> int | None:
        """Like next_interrupt_deadline_ns(), but also None when an expiry would change nothing any more: a
        timer with an illegal vector (below 16) whose error is already pending and whose error interrupt is
        masked. A run loop need not stop for such expiries (each stop costs host time, and a 1 ns timer with
        vector 5 would make them every other block); advance() counts them when it is next called."""
        lvt = self.lvt[REG_LVT_TIMER]
        if lvt & LVT_VECTOR < 16 and self.esr_pending & ESR_RECEIVED_ILLEGAL_VECTOR \
                and self.lvt[REG_LVT_ERROR] & LVT_MASKED:
            return None
        return self.next_interrupt_deadline_ns()

    def advance(self, now_ns: int) -> None:
        """Process every timer expiry at or before `now_ns`: count them, and request the timer vector once."""
        if not self.timer_running:
            return
        period = self._period_ns()
        if self.timer_mode == TIMER_PERIODIC:
            expired = (now_ns - self.timer_start_ns) // period - self.timer_fired
            if expired <= 0:
                return
            self.timer_fired += expired
        else:  # one-shot (and the reserved mode 3, which behaves like it)
            if now_ns < self.timer_start_ns + period:
                return
            expired = 1
            self.timer_running = False
        self.timer_expirations += expired
        lvt = self.lvt[REG_LVT_TIMER]
        if not lvt & LVT_MASKED and self.software_enabled:
            self.accept_vector(lvt & LVT_VECTOR)

    def current_count(self, now_ns: int | None = None) -> int:
        """The timer's current-count register at `now_ns` (default: the clock's now)."""
        if not self.timer_running:
            return 0
        now = self.clock.now_ns() if now_ns is None else now_ns
        ticks = max(now - self.timer_start_ns, 0) // self.divisor
        if self.timer_mode == TIMER_PERIODIC:
            return self.initial_count - ticks % self.initial_count
        return max(self.initial_count - ticks, 0)

    def _catch_up(self) -> int:
        """Process expiries up to now before the timer's configuration changes; normalise the run's origin."""
        now = self.clock.now_ns()
        self.advance(now)
        if self.timer_running and self.timer_fired:
            self.timer_start_ns += self.timer_fired * self._period_ns()
            self.timer_fired = 0
        return now

    def _write_initial_count(self, value: int) -> None:
        now = self._catch_up()
        if self.timer_mode == TIMER_TSC_DEADLINE:
            return  # ignored in TSC-deadline mode
        self.initial_count = value
        self.timer_running = value != 0
        self.timer_start_ns = now - self._phase()
        self.timer_fired = 0
        self.clock.deadlines_changed()

    def _write_divide(self, value: int) -> None:
        now = self._catch_up()
        if self.timer_running:
            # Keep the remaining count; from now on it counts down at the new rate.
            remaining = self.current_count(now)
            self.divide_config = value
            self.timer_start_ns = now - (self.initial_count - remaining) * self.divisor
        else:
            self.divide_config = value
        self.clock.deadlines_changed()

    def _write_lvt_timer(self, value: int) -> None:
        self._catch_up()
        old_mode = self.timer_mode
        self.lvt[REG_LVT_TIMER] = value
        new_mode = self.timer_mode
        if new_mode == TIMER_TSC_DEADLINE:
            self.tsc_deadline_requested = True
        if (old_mode == TIMER_TSC_DEADLINE) != (new_mode == TIMER_TSC_DEADLINE):
            self.timer_running = False  # entering or leaving TSC-deadline mode disarms the timer
        self.clock.deadlines_changed()

    # --- register access --------------------------------------------------------------------------------

    def _read_register(self, reg: int) -> int:
        if REG_ISR <= reg < REG_ESR:
            bank = (reg - REG_ISR) // BANK_STRIDE
            bitmap = (self.isr, self.tmr, self.irr)[bank // BANK_COUNT]
            return (bitmap >> (32 * (bank % BANK_COUNT))) & 0xFFFFFFFF
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == REG_TIMER_CURRENT:
            return self.current_count()
        simple = {
            REG_ID: self.id,
            REG_VERSION: VERSION_VALUE,
            REG_TPR: self.tpr,
            REG_APR: self.tpr,  # arbitration priority is not modelled; mirror the task priority
            REG_PPR: self.ppr(),
            REG_LDR: self.ldr,
            REG_DFR: self.dfr,
            REG_SVR: self.svr,
            REG_ESR: self.esr,
            REG_ICR_LOW: self.icr_low,
            REG_ICR_HIGH: self.icr_high,
            REG_TIMER_INITIAL: self.initial_count,
            REG_TIMER_DIVIDE: self.divide_config,
        }
        return simple.get(reg, 0)

    def _write_register(self, reg: int, value: int) -> None:
        if reg == REG_EOI:
            self._eoi()
            return
        if reg == REG_ESR:
            self.esr, self.esr_pending = self.esr_pending, 0
            return
        mask = _WRITE_MASKS.get(reg)
        if mask is None:
            return  # read-only or reserved
        value &= mask
        if reg in self.lvt:
            if not self.software_enabled:
                value |= LVT_MASKED  # LVT mask bits cannot be cleared while the APIC is software-disabled
            if reg == REG_LVT_TIMER:
                self._write_lvt_timer(value)
            else:
                self.lvt[reg] = value
        elif reg == REG_TIMER_INITIAL:
            self._write_initial_count(value)
        elif reg == REG_TIMER_DIVIDE:
            self._write_divide(value)
        elif reg == REG_SVR:
            self._catch_up()
            self.svr = value
            if not value & SVR_ENABLE:
                for lvt in self.lvt:
                    self.lvt[lvt] |= LVT_MASKED
            self.clock.deadlines_changed()
        elif reg == REG_ID:
            self.id = value
        elif reg == REG_TPR:
            self.tpr = value
        elif reg == REG_LDR:
            self.ldr = value
        elif reg == REG_DFR:
            self.dfr = value | (DFR_RESET & ~mask)
        elif reg == REG_ICR_LOW:
            self.icr_low = value  # IPIs are not delivered: there is one CPU
        elif reg == REG_ICR_HIGH:
            self.icr_high = value

    def mmio_read(self, offset: int, size: int) -> int:
        dword = offset & ~0x3
        if dword & 0xF:
            return 0
        shift = 8 * (offset & 0x3)
        return (self._read_register(dword) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        dword = offset & ~0x3
        if dword & 0xF:
            return
        shift = 8 * (offset & 0x3)
        if shift == 0 and size >= 4:
            full = value & 0xFFFFFFFF
        else:
            field = ((1 << (8 * size)) - 1) << shift
            old = 0 if dword in (REG_EOI, REG_ESR) else self._read_register(dword)
            full = ((old & ~field) | ((value << shift) & field)) & 0xFFFFFFFF
        self._write_register(dword, full)

    # --- snapshots --------------------------------------------------------------------------------------

    _STATE_FIELDS = (
        "id", "tpr", "ldr", "dfr", "svr", "irr", "isr", "tmr", "esr", "esr_pending", "icr_low", "icr_high",
        "initial_count", "divide_config", "timer_running", "timer_start_ns", "timer_fired",
        "timer_expirations", "timer_interrupts_taken", "tsc_deadline_requested",
    )  # fmt: skip

    def snapshot_state(self) -> dict[str, Any]:
        """Every register and the timer's origin (plain ints, bools and a dict of LVTs keyed by offset)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._STATE_FIELDS}
        state["lvt"] = {f"{reg:#x}": value for reg, value in self.lvt.items()}
        return state

    def check_state(self, state: dict[str, Any]) -> None:
        """32-bit registers, 256-bit vector sets, 64-bit counters (the timer's expiries and the timer interrupts
        taken, which `timer_ticks` reports), and a running timer always has a period (the timer code divides by
        it)."""
        for name in ("id", "tpr", "ldr", "dfr", "svr", "esr", "esr_pending", "icr_low", "icr_high",
                     "initial_count", "divide_config"):
            if not 0 <= state[name] <= 0xFFFFFFFF:
                raise ValueError(f"lapic.{name} = {state[name]} is not a 32-bit register value")
        for name in ("timer_fired", "timer_expirations", "timer_interrupts_taken"):
            if not 0 <= state[name] < 1 << 64:
                raise ValueError(f"lapic.{name} = {state[name]} is not a 64-bit count")
        if any(not 0 <= value <= 0xFFFFFFFF for value in state["lvt"].values()):
            raise ValueError("an LVT entry is not a 32-bit register value")
        if state["timer_running"] and state["initial_count"] == 0:
            raise ValueError("lapic timer is running with an initial count of 0")

    def restore_state(self, state: dict[str, Any]) -> None:
        for name in self._STATE_FIELDS:
            setattr(self, name, state[name])
        self.lvt = {int(reg, 16): value for reg, value in state["lvt"].items()}
        self.clock.deadlines_changed()
