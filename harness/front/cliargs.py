"""Checks of the command line's values and combinations, so that every mistake is one usage line (exit 2).

argparse calls the `type=` functions below on each value; `check_combinations` looks at the options together
once they are parsed (what one option means depends on another). Both report through argparse, which prints the
command's usage and one `error:` line and exits with status 2, the documented status of bad usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..pc.errors import HarnessError
from ..pc.guestram import RAM_LIMIT
from ..pc.keys import ScheduledKeys, parse_key_script


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


MAX_MEMORY_MIB = RAM_LIMIT >> 20  # RAM ends below the APICs' registers (0xFEC00000), as on a PC
MAX_PORT = 65535


def memory_mib(text: str) -> int:
    """`--memory`: MiB of guest RAM, from 1 up to where the PC's device registers begin."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_MEMORY_MIB:
        raise argparse.ArgumentTypeError(f"{value} MiB: give 1 to {MAX_MEMORY_MIB} (RAM ends below the APICs at "
                                         f"{RAM_LIMIT:#x})")
    return value


def tcp_port(text: str) -> int:
    """`--gdb`: a TCP port, 0 for any free one."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value}: a TCP port is 0 (any free port) to {MAX_PORT}")
    return value


def key_script(text: str) -> ScheduledKeys:
    """`--keys [TIME:]KEYS`, checked as the command line is read (an unknown key name is bad usage)."""
    try:
        return parse_key_script(text)
    except HarnessError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def until_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("give the text to wait for (an empty text would stop at once)")
    return text


def _whole_number(text: str, what: str) -> int:
    """`text` as a whole number >= 0 (decimal, or with a 0x/0o/0b prefix), or one usage error naming `what`."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not {what}: {value}")
    return value


def pid_number(text: str) -> int:
    return _whole_number(text, "a pid")


def count(text: str) -> int:
    """A count of things (events of context, ...): a whole number, zero included."""
    return _whole_number(text, "a count")


def join_dashed_values(argv: list[str], options: tuple[str, ...] = ("--keys", "--until")) -> list[str]:
    """`--keys -1:q` as `--keys=-1:q`: argparse would take the value for an option and say nothing useful."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--":
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that cannot go together: one usage error naming both (from the command's own parser)."""
    command = getattr(args, "command", None)
    if command not in ("boot", "trace", "check"):
        return
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parser = commands.choices[command]
    if command == "check":
        _check_submissions_combinations(parser, args)
        return
    if args.disk is not None and args.programs:
        parser.error(f"with --disk the command to run is written in the image: give no PROGRAM "
                     f"(got {' '.join(args.programs)})")
    if args.disk is not None and args.program:
        parser.error("--program adds modules for a multiboot boot; with --disk the programs are in the image")
    if command == "trace" and args.summary and args.format == "perfetto":
        parser.error("--summary prints a table (strace format) or one JSON object (--format jsonl), not a "
                     "Perfetto trace")


def _check_submissions_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`check`: KERNELs or --submissions DIR, and the options that go with each."""
    if args.submissions is None:
        if not args.kernels:
            parser.error("give a KERNEL to check, or --submissions DIR")
        many_only = [name for name, value in (("--out", args.out), ("--scheduler", args.scheduler),
                                              ("--workers", args.workers)) if value is not None]
        if many_only:
            parser.error(f"{', '.join(many_only)} go(es) with --submissions DIR")
        return
    if args.kernels:
        parser.error(f"with --submissions DIR the kernels are its folders: give no KERNEL (got "
                     f"{' '.join(map(str, args.kernels))})")
    if args.out is None:
        parser.error("--submissions DIR needs --out OUT, the folder for the results and the summary")
    for name, value in (("--results", args.results), ("--screens", args.screens)):
        if value is not None:
            parser.error(f"with --submissions, {name} is written for every submission in --out OUT")
    if args.scheduler is not None and args.workers is not None:
        parser.error("--workers sizes the embedded local cluster; an external --scheduler has its own workers")
