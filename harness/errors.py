"""Errors and exit statuses shared by every front end.

A `HarnessError` is a mistake in what the user gave us (a missing file, a bad ELF, an unknown program): the CLI
prints its message as one line and exits non-zero, never with a traceback. What the guest does wrong is not an
error of ours: it ends a run with a `StopReason` and a diagnosis instead.
"""

from __future__ import annotations

import enum


class HarnessError(Exception):
    """A user-facing error: its message is complete and fits on one line."""


class LoaderError(HarnessError):
    """An input file (kernel or program ELF, command line) cannot be booted."""


class ExitCode(enum.IntEnum):
    """Process exit statuses of `python -m harness boot` (documented in the README)."""

    OK = 0  # the guest powered off, or a requested stop (--ticks) was reached
    HARNESS_ERROR = 1  # bad input or an internal harness failure
    USAGE = 2  # bad command-line syntax (argparse)
    PANIC = 3  # the guest kernel panicked
    TRIPLE_FAULT = 4  # the CPU could not deliver a double fault
    BUDGET = 5  # the safety budget of virtual time ran out
    MACHINE_FAULT = 6  # the guest touched memory that does not exist, or the emulator refused an instruction
    HANG = 7  # the CPU halted with nothing left that could wake it
    RESET = 8  # the guest asked the chipset for a reset (the harness does not reboot, like QEMU -no-reboot)
    ISOLATION = 9  # --audit found a page mapping that breaks process isolation
    STORM = 10  # device interrupts came as a storm (e.g. a LAPIC timer programmed with a period of nanoseconds)
    WALL = 11  # the wall-clock guard fired: the run took too much host time for its virtual time
