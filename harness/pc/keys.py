"""Keys for the guest keyboard: scripted key sequences (`--keys`) and terminal input, as scan code set 1.

A script is `[TIME:]TEXT`: TIME is virtual time (`0.5`, `0.5s`, `250ms`; default 0, right at boot) and TEXT
is typed literally, except `<name>` for a named key (`<enter>`, `<esc>`, `<up>`, `<ctrl-c>`, `<f1>`, ... see
NAMED_KEYS) and `<<` for a literal `<`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from .devices.keyboard import scancodes_for_text
from .errors import HarnessError

EXTENDED = 0xE0
BREAK = 0x80


def _press(code: int, extended: bool = False) -> bytes:
    prefix = bytes((EXTENDED,)) if extended else b""
    return prefix + bytes((code,)) + prefix + bytes((code | BREAK,))


NAMED_KEYS: dict[str, bytes] = {
    "enter": _press(0x1C), "esc": _press(0x01), "tab": _press(0x0F), "backspace": _press(0x0E),
    "space": _press(0x39),
    "up": _press(0x48, True), "down": _press(0x50, True), "left": _press(0x4B, True), "right": _press(0x4D, True),
    "home": _press(0x47, True), "end": _press(0x4F, True), "pgup": _press(0x49, True), "pgdn": _press(0x51, True),
    "insert": _press(0x52, True), "delete": _press(0x53, True),
    **{f"f{n}": _press(0x3A + n) for n in range(1, 11)},
}
_TIME = re.compile(r"^(-?)(\d+(?:\.\d*)?|\.\d+)(s|ms)?:")
_TOKEN = re.compile(r"<<|<([a-z0-9-]+)>")


def key_bytes(name: str) -> bytes:
    """Scan codes for a named key, or `ctrl-<letter>`."""
    if name in NAMED_KEYS:
        return NAMED_KEYS[name]
    if name.startswith("ctrl-") and len(name) == 6 and name[5].isalpha():
        return scancodes_for_text(chr(ord(name[5]) - ord("a") + 1))
    raise HarnessError(f"unknown key <{name}> (named keys: {', '.join(sorted(NAMED_KEYS))}, ctrl-a..ctrl-z)")


def text_to_scancodes(text: str) -> bytes:
    out = bytearray()
    at = 0
    for match in _TOKEN.finditer(text):
        out += _literal(text[at:match.start()])
        out += _literal("<") if match.group(0) == "<<" else key_bytes(match.group(1))
        at = match.end()
    out += _literal(text[at:])
    return bytes(out)


def _literal(text: str) -> bytes:
    try:
        return scancodes_for_text(text.replace("\\n", "\n"))
    except ValueError as e:
        raise HarnessError(str(e)) from None


@dataclass(frozen=True, slots=True)
class ScheduledKeys:
    time_ns: int
    codes: bytes
    text: str


def parse_key_script(spec: str) -> ScheduledKeys:
    """`--keys` argument -> when to type what."""
    match = _TIME.match(spec)
    time_ns = 0
    text = spec
    if match:
        if match.group(1):
            raise HarnessError(f"{spec!r}: the time cannot be negative (virtual time starts at 0)")
        value = float(match.group(2))
        time_ns = int(value * (1e6 if match.group(3) == "ms" else 1e9))
        text = spec[match.end():]
    if not text:
        raise HarnessError(f"{spec!r}: no keys to type after the time")
    return ScheduledKeys(time_ns, text_to_scancodes(text), text)


# -- terminal input -------------------------------------------------------------------------------------------
_ESCAPES = {b"[A": "up", b"[B": "down", b"[C": "right", b"[D": "left", b"[H": "home", b"[F": "end",
            b"OH": "home", b"OF": "end", b"[5~": "pgup", b"[6~": "pgdn", b"[2~": "insert", b"[3~": "delete",
            b"OP": "f1", b"OQ": "f2", b"OR": "f3", b"OS": "f4", b"[15~": "f5", b"[17~": "f6", b"[18~": "f7",
            b"[19~": "f8", b"[20~": "f9", b"[21~": "f10"}


def terminal_to_scancodes(data: bytes) -> bytes:
    """Bytes read from a raw-mode terminal -> scan codes (ANSI escape sequences become arrows, F-keys...)."""
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x1B and i + 1 < len(data):
            for sequence, name in _ESCAPES.items():
                if data.startswith(sequence, i + 1):
                    out += NAMED_KEYS[name]
                    i += 1 + len(sequence)
                    break
            else:
                out += NAMED_KEYS["esc"]
                i += 1
            continue
        if byte in (0x0D, 0x0A):
            out += NAMED_KEYS["enter"]
        elif byte == 0x7F:
            out += NAMED_KEYS["backspace"]
        else:
            with contextlib.suppress(ValueError):  # a byte with no key on a US keyboard: nothing to type
                out += scancodes_for_text(chr(byte))
        i += 1
    return bytes(out)
