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

    OK = 0  # the guest powered off, or a requested stop (--ticks) was reached; `check`: every check passed
    HARNESS_ERROR = 1  # bad input or an internal harness failure
    USAGE = 2  # bad command-line syntax (argparse)
    PANIC = 3  # the guest kernel panicked
    TRIPLE_FAULT = 4  # the CPU could not deliver a double fault
    BUDGET = 5  # the safety budget of virtual time ran out
    MACHINE_FAULT = 6  # nonexistent memory executed or needed by a delivery, or the emulator refused an instruction
    HANG = 7  # the CPU halted with nothing left that could wake it
    RESET = 8  # the guest asked the chipset for a reset (the harness does not reboot, like QEMU -no-reboot)
    ISOLATION = 9  # --audit found a page mapping that breaks process isolation
    STORM = 10  # device interrupts came as a storm (e.g. a LAPIC timer programmed with a period of nanoseconds)
    WALL = 11  # the wall-clock guard fired: the run took too much host time for its virtual time
    CHECK_FAILED = 12  # `check`: at least one check failed
    CHECK_NOT_APPLICABLE = 13  # `check`: none failed, but at least one could not be applied to the kernel


# The one list of what each status means: the CLI's --help and the README's table are generated from it
# (tests/test_readme_examples.py checks that the README shows exactly this table).
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "the guest powered off, or the requested `--ticks`/`--until` was reached (or you quit the live "
                 "console); `check`: every check passed",
    ExitCode.HARNESS_ERROR: "harness error: a missing, malformed or unwritable file (kernel, program, snapshot, "
                            "output), an unknown program, a failed build, a busy port",
    ExitCode.USAGE: "bad command-line usage: an unknown option, a value out of range, options that contradict",
    ExitCode.PANIC: "the kernel panicked (a log line starting with `PANIC:` or `USER PANIC:`, or the course's "
                    "`FILE:LINE: kernel assertion 'EXPR' failed`)",
    ExitCode.TRIPLE_FAULT: "triple fault: the CPU could not deliver a double fault",
    ExitCode.BUDGET: "the budget of virtual time ran out",
    ExitCode.MACHINE_FAULT: "the guest executed memory that does not exist, or an interrupt's delivery needed an "
                            "IDT, GDT, TSS, stack or page table outside RAM (or the emulator refused an "
                            "instruction)",
    ExitCode.HANG: "the CPU halted with nothing left that could wake it",
    ExitCode.RESET: "the guest asked for a reset (the harness does not reboot, like QEMU's `-no-reboot`)",
    ExitCode.ISOLATION: "`--audit` found a page mapping that breaks process isolation",
    ExitCode.STORM: "an interrupt storm (e.g. a LAPIC timer programmed with a period of nanoseconds)",
    ExitCode.WALL: "the wall-clock guard (`--max-wall`) fired: the guest made its virtual time too costly in "
                   "host time",
    ExitCode.CHECK_FAILED: "`check`: at least one check failed (its line says why)",
    ExitCode.CHECK_NOT_APPLICABLE: "`check`: no check failed, but at least one was not applicable (N/A: the kernel "
                                   "lacks what it needs, e.g. DWARF or a program), so not everything passed",
}


def exit_status_table() -> str:
    """The README's table of exit statuses (Markdown)."""
    rows = [f"| {int(code)} | {meaning} |" for code, meaning in EXIT_MEANINGS.items()]
    return "\n".join(["| status | meaning |", "|---|---|", *rows])


def exit_status_epilog() -> str:
    """The same list for `--help`: plain text, one status a line."""
    lines = [f"  {int(code):<3}{meaning.replace('`', '')}" for code, meaning in EXIT_MEANINGS.items()]
    return "exit status:\n" + "\n".join(lines) + "\n"
