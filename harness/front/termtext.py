"""Guest text made safe for a terminal: control characters shown as escapes, as strace shows strings.

The guest's log lines (a panic message, anything a user program passes to the kernel's log) and its console text
reach the user's terminal in summaries, diagnoses and traces. Printed raw, an ESC sequence from a hostile or
buggy guest could retitle, reset or overwrite the terminal. Every control character except the newline that ends
a line becomes a visible escape (`\\x1b`, `\\r`, `\\t`): the text stays readable and can no longer command the
terminal. A backslash is left alone (it commands nothing), so ordinary text reads as it was written.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escape_for_terminal(text: str) -> str:
    """`text` with every control character but the newline made visible (`\\x1b[2J` prints as text)."""
    return _CONTROL.sub(_escape, text)
