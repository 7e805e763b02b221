"""The command line run inside the test process, for tests about what a command does rather than about the process.

Starting `python -m harness` costs a fresh interpreter and the harness's imports (most of a short command's CPU
time); a test that checks a command's exit status, its standard output and its standard error gets the same from
`harness.front.cli.main(argv)` with both streams captured: `main` returns the exit status that `python -m harness`
passes to `sys.exit`, and argparse's usage errors (and `--help`) leave through SystemExit with theirs. A failure
that would print a traceback in a real process raises here and fails the test all the same.

Tests about the process itself stay real processes: exit at interpreter shutdown (buffered output to a full disk),
a reader that closes the pipe, signals, a terminal, the environment, and the README's transcripts.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

from harness.front.cli import main


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m harness ARGV` in this process: its exit status, standard output and standard error."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(list(argv))
        except SystemExit as exit:  # argparse: usage errors, --help, --version
            status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            if isinstance(exit.code, str):
                print(exit.code, file=stderr)
    return subprocess.CompletedProcess(["harness", *argv], status, stdout.getvalue(), stderr.getvalue())
