"""Human-readable accounts of a run: events, stop reasons, and the diagnosis of a guest that misbehaved."""

from __future__ import annotations

from unicorn.x86_const import UC_X86_REG_CR3

from ..pc.board import Board
from ..pc.cpu import vector_name
from ..pc.events import Event, Kind
from ..pc.paging import PageFault, PhysicalFault, read_cstring
from ..pc.stop import Stop, StopKind
from ..pc.symbols import SymbolTable
from .pagefault import disassembler
from .syscalls import SyscallTable


def format_time(ns: int) -> str:
    return f"{ns / 1e9:.6f}"


def format_event(machine: Board, event: Event, syscalls: SyscallTable) -> str:
    where = machine.symbols.describe(event.rip) if event.rip else ""
    stamp = f"[{format_time(event.time_ns)}]"
    if event.kind is Kind.SYSCALL:
        spec = syscalls.by_number.get(event.number)
        if spec is None:
            args = ", ".join(f"{a:#x}" for a in event.args)
            return f"{stamp} syscall {syscalls.name(event.number)}({args}) at {where}"
        shown = []
        for arg, value in zip(spec.args, event.args, strict=False):
            if arg.type == "str":
                text = read_cstring(machine.memory, event.cr3, value, 64)
                shown.append(repr(text.decode("latin-1")) if text is not None else f"{value:#x}")
            elif arg.type in ("ptr", "uint", "size") and arg.type != "size":
                shown.append(f"{value:#x}")
            else:
                signed = value - (1 << 64) if value >= 1 << 63 else value
                shown.append(str(signed))
        return f"{stamp} syscall {spec.name}({', '.join(shown)}) at {where}"
    if event.kind in (Kind.EXCEPTION, Kind.INTERRUPT):
        what = vector_name(event.number) if event.kind is Kind.EXCEPTION else f"interrupt {event.number}"
        if event.number == 32 and event.kind is Kind.INTERRUPT:
            what = "timer interrupt (vector 32)"
        extra = ""
        if event.error_code is not None:
            extra += f" error {event.error_code:#x}"
        if event.address is not None:
            extra += f" address {event.address:#x}"
        return f"{stamp} {what}{extra} at {where}"
    if event.kind is Kind.SWITCH:
        source = event.detail.get("from")
        return f"{stamp} switch: {'' if source is None else f'pid {source} '}-> pid {event.detail.get('to')}"
    if event.kind in (Kind.PROCESS, Kind.CONSOLE):
        who = f"pid {event.pid}: " if event.pid is not None else ""
        lines = event.text.splitlines() or [""]
        more = f" (and {len(lines) - 1} more rows)" if len(lines) > 1 else ""
        return f"{stamp} {event.kind.value}: {who}{lines[0]}{more}"
    return f"{stamp} {event.kind.value}: {event.text}"


def disassemble_at(machine: Board, address: int) -> str | None:
    try:
        code = machine.read_virtual(address, 16)
    except (PageFault, PhysicalFault):
        return None
    for insn in disassembler().disasm(code, address):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return None


def where(machine: Board, address: int) -> str:
    """`0x40123 <kernel_start+0x23> (kernel mode)`, or for user code the program's own symbol and the pid."""
    if machine.cpu.cpl() != 3:
        return f"{machine.symbols.describe(address)} (kernel mode)"
    from .kernelview import KernelView  # (only a diagnosis that names a user address reads the kernel's DWARF)

    image = machine.kernel_image
    kernel = KernelView(machine.memory, machine.symbols, image.data if image is not None else None)
    cr3 = machine.cpu.read_register(UC_X86_REG_CR3)
    pid = kernel.current_pid(cr3) if kernel.available else None
    name = next((p.name for p in kernel.processes(cr3) if p.pid == pid), None)
    if name is not None and name in machine.programs:
        described = SymbolTable.from_elf(machine.programs[name]).describe(address)
        return f"{described} (user mode, pid {pid}, {name})"
    return f"{address:#x} (user mode{f', pid {pid}' if pid is not None else ''})"


