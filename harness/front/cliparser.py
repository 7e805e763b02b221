"""The command line's grammar: the options of each command, and a parser built in full only for the command
asked for (the others by name and help alone), so that parsing a `boot` imports nothing of `check`.

The handlers that run the commands are in cli.py; the checks of values and combinations in cliargs.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..pc.errors import ExitCode, HarnessError, exit_status_epilog
from . import cliargs

EPILOG = exit_status_epilog()


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= MAX_SECONDS:  # also refuses inf and nan
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0 and at most {MAX_SECONDS:g}")
    return value


MAX_SECONDS = 1e9  # of virtual time: any budget in nanoseconds still fits the clock's 64 bits


def _filters(text: str) -> set[str]:
    from ..observe.traceformat import FILTERS

    wanted = {word.strip() for word in text.split(",") if word.strip()}
    unknown = wanted - set(FILTERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown event type {sorted(unknown)[0]!r} (choose from "
                                         f"{', '.join(FILTERS)})")
    return wanted


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that boots the machine."""
    parser.add_argument("programs", nargs="*", metavar="PROGRAM",
                        help="program(s) to start: the kernel's command line, handed over with the multiboot "
                             "magic (default: hello for the build's kernel; with --kernel, no command line and no "
                             "hand-off at all, as the course's boot loader does, so a course kernel runs the "
                             "program compiled into it)")
    parser.add_argument("--command", dest="command_line", metavar="TEXT",
                        help="the kernel's command line exactly as given (not checked against the programs)")
    parser.add_argument("--ticks", type=_positive_int, metavar="N",
                        help="stop successfully once the guest has taken N timer interrupts (10 ms each at the "
                             "kernel's 100 Hz; periods that pass while it keeps interrupts masked do not count)")
    parser.add_argument("--until", type=cliargs.until_text, metavar="TEXT",
                        help="stop successfully once TEXT is on the screen or in the log")
    parser.add_argument("--max-time", type=_positive_float, metavar="SECONDS",
                        help="safety budget of virtual time; running out is a failure (default: 30, and none "
                             "on the live console)")
    parser.add_argument("--max-wall", type=_positive_float, metavar="SECONDS",
                        help="wall-clock guard: stop (exit status 11) after this much host time (default: 60 + 50 "
                             "per second of --max-time)")
    parser.add_argument("--kernel", type=Path, metavar="ELF", help="boot this kernel instead of build/kernel "
                        "(with --disk: only its symbols are used); it gets a command line only if PROGRAMs or "
                        "--command name one")
    parser.add_argument("--disk", type=Path, metavar="IMAGE",
                        help="boot a raw disk image like a PC (boot sector at 0x7C00 in real mode, ATA disk); "
                             "the command to run is in the image")
    parser.add_argument("--program", action="append", default=[], metavar="NAME=ELF",
                        help="add or replace a program module (repeatable)")
    parser.add_argument("--syscalls", type=Path, metavar="JSON",
                        help="system-call table for decoding: a JSON file, or course-kernels1 or course-pset3 (the "
                             "course handouts' numbering); default: build/syscalls.json for a kernel that holds its "
                             "ABI string (ours), else calls are shown by number, syscall_N(rdi, rsi, rdx, r10)")
    parser.add_argument("--build-dir", type=Path, metavar="DIR", help="where the kernel and programs are built")
    parser.add_argument("--no-build", action="store_true", help="do not rebuild WeensyOS when its build is stale")
    parser.add_argument("--log", type=Path, metavar="FILE", help="also write the kernel's log to FILE")
    parser.add_argument("--memory", type=cliargs.memory_mib, default=128, metavar="MIB",
                        help=f"guest RAM, 1 to {cliargs.MAX_MEMORY_MIB} (default: 128)")
    parser.add_argument("--audit", action="store_true",
                        help="check every process's page table at every return to user mode (kernel pages, "
                             "page-table pages, shared writable pages, ownership, freed pages); stop at the first "
                             "isolation violation (exit status 9)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="start the timer at a phase derived from N (default 0: no offset), and derive the "
                             "TSC offset and rdrand/rdseed numbers from it; the same seed gives the same run, "
                             "another seed shows timing-dependent behaviour")
    parser.add_argument("--keys", action="append", default=[], type=cliargs.key_script, metavar="[TIME:]KEYS",
                        help="type KEYS at virtual TIME (seconds, or 250ms; default 0), e.g. --keys 0.5:q or "
                             "--keys '1s:<ctrl-c>'; named keys: <enter> <esc> <up> <down> <left> <right> <tab> "
                             "<backspace> <f1>..<f10> <ctrl-a>..<ctrl-z>; repeatable")
    parser.add_argument("--screen", type=Path, metavar="FILE",
                        help="when the run stops, save the screen to FILE: .txt, .ansi, .html or .png")
    parser.add_argument("--save-snapshot", type=Path, metavar="FILE",
                        help="when the run stops, save CPU, RAM and devices to FILE")
    parser.add_argument("--load-snapshot", type=Path, metavar="FILE",
                        help="resume from a snapshot taken with the same kernel instead of booting afresh")


