"""The command line: `boot`, `trace`, `trace-diff`, `bench`, `check` and `build`.

Size: one argument parser and one short handler per command; the run's work lives in the layers below.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__, project
from ..api import boot_machine
from ..machine import Machine, MachineConfig, Stop, StopKind
from ..observe.syscalls import choose_table
from ..pc.diskimage import open_image
from ..pc.errors import ExitCode, HarnessError, exit_status_epilog
from ..pc.keys import ScheduledKeys
from ..pc.loader import read_elf
from . import cliargs
from .cliio import guarded_sink, open_output, stdout_is_terminal, stdout_may_close, writing_trace
from .imagekernel import symbols_for_image
from .termtext import escape_for_terminal

# Imported where used, not here: a command pays only for its own modules (a `boot` starts in a fraction of the
# time without the checker, the trace formats, the diagnosis's DWARF reader and the screenshot renderer), and
# tests/test_startup.py holds `boot` to that.
if TYPE_CHECKING:
    from ..pc.events import Event
    from .liveconsole import LiveConsole

EXIT_FOR_STOP = {
    StopKind.POWER_OFF: ExitCode.OK,
    StopKind.TICKS: ExitCode.OK,
    StopKind.UNTIL: ExitCode.OK,
    StopKind.PAUSED: ExitCode.OK,
    StopKind.PANIC: ExitCode.PANIC,
    StopKind.TRIPLE_FAULT: ExitCode.TRIPLE_FAULT,
    StopKind.BUDGET: ExitCode.BUDGET,
    StopKind.MACHINE_FAULT: ExitCode.MACHINE_FAULT,
    StopKind.HANG: ExitCode.HANG,
    StopKind.RESET: ExitCode.RESET,
    StopKind.ISOLATION: ExitCode.ISOLATION,
    StopKind.STORM: ExitCode.STORM,
    StopKind.WALL: ExitCode.WALL,
    StopKind.BREAKPOINT: ExitCode.OK,
}

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


def command_build(args: argparse.Namespace) -> int:
    source = project.default_source_dir()
    if source is None:
        raise HarnessError("no weensyos-src/ next to the harness: build needs a checkout of the repository")
    build_dir = (args.build_dir or project.default_build_dir()).resolve()
    if args.force:
        import subprocess

        subprocess.run(["make", "-C", str(source), f"BUILD={build_dir}", "clean"], capture_output=True)
    changed = project.build(source, build_dir)
    print(f"WeensyOS {'built' if changed else 'is up to date'} in {build_dir}")
    return ExitCode.OK


class Session:
    """A booted machine for the CLI: the kernel, programs and syscall table resolved from the options."""

    def __init__(self, args: argparse.Namespace) -> None:
        overrides = {}
        for spec in args.program:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise HarnessError(f"--program wants NAME=ELF, got {spec!r}")
            overrides[name] = Path(path)
        build_dir = (args.build_dir or project.default_build_dir()).resolve()
        source = project.default_source_dir()
        if not args.no_build and args.kernel is None and args.disk is None and source is not None and \
                project.ours_to_build(build_dir):  # never a build the user made
            project.build(source, build_dir)
        tree = project.BuildTree(build_dir)
        self.args = args
        if args.disk is not None:
            self._boot_disk(args, tree)
            return
        kernel_path = args.kernel or tree.kernel
        if args.kernel is None and not kernel_path.exists():
            raise HarnessError(f"no kernel at {kernel_path}: run `python -m harness build` first")
        self.programs = tree.programs() | overrides
        words = " ".join(args.programs).split()
        if words and args.command_line is not None:
            raise HarnessError("give PROGRAMs or --command, not both")
        command_line: str | None = " ".join(words) if words else args.command_line
        if command_line is None and args.kernel is None:
            words, command_line = ["hello"], "hello"  # the build's kernel takes its programs as modules
        if args.kernel is None and args.command_line is None:
            commands, options = tree.commands(), tree.options()
            unknown = [word for word in words
                       if word not in self.programs and word not in commands and word not in options]
            if unknown:
                available = ", ".join([*self.programs, *commands]) or "none"
                if options:
                    available += f"; options: {', '.join(options)}"
                raise HarnessError(f"unknown program '{unknown[0]}' (available: {available})")
        self.machine: Machine = boot_machine(kernel_path, command_line, self.programs,
                                             MachineConfig(ram_size=args.memory << 20, seed=args.seed))
        self.syscalls = choose_table(self.machine.kernel_image, args.syscalls, tree.syscall_table)
        self._schedule_keys(args)

    def _boot_disk(self, args: argparse.Namespace, tree: project.BuildTree) -> None:
        if args.programs or args.command_line is not None:
            raise HarnessError("with --disk the command to run is written in the image; give no PROGRAM or --command")
        image = open_image(args.disk)
        kernel = read_elf(args.kernel, "kernel") if args.kernel is not None else symbols_for_image(image, tree)
        self.programs = tree.programs()
        self.machine = Machine(MachineConfig(ram_size=args.memory << 20, seed=args.seed))
        self.machine.boot_disk(image, kernel, label=f"disk image {args.disk}")
        self.syscalls = choose_table(self.machine.kernel_image, args.syscalls, tree.syscall_table)
        if kernel is None:
            print(f"harness: note: the kernel in {args.disk} has no symbols, so events cannot name processes or "
                  f"functions: give its ELF with --kernel (e.g. the build's kernel)", file=sys.stderr)
        self.machine.programs = dict(self.programs)
        self._schedule_keys(args)

    def _schedule_keys(self, args: argparse.Namespace) -> None:
        scheduled: ScheduledKeys
        for scheduled in args.keys:
            self.machine.type_keys(scheduled.codes, at_ns=scheduled.time_ns)
        if args.screen is None:
            return
        from .screenshot import SUPPORTED_EXTENSIONS

        if args.screen.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise HarnessError(f"--screen {args.screen}: unknown format (use one of "
                               f"{', '.join(SUPPORTED_EXTENSIONS)})")

    def enable_audit(self) -> None:
        if self.args.audit:
            try:
                self.machine.enable_audit()
            except RuntimeError as e:
                raise HarnessError(f"--audit: {e}") from None

    def resume(self) -> None:
        """Apply --load-snapshot (after tracing is set up, so that the trace state is restored too)."""
        if self.args.load_snapshot is not None:
            self.machine.load_snapshot(self.args.load_snapshot)

    def run(self, console: LiveConsole | None = None) -> Stop:
        args, machine = self.args, self.machine
        log_file = None
        try:
            if args.log:
                try:
                    log_file = open(args.log, "wb")  # noqa: SIM115 - closed in finally, after the run
                    machine.log.attach_sink(log_file)  # a resumed run's file starts with the lines before
                except OSError as e:
                    raise HarnessError(f"cannot write the log to {args.log}: {e.strerror}") from None
            budget = int(args.max_time * 1e9)
            if console is not None:
                stop = console.run(ticks=args.ticks, max_time_ns=budget if args.max_time_given else None,
                                   until=args.until)
            else:
                stop = machine.run(ticks=args.ticks, max_time_ns=budget, until=args.until, max_wall_s=args.max_wall)
            if args.save_snapshot is not None:
                machine.save_snapshot(args.save_snapshot)
            if args.screen is not None:
                from .screenshot import save_screen

                save_screen(args.screen, machine.console.cells(), machine.console.cursor()
                            if machine.console.cursor_visible() else None)
            return stop
        finally:
            try:
                machine.log.flush()
                if log_file:
                    log_file.close()
            except OSError as e:
                raise HarnessError(f"cannot write the log to {args.log}: {e.strerror}") from None

    def report(self, stop: Stop, quiet: bool = False) -> int:
        if stop.ok:
            if not quiet:
                from ..observe.diagnosis import summary

                print(escape_for_terminal(f"harness: {summary(self.machine, stop)}"), file=sys.stderr)
        else:
            from ..observe.diagnosis import diagnose

            print(escape_for_terminal(f"harness: {diagnose(self.machine, stop, self.syscalls)}"), file=sys.stderr)
        if not quiet:
            for note in self.notes(stop):
                print(f"harness: {note}", file=sys.stderr)
        return EXIT_FOR_STOP[stop.kind]

    def notes(self, stop: Stop) -> list[str]:
        """What the user asked for that the run did not do, or did without showing it."""
        notes = []
        late = [keys for keys in self.args.keys if keys.time_ns > stop.time_ns]
        if late:
            first = min(keys.time_ns for keys in late)
            notes.append(f"note: {len(late)} --keys not typed: the first was due at {first / 1e9:g} s, and the run "
                         f"ended at {stop.time_ns / 1e9:.6f} s")
        auditor = self.machine.auditor
        if auditor is not None and stop.kind is not StopKind.ISOLATION:
            notes.append(f"audit: {auditor.audits} checks of every process's page table (at each return to user "
                         f"mode): no kernel, page-table or free page user-accessible, no page writable in two "
                         f"processes, every user page owned by its process")
        return notes


def command_boot(args: argparse.Namespace) -> int:
    session = Session(args)
    session.enable_audit()
    session.resume()
    if args.gdb is not None:
        from .gdbstub import GdbStub

        try:
            stub = GdbStub(session.machine, args.gdb,
                           announce=lambda text: print(text, file=sys.stderr, flush=True))
        except OSError as e:
            raise HarnessError(f"--gdb {args.gdb}: cannot listen on 127.0.0.1:{args.gdb} ({e.strerror})") from None
        stop = stub.serve()
        if not stub.detached:
            print(session.machine.screen_text())
            if stop is None or stop.kind is StopKind.BREAKPOINT:
                print("harness: gdb ended the session", file=sys.stderr)
                return ExitCode.OK
            return session.report(stop, args.quiet)
    if not args.headless and stdout_is_terminal():
        import signal

        from .liveconsole import LiveConsole

        console = LiveConsole(session.machine, keep_screen=not args.no_keep_screen)
        stop = session.run(console)
        if console.quit_by_user:
            print(f"harness: quit at {stop.time_ns / 1e9:.6f} s virtual time", file=sys.stderr)
            return ExitCode.OK
        if console.terminated_by is not None:
            print(f"harness: {stop.message} at {stop.time_ns / 1e9:.6f} s virtual time", file=sys.stderr)
            return 128 + getattr(signal, console.terminated_by, signal.SIGTERM)
        return session.report(stop, args.quiet)
    stop = session.run()
    with stdout_may_close():
        print(session.machine.screen_text())
    return session.report(stop, args.quiet)


def command_trace(args: argparse.Namespace) -> int:
    import json

    from ..observe.traceformat import PerfettoWriter, jsonl_record, selected, strace_lines, summary_json, summary_table
    from ..observe.traceformat import summary as syscall_summary

    session = Session(args)
    machine = session.machine
    machine.enable_tracing(session.syscalls, session.programs)
    session.enable_audit()
    session.resume()
    tracer = machine.tracer
    out = open_output(args.output)
    finished: list[Event] = []
    perfetto = PerfettoWriter(tracer) if args.format == "perfetto" else None

    def sink(event: Event) -> None:
        if not selected(event, args.filter, args.pid):
            return
        if args.summary:
            finished.append(event)
        elif perfetto is not None:
            perfetto.add(event)
        elif args.format == "jsonl":
            out.write(json.dumps(jsonl_record(tracer, event)) + "\n")
        else:
            lines = strace_lines(tracer, event)
            if lines:
                out.write(escape_for_terminal("\n".join(lines)) + "\n")

    machine.events.attach(guarded_sink(sink, args.output))
    with writing_trace(out, args.output):
        stop = session.run()
        machine.tracer.finish()  # a trace ends with the run, even when the machine could go on
        if args.summary:
            stats = syscall_summary(tracer, finished)
            if args.format == "jsonl":
                out.write(json.dumps(summary_json(stats)) + "\n")
            else:
                out.write(summary_table(stats) + "\n")
        elif perfetto is not None:
            perfetto.write(out)
    if args.pid is not None and args.pid not in tracer.seen_pids:
        print(f"harness: note: no process {args.pid} ran (pids: "
              f"{', '.join(map(str, sorted(tracer.seen_pids))) or 'none'}); the trace has no event", file=sys.stderr)
    return session.report(stop)


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    import json

    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise HarnessError(f"no such trace: {path}") from None
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: not a JSONL trace ({e})") from None


def command_trace_diff(args: argparse.Namespace) -> int:
    import json

    from ..observe.traceformat import first_divergence

    a, b = _read_jsonl(args.first), _read_jsonl(args.second)
    index = first_divergence(a, b)
    if index is None:
        print(f"identical: {len(a)} events")
        return 0
    print(f"traces diverge at event {index} (of {len(a)} and {len(b)}):")
    for record in a[max(0, index - args.context):index]:
        print(f"  = {json.dumps(record)}")
    print(f"  - {json.dumps(a[index]) if index < len(a) else '(end of trace)'}")
    print(f"  + {json.dumps(b[index]) if index < len(b) else '(end of trace)'}")
    return 1


def command_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.from_json is not None:
        return bench.show_saved(args.from_json, args.markdown)
    return bench.main(args.repeat, args.json, not args.no_qemu, args.markdown, args.cpu_time)


def command_check(args: argparse.Namespace) -> int:
    from .check import command as check_command

    return check_command.command_check(args)


def main(argv: list[str] | None = None) -> int:
    words = cliargs.join_dashed_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser(requested_command(words))
    args = parser.parse_args(words)
    cliargs.check_combinations(parser, args)
    if getattr(args, "programs", None) is not None:
        args.max_time_given = args.max_time is not None
        args.max_time = args.max_time if args.max_time is not None else 30.0
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    handlers = {"build": command_build, "boot": command_boot, "trace": command_trace,
                "trace-diff": command_trace_diff, "bench": command_bench,
                "check": command_check}
    try:
        return handlers[args.command](args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return ExitCode.HARNESS_ERROR
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return ExitCode.OK
    except OSError as error:  # a file or device the harness could not use, not a bug: one line
        where = f"{error.filename}: " if error.filename else ""
        print(f"harness: error: {where}{error.strerror or error}", file=sys.stderr)
        return ExitCode.HARNESS_ERROR
    except Exception as error:  # a bug of ours: still one line, the traceback when asked for
        if os.environ.get("WEENSY_TRACEBACK"):
            raise
        print(f"harness: internal error: {type(error).__name__}: {error} (WEENSY_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return ExitCode.HARNESS_ERROR
