"""A page fault explained: the walk of the faulting address, which level decided the fault, and the instruction.

The tracer attaches this to every page-fault event (its `detail`), and the trace formats show it. A program that
faults in a loop faults at the same few instructions, so their disassembly (capstone's, loaded on first use) is
remembered rather than redone per fault.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..pc.paging import (
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
INSTRUCTIONS_KEPT = 4096  # disassembled faulting instructions remembered (then forgotten all at once)
_disassembler: Any = None  # capstone, loaded on first use: most runs never disassemble anything


def disassembler() -> Any:
    """capstone's x86-64 disassembler (imported on first use)."""
    global _disassembler
    if _disassembler is None:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs

        _disassembler = Cs(CS_ARCH_X86, CS_MODE_64)
    return _disassembler


class FaultExplainer:
    """Explanations of page faults in one machine's memory."""

    def __init__(self, memory: memoryview) -> None:
        self.memory = memory
        self._instructions: dict[tuple[int, bytes], str | None] = {}  # (rip, its bytes) -> disassembly
        self._flag_names: dict[int, str] = {}  # an entry's flag bits -> WalkStep.flags

    def explain(self, cr3: int, rip: int, address: int, code: int, where: str) -> dict[str, Any]:
        """The fault at `rip` on `address` with error code `code` under `cr3`, as a trace's detail (`where`:
        the faulting instruction's address as the trace names it)."""
        steps, stopped = walk_steps(self.memory, cr3, address)
        if not code & PF_PRESENT:
            problem = "page not present"
        elif code & PF_USER and not all(step.entry & 4 for step in steps):
            problem = "protection: a level is not user-accessible"
        elif code & PF_WRITE:
            problem = "protection: a level is not writable"
        elif code & PF_FETCH:
            problem = "protection: the page is not executable"
        else:
            problem = "protection"
        blocking = None
        for step in steps:
            missing = (not step.entry & 1) or (code & PF_USER and not step.entry & 4) or \
                      (code & PF_WRITE and not step.entry & 2)
            if missing:
                blocking = step.level
                break
        instruction = None
        raw = None
        with contextlib.suppress(PageFault, PhysicalFault):
            raw = read_virtual(self.memory, cr3, rip, 16)
        if raw is not None:
            instruction = self.instruction(rip, raw)
        return {
            "access": "instruction fetch" if code & PF_FETCH else "write" if code & PF_WRITE else "read",
            "mode": "user" if code & PF_USER else "kernel",
            "problem": problem,
            "walk": [{"level": s.level, "index": s.index, "entry_address": s.entry_address, "entry": s.entry,
                      "flags": self._flags(s)} for s in steps],
            "stopped": stopped,
            "decided_by": blocking or (steps[-1].level if steps else None),
            "instruction": instruction,
            "where": where,
        }

    def _flags(self, step: WalkStep) -> str:
        """`step.flags`, remembered by the bits it shows (a handful of combinations in any run)."""
        bits = step.entry & FLAG_BITS
        flags = self._flag_names.get(bits)
        if flags is None:
            flags = self._flag_names[bits] = step.flags
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
