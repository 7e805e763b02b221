"""The command line: `python -m harness boot PROGRAM...` and `python -m harness build`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from . import __version__, project
from .api import boot_machine
from .diagnosis import diagnose, summary
from .errors import ExitCode, HarnessError
from .machine import MachineConfig, StopKind
from .syscalls import SyscallTable

EXIT_FOR_STOP = {
    StopKind.POWER_OFF: ExitCode.OK,
    StopKind.TICKS: ExitCode.OK,
    StopKind.PANIC: ExitCode.PANIC,
    StopKind.TRIPLE_FAULT: ExitCode.TRIPLE_FAULT,
    StopKind.BUDGET: ExitCode.BUDGET,
    StopKind.MACHINE_FAULT: ExitCode.MACHINE_FAULT,
    StopKind.HANG: ExitCode.HANG,
    StopKind.RESET: ExitCode.RESET,
}

EPILOG = """\
exit status of boot:
  0  the guest powered off, or the requested --ticks were reached
  1  harness error (bad input file, unknown program, failed build)
  2  bad command-line usage
  3  kernel panic            4  triple fault           5  budget of virtual time exhausted
  6  access to memory that does not exist          7  CPU halted with nothing to wake it
  8  the guest asked for a reset
"""


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
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Boot, run and test a compiled x86-64 WeensyOS on an emulated PC (Unicorn).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    boot = commands.add_parser(
        "boot", help="boot WeensyOS running the named program(s)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Boot the kernel with a command line naming the program(s) to start, e.g. `boot hello` "
                    "or `boot fault hello`. Every program of the build directory is passed to the kernel "
                    "as a multiboot module.")
    boot.add_argument("programs", nargs="*", metavar="PROGRAM",
                      help="program(s) to start (the kernel's command line); default: hello")
    boot.add_argument("--headless", action="store_true",
                      help="no live console: run to the end and print the final screen as text")
    boot.add_argument("--ticks", type=_positive_int, metavar="N",
                      help="stop successfully after N timer ticks (10 ms each at the kernel's 100 Hz)")
    boot.add_argument("--max-time", type=_positive_float, default=30.0, metavar="SECONDS",
                      help="safety budget of virtual time; running out is a failure (default: 30)")
    boot.add_argument("--kernel", type=Path, metavar="ELF", help="boot this kernel instead of build/kernel")
    boot.add_argument("--program", action="append", default=[], metavar="NAME=ELF",
                      help="add or replace a program module (repeatable)")
    boot.add_argument("--build-dir", type=Path, metavar="DIR", help="where the kernel and programs are built")
    boot.add_argument("--no-build", action="store_true", help="do not rebuild WeensyOS when its build is stale")
    boot.add_argument("--log", type=Path, metavar="FILE", help="also write the kernel's log to FILE")
    boot.add_argument("--memory", type=_positive_int, default=128, metavar="MIB", help="guest RAM (default: 128)")
    boot.add_argument("--quiet", "-q", action="store_true", help="print only the screen (no summary line)")

    build = commands.add_parser("build", help="build WeensyOS (kernel and programs) into the build directory")
    build.add_argument("--build-dir", type=Path, metavar="DIR", help="where to build")
    build.add_argument("--force", action="store_true", help="rebuild even if nothing is stale")
    return parser


def _build_tree(args: argparse.Namespace, *, allow_build: bool) -> project.BuildTree:
    build_dir = (args.build_dir or project.default_build_dir()).resolve()
    source = project.default_source_dir()
    if allow_build and source is not None:
        project.build(source, build_dir)
    return project.BuildTree(build_dir)


def command_build(args: argparse.Namespace) -> int:
    source = project.default_source_dir()
    if source is None:
        raise HarnessError("no weensyos-src/ next to the harness: build needs a checkout of the repository")
    build_dir = (args.build_dir or project.default_build_dir()).resolve()
    if args.force:
        subprocess.run(["make", "-C", str(source), f"BUILD={build_dir}", "clean"], capture_output=True)
    changed = project.build(source, build_dir)
    print(f"WeensyOS {'built' if changed else 'is up to date'} in {build_dir}")
    return ExitCode.OK


def command_boot(args: argparse.Namespace) -> int:
    overrides = {}
    for spec in args.program:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HarnessError(f"--program wants NAME=ELF, got {spec!r}")
        overrides[name] = Path(path)
    tree = _build_tree(args, allow_build=not args.no_build and args.kernel is None)
    kernel_path = args.kernel or tree.kernel
    if args.kernel is None and not kernel_path.exists():
        raise HarnessError(f"no kernel at {kernel_path}: run `python -m harness build` first")
    programs = tree.programs() | overrides
    words = " ".join(args.programs).split() or ["hello"]
    if args.kernel is None:
        unknown = [word for word in words if word not in programs]
        if unknown:
            available = ", ".join(programs) or "none"
            raise HarnessError(f"unknown program '{unknown[0]}' (available: {available})")
    syscalls = SyscallTable.load(tree.syscall_table) if args.kernel is None else SyscallTable([])

    machine = boot_machine(kernel_path, " ".join(words), programs, MachineConfig(ram_size=args.memory << 20))
    log_file = None
    try:
        if args.log:
            try:
                log_file = open(args.log, "wb")  # noqa: SIM115 - closed in finally, after the run
            except OSError as e:
                raise HarnessError(f"cannot write the log to {args.log}: {e.strerror}") from None
            machine.log.sink = log_file
            log_file.write(bytes(machine.log.data))
        stop = machine.run(ticks=args.ticks, max_time_ns=int(args.max_time * 1e9))
    finally:
        machine.log.flush()
        if log_file:
            log_file.close()
    print(machine.screen_text())
    if stop.ok:
        if not args.quiet:
            print(f"harness: {summary(machine, stop)}", file=sys.stderr)
    else:
        print(f"harness: {diagnose(machine, stop, syscalls)}", file=sys.stderr)
    return EXIT_FOR_STOP[stop.kind]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        if args.command == "build":
            return command_build(args)
        return command_boot(args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return ExitCode.HARNESS_ERROR
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
