"""The command line's outputs when they fail: a full disk, a closed pipe, a file that cannot be written.

A reader that goes away (`trace ... | head`) is not an error: the run goes on to its end and the exit status is
still the guest's. Any other failure to write is one line naming the output (a HarnessError).

Either way standard output is then pointed at /dev/null: what sys.stdout still buffers would otherwise be flushed
again when the interpreter exits, fail again, and turn the documented exit status into Python's 120 with an
"Exception ignored" message (unless PYTHONUNBUFFERED happens to be set).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ..pc.errors import HarnessError
from ..pc.events import Event


def stdout_is_terminal() -> bool:
    """Whether `boot` can show the live console: both ends of the session are a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def discard_stdout() -> None:
    """Send standard output to /dev/null from now on, what is still buffered included, without another error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _write_failed(where: Path | str, error: OSError, to_stdout: bool) -> HarnessError:
    if to_stdout:
        discard_stdout()
    return HarnessError(f"cannot write the trace to {where}: {error.strerror}")


@contextlib.contextmanager
def stdout_may_close() -> Iterator[None]:
    """Stop writing to standard output once its reader is gone, without an error, and carry on."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()


def open_output(path: Path | None) -> TextIO:
    if path is None:
        return sys.stdout
    try:
        return open(path, "w")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise HarnessError(f"cannot write the trace to {path}: {e.strerror}") from None


def guarded_sink(sink: Callable[[Event], None], output: Path | None) -> Callable[[Event], None]:
    """`sink`, but a closed pipe silences it and any other write error is one line naming the output."""
    closed: list[bool] = []

    def guarded(event: Event) -> None:
        if closed:
            return
        try:
            sink(event)
        except BrokenPipeError:
            closed.append(True)
            with stdout_may_close():
                raise
        except OSError as e:
            raise _write_failed(output or "standard output", e, output is None) from None

    return guarded


@contextlib.contextmanager
def writing_trace(out: TextIO, output: Path | None) -> Iterator[None]:
    """Write the end of a trace to `out` and close it; a failure is one line naming the output."""
    where = output or "standard output"
    try:
        with stdout_may_close():
            yield
    except OSError as e:
        raise _write_failed(where, e, out is sys.stdout) from None
    finally:
        try:
            if out is not sys.stdout:
                out.close()
            else:
                with stdout_may_close():
                    out.flush()
        except OSError as e:
            raise _write_failed(where, e, out is sys.stdout) from None
