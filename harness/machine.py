"""The PC: one Unicorn CPU, guest RAM, the device bus, the virtual clock and the run loop.

`Machine.boot()` plays the boot loader (see loader.py); `Machine.run()` executes the guest in slices. Each slice
is one `emu_start` that ends when the C block clock reaches the next deadline (a timer expiry, the budget, a
poll), when the guest halts, or when a device asks the machine to stop (power-off, reset). Between slices the
machine delivers due interrupts through the guest IDT and jumps the clock over idle time. Nothing runs in Python
per instruction; Python runs only per system call, exception, I/O access and slice.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from . import entropy, loader
from .bios import Bios
from .clock import DEFAULT_NS_PER_BLOCK, VirtualClock
from .cpu import FLAG_IF, GP, NOT_AN_ADDRESS, OFF_OLD_EXCEPTION, RAX, RBP, RCX, RSP, Cpu, MissingMemory, TripleFault
from .devices.ata import AtaDisk
from .devices.cga import CgaConsole
from .devices.ioapic import IoApic
from .devices.keyboard import Keyboard8042
from .devices.lapic import APIC_BASE_MSR_VALUE, LocalApic
from .devices.parallel import ParallelPort
from .devices.pci import AcpiPm, HostBridge, Ich9Lpc, PciHost
from .devices.pic import Pic8259
from .devices.reset import SystemControlPortA
from .errors import LoaderError
from .events import Event, EventLog, Kind
from .fastpath import (
    RECORD_COMPLETE,
    RECORD_RETURN,
    WANT_BATCH,
    WANT_EACH,
    WANT_RAW,
    WATCH_IF,
    WATCH_RETURN,
    Callbacks,
    FastPath,
    RawSyscall,
    UserReturn,
)
from .guestlog import GuestLog
from .paging import PageFault, PhysicalFault, read_u64, read_virtual
from .symbols import SymbolTable
from .syscalls import SyscallTable
from .trace import Tracer
from .wallguard import CHECK_EVERY_NS, WallGuard, default_limit_s

if TYPE_CHECKING:
    from . import snapshot as snapshots
    from .audit import IsolationAuditor, Violation

PANIC_PREFIXES = ("PANIC:", "USER PANIC:")
PANIC_GRACE_NS = 5_000_000  # after a panic line in the log, let the kernel finish drawing for 5 ms
TRANSLATION_BUFFER_BYTES = 16 << 20
STORM_WINDOW_NS = 1_000_000  # more than STORM_LIMIT device interrupts in this much virtual time is a storm
STORM_LIMIT = 200  # (200 kHz: far beyond any timer a kernel means to program, and cheap to reach)
POLL_NS = 100_000  # while an interrupt waits for IF=1, look again this often (the hooks below usually see it first)
MSR_IA32_APIC_BASE = 0x1B


class StopKind(enum.Enum):
    POWER_OFF = "power-off"
    TICKS = "ticks reached"
    UNTIL = "text appeared"
    PAUSED = "paused"
    BREAKPOINT = "breakpoint"
    ISOLATION = "isolation violation"
    STORM = "interrupt storm"
    PANIC = "kernel panic"
    TRIPLE_FAULT = "triple fault"
    BUDGET = "budget exhausted"
    WALL = "wall-clock guard"
    MACHINE_FAULT = "machine fault"
    HANG = "hang"
    RESET = "reset"


# Stops after which `run()` may be called again to go on (the others end the machine's life).
RESUMABLE = frozenset({StopKind.TICKS, StopKind.UNTIL, StopKind.PAUSED, StopKind.BREAKPOINT, StopKind.BUDGET,
                       StopKind.WALL})


@dataclass
class Stop:
    """Why a run ended, where, and what the harness could find out about it."""

    kind: StopKind
    message: str
    time_ns: int
    rip: int = 0
    backtrace: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kind in (StopKind.POWER_OFF, StopKind.TICKS, StopKind.UNTIL, StopKind.PAUSED,
                             StopKind.BREAKPOINT)


@dataclass(frozen=True)
class MachineConfig:
    ram_size: int = loader.DEFAULT_RAM_SIZE
    ns_per_block: int = DEFAULT_NS_PER_BLOCK
    event_capacity: int = 4096
    count_instructions: bool = False  # exact instruction count (slow; for measurements)
    seed: int = 0  # timer phase: 0 = the timer starts on the instruction that programs it
    # The native hot paths (fastpath.py); False runs Python's reference versions of the same work.
    fast_paths: bool = True


class Machine:
    """A q35-like PC for WeensyOS: CPU, RAM, CGA console, 8042 keyboard, LAPIC/IOAPIC, 8259 PIC, LPT1 log,
    PCI with an ICH9 LPC power-management function, and the port-0x92 reset line."""

    def __init__(self, config: MachineConfig | None = None) -> None:
        self.config = config = config or MachineConfig()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(entropy.CPU_MODEL)  # before anything else (see entropy.py)
        # A bounded buffer for translated code: Unicorn reuses it only when full, and forked programs keep
        # bringing code in on new physical pages, so the default (1 GiB) would make a long run's memory grow.
        uc.ctl_set_tcg_buffer_size(TRANSLATION_BUFFER_BYTES)
        self._ram = mmap.mmap(-1, config.ram_size)  # anonymous, zero-filled, backed lazily by the host
        self._ram_anchor = ctypes.c_char.from_buffer(self._ram)
        self.memory = memoryview(self._ram)
        uc.mem_map_ptr(0, config.ram_size, UC_PROT_ALL, ctypes.addressof(self._ram_anchor))

        self.events = EventLog(config.event_capacity)
        self.tracer = Tracer(self)
        self.clock = VirtualClock(uc, config.ns_per_block)
        self.clock.on_deadlines_changed = self._rearm
        if config.count_instructions:
            self.clock.count_instructions(uc)
        self.cpu = Cpu(uc, self.memory)
        self.cpu.on_delivery = self._record_delivery
        self.cpu.on_syscall = self._record_syscall
        self.entropy = entropy.GuestEntropy(uc, self.clock, config.seed)
        self.cpu.emulate_invalid = self.entropy.emulate_invalid
        self.log = GuestLog()
        self.log.on_line = self._log_line

        self.lapic = LocalApic(self.clock, phase_seed=config.seed)
        self.ioapic = IoApic(self.lapic)
        self.console = CgaConsole(self.memory)
        self.keyboard = Keyboard8042(irq=lambda: self.ioapic.raise_irq(1), board=self)
        self.pic = Pic8259()
        self.parallel = ParallelPort(self.log.write_byte)
        self.pci = PciHost()
        self.pci.add_function(0, 0, 0, HostBridge())
        self.pci.add_function(0, 0x1F, 0, Ich9Lpc())
        self.acpi_pm = AcpiPm(self.clock, self)
        self.reset_port = SystemControlPortA(self)

        from .bus import Bus

        self.bus = Bus()
        self.bus.on_unclaimed = lambda text: self._machine_event(text)
        for device in (self.console, self.keyboard, self.pic, self.parallel, self.pci, self.acpi_pm,
                       self.reset_port):
            self.bus.add_device_ports(device)
        for device in (self.lapic, self.ioapic):
            self.bus.add_mmio(uc, device, device.MMIO_BASE, device.MMIO_SIZE)
        self.bus.map_empty_space(uc, config.ram_size)

        uc.hook_add(UC_HOOK_INTR, self.cpu.hook_interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self.cpu.hook_invalid_instruction)
        self.fast: FastPath | None = None
        if config.fast_paths:
            self.fast = FastPath.create(uc, self.clock, self.parallel.state, Callbacks(
                slow_syscall=lambda: self.cpu.hook_syscall(uc, None), notify_syscall=self._fast_syscall,
                log_bytes=self.log.write, slow_in=self._fast_slow_in, slow_out=self._fast_slow_out,
                notify_return=self._fast_return), ctypes.addressof(self._ram_anchor), config.ram_size)
        self._pulling = False
        if self.fast is not None:
            self.events.connect_raw(self.fast)
            self.events.before_add = self._pull_syscalls
            self._refresh_fast_ports()
            self.cpu.live_old_exception = ctypes.c_int32.from_address(self.fast.state.env + OFF_OLD_EXCEPTION)
        else:
            uc.hook_add(UC_HOOK_INSN, self.cpu.hook_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
            uc.hook_add(UC_HOOK_INSN, self._hook_in, None, 1, 0, X.UC_X86_INS_IN)
            uc.hook_add(UC_HOOK_INSN, self._hook_out, None, 1, 0, X.UC_X86_INS_OUT)
        # Only beyond RAM can a fetch find no code (the empty bus and the devices are MMIO, which Unicorn
        # refuses to execute), so the hook covers only that. (Unicorn 2.1.4 keeps every store to a page that a
        # memory hook covers on its slow path; it does so for executable pages anyway, and without NX in the
        # guest's page tables every page is executable.)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                    | UC_HOOK_MEM_FETCH_PROT, self._hook_unmapped, None, config.ram_size, (1 << 64) - 1)

        self.symbols = SymbolTable([])
        self.kernel_image: loader.ElfImage | None = None
        self.disk: AtaDisk | None = None
        self.auditor: IsolationAuditor | None = None
        self.violation: Violation | None = None
        self.violation_cause: Event | None = None
        self.bios: Bios | None = None
        self.programs: dict[str, Path] = {}  # name -> ELF of every program module
        self.stop: Stop | None = None  # set when the run must end
        self.halted = False
        self._slice_interrupted = False  # a hook stopped the current slice on purpose
        self._pending_gp: int | None = None
        self._unmapped_access: str | None = None
        self._panic: Stop | None = None
        self._panic_deadline: int | None = None
        self._irq_waiting_python = False
        self._storm_window = (0, 0)  # (start of the window in virtual ns, interrupts delivered in it)
        self._budget_end: int | None = None
        self._until: str | None = None
        self._until_screen = b""
        self._pause_end: int | None = None
        self._input: list[tuple[int, bytes]] = []  # (virtual time, scan codes), in time order
        self._breakpoints: dict[int, int] = {}  # address -> Unicorn hook handle
        self._resume_address: int | None = None  # a breakpoint to run over once (continuing from it)
        self._next_stop_ns: int | None = None
        self._wall_check: int | None = None  # while a wall-clock guard runs: end slices this often (virtual ns)
        self._tick_target: int | None = None  # while run(ticks=) runs: the timer expiry count to stop at

    # -- boot ----------------------------------------------------------------------------------------------
    def boot(self, kernel: loader.ElfImage, command_line: str = "", modules: list[loader.Module] | None = None,
             symbols: SymbolTable | None = None) -> loader.BootState:
        """Load `kernel` and its programs and set the CPU to the course boot loader's hand-off state."""
        state = loader.prepare_boot(self.memory, kernel, command_line, modules or [])
        self.symbols = symbols if symbols is not None else SymbolTable.from_elf(kernel.data)
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR4, 0x30)  # PSE | PAE
        uc.msr_write(0xC0000080, 0xD01)  # EFER: SCE | LME | LMA | NXE
        uc.reg_write(X.UC_X86_REG_CR3, state.page_table)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)  # PG | WP | ET | PE
        uc.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt_base, state.gdt_limit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))  # the real-mode IVT: faults now would triple-fault
        for register, value in ((X.UC_X86_REG_RAX, loader.MULTIBOOT_MAGIC),
                                (X.UC_X86_REG_RBX, state.multiboot_info),
                                (X.UC_X86_REG_RSP, state.stack_top), (X.UC_X86_REG_RFLAGS, 0x2),
                                (X.UC_X86_REG_RIP, state.entry)):
            uc.reg_write(register, value)
        cpu = self.cpu
        cpu.save()
        cpu.segs[1].load(loader.KERNEL_CS, 0, 0xFFFFFFFF, 0x00AF9A00)  # CS: the boot GDT's 64-bit code segment
        cpu.restore()
        self.kernel_image = kernel
        self.programs = {module.name: module.image.path for module in modules or []}
        self._install_msr_shims(kernel)
        self._install_interrupt_window_hooks()
        uc.ctl_flush_tb()
        return state

    def boot_disk(self, image: bytes, kernel: loader.ElfImage | None = None, label: str = "disk image") -> None:
        """Power on like a PC with a hard disk: sector 0 at 0x7C00, real mode, DL = 0x80, BIOS services.

        The kernel ELF, if given (or found inside the image), provides symbols for diagnoses and the code
        addresses the harness hooks (IA32_APIC_BASE reads, the instructions that re-enable interrupts)."""
        if len(image) < 512 or image[510:512] != b"\x55\xaa":
            raise LoaderError(f"{label}: no boot signature 0x55AA at the end of sector 0: not a bootable disk")
        if len(image) % 512:
            image = image + bytes(512 - len(image) % 512)
        self.disk = AtaDisk(image, irq=lambda: self.ioapic.raise_irq(14))
        self.bus.add_device_ports(self.disk)
        if self.fast is not None:
            self.fast.attach_disk(self.disk.transfer)
        self.bios = Bios(self, image)
        self.bios.install()
        self.cpu.bios_call = self._bios_call
        self.memory[0x7C00:0x7E00] = image[:512]
        self.cpu.enter_real_mode(cs=0, ip=0x7C00, sp=0x7C00, dl=0x80)
        kernel = kernel or find_kernel_in_image(image)
        if kernel is not None:
            self.kernel_image = kernel
            self.symbols = SymbolTable.from_elf(kernel.data)
            self._install_msr_shims(kernel)
            self._install_interrupt_window_hooks()
        self.uc.ctl_flush_tb()

    def _bios_call(self, vector: int) -> bool:
        if self.bios is None or not self.bios.owns(vector):
            return False
        self.bios.call(vector)
        return True

    def _install_msr_shims(self, kernel: loader.ElfImage) -> None:
        """Answer `rdmsr` of IA32_APIC_BASE, which Unicorn (having no APIC) reads as 0.

        Unicorn cannot hook rdmsr, so every `0f 32` byte pair in the kernel's executable segments gets a
        one-address code hook; a candidate that is not really an rdmsr instruction never runs as one.
        """
        for address, _ in self._kernel_code_matches((b"\x0f\x32",)):
            self.uc.hook_add(UC_HOOK_CODE, self._hook_rdmsr, None, address, address)

    @property
    def syscall_count(self) -> int:
        """System calls entered since power-on (by either path)."""
        return self.cpu.syscalls + (self.fast.state.syscalls if self.fast is not None else 0)

    @property
    def _irq_waiting(self) -> bool:
        """An interrupt is pending while IF=0: stop as soon as the kernel re-enables them."""
        return bool(self.fast.state.irq_waiting) if self.fast is not None else self._irq_waiting_python

    @_irq_waiting.setter
    def _irq_waiting(self, value: bool) -> None:
        if self.fast is not None:
            self.fast.state.irq_waiting = value
        else:
            self._irq_waiting_python = value

    def _install_interrupt_window_hooks(self) -> None:
        """Watch the kernel's instructions that turn interrupts back on: `iretq`/`sysretq` (also the tracer's
        view of returns to user mode), `sti` and `popfq`. An interrupt that came due while IF was 0 is then
        delivered right after the instruction that set IF, as the hardware does, instead of at the next
        timer deadline. Each candidate byte pattern gets a one-address hook that checks the decoded length."""
        returns = self._kernel_code_matches((b"\x48\xcf", b"\x48\x0f\x07"))
        enables = self._kernel_code_matches((b"\xfb", b"\x9d"))
        if self.fast is not None:
            self.fast.watch([(address, length, WATCH_RETURN) for address, length in returns]
                            + [(address, length, WATCH_IF) for address, length in enables])
            return
        for address, length in returns:
            self.uc.hook_add(UC_HOOK_CODE, self._hook_return, length, address, address)
        for address, length in enables:
            self.uc.hook_add(UC_HOOK_CODE, self._hook_interrupt_window, length, address, address)

    def _hook_interrupt_window(self, uc: Uc, address: int, size: int, length: object) -> None:
        if self._irq_waiting and size == length:
            self._stop_after_this_block()

    def _stop_after_this_block(self) -> None:
        """Stop once the current instruction has run: at the next translation block (a code hook's own
        emu_stop would stop before the instruction, which would then never run)."""
        self._slice_interrupted = True
        self.clock.counter.deadline = self.clock.counter.blocks + 1

    def _hook_rdmsr(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if size == 2 and self.cpu.read_register(X.UC_X86_REG_RCX) & 0xFFFFFFFF == MSR_IA32_APIC_BASE \
                and self.cpu.cpl() == 0:
            self.cpu.write_register(X.UC_X86_REG_RAX, APIC_BASE_MSR_VALUE & 0xFFFFFFFF)
            self.cpu.write_register(X.UC_X86_REG_RDX, APIC_BASE_MSR_VALUE >> 32)
            self.cpu.write_register(X.UC_X86_REG_RIP, address + 2)

    # -- Board: the chipset lines devices pull ---------------------------------------------------------------
    def power_off(self, source: str) -> None:
        self._request_stop(StopKind.POWER_OFF, f"the guest powered off ({source})")

    def reset(self, source: str) -> None:
        self._request_stop(StopKind.RESET, f"the guest requested a reset ({source}); the harness does not reboot")

    def _request_stop(self, kind: StopKind, message: str) -> None:
        if self.stop is None:
            self.stop = Stop(kind, message, self.clock.now_ns(), self.cpu.rip())
            self._machine_event(message)
        self._slice_interrupted = True
        self.uc.emu_stop()

    # -- hooks -----------------------------------------------------------------------------------------------
    def _hook_in(self, uc: Uc, port: int, size: int, user_data: object) -> int:
        if not self.cpu.io_permitted(port, size):
            self._refuse_io()
            return self.cpu.read_register(X.UC_X86_REG_RAX) & ((1 << (8 * size)) - 1)
        return self.bus.io_read(port, size)

    def _hook_out(self, uc: Uc, port: int, size: int, value: int, user_data: object) -> None:
        if not self.cpu.io_permitted(port, size):
            self._refuse_io()
            return
        self.bus.io_write(port, size, value)

    def _refuse_io(self) -> None:
        """Unicorn skips the I/O permission check: raise #GP ourselves once the slice has stopped."""
        self._pending_gp = self.cpu.rip()  # the I/O instruction itself
        self._slice_interrupted = True
        self.uc.emu_stop()

    def _hook_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, user_data: object) -> bool:
        """A fetch from physical memory that holds no code (the empty bus, a device), or an access beyond the
        physical address space: a machine fault the run stops on."""
        kind = {UC_MEM_FETCH_UNMAPPED: "instruction fetch from", UC_MEM_FETCH_PROT: "instruction fetch from",
                UC_MEM_WRITE_UNMAPPED: "write to"}.get(access, "read from")
        self._unmapped_access = f"{kind} physical address {address:#x}, where there is no RAM or device"
        return False

    # -- events ------------------------------------------------------------------------------------------------
    def _record_delivery(self, vector: int, error_code: int | None, rip: int, cr2: int, external: bool,
                         from_user: bool, cr3: int) -> None:
        self.halted = False
        if from_user and self.auditor is not None:
            self.auditor.entered_from_user(cr3)
        self.tracer.delivery(vector, error_code, rip, cr2, external, from_user, cr3)
        self._sync_tracer_view()

    def _record_syscall(self, rip: int, number: int, cr3: int, args: tuple[int, ...],
                        time_ns: int | None = None) -> None:
        self.tracer.syscall(rip, number, cr3, args, time_ns)
        if self._until is not None:  # programs print between system calls: look at the screen now
            screen = self._ram[0xB8000:0xB8000 + 4000]
            if screen != self._until_screen:
                self._until_screen = screen
                if self._until_seen() and self.stop is None:
                    self._request_stop(StopKind.UNTIL, f"{self._until!r} appeared on the screen")

    # -- the native fast paths' calls back into Python -------------------------------------------------------
    def _fast_syscall(self, record: RawSyscall) -> None:
        if self.fast.state.want_syscalls == WANT_BATCH:  # type: ignore[union-attr]
            self._pull_syscalls()  # the ring is half full: take it
            return
        self._record_syscall(record.rip, record.number, record.cr3, tuple(record.args), record.time_ns)

    def _pull_syscalls(self) -> None:
        """WANT_BATCH: turn the system calls the native path recorded since Python last ran into events, before
        anything newer happens in Python (EventLog calls this before each add)."""
        fast = self.fast
        if fast is None or fast.state.want_syscalls != WANT_BATCH or self._pulling:
            return
        state = fast.state
        if state.raw_consumed == state.raw_total:
            return
        self._pulling = True
        events = self.events
        events.before_add = None  # the events added below are the ones it would pull
        try:
            start, stop = state.raw_consumed, state.raw_total
            state.raw_consumed = stop
            events.raw_taken(stop)
            tracer = self.tracer
            syscall, returned = tracer.syscall, tracer.return_to_user
            for kind, seq, time_ns, rip, cr3, number, a0, a1, a2, a3, pid, ret, end_ns in fast.unpack(start, stop):
                known_pid = pid if pid >= 0 else None  # -1: the native path could not read it
                if kind == RECORD_RETURN:  # a return the native watch saw needed nothing at once
                    returned(rip, number, cr3, known_pid, time_ns, console=False)
                else:  # an entry; RECORD_COMPLETE: it came straight back with nothing else to see
                    syscall(rip, number, cr3, (a0, a1, a2, a3), time_ns, seq, known_pid,
                            (ret, end_ns) if kind == RECORD_COMPLETE else None)
        finally:
            events.before_add = self._pull_syscalls
            self._pulling = False

    def _fast_return(self, record: UserReturn) -> None:
        self._pull_syscalls()
        self._user_return(record.rip, record.rax, record.cr3, record.pid if record.pid >= 0 else None)
        self._sync_tracer_view()

    def _sync_tracer_view(self, screen: bool = False) -> None:
        """What the native return watch must know of the tracer to tell which returns need Python at once:
        whether a fault waits for its outcome (or the auditor checks), and, after the tracer's view was set
        from elsewhere (`screen`: enabling, a snapshot), which process and screen it last saw."""
        if self.fast is None:
            return
        state = self.fast.state
        state.see_every_return = bool(self.auditor is not None or self.tracer._pending_fault)
        if screen:
            state.screen_valid = 0
            pid = self.tracer._last_user_pid
            state.last_user_pid = pid if pid is not None else -1

    def _fast_slow_in(self, port: int, size: int) -> int:
        self.fast.flush_log()  # type: ignore[union-attr]
        value = self._hook_in(self.uc, port, size, None)
        self._refresh_fast_ports()
        return value

    def _fast_slow_out(self, port: int, size: int, value: int) -> None:
        self.fast.flush_log()  # type: ignore[union-attr]
        self._hook_out(self.uc, port, size, value, None)
        self._refresh_fast_ports()

    def _after_native_run(self) -> None:
        """When the CPU stops: what the native paths still hold goes to Python (a log line not finished yet,
        recorded system calls), and a stop they made on purpose is known."""
        fast = self.fast
        if fast is None:
            return
        fast.flush_log()
        self._pull_syscalls()
        self._slice_interrupted |= bool(fast.state.interrupted)

    def _refresh_fast_ports(self) -> None:
        """Port values the native path answers from a copy: copy them again after the devices changed."""
        if self.fast is not None:
            self.fast.state.kbd_status = self.keyboard.status()

    def _watching(self) -> None:
        """Tell the native paths which events Python must see as they happen (before each slice)."""
        fast = self.fast
        if fast is None:
            return
        state = fast.state
        if self._until is not None or self.events.observers:
            want = WANT_EACH  # stop conditions look at every system call as it happens
        elif self.tracer.full or self.events.sinks:
            want = WANT_BATCH
        else:
            want = WANT_RAW
        if want != state.want_syscalls:
            self.events.settle()  # what the old mode recorded first, in its own way
            state.raw_consumed = state.raw_total
            self.events.raw_taken(state.raw_total)
            state.want_syscalls = want
        state.want_returns = bool(self.tracer.full or self.auditor is not None)
        self._sync_tracer_view()

    def _machine_event(self, text: str) -> None:
        self.tracer.machine_event(text)

    def _log_line(self, line: str) -> None:
        self.cpu.save()
        rip, cr3 = self.cpu.eip.value, self.cpu.cr3.value
        self.tracer.log_line(line, rip, cr3)
        if self._until is not None and self._until in line and self.stop is None:
            self._request_stop(StopKind.UNTIL, f"{self._until!r} appeared in the log")
        if line.startswith(PANIC_PREFIXES) and self._panic is None:
            backtrace = self.backtrace(self.cpu.regs[RBP], cr3)
            self._panic = Stop(StopKind.PANIC, line, self.clock.now_ns(), rip, backtrace)
            self._panic_deadline = self.clock.now_ns() + PANIC_GRACE_NS
            self.tracer.panic(line, rip, cr3, backtrace)
            self._rearm()

    # -- isolation audit ---------------------------------------------------------------------------------------
    def enable_audit(self) -> None:
        """Check every process's page table at every return to user mode; stop at the first violation."""
        from .audit import IsolationAuditor  # imported when used: most runs never audit

        self.auditor = IsolationAuditor(self)
        if self.tracer.kernel is None:
            self.tracer.kernel = self.auditor.kernel  # the return hook reads interrupt frames through it

    # -- full tracing ----------------------------------------------------------------------------------------
    def enable_tracing(self, syscalls: SyscallTable, programs: dict[str, Path] | None = None) -> None:
        """Trace with pids, return values, page-walk explanations, context switches and console output.

        Returns to user mode are seen through one-address code hooks on the kernel's own `iretq` and `sysretq`
        instructions (found in its executable segments), so no per-instruction work is added elsewhere."""
        if self.kernel_image is None:
            raise RuntimeError("boot the machine before enabling tracing")
        self.tracer.enable(syscalls, programs or {}, self.kernel_image.data)
        kernel = self.tracer.kernel
        if self.fast is not None and kernel is not None and kernel.available:
            self.fast.know_kernel(kernel.current_address, kernel.layout.pid if kernel.layout else None)
        if self.fast is not None:
            self.fast.state.memory_calls = sum(1 << number for number in range(64)
                                               if self.tracer.reads_user_memory(number))
        self._sync_tracer_view(screen=True)

    def _kernel_code_matches(self, patterns: tuple[bytes, ...]) -> list[tuple[int, int]]:
        """(address, length) of every occurrence of `patterns` in the kernel's executable segments."""
        found = []
        assert self.kernel_image is not None
        for seg in self.kernel_image.segments:
            if not seg.executable:
                continue
            code = self.kernel_image.data[seg.offset:seg.offset + seg.filesz]
            for pattern in patterns:
                at = code.find(pattern)
                while at >= 0:
                    found.append((seg.vaddr + at, len(pattern)))
                    at = code.find(pattern, at + 1)
        return sorted(found)

    def _hook_return(self, uc: Uc, address: int, size: int, length: object) -> None:
        """At a kernel `iretq`/`sysretq`: end the slice if an interrupt waits for IF=1; if it goes back to user
        mode and tracing is on, tell the tracer (RAX is the result)."""
        if size != length:
            return  # the byte pattern was inside another instruction
        if self._irq_waiting:
            self._stop_after_this_block()  # the iretq ends its block: the CPU stops in the code it returns to
        self._hook_return_at(address, size, length)  # type: ignore[arg-type]

    def _hook_return_at(self, address: int, size: int, length: int) -> None:
        """The tracer's and the auditor's part of a kernel return, found from the saved CPU state (the Python
        path; the native watch finds the same and calls `_user_return` itself)."""
        if not self.tracer.full and self.auditor is None:
            return
        cpu = self.cpu
        cpu.save()  # one call for CR3, RSP, RCX and RAX
        cr3, regs = cpu.cr3.value, cpu.regs
        if length == 3:  # sysretq: always to user mode, at RCX
            rip = regs[RCX]
        else:
            kernel = self.tracer.kernel
            frame = kernel.read_kernel(cr3, regs[RSP], 16) if kernel is not None else None
            if frame is None:
                return
            rip, cs = struct.unpack("<QQ", frame)
            if cs & 3 != 3:
                return
        self._user_return(rip, regs[RAX], cr3)

    def _user_return(self, rip: int, rax: int, cr3: int, pid: int | None | bool = False) -> None:
        """The CPU returns to user mode at `rip`: the tracer finishes the system call, the auditor checks."""
        if self.tracer.full:
            self.tracer.return_to_user(rip, rax, cr3, pid)
        if self.auditor is not None and self.stop is None:
            violation = self.auditor.check(cr3)
            if violation is not None:
                cause = next((e for e in reversed(self.events.ring) if e.kind in (Kind.SYSCALL, Kind.INTERRUPT,
                                                                                   Kind.EXCEPTION)), None)
                self.violation = violation
                self.violation_cause = cause
                self._request_stop(StopKind.ISOLATION, str(violation))

    # -- snapshots ---------------------------------------------------------------------------------------------
    def devices(self) -> dict[str, Any]:
        """Every device with state, by a stable name (snapshots key on it)."""
        devices: dict[str, Any] = {
            "lapic": self.lapic, "ioapic": self.ioapic, "console": self.console, "keyboard": self.keyboard,
            "pic": self.pic, "parallel": self.parallel, "pci": self.pci, "acpi_pm": self.acpi_pm,
            "reset": self.reset_port}
        if self.disk is not None:
            devices["ata0"] = self.disk
        return devices

    def run_state(self) -> dict[str, Any]:
        panic = self._panic
        return {"halted": self.halted, "irq_waiting": self._irq_waiting, "storm": list(self._storm_window),
                "panic_deadline": self._panic_deadline,
                "panic": None if panic is None else [panic.message, panic.time_ns, panic.rip, panic.backtrace],
                "reported": sorted([d, p] for d, p in self.bus._reported),
                "input": [[when, codes.hex()] for when, codes in self._input],
                "entropy": self.entropy.state()}

    def restore_run_state(self, state: dict[str, Any]) -> None:
        self.halted = state["halted"]
        self._irq_waiting = state["irq_waiting"]
        self._storm_window = (state["storm"][0], state["storm"][1])
        self._panic_deadline = state["panic_deadline"]
        panic = state["panic"]
        self._panic = None if panic is None else Stop(StopKind.PANIC, panic[0], panic[1], panic[2], list(panic[3]))
        self.bus._reported = {(d, p) for d, p in state["reported"]}
        self._input = [(when, bytes.fromhex(codes)) for when, codes in state.get("input", [])]
        if "entropy" in state:
            self.entropy.restore(state["entropy"])
        self.stop = None
        self._pending_gp = None

    def snapshot(self) -> snapshots.Snapshot:
        """The machine's whole state, to `restore()` later (between runs, never during one)."""
        from . import snapshot as snapshots

        return snapshots.take(self)

    def restore(self, snapshot: snapshots.Snapshot) -> None:
        from . import snapshot as snapshots

        snapshots.restore(self, snapshot)
        self._refresh_fast_ports()
        self._sync_tracer_view(screen=True)

    def save_snapshot(self, path: Path) -> None:
        from . import snapshot as snapshots

        snapshots.save(self.snapshot(), path)

    def load_snapshot(self, path: Path) -> None:
        from . import snapshot as snapshots

        self.restore(snapshots.load(path))

    # -- inspection --------------------------------------------------------------------------------------------
    def backtrace(self, rbp: int, cr3: int, depth: int = 16) -> list[int]:
        """Return addresses found by following the frame-pointer chain (kernels built with frame pointers)."""
        out: list[int] = []
        try:
            while rbp and len(out) < depth:
                return_address = read_u64(self.memory, cr3, rbp + 8)
                if not return_address:
                    break
                out.append(return_address)
                next_rbp = read_u64(self.memory, cr3, rbp)
                if next_rbp <= rbp:
                    break
                rbp = next_rbp
        except (PageFault, PhysicalFault):
            pass
        return out

    def halted_after_step(self) -> bool:
        """Did the instruction just stepped halt the CPU (it was `hlt`)?"""
        return self._code_byte(self.cpu.rip() - 1) == 0xF4

    def _code_byte(self, rip: int) -> int | None:
        """The byte at `rip` as the CPU fetches it (segment base in real mode, page tables when paging)."""
        linear, paged = self.cpu.code_address(rip)
        if not paged:
            return self.memory[linear] if linear < len(self.memory) else None
        try:
            return self.read_virtual(linear, 1)[0]
        except (PageFault, PhysicalFault):
            return None

    def read_virtual(self, address: int, length: int, cr3: int | None = None) -> bytes:
        if cr3 is None:
            cr3 = self.cpu.read_register(X.UC_X86_REG_CR3)
        return read_virtual(self.memory, cr3, address, length)

    def screen_text(self) -> str:
        return self.console.text()

    @property
    def timer_ticks(self) -> int:
        return self.lapic.timer_expirations

    # -- running -----------------------------------------------------------------------------------------------
    def _until_seen(self) -> bool:
        assert self._until is not None
        return self._until in self.console.text()  # log lines are checked as they arrive, in _log_line

    def _rearm(self) -> None:
        """A device moved its deadline in the middle of a slice: stop earlier if needed."""
        when = self._next_deadline()
        if when is not None and (self._next_stop_ns is None or when < self._next_stop_ns):
            self._next_stop_ns = when
            self.clock.stop_at_ns(when)

    def _next_deadline(self, poll: int | None = None) -> int | None:
        timer = self.lapic.next_deadline_ns() if self._tick_target is not None \
            else self.lapic.next_effective_deadline_ns()  # (--ticks counts every expiry, even useless ones)
        candidates = [timer, self._budget_end, self._panic_deadline, poll, self._pause_end,
                      self._input[0][0] if self._input else None,
                      self.clock.now_ns() + self._wall_check if self._wall_check is not None else None]
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    # -- debugging -------------------------------------------------------------------------------------------
    def add_breakpoint(self, address: int) -> None:
        """Stop before executing the instruction at virtual `address` (a one-address code hook)."""
        if address not in self._breakpoints:
            self._breakpoints[address] = self.uc.hook_add(UC_HOOK_CODE, self._hook_breakpoint, None, address,
                                                          address)
            self.uc.ctl_flush_tb()  # code already translated must be translated again, with the hook

    def remove_breakpoint(self, address: int) -> None:
        handle = self._breakpoints.pop(address, None)
        if handle is not None:
            self.uc.hook_del(handle)
            self.uc.ctl_flush_tb()

    def _hook_breakpoint(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if address == self._resume_address:
            self._resume_address = None  # continuing from this breakpoint: run its instruction once
            return
        self._resume_address = None
        if self.stop is None:
            self.stop = Stop(StopKind.BREAKPOINT, f"breakpoint at {self.symbols.describe(address)}",
                             self.clock.now_ns(), address)
        self._slice_interrupted = True
        self.cpu.write_register(X.UC_X86_REG_RIP, address)  # leave the instruction unexecuted
        uc.emu_stop()

    def step(self) -> Stop | None:
        """Execute one instruction (or enter one interrupt handler); returns a stop if the machine stopped."""
        if self.stop is not None and self.stop.kind is StopKind.BREAKPOINT:
            self.stop = None
        rip = self.cpu.rip()
        self._resume_address = rip
        self._watching()
        self.cpu.clear_stale_exception()
        try:
            try:
                self.uc.emu_start(rip, NOT_AN_ADDRESS, count=1)
                while self.cpu.replay_requested:
                    self.cpu.replay_fault()
            finally:
                self._after_native_run()
        except TripleFault as fault:
            self._triple_fault(fault)
        except UcError as error:
            self._emulator_error(error)
        self._resume_address = None
        if self._pending_gp is not None:
            self.cpu.write_register(X.UC_X86_REG_RIP, self._pending_gp)
            self._pending_gp = None
            self.cpu.deliver(GP, error_code=0)
        return self.stop

    def type_keys(self, codes: bytes, at_ns: int | None = None) -> None:
        """Queue scan codes for the keyboard at virtual time `at_ns` (default: now)."""
        when = self.clock.now_ns() if at_ns is None else at_ns
        self._input.append((when, codes))
        self._input.sort(key=lambda item: item[0])  # stable: same-time keys keep their order
        self._rearm()

    def _deliver_input(self, now: int) -> None:
        while self._input and self._input[0][0] <= now:
            self.keyboard.push(self._input.pop(0)[1])
            self.halted = False  # a real 8042 would raise IRQ1; a polling kernel needs the CPU to run
            self._refresh_fast_ports()

    def run(self, *, ticks: int | None = None, max_time_ns: int | None = None, until: str | None = None,
            for_ns: int | None = None, until_event: Callable[[Event], bool] | None = None,
            max_wall_s: float | None = None) -> Stop:
        """Run until the guest powers off or a stop condition holds; returns why it stopped.

        `ticks`: stop (successfully) once that many more LAPIC timer periods have elapsed.
        `max_time_ns`: the safety budget of virtual time; running out of it is a failure.
        `max_wall_s`: the wall-clock guard, in host seconds (StopKind.WALL); by default scaled to
        `max_time_ns` (wallguard.py), and none without a virtual budget.
        `until`: stop (successfully) once this text is on the screen or in a line of the log. The log is
        checked line by line as it is written; the screen at every system call and whenever the CPU stops.
        `for_ns`: pause (successfully) after this much virtual time. `until_event`: stop (successfully) right
        after an event for which this returns true (a system call entry, a fault, a process exit, ...).
        """
        if until_event is not None:
            def watch(event: Event) -> None:
                if self.stop is None and until_event(event):
                    self._request_stop(StopKind.UNTIL, f"event {event.kind.value} #{event.seq} happened")

            self.events.observers.append(watch)
            try:
                return self.run(ticks=ticks, max_time_ns=max_time_ns, until=until, for_ns=for_ns,
                                max_wall_s=max_wall_s)
            finally:
                self.events.observers.remove(watch)
        clock, cpu, lapic = self.clock, self.cpu, self.lapic
        if self.stop is not None and self.stop.kind in RESUMABLE:
            if self.stop.kind is StopKind.BREAKPOINT:
                self._resume_address = self.stop.rip
            self.stop = None  # a requested stop only paused the machine: run on
        self._until = until
        if until is not None and self._until_seen():
            self.stop = Stop(StopKind.UNTIL, f"{until!r} appeared", clock.now_ns(), cpu.rip())
        tick_target = lapic.timer_expirations + ticks if ticks is not None else None
        self._tick_target = tick_target
        self._budget_end = clock.now_ns() + max_time_ns if max_time_ns is not None else None
        self._pause_end = clock.now_ns() + for_ns if for_ns is not None else None
        wall_limit = max_wall_s if max_wall_s is not None else default_limit_s(max_time_ns)
        guard = WallGuard(wall_limit) if wall_limit is not None else None
        self._wall_check = CHECK_EVERY_NS if guard is not None else None
        while self.stop is None:
            now = clock.now_ns()
            if guard is not None and guard.expired():
                self.stop = Stop(StopKind.WALL, guard.message(now, max_time_ns), now, cpu.rip())
                self._machine_event(self.stop.message)
                break
            lapic.advance(now)
            self._deliver_input(now)
            if self._panic is not None and self._panic_deadline is not None and now >= self._panic_deadline:
                self.stop = self._panic
                break
            if tick_target is not None and lapic.timer_expirations >= tick_target:
                self.stop = Stop(StopKind.TICKS, f"{ticks} timer ticks reached", now, cpu.rip())
                break
            if self._pause_end is not None and now >= self._pause_end:
                self.stop = Stop(StopKind.PAUSED, "paused", now, cpu.rip())
                break
            if self._budget_end is not None and now >= self._budget_end:
                self.stop = Stop(StopKind.BUDGET, f"the budget of {max_time_ns / 1e9:g} s of virtual time ran out",
                                 now, cpu.rip())
                break
            poll = None
            vector = lapic.pending_vector()
            if vector is not None:
                if cpu.interrupts_enabled():
                    if cpu.interrupt_shadow():
                        # Just after `sti` the CPU takes no interrupt before one more instruction. Unicorn also
                        # leaves this flag set in chained loops, so it cannot be trusted: run exactly one
                        # instruction (the shadow is then over on any CPU), and take the interrupt after it.
                        if self.step() is not None:
                            break
                        if self.halted_after_step():
                            self.halted = True
                    lapic.acknowledge(vector)
                    self._irq_waiting = False
                    if self._storm(now, vector):
                        break
                    try:
                        cpu.deliver(vector, external=True)
                    except TripleFault as fault:
                        self._triple_fault(fault)
                        break
                    continue
                self._irq_waiting = True
                if not self.halted:
                    poll = now + POLL_NS
            if self.halted:
                if not cpu.rflags() & FLAG_IF:
                    self.stop = Stop(StopKind.HANG, "the CPU halted with interrupts disabled; nothing can wake it",
                                     now, cpu.rip())
                    break
                wake = self.lapic.next_interrupt_deadline_ns()
                if self._input and (wake is None or self._input[0][0] < wake):
                    wake = self._input[0][0]
                if self._pause_end is not None and (wake is None or wake > self._pause_end):
                    wake = self._pause_end  # idle until the pause: the live console keeps time
                if self._budget_end is not None and (wake is None or wake > self._budget_end):
                    wake = self._budget_end if wake is not None else None
                if wake is None:
                    self.stop = Stop(StopKind.HANG, "the CPU halted with no timer or device that could wake it",
                                     now, cpu.rip())
                    break
                clock.skip_to_ns(wake)
                continue
            self.run_slice(self._next_deadline(poll))
            if until is not None and self.stop is None and self._until_seen():
                self.stop = Stop(StopKind.UNTIL, f"{until!r} appeared", clock.now_ns(), cpu.rip())
        self._until = None
        self._pause_end = None
        self._wall_check = None
        self._tick_target = None
        if self._panic is not None and self.stop.kind is not StopKind.PANIC:
            self.stop = self._panic  # a panic is what matters, even if a key then powered the machine off
        if self.stop.kind not in RESUMABLE:
            self.tracer.finish()  # the machine is done: close what will never complete
        self.log.flush()
        return self.stop

    def run_slice(self, deadline: int | None = None) -> None:
        """Run the CPU until `deadline` (virtual ns), a halt, or a hook's stop; handle what stopped it."""
        clock, cpu = self.clock, self.cpu
        self._next_stop_ns = deadline
        clock.stop_at_ns(deadline)
        deadline_stops = clock.deadline_stops
        self._slice_interrupted = False
        fast = self.fast
        if fast is not None:
            self._watching()
            fast.state.interrupted = 0
        rip = cpu.rip()
        cpu.clear_stale_exception()
        try:
            try:
                self.uc.emu_start(rip, NOT_AN_ADDRESS)
                while cpu.replay_requested:
                    cpu.replay_fault()
                    self._slice_interrupted = True
            finally:
                self._after_native_run()
        except TripleFault as fault:
            self._triple_fault(fault)
            return
        except UcError as error:
            if cpu.triple_fault is None:
                self._emulator_error(error)
                return
        if cpu.triple_fault is not None:
            fault, cpu.triple_fault = cpu.triple_fault, None
            self._triple_fault(fault)
            return
        if self._pending_gp is not None:
            cpu.write_register(X.UC_X86_REG_RIP, self._pending_gp)
            self._pending_gp = None
            try:
                cpu.deliver(GP, error_code=0)
            except TripleFault as fault:
                self._triple_fault(fault)
            return
        if clock.deadline_stops == deadline_stops and not self._slice_interrupted:
            rip = cpu.rip()
            halted = self._code_byte(rip - 1) == 0xF4
            if halted:
                self.halted = True
            elif self.stop is None:
                self.stop = Stop(StopKind.MACHINE_FAULT, "the emulator stopped for no known reason",
                                 clock.now_ns(), rip)

    def _storm(self, now: int, vector: int) -> bool:
        """Count device interrupts per window of virtual time; stop the run if they come as a storm."""
        start, count = self._storm_window
        if now - start >= STORM_WINDOW_NS:
            start, count = now, 0
        count += 1
        self._storm_window = (start, count)
        if count <= STORM_LIMIT:
            return False
        period = self.lapic.initial_count * self.lapic.divisor if self.lapic.timer_running else None
        cause = f"; the LAPIC timer's period is {period} ns" if period is not None and vector == 32 else ""
        self.stop = Stop(StopKind.STORM, f"interrupt storm: more than {STORM_LIMIT} interrupts (vector {vector}) "
                                         f"within {STORM_WINDOW_NS / 1e6:g} ms of virtual time{cause}",
                         now, self.cpu.rip())
        self._machine_event(self.stop.message)
        return True

    def _triple_fault(self, fault: TripleFault) -> None:
        if isinstance(fault, MissingMemory):  # a table or stack outside RAM: a machine fault, not a CPU reset
            self.stop = Stop(StopKind.MACHINE_FAULT, f"machine fault: {fault.reason}", self.clock.now_ns(), fault.rip)
        else:
            self.stop = Stop(StopKind.TRIPLE_FAULT, f"triple fault: {fault.reason}", self.clock.now_ns(), fault.rip)
        self._machine_event(self.stop.message)

    def _emulator_error(self, error: UcError) -> None:
        rip = self.cpu.rip()
        message = self._unmapped_access or f"the emulator refused to continue: {error}"
        if self.stop is None:
            self.stop = Stop(StopKind.MACHINE_FAULT, message, self.clock.now_ns(), rip)
            self._machine_event(message)

    # -- diagnosis -------------------------------------------------------------------------------------------
    def registers(self) -> dict[str, int]:
        names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                 "r14", "r15", "rip", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4"]
        return {name: self.cpu.read_register(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in names}



def find_kernel_in_image(image: bytes) -> loader.ElfImage | None:
    """The kernel ELF inside a disk image: the first x86-64 executable that starts on a sector boundary.

    Both our image layout and the course's (the kernel at sector 1) keep the kernel file whole and
    sector-aligned, so the harness can know the kernel's code without being told."""
    at = image.find(b"\x7fELF\x02\x01", 512)
    while at >= 0:
        if at % 512 == 0:
            try:
                return loader.parse_elf(image[at:], f"kernel in the disk image at sector {at // 512}")
            except LoaderError:
                pass
        at = image.find(b"\x7fELF\x02\x01", at + 1)
    return None