class _VersionAction(argparse.Action):
    """--version: the harness's version and which engine runs, with which patches (engine.py)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from ..pc import engine

        print(f"{parser.prog} {__version__}")
        try:
            print(engine.require().summary(engine.switched_off_from_environment()))
        except HarnessError as error:
            parser.exit(ExitCode.HARNESS_ERROR, f"harness: error: {error}\n")
        parser.exit()


COMMAND_HELP = {
    "boot": "boot WeensyOS running the named program(s)",
    "trace": "run a program and trace the kernel's system calls, faults and interrupts",
    "trace-diff": "show where two JSONL traces first differ",
    "bench": "measure the harness's speed against QEMU on the same disk images",
    "check": "run named checks of a kernel's properties (PASS/FAIL/N/A each, for students and graders)",
    "build": "build WeensyOS (kernel and programs) into the build directory",
}


def requested_command(argv: list[str]) -> str | None:
    """The command named on the command line, if it is one (the top-level options take no value, so it is the
    first word that is not an option)."""
    word = next((word for word in argv if not word.startswith("-")), None)
    return word if word in COMMAND_HELP else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, that command's options in full and the others by name and help
    alone (what `--help` and a misspelt command list), so that parsing a `boot` imports nothing of `check`."""
    parser = cliargs.Parser(
        prog="python -m harness",
        description="Boot, run, trace and test a compiled x86-64 WeensyOS on an emulated PC (Unicorn).")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the harness's version and the engine that runs (Unicorn and our patches)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMAND_HELP.items():
        if only is None or name == only:
            SUBPARSERS[name](commands, text)
        else:
            commands.add_parser(name, help=text)
    return parser


def _add_boot_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    boot = commands.add_parser(
        "boot", help=text, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot the kernel with a command line naming the program(s) to start, e.g. `boot hello` "
                    "or `boot fault hello`. Every program of the build directory is passed to the kernel "
                    "as a multiboot module.")
    _add_run_options(boot)
    boot.add_argument("--headless", action="store_true",
                      help="no live console: run to the end and print the final screen as text (automatic when "
                           "standard input or output is not a terminal)")
    boot.add_argument("--no-keep-screen", action="store_true",
                      help="the live console leaves nothing behind when it ends (by default the guest's final "
                           "screen stays in the terminal, above the summary line)")
    boot.add_argument("--quiet", "-q", action="store_true", help="print only the screen (no summary line)")
    boot.add_argument("--gdb", type=cliargs.tcp_port, metavar="PORT",
                      help="wait for gdb on PORT (0: any free port) before running: `gdb build/kernel` then "
                           "`target remote :PORT`")


def _add_trace_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    from ..observe.traceformat import FILTERS

    trace = commands.add_parser(
        "trace", help=text, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot like `boot --headless` and print every system call (decoded, with its result and "
                    "virtual duration), page fault (explained), interrupt, context switch and process event.")
    _add_run_options(trace)
    trace.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the trace to FILE (default: stdout)")
    trace.add_argument("--format", choices=("strace", "jsonl", "perfetto"), default="strace",
                       help="strace-like text (default), JSON lines, or Perfetto/Chrome trace JSON")
    trace.add_argument("--summary", action="store_true",
                       help="print a table of system calls (calls, errors, virtual time) instead of events; "
                            "with --format jsonl, as JSON")
    trace.add_argument("--filter", type=_filters, metavar="TYPES",
                       help=f"only these event types (comma-separated): {', '.join(FILTERS)}")
    trace.add_argument("--pid", type=cliargs.pid_number, metavar="N", help="only events of process N")


def _add_trace_diff_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    diff = commands.add_parser("trace-diff", help=text)
    diff.add_argument("first", type=Path, metavar="A.jsonl")
    diff.add_argument("second", type=Path, metavar="B.jsonl")
    diff.add_argument("--context", type=cliargs.count, default=3, metavar="N",
                      help="events shown before the difference")


def _add_bench_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    bench = commands.add_parser("bench", help=text)
    bench.add_argument("--repeat", type=_positive_int, default=3, metavar="N", help="runs per row (default: 3)")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--no-qemu", action="store_true", help="measure the harness only")
    bench.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    bench.add_argument("--cpu-time", action="store_true",
                       help="time the workloads in CPU time (each machine's process) instead of wall time: "
                            "far less sensitive to a shared machine's load")
    bench.add_argument("--from-json", type=Path, metavar="FILE",
                       help="measure nothing: show the results saved in FILE (by --json)")


def _add_check_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    from .check import command as check_command

    check_command.add_parser(commands, EPILOG, text)


def _add_build_parser(commands: argparse._SubParsersAction, text: str) -> None:  # type: ignore[type-arg]
    build = commands.add_parser("build", help=text)
    build.add_argument("--build-dir", type=Path, metavar="DIR", help="where to build")
    build.add_argument("--force", action="store_true", help="rebuild everything")


SUBPARSERS = {"boot": _add_boot_parser, "trace": _add_trace_parser, "trace-diff": _add_trace_diff_parser,
              "bench": _add_bench_parser, "check": _add_check_parser, "build": _add_build_parser}
