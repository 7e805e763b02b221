"""The command line: `boot`, `trace`, `trace-diff`, `bench`, `check` and `build`.

One short handler per command (the options are in cliparser.py); the run's work lives in the layers below.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import project
from ..api import boot_machine
from ..machine import Machine, MachineConfig, Stop, StopKind
from ..observe.syscalls import choose_table
from ..pc.diskimage import open_image
from ..pc.errors import ExitCode, HarnessError
from ..pc.keys import ScheduledKeys
from ..pc.loader import read_elf
from . import cliargs
from .cliio import guarded_sink, open_output, stdout_is_terminal, stdout_may_close, writing_trace
from .cliparser import build_parser, requested_command
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
