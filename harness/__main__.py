"""`python -m harness`: see harness.front.cli.

A command that ran to its end leaves at once (`os._exit`) once its output is flushed, instead of having the
interpreter take apart every module and the engine first: that teardown costs a boot about as much as its run
(~15 ms). Only where nothing is left to do at exit: a command that writes its files itself and closes them
(`boot`, `trace`, `trace-diff`), no other thread, no tracer or profiler that writes its results at exit
(coverage, `python -m cProfile -m harness`), no interactive prompt to come (`python -i`). Anything else, or an
output that cannot be flushed, exits as Python does, with the same status and messages as before.
"""

import os
import sys
import threading

from .front.cli import main
from .front.cliparser import requested_command

QUICK_EXIT_COMMANDS = ("boot", "trace", "trace-diff")


def _may_leave_at_once() -> bool:
    return (requested_command(sys.argv[1:]) in QUICK_EXIT_COMMANDS and threading.active_count() == 1
            and sys.gettrace() is None and sys.getprofile() is None and not sys.flags.inspect
            and not os.environ.get("PYTHONINSPECT"))


status = main()
if _may_leave_at_once():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # Python's own exit reports it, as it always did
    else:
        os._exit(int(status))
sys.exit(status)
