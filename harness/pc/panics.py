"""Which log lines are a kernel's panic: ours, the course's, and a failed assertion in either's format.

The kernel's log (the parallel port) is where both kernels report that they stopped: `PANIC: ...` from a kernel
panic, `USER PANIC: ...` from a process's `panic()` or failed assertion, and, in the course's kernels, a failed
kernel assertion printed as `FILE:LINE: kernel assertion 'EXPR' failed` followed by a backtrace, without the
word PANIC (ours prints `PANIC: FILE:LINE: assertion 'EXPR' failed`). All of them end the run as a panic.
"""

from __future__ import annotations

import re

PANIC_PREFIXES = ("PANIC:", "USER PANIC:")
COURSE_ASSERTION = re.compile(r"\S+:\d+: kernel assertion '.*' failed")


def is_panic_line(line: str) -> bool:
    """True for a log line with which a kernel reports that it has stopped."""
    return line.startswith(PANIC_PREFIXES) or COURSE_ASSERTION.match(line) is not None
