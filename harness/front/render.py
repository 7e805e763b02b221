"""Turning the CGA text screen into text for people: plain text, ANSI terminal text and a standalone HTML page.

The screen is what `CgaConsole.cells()` returns: rows of (character byte, attribute byte) pairs. An attribute
byte holds the foreground colour in bits 0-3 (bit 3 = bright), the background in bits 4-6 and, in bit 7, the
blink flag of VGA's default mode. Every renderer here draws blinking cells steadily but keeps the flag (SGR 5 in
ANSI, a CSS class in HTML), so a screenshot never depends on the moment it was taken.

These pieces are shared with the live terminal console, which is why `sgr_for_attribute` and the palette live
here rather than inside one output format. The PNG renderer is in `harness.front.screenshot`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from ..pc.devices.cga import CP437

Cells = Sequence[Sequence[tuple[int, int]]]
"""A text screen: rows of (character byte, attribute byte) pairs, as `CgaConsole.cells()` returns it."""

RGB = tuple[int, int, int]

# The 16 colours of the CGA/VGA text-mode palette, indexed by the 4-bit colour number of an attribute.
PALETTE: tuple[RGB, ...] = (
    (0x00, 0x00, 0x00),  # 0 black
    (0x00, 0x00, 0xAA),  # 1 blue
    (0x00, 0xAA, 0x00),  # 2 green
    (0x00, 0xAA, 0xAA),  # 3 cyan
    (0xAA, 0x00, 0x00),  # 4 red
    (0xAA, 0x00, 0xAA),  # 5 magenta
    (0xAA, 0x55, 0x00),  # 6 brown
    (0xAA, 0xAA, 0xAA),  # 7 light grey
    (0x55, 0x55, 0x55),  # 8 dark grey
    (0x55, 0x55, 0xFF),  # 9 light blue
    (0x55, 0xFF, 0x55),  # 10 light green
    (0x55, 0xFF, 0xFF),  # 11 light cyan
    (0xFF, 0x55, 0x55),  # 12 light red
    (0xFF, 0x55, 0xFF),  # 13 light magenta
    (0xFF, 0xFF, 0x55),  # 14 yellow
    (0xFF, 0xFF, 0xFF),  # 15 white
)

TRUECOLOR = True
"""Whether `sgr_for_attribute` emits exact 24-bit colours (True) or the 16 standard ANSI colours (False).

Truecolour reproduces the palette exactly on modern terminals; the 16-colour codes suit terminals without it
(and the terminal's own theme then decides the shades)."""

SGR_RESET = "\x1b[0m"
SGR_BLINK = 5
SGR_UNDERLINE = 4  # how ANSI text marks the cursor cell, like the underline cursor of the PNG

# CGA numbers colours blue=1, green=2, red=4; ANSI numbers them red=1, green=2, blue=4.
_ANSI_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)


@dataclass(frozen=True)
class Attribute:
    """An attribute byte taken apart: foreground 0-15, background 0-7, and the blink flag."""

    foreground: int
    background: int
    blink: bool

    @classmethod
    def decode(cls, attr: int) -> Attribute:
        return cls(foreground=attr & 0x0F, background=(attr >> 4) & 0x07, blink=bool(attr & 0x80))


@dataclass(frozen=True)
class Run:
    """Consecutive cells of one row that share an attribute (and are all, or all not, the cursor cell)."""

    column: int
    text: str
    attr: int
    cursor: bool


def hex_colour(index: int) -> str:
    """A palette entry as a CSS colour, e.g. 1 -> '#0000aa'."""
    r, g, b = PALETTE[index]
    return f"#{r:02x}{g:02x}{b:02x}"


def cursor_position(cells: Cells, cursor: int | None) -> tuple[int, int] | None:
    """The (row, column) of cursor cell index `cursor`, or None when it is hidden or off the screen."""
    if cursor is None or not cells or cursor < 0:
        return None
    row, column = divmod(cursor, len(cells[0]))
    return (row, column) if row < len(cells) else None


def row_runs(row: Sequence[tuple[int, int]], cursor_column: int | None = None) -> list[Run]:
    """One row split into runs of equal attribute, decoded as code page 437; the cursor cell is a run of its own."""
    runs: list[Run] = []
    start = 0
    chars: list[str] = []
    key: tuple[int, bool] | None = None
    for column, (char, attr) in enumerate(row):
        cell_key = (attr, column == cursor_column)
        if cell_key != key:
            if key is not None:
                runs.append(Run(start, "".join(chars), key[0], key[1]))
            start, chars, key = column, [], cell_key
        chars.append(CP437[char])
    if key is not None:
        runs.append(Run(start, "".join(chars), key[0], key[1]))
    return runs


