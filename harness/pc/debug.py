"""Debugging controls: breakpoints and single steps (the gdb stub and the pytest plugin drive them).

A mixin of the board (board.py): it uses the board's CPU, clock, symbols, stop and the run loop's error
handling, and keeps its own state in `_breakpoints` and `_resume_address`.
"""

from __future__ import annotations

from unicorn import UC_HOOK_CODE, Uc, UcError
from unicorn import x86_const as X

from .cpu import GP, NOT_AN_ADDRESS, TripleFault
from .stop import Stop, StopKind


class DebugControls:
    """Breakpoints (one-address code hooks) and stepping one instruction at a time.

    A stop at a breakpoint is resumable: `run()` then executes the instruction once before the hook fires again."""

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
