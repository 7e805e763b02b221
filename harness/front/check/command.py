"""`python -m harness check KERNEL...`: its options and its handler (cli.py wires them in)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ... import project
from ...pc.errors import ExitCode
from .checks import CHECK_NAMES, CHECKS, Runs, Status, Verdict
from .report import save_failed_screens, text_lines, write_junit, write_results
from .target import resolve


def _check_name(text: str) -> str:
    if text not in CHECK_NAMES:
        raise argparse.ArgumentTypeError(f"unknown check {text!r} (checks: {', '.join(CHECK_NAMES)})")
    return text


def add_parser(commands: argparse._SubParsersAction, epilog: str, help_text: str) -> None:  # type: ignore[type-arg]
    width = max(len(check.name) for check in CHECKS) + 2
    listing = "\n".join(f"  {check.name:<{width}}{check.doc.replace('`', '')}" for check in CHECKS)
    check = commands.add_parser(
        "check", help=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"checks:\n{listing}\n\n{epilog}",
        description="Boot each KERNEL (a kernel ELF with the programs of its directory, a build directory, or a "
                    "disk image) and run the checks, each from outside the kernel (page tables, the kernel's "
                    "own ptable and physpages through its DWARF, the log, the CPU).")
    check.add_argument("kernels", nargs="*", type=Path, metavar="KERNEL",
                       help="a kernel ELF, a build directory or a disk image")
    check.add_argument("--only", type=_check_name, action="append", metavar="NAME",
                       help="run only this check (repeatable)")
    check.add_argument("--junit", type=Path, metavar="FILE", help="also write the verdicts as JUnit XML")
    check.add_argument("--screens", type=Path, metavar="DIR",
                       help="save the screen of each failed check's run as DIR/TARGET-CHECK.png")
    check.add_argument("--results", type=Path, metavar="FILE",
                       help="also write Gradescope's results.json (a PASS scores 1 of 1, a FAIL 0 of 1, an N/A "
                            "0 of 0)")
    many = check.add_argument_group("many submissions (on Dask distributed)")
    many.add_argument("--submissions", type=Path, metavar="DIR",
                      help="grade every folder of DIR (one submission each: a build directory, a kernel ELF or a "
                           "disk image) on a Dask cluster; needs --out")
    many.add_argument("--out", type=Path, metavar="OUT",
                      help="with --submissions: OUT/NAME/results.json (Gradescope) and the failed checks' screens "
                           "for each submission, OUT/summary.csv and OUT/summary.html")
    many.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                      help="grade on this Dask scheduler's workers (default: an embedded local cluster)")
    many.add_argument("--workers", type=positive_count, metavar="N",
                      help="worker processes of the embedded local cluster (default: this machine's cores)")


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a number of workers: {value} (at least 1)")
    return value


def command_check(args: argparse.Namespace) -> int:
    if args.submissions is not None:
        from .many import command_submissions  # Dask is loaded only when asked for

        return command_submissions(args)
    build = project.BuildTree(project.default_build_dir())
    targets = [resolve(path, build) for path in args.kernels]  # every bad argument before any run
    selected = [check for check in CHECKS if not args.only or check.name in args.only]
    results: list[tuple[str, list[Verdict]]] = []
    for target in targets:
        runs = Runs(target)
        verdicts = [check.run(runs) for check in selected]
        results.append((target.label, verdicts))
        print("\n".join(text_lines(target.label, verdicts)), flush=True)
    if args.screens is not None:
        save_failed_screens(args.screens, results)
    if args.junit is not None:
        write_junit(args.junit, results)
    if args.results is not None:
        write_results(args.results, results)
    statuses = {v.status for _, verdicts in results for v in verdicts}
    if Status.FAIL in statuses:
        return ExitCode.CHECK_FAILED
    if Status.NA in statuses:
        return ExitCode.CHECK_NOT_APPLICABLE
    return ExitCode.OK

