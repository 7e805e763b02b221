"""Our own 8x16 bitmap font for drawing the CGA text screen: printable ASCII plus the CP437 symbols WeensyOS uses.

The glyphs are drawn in the spirit of the VGA text-mode font (whose cells are 8x16 too) but designed for this
project: vertical strokes two pixels wide and horizontal strokes one pixel tall, so text stays bold and legible
at 640x400; capitals and digits on rows 2-11, lowercase x-height on rows 5-11, descenders on rows 12-14 and
column 7 left empty as the gap between letters. Box-drawing and block characters fill the whole cell so that
they join their neighbours.

The art in font8x16.txt (package data, next to this module) is the source of truth: each glyph is a header line
`0xNN name` followed by 16 rows of 8 pixels ('#' ink, '.' background). It is read and parsed once at import into
`GLYPHS`, 256 entries of 16 bytes (one byte per pixel row, bit 7 = leftmost pixel). Codes without a drawing
get `FALLBACK`, a hollow box, so that an unexpected character is visible rather than silently blank; only 0x00
and 0x20 are blank.
"""

from __future__ import annotations

from importlib import resources

GLYPH_WIDTH = 8
GLYPH_HEIGHT = 16

_INK = "#"
_PAPER = "."
ART_FILE = "font8x16.txt"  # package data (pyproject.toml)


def _parse_rows(name: str, rows: list[str]) -> bytes:
    """16 rows of '#'/'.' as 16 bytes, bit 7 = leftmost pixel."""
    if len(rows) != GLYPH_HEIGHT:
        raise ValueError(f"font art: glyph {name} has {len(rows)} rows, not {GLYPH_HEIGHT}")
    out = bytearray()
    for row in rows:
        if len(row) != GLYPH_WIDTH or set(row) - {_INK, _PAPER}:
            raise ValueError(f"font art: glyph {name} has a malformed row {row!r}")
        out.append(int(row.replace(_INK, "1").replace(_PAPER, "0"), 2))
    return bytes(out)


def _parse_art(art: str) -> tuple[dict[int, bytes], bytes]:
    """The drawn glyphs by code, and the fallback glyph; malformed art is a programming error (ValueError)."""
    glyphs: dict[int, bytes] = {}
    fallback: bytes | None = None
    for block in art.strip().split("\n\n"):
        header, *rows = block.strip().splitlines()
        label = header.split()[0]
        bitmap = _parse_rows(header, rows)
        if label == "fallback":
            fallback = bitmap
            continue
        code = int(label, 16)
        if not 0 <= code <= 0xFF or code in glyphs:
            raise ValueError(f"font art: bad or repeated code in header {header!r}")
        glyphs[code] = bitmap
    if fallback is None:
        raise ValueError("font art: no fallback glyph")
    return glyphs, fallback


def _read_art() -> str:
    """The glyph art without its comment lines (a header is `0xNN ...`, a comment `# ...`)."""
    text = resources.files(__package__).joinpath(ART_FILE).read_text(encoding="ascii")
    return "\n".join(line for line in text.splitlines() if not line.startswith("# "))


def _build() -> tuple[tuple[bytes, ...], bytes, frozenset[int]]:
    drawn, fallback = _parse_art(_read_art())
    drawn.setdefault(0x00, bytes(GLYPH_HEIGHT))  # an empty cell (never written) shows as blank, like a space
    glyphs = tuple(drawn.get(code, fallback) for code in range(256))
    return glyphs, fallback, frozenset(drawn)


GLYPHS, FALLBACK, DRAWN = _build()
"""GLYPHS[code] is the 16-byte bitmap of CP437 character `code`; FALLBACK the hollow box of undrawn codes;
DRAWN the codes that have a glyph of their own."""
