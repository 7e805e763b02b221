"""The board: one Unicorn CPU, guest RAM, the devices on their bus, the virtual clock, booting and inspection.

`Board.boot()` plays the boot loader (loader.py); `boot_disk()` powers on a disk image through the BIOS
(bios.py). The board's other jobs each have a home of their own, mixed in here: the run loop (runloop.py), the
hot paths in Python and native code side by side (hotpaths.py) and the debugging controls (debug.py).
Observers are not imported: the board reports to the recorder it is given (hooks.py). Nothing runs in Python per
instruction; Python runs only per system call, exception, I/O access and slice.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
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
    Uc,
)
from unicorn import x86_const as X

from . import entropy, guestram, loader, textwindow
from .bios import Bios
from .bus import Bus
from .clock import ClockCosts, VirtualClock
from .cpu import RBP, Cpu
from .debug import DebugControls
from .devices.ata import AtaDisk
from .devices.cga import CgaConsole
from .devices.ioapic import IoApic
from .devices.keyboard import Keyboard8042
from .devices.lapic import APIC_BASE_MSR_VALUE, LocalApic
from .devices.parallel import ParallelPort
from .devices.pci import AcpiPm, HostBridge, Ich9Lpc, PciHost
from .devices.pic import Pic8259
from .devices.reset import SystemControlPortA
from .engine import switched_off_from_environment
from .errors import LoaderError
from .events import Event, EventLog
from .guestlog import GuestLog
from .hooks import Recorder
from .hotpaths import HotPaths
from .paging import PageFault, PhysicalFault, read_u64, read_virtual
from .panics import is_panic_line
from .runloop import RunLoop
from .stop import Stop, StopKind
from .symbols import SymbolTable
from .wallguard import Watchdog

PANIC_GRACE_NS = 5_000_000  # after a panic line in the log, let the kernel finish drawing for 5 ms
TRANSLATION_BUFFER_BYTES = 16 << 20
MSR_IA32_APIC_BASE = 0x1B


@dataclass(frozen=True)
class MachineConfig:
    ram_size: int = loader.DEFAULT_RAM_SIZE
    costs: ClockCosts = ClockCosts()  # the calibrated speed model (clock.py)
    event_capacity: int = 4096
    seed: int = 0  # timer phase: 0 = the timer starts on the instruction that programs it
    # The native hot paths (fastpath.py); False runs Python's reference versions of the same work.
    fast_paths: bool = True
    # Engine patches switched off (engine.py; for measurement: none changes a run). None: WEENSY_ENGINE_OFF.
    engine_off: frozenset[str] | None = None


class Board(RunLoop, HotPaths, DebugControls):
    """A q35-like PC for WeensyOS: CPU, RAM, CGA console, 8042 keyboard, LAPIC/IOAPIC, 8259 PIC, LPT1 log,
    PCI with an ICH9 LPC power-management function, and the port-0x92 reset line."""

    def __init__(self, config: MachineConfig | None, recorder: Callable[[Board], Recorder]) -> None:
        self.config = config = config or MachineConfig()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(entropy.CPU_MODEL)  # before anything else (see entropy.py)
        # A bounded buffer for translated code: Unicorn reuses it only when full, and forked programs keep
        # bringing code in on new physical pages, so the default (1 GiB) would make a long run's memory grow.
        uc.ctl_set_tcg_buffer_size(TRANSLATION_BUFFER_BYTES)
        self._ram = guestram.allocate(config.ram_size)  # anonymous, zero-filled, backed lazily by the host
        self._ram_anchor = ctypes.c_char.from_buffer(self._ram)
        self.memory = memoryview(self._ram)
        text_window_in_ram = textwindow.map_ram(uc, ctypes.addressof(self._ram_anchor), config.ram_size)

        self.events = EventLog(config.event_capacity)
        self.tracer = recorder(self)  # the hook points' receiver (hooks.py): the tracer, in harness.machine
        engine_off = config.engine_off if config.engine_off is not None else switched_off_from_environment()
        self.clock = VirtualClock(uc, config.costs, engine_off)
        self.clock.on_deadlines_changed = self._rearm
        self.cpu = Cpu(uc, self.memory)
        self.cpu.charge = self.clock.charge
        self.cpu.ns_per_syscall, self.cpu.ns_per_delivery = config.costs.ns_per_syscall, config.costs.ns_per_delivery
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

        self.bus = Bus()
        self.bus.on_unclaimed = lambda text: self._machine_event(text)
        mmio_cost = config.costs.ns_per_mmio
        self.bus.on_mmio = lambda: self.clock.charge(mmio_cost)
        for device in (self.console, self.keyboard, self.pic, self.parallel, self.pci, self.acpi_pm,
                       self.reset_port):
            self.bus.add_device_ports(device)
        for device in (self.lapic, self.ioapic):
            self.bus.add_mmio(uc, device, device.MMIO_BASE, device.MMIO_SIZE)
        self.bus.map_empty_space(uc, config.ram_size)

        uc.hook_add(UC_HOOK_INTR, self.cpu.hook_interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self.cpu.hook_invalid_instruction)
        self._install_hot_paths()  # hotpaths.py: the native paths, or the Python hooks for the same work
        self.text_window = textwindow.TextWindow(uc, self.memory, ctypes.addressof(self._ram_anchor), self.clock,
                                                 config.fast_paths) if text_window_in_ram else None
        # Only beyond RAM can a fetch find no code (the empty bus and the devices are MMIO, which Unicorn
        # refuses to execute), so the hook covers only that. (Unicorn 2.1.4 keeps every store to a page that a
        # memory hook covers on its slow path; it does so for executable pages anyway, and without NX in the
        # guest's page tables every page is executable.)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
                    | UC_HOOK_MEM_FETCH_PROT, self._hook_unmapped, None, config.ram_size, (1 << 64) - 1)

        self.symbols = SymbolTable([])
        self.kernel_image: loader.ElfImage | None = None
        self.disk: AtaDisk | None = None
        self.bios: Bios | None = None
        self.violation_cause: Event | None = None  # the event before an observer's ISOLATION stop (diagnoses)
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
        self._until_screen = b""  # the screen's bytes at the last look for `_until` (runloop.py)
        self._pause_end: int | None = None
        self._input: list[tuple[int, bytes]] = []  # (virtual time, scan codes), in time order
        self._breakpoints: dict[int, int] = {}  # address -> Unicorn hook handle
        self._resume_address: int | None = None  # a breakpoint to run over once (continuing from it)
        self._next_stop_ns: int | None = None
        self._wall_check: int | None = None  # while a wall-clock guard runs: end slices this often (virtual ns)
        self._watchdog: Watchdog | None = None  # while a wall-clock guard runs: its thread (wallguard.py)

    # -- boot ----------------------------------------------------------------------------------------------
    def boot(self, kernel: loader.ElfImage, command_line: str | None = "", modules: list[loader.Module] | None = None,
             symbols: SymbolTable | None = None) -> loader.BootState:
        """Load `kernel` and its programs and set the CPU to the course boot loader's hand-off state (with a
        multiboot hand-off of `command_line` and `modules`; none if `command_line` is None, EAX = RBX = 0)."""
        state = loader.prepare_boot(self.memory, kernel, command_line, modules or [])
        self.symbols = symbols if symbols is not None else SymbolTable.from_elf(kernel.data)
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR4, 0x30)  # PSE | PAE
        uc.msr_write(0xC0000080, 0xD01)  # EFER: SCE | LME | LMA | NXE
        uc.reg_write(X.UC_X86_REG_CR3, state.page_table)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)  # PG | WP | ET | PE
        uc.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt_base, state.gdt_limit, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))  # the real-mode IVT: faults now would triple-fault
        for register, value in ((X.UC_X86_REG_RAX, loader.MULTIBOOT_MAGIC if state.multiboot else 0),
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

    def boot_disk(self, image: bytes | mmap.mmap, kernel: loader.ElfImage | None = None,
                  label: str = "disk image") -> None:
        """Power on like a PC with a hard disk: sector 0 at 0x7C00, real mode, DL = 0x80, BIOS services.

        The kernel ELF, if given (or found inside the image), provides symbols for diagnoses and the code
        addresses the harness hooks (IA32_APIC_BASE reads, the instructions that re-enable interrupts)."""
        if len(image) < 512 or image[510:512] != b"\x55\xaa":
            raise LoaderError(f"{label}: no boot signature 0x55AA at the end of sector 0: not a bootable disk")
        self.disk = AtaDisk(image, irq=lambda: self.ioapic.raise_irq(14))
        self.bus.add_device_ports(self.disk)
        if self.fast is not None:
            self.fast.attach_disk(self.disk.transfer)
        self.bios = Bios(self, image)
        self.bios.install()
        self.cpu.bios_call = self._bios_call
        self.memory[0x7C00:0x7E00] = image[:512]
        self.cpu.enter_real_mode(cs=0, ip=0x7C00, sp=0x7C00, dl=0x80)
        kernel = kernel or loader.find_kernel_in_image(image)
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
        one-address code hook; a candidate that is not really an rdmsr instruction never runs as one. With the
        native paths, C looks at the MSR number first and calls Python only for IA32_APIC_BASE.
        """
        addresses = [address for address, _ in self._kernel_code_matches((b"\x0f\x32",))]
        if self.fast is not None:
            self.fast.msr_shims(addresses, lambda address, size: self._hook_rdmsr(self.uc, address, size, None))
            return
        for address in addresses:
            self.uc.hook_add(UC_HOOK_CODE, self._hook_rdmsr, None, address, address)

    def _hook_rdmsr(self, uc: Uc, address: int, size: int, user_data: object) -> None:
        if size == 2 and self.cpu.read_register(X.UC_X86_REG_RCX) & 0xFFFFFFFF == MSR_IA32_APIC_BASE \
                and self.cpu.cpl() == 0:
            self.cpu.write_register(X.UC_X86_REG_RAX, APIC_BASE_MSR_VALUE & 0xFFFFFFFF)
            self.cpu.write_register(X.UC_X86_REG_RDX, APIC_BASE_MSR_VALUE >> 32)
            self.cpu.write_register(X.UC_X86_REG_RIP, address + 2)
            self.clock.count_emulated_instruction()  # the engine skips it: it never ran there

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

    def _hook_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, user_data: object) -> bool:
        """A fetch from physical memory that holds no code (the empty bus, a device), or an access beyond the
        physical address space: a machine fault the run stops on."""
        kind = {UC_MEM_FETCH_UNMAPPED: "instruction fetch from", UC_MEM_FETCH_PROT: "instruction fetch from",
                UC_MEM_WRITE_UNMAPPED: "write to"}.get(access, "read from")
        self._unmapped_access = f"{kind} physical address {address:#x}, where there is no RAM or device"
        return False

    # -- what the board reports (hooks.py) ---------------------------------------------------------------------
    def _record_delivery(self, vector: int, error_code: int | None, rip: int, cr2: int, external: bool,
                         from_user: bool, cr3: int) -> None:
        self.halted = False
        self.tracer.delivery(vector, error_code, rip, cr2, external, from_user, cr3)
        if not external and not from_user:  # a kernel fault: is it one more of a cascade? (see events.py)
            self.events.note_kernel_fault_frame(self.cpu.read_register(X.UC_X86_REG_RSP))
        self._sync_tracer_view()

    def _record_syscall(self, rip: int, number: int, cr3: int, args: tuple[int, ...],
                        time_ns: int | None = None) -> None:
        self.tracer.syscall(rip, number, cr3, args, time_ns)
        if self._until is not None and self._until_on_screen() and self.stop is None:
            # (programs print between system calls: the screen is looked at now)
            self._request_stop(StopKind.UNTIL, f"{self._until!r} appeared on the screen")

    def _machine_event(self, text: str) -> None:
        self.tracer.machine_event(text)

    def _log_line(self, line: str) -> None:
        self.cpu.save()
        rip, cr3 = self.cpu.eip.value, self.cpu.cr3.value
        self.tracer.log_line(line, rip, cr3)
        if self._until is not None and self._until in line and self.stop is None:
            self._request_stop(StopKind.UNTIL, f"{self._until!r} appeared in the log")
        if is_panic_line(line) and self._panic is None:
            backtrace = self.backtrace(self.cpu.regs[RBP], cr3)
            self._panic = Stop(StopKind.PANIC, line, self.clock.now_ns(), rip, backtrace)
            self._panic_deadline = self.clock.now_ns() + PANIC_GRACE_NS
            self.tracer.panic(line, rip, cr3, backtrace)
            self._rearm()

    # -- hook points for observers (hooks.py; harness.machine overrides them) --------------------------------
    def _wants_returns(self) -> bool:
        """Must every return to user mode be seen (the native watch then reports them)?"""
        return self.tracer.full

    def _hook_return_at(self, address: int, size: int, length: int) -> None:
        """A kernel `iretq` (length 2) or `sysretq` (3) at `address` is about to run (the Python path)."""

    def _user_return(self, rip: int, rax: int, cr3: int, pid: int | None | bool = False) -> None:
        """The CPU returns to user mode at `rip` with RAX = `rax` (seen while `_wants_returns()`)."""

    def _sync_tracer_view(self, screen: bool = False) -> None:
        """Tell the native return watch what the observers need to see at once (after their view changed)."""

    # -- state for snapshots -----------------------------------------------------------------------------------
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

    # -- inspection --------------------------------------------------------------------------------------------
    def screen_text(self) -> str:
        return self.console.text()

    @property
    def timer_ticks(self) -> int:
        """Timer interrupts the guest took (not expirations it left pending with interrupts masked)."""
        return self.lapic.timer_interrupts_taken

    def registers(self) -> dict[str, int]:
        names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                 "r14", "r15", "rip", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4"]
        return {name: self.cpu.read_register(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in names}

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