def summary(machine: Board, stop: Stop) -> str:
    """One line: how the run ended and how long it took in virtual time."""
    counts = machine.events.counts
    return (f"{stop.kind.value} at {format_time(stop.time_ns)} s virtual time: {stop.message} "
            f"[{counted(machine.timer_ticks, 'timer tick')}, {counted(counts[Kind.SYSCALL], 'system call')}, "
            f"{counted(counts[Kind.EXCEPTION], 'exception')}]")


def counted(n: int, thing: str) -> str:
    """`1 exception`, `2 exceptions`."""
    return f"{n} {thing}{'' if n == 1 else 's'}"


def collapse_repeats(formatted: list[str]) -> list[str]:
    """Formatted events (`[time] text`) with each run of three or more of the same text as its first line and a
    count: a cascade of nested faults would otherwise fill the list with one line."""
    out: list[str] = []
    i = 0
    while i < len(formatted):
        text = formatted[i].split("] ", 1)[-1]
        j = i + 1
        while j < len(formatted) and formatted[j].split("] ", 1)[-1] == text:
            j += 1
        if j - i >= 3:
            last_stamp = formatted[j - 1].split("] ", 1)[0] + "]"
            out += [formatted[i], f"... the same {j - i - 1} more times, the last at {last_stamp}"]
        else:
            out += formatted[i:j]
        i = j
    return out


def diagnose(machine: Board, stop: Stop, syscalls: SyscallTable, last: int = 12) -> str:
    """What happened, where (by symbol), the instruction, the backtrace and the last events."""
    lines = [summary(machine, stop)]
    if stop.kind is StopKind.PANIC:
        lines.append(f"  panic message: {stop.message}")
        fault = next((e for e in reversed(machine.events.ring) if e.kind is Kind.EXCEPTION and not e.user
                      and e.time_ns <= stop.time_ns), None)
        if fault is not None:  # the kernel panicked over its own exception: show where that happened
            lines.append(f"  kernel exception: {format_event(machine, fault, syscalls)}")
    cascade = machine.events.ongoing_cascade
    if cascade is not None:  # the last events show only the end of it: name the first fault, the cause
        first = cascade.first[0]
        lines.append(f"  first fault: {vector_name(first.number)} at {machine.symbols.describe(first.rip)} (kernel "
                     f"mode){f', address {first.address:#x}' if first.address is not None else ''}; "
                     f"{cascade.nested} nested fault{'s' if cascade.nested != 1 else ''} followed, each raised "
                     f"by the handler of the one before")
        lines.append(f"  first {len(cascade.first)} faults of the cascade:")
        lines.extend(f"    {text}" for text in collapse_repeats([format_event(machine, event, syscalls)
                                                                  for event in cascade.first]))
    if stop.kind is StopKind.ISOLATION and machine.violation_cause is not None:
        lines.append(f"  caused by: {format_event(machine, machine.violation_cause, syscalls)}")
    lines.append(f"  where: {where(machine, stop.rip)}")
    instruction = disassemble_at(machine, stop.rip)
    if instruction:
        lines.append(f"  instruction: {instruction}")
    if stop.backtrace:
        lines.append("  backtrace:")
        lines.extend(f"    {machine.symbols.describe(address)}" for address in stop.backtrace)
    regs = machine.registers()
    # A panic stops the run a little later (the kernel's last log lines): say so when the CPU has moved on.
    label = "registers" if regs["rip"] == stop.rip else \
        f"registers when the run stopped ({format_time(machine.clock.now_ns())} s)"
    lines.append(f"  {label}: " + " ".join(f"{name}={regs[name]:#x}" for name in
                                           ("rip", "rsp", "rbp", "rax", "rdi", "rsi", "cs", "rflags", "cr2", "cr3")))
    events = machine.events.last(last)
    if events:
        lines.append(f"  last {len(events)} event{'' if len(events) == 1 else 's'}:")
        lines.extend(f"    {text}" for text in collapse_repeats([format_event(machine, event, syscalls)
                                                                  for event in events]))
    log_tail = machine.log.lines()[-5:]
    if log_tail:
        lines.append("  log tail:")
        lines.extend(f"    {line}" for line in log_tail)
    return "\n".join(lines)