# --- plain text -------------------------------------------------------------------------------------------


def text_frame(cells: Cells) -> str:
    """The characters on screen: rows joined by \\n, trailing spaces of each row and trailing empty rows dropped."""
    lines = ["".join(CP437[char] for char, _ in row).rstrip(" ") for row in cells]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# --- ANSI terminal text -----------------------------------------------------------------------------------


def sgr_for_attribute(attr: int, *, truecolor: bool | None = None) -> str:
    """The ANSI escape that selects exactly this attribute's colours (and blink), starting from a reset.

    The leading 0 makes every escape self-contained: whatever the previous cell set (blink, underline), this
    one leaves only what `attr` asks for. `truecolor` overrides the module-level `TRUECOLOR` switch.
    """
    a = Attribute.decode(attr)
    use_truecolor = TRUECOLOR if truecolor is None else truecolor
    params = ["0"]
    if use_truecolor:
        params.append("38;2;{};{};{}".format(*PALETTE[a.foreground]))
        params.append("48;2;{};{};{}".format(*PALETTE[a.background]))
    else:
        bright = a.foreground & 0x08
        params.append(str((90 if bright else 30) + _ANSI_ORDER[a.foreground & 0x07]))
        params.append(str(40 + _ANSI_ORDER[a.background]))
    if a.blink:
        params.append(str(SGR_BLINK))
    return f"\x1b[{';'.join(params)}m"


def ansi_frame(cells: Cells, cursor: int | None) -> str:
    """The whole screen as terminal text: one line per row (joined by \\n), colours by SGR escapes.

    An escape is emitted only where the attribute changes, each line ends with a reset (so a terminal that
    wraps or is resized never smears a background colour), and so does the frame. The cursor cell is
    underlined. Rows keep their trailing blanks because their background colour is part of the picture.
    """
    position = cursor_position(cells, cursor)
    lines = []
    for row_index, row in enumerate(cells):
        cursor_column = position[1] if position and position[0] == row_index else None
        parts = []
        for run in row_runs(row, cursor_column):
            sgr = sgr_for_attribute(run.attr)
            if run.cursor:
                sgr = sgr[:-1] + f";{SGR_UNDERLINE}m"
            parts.append(sgr + run.text)
        parts.append(SGR_RESET)
        lines.append("".join(parts))
    return "\n".join(lines) if lines else SGR_RESET


# --- HTML -------------------------------------------------------------------------------------------------

HTML_TITLE = "WeensyOS screen"

_HTML_STYLE = "\n".join(
    [
        "body { background: #000000; margin: 16px; }",
        "pre.screen { display: inline-block; margin: 0; font-size: 16px; line-height: 1;",
        '  font-family: "DejaVu Sans Mono", Consolas, "Courier New", monospace; }',
        *(f".f{i} {{ color: {hex_colour(i)}; }}" for i in range(16)),
        *(f".b{i} {{ background-color: {hex_colour(i)}; }}" for i in range(8)),
        ".blink { }  /* VGA blink attribute (bit 7): drawn steadily */",
        ".cursor { text-decoration: underline; text-decoration-thickness: 2px; }",
    ]
)


def _span(run: Run) -> str:
    a = Attribute.decode(run.attr)
    classes = [f"f{a.foreground}", f"b{a.background}"]
    if a.blink:
        classes.append("blink")
    if run.cursor:
        classes.append("cursor")
    return f'<span class="{" ".join(classes)}">{html.escape(run.text, quote=False)}</span>'


def html_frame(cells: Cells, cursor: int | None) -> str:
    """A standalone HTML5 page showing the screen: one <span> per run, colours from CSS classes f0-f15/b0-b7.

    Blinking runs carry the class `blink` and the cursor cell the class `cursor` (drawn underlined).
    """
    position = cursor_position(cells, cursor)
    lines = []
    for row_index, row in enumerate(cells):
        cursor_column = position[1] if position and position[0] == row_index else None
        lines.append("".join(_span(run) for run in row_runs(row, cursor_column)))
    body = "\n".join(lines)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        f"<title>{HTML_TITLE}</title>\n"
        f"<style>\n{_HTML_STYLE}\n</style>\n"
        "</head>\n"
        "<body>\n"
        f'<pre class="screen">{body}</pre>\n'
        "</body>\n"
        "</html>\n"
    )
