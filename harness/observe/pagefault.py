"""A page fault explained: the walk of the faulting address, which level decided the fault, and the instruction.

The tracer attaches this to every page-fault event (its `detail`), and the trace formats show it. A program that
faults in a loop faults at the same few instructions, so their disassembly (capstone's, loaded on first use) is
remembered rather than redone per fault.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from ..pc.paging import (
    LEVEL_NAMES,
    PF_FETCH,
    PF_PRESENT,
    PF_USER,
    PF_WRITE,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PTE_U,
    PTE_W,
    PageFault,
    PhysicalFault,
    WalkStep,
    read_virtual,
    walk_steps,
)

FLAG_BITS = PTE_P | PTE_W | PTE_U | PTE_PS | PTE_NX  # the bits WalkStep.flags shows
_SHIFTS = (39, 30, 21, 12)  # each level's index bits in an address
INSTRUCTIONS_KEPT = 4096  # disassembled faulting instructions remembered (then forgotten all at once)
_disassembler: Any = None  # capstone, loaded on first use: most runs never disassemble anything


def disassembler() -> Any:
    """capstone's x86-64 disassembler (imported on first use)."""
    global _disassembler
    if _disassembler is None:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs

        _disassembler = Cs(CS_ARCH_X86, CS_MODE_64)
    return _disassembler


class NativeWalker(Protocol):
    """The native path's page walk and supervisor read (fastpath.FastPath), the same as paging's."""

    def walk(self, cr3: int, va: int) -> tuple[list[tuple[int, int]], str | None]:
        """(entry address, entry) of each level walk_steps visits, and why it stopped (walk_steps's words)."""
        ...

    def read(self, cr3: int, va: int, length: int) -> bytes | None:
        """read_virtual's bytes, or None where it would fault."""
        ...


class FaultExplainer:
    """Explanations of page faults in one machine's memory."""

    def __init__(self, memory: memoryview) -> None:
        self.memory = memory
        self.native: NativeWalker | None = None  # the machine's native walk and read, when it has them
        self._instructions: dict[tuple[int, bytes], str | None] = {}  # (rip, its bytes) -> disassembly
        self._flag_names: dict[int, str] = {}  # an entry's flag bits -> WalkStep.flags

    def explain(self, cr3: int, rip: int, address: int, code: int, where: str) -> dict[str, Any]:
        """The fault at `rip` on `address` with error code `code` under `cr3`, as a trace's detail (`where`:
        the faulting instruction's address as the trace names it)."""
        native = self.native
        if native is not None:  # the same walk and read, without Python's per-level work
            walked, stopped = native.walk(cr3, address)
            raw = native.read(cr3, rip, 16)
        else:
            steps, stopped = walk_steps(self.memory, cr3, address)
            walked = [(step.entry_address, step.entry) for step in steps]
            raw = None
            with contextlib.suppress(PageFault, PhysicalFault):
                raw = read_virtual(self.memory, cr3, rip, 16)
        if not code & PF_PRESENT:
            problem = "page not present"
        elif code & PF_USER and not all(entry & 4 for _, entry in walked):
            problem = "protection: a level is not user-accessible"
        elif code & PF_WRITE:
            problem = "protection: a level is not writable"
        elif code & PF_FETCH:
            problem = "protection: the page is not executable"
        else:
            problem = "protection"
        blocking = None
        for depth, (_, entry) in enumerate(walked):
            missing = (not entry & 1) or (code & PF_USER and not entry & 4) or (code & PF_WRITE and not entry & 2)
            if missing:
                blocking = LEVEL_NAMES[depth]
                break
        flag_names = self._flag_names
        return {
            "access": "instruction fetch" if code & PF_FETCH else "write" if code & PF_WRITE else "read",
            "mode": "user" if code & PF_USER else "kernel",
            "problem": problem,
            "walk": [{"level": LEVEL_NAMES[depth], "index": (address >> _SHIFTS[depth]) & 511,
                      "entry_address": entry_address, "entry": entry,
                      "flags": flag_names.get(entry & FLAG_BITS) or self._flags(entry)}
                     for depth, (entry_address, entry) in enumerate(walked)],
            "stopped": stopped,
            "decided_by": blocking or (LEVEL_NAMES[len(walked) - 1] if walked else None),
            "instruction": self.instruction(rip, raw) if raw is not None else None,
            "where": where,
        }

    def _flags(self, entry: int) -> str:
        """WalkStep.flags of an entry, remembered by the bits it shows (a handful of combinations in any run)."""
        bits = entry & FLAG_BITS
        flags = self._flag_names.get(bits)
        if flags is None:
            flags = self._flag_names[bits] = WalkStep("", 0, 0, bits).flags
        return flags

    def instruction(self, rip: int, raw: bytes) -> str | None:
        """The instruction `raw` starts with at `rip`, as capstone shows it (None if it is not one)."""
        key = (rip, raw)
        if key in self._instructions:
            return self._instructions[key]
        instruction = None
        for insn in disassembler().disasm(raw, rip):
            instruction = f"{insn.mnemonic} {insn.op_str}".strip()
            break
        if len(self._instructions) >= INSTRUCTIONS_KEPT:
            self._instructions.clear()
        self._instructions[key] = instruction
        return instruction
