"""Screenshots of the CGA text screen in text, ANSI, HTML and PNG form, shown on one small synthetic screen.

The screen used throughout (`screen()`):
    row 0:  "Hello" white on blue (0x1F), then the default light grey on black (0x07)
    row 2:  "a<b & c>" light grey on black, to check escaping
    row 3:  a red-on-black 'X' (0x04) at column 10
    row 5:  a blinking yellow-on-black 'B' (0x8E) at column 2
    row 7:  CP437 box drawing: ┌─┐ and a heart
    cursor: row 1, column 0 (cell index 80), on a blank cell
Everything else is a blank space (0x20, 0x07).
"""

from __future__ import annotations

import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.front import render
from harness.front.font8x16 import DRAWN, FALLBACK, GLYPHS
from harness.front.render import PALETTE, ansi_frame, html_frame, sgr_for_attribute, text_frame
from harness.front.screenshot import png_frame, save_screen
from harness.pc.errors import HarnessError

WHITE_ON_BLUE = 0x1F
DEFAULT = 0x07
RED_ON_BLACK = 0x04
BLINK_YELLOW = 0x8E
CURSOR = 80  # row 1, column 0

Screen = list[list[tuple[int, int]]]


def screen() -> Screen:
    cells = [[(0x20, DEFAULT) for _ in range(80)] for _ in range(25)]

    def put(row: int, column: int, text: bytes, attr: int) -> None:
        for i, char in enumerate(text):
            cells[row][column + i] = (char, attr)

    put(0, 0, b"Hello", WHITE_ON_BLUE)
    put(2, 0, b"a<b & c>", DEFAULT)
    put(3, 10, b"X", RED_ON_BLACK)
    put(5, 2, b"B", BLINK_YELLOW)
    put(7, 0, b"\xda\xc4\xbf \x03", DEFAULT)
    return cells


# --- text -------------------------------------------------------------------------------------------------


def test_text_is_the_characters_without_trailing_blanks() -> None:
    assert text_frame(screen()) == "Hello\n\na<b & c>\n          X\n\n  B\n\n┌─┐ ♥"


def test_text_of_a_blank_screen_is_empty() -> None:
    assert text_frame([[(0x20, DEFAULT)] * 80 for _ in range(25)]) == ""
    assert text_frame([[(0x00, 0x00)] * 80 for _ in range(25)]) == ""  # never-written cells are blank too


# --- ANSI -------------------------------------------------------------------------------------------------

SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_sgr_selects_the_palette_in_truecolour() -> None:
    assert sgr_for_attribute(WHITE_ON_BLUE, truecolor=True) == "\x1b[0;38;2;255;255;255;48;2;0;0;170m"
    assert sgr_for_attribute(0x06, truecolor=True) == "\x1b[0;38;2;170;85;0;48;2;0;0;0m"  # brown is not dark yellow


def test_sgr_falls_back_to_the_16_ansi_colours() -> None:
    # CGA numbers colours blue=1/red=4, ANSI red=1/blue=4; bright foregrounds use 90-97.
    assert sgr_for_attribute(WHITE_ON_BLUE, truecolor=False) == "\x1b[0;97;44m"
    assert sgr_for_attribute(RED_ON_BLACK, truecolor=False) == "\x1b[0;31;40m"
    assert sgr_for_attribute(0x4E, truecolor=False) == "\x1b[0;93;41m"  # yellow on red


def test_sgr_keeps_the_blink_bit_as_sgr_5() -> None:
    assert sgr_for_attribute(BLINK_YELLOW, truecolor=True) == "\x1b[0;38;2;255;255;85;48;2;0;0;0;5m"
    assert sgr_for_attribute(BLINK_YELLOW, truecolor=False) == "\x1b[0;93;40;5m"
    assert sgr_for_attribute(0x0E, truecolor=False) == "\x1b[0;93;40m"


def test_sgr_follows_the_module_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "TRUECOLOR", False)
    assert sgr_for_attribute(WHITE_ON_BLUE) == "\x1b[0;97;44m"
    assert "\x1b[0;97;44mHello" in ansi_frame(screen(), None)


def test_ansi_frame_colours_the_text_and_changes_sgr_only_where_the_attribute_changes() -> None:
    lines = ansi_frame(screen(), CURSOR).split("\n")
    assert len(lines) == 25
    assert all(line.endswith("\x1b[0m") for line in lines)
    grey = sgr_for_attribute(DEFAULT)
    assert lines[0] == sgr_for_attribute(WHITE_ON_BLUE) + "Hello" + grey + " " * 75 + "\x1b[0m"
    assert lines[3] == grey + " " * 10 + sgr_for_attribute(RED_ON_BLACK) + "X" + grey + " " * 69 + "\x1b[0m"
    assert sgr_for_attribute(BLINK_YELLOW) + "B" in lines[5]
    assert lines[24] == grey + " " * 80 + "\x1b[0m"  # a uniform row needs one escape


def test_ansi_frame_underlines_the_cursor_cell() -> None:
    lines = ansi_frame(screen(), CURSOR).split("\n")
    assert lines[1].startswith(sgr_for_attribute(DEFAULT)[:-1] + ";4m ")
    assert ";4m" not in ansi_frame(screen(), None)


def test_ansi_frame_without_escapes_is_the_text() -> None:
    plain = [line.rstrip(" ") for line in SGR.sub("", ansi_frame(screen(), CURSOR)).split("\n")]
    assert "\n".join(plain).rstrip("\n") == text_frame(screen())


# --- HTML -------------------------------------------------------------------------------------------------

VOID_ELEMENTS = {"meta"}


class _Page(HTMLParser):
    """Checks that tags nest properly and collects the title, the <pre> text and every span's classes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.title = ""
        self.style = ""
        self.screen = ""
        self.spans: list[tuple[str, str]] = []  # (class attribute, text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)
        if tag == "span":
            self.spans.append((dict(attrs)["class"] or "", ""))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if "title" in self.open:
            self.title += data
        if "style" in self.open:
            self.style += data
        if "pre" in self.open:
            self.screen += data
        if self.open and self.open[-1] == "span":
            classes, text = self.spans[-1]
            self.spans[-1] = (classes, text + data)


def parse_page(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.open == [], f"unclosed tags {parser.open}"
    return parser


def test_html_is_a_complete_page_with_the_screen_text() -> None:
    page = html_frame(screen(), CURSOR)
    assert page.startswith("<!DOCTYPE html>")
    parsed = parse_page(page)
    assert parsed.title == "WeensyOS screen"
    rows = parsed.screen.split("\n")
    assert len(rows) == 25
    assert all(len(row) == 80 for row in rows)
    assert "\n".join(row.rstrip(" ") for row in rows).rstrip("\n") == text_frame(screen())


def test_html_spans_carry_the_colours() -> None:
    parsed = parse_page(html_frame(screen(), None))
    assert ("f15 b1", "Hello") in parsed.spans
    assert ("f4 b0", "X") in parsed.spans
    assert re.search(r"\.f15 \{ color: #ffffff; \}", parsed.style)
    assert re.search(r"\.b1 \{ background-color: #0000aa; \}", parsed.style)
    assert re.search(r"\.f4 \{ color: #aa0000; \}", parsed.style)
    assert re.search(r"body \{ background: #000000;", parsed.style)


def test_html_marks_blink_and_cursor_with_classes() -> None:
    parsed = parse_page(html_frame(screen(), CURSOR))
    assert ("f14 b0 blink", "B") in parsed.spans
    assert ("f7 b0 cursor", " ") in parsed.spans
    assert "cursor" not in html_frame(screen(), None).split("<body>")[1]


def test_html_escapes_markup_characters() -> None:
    page = html_frame(screen(), None)
    assert "a&lt;b &amp; c&gt;" in page
    assert "a<b" not in page


# --- PNG --------------------------------------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """A minimal PNG reader for 8-bit RGB, non-interlaced images: (width, height, rows of (r, g, b) pixels).

    It checks the signature, chunk order and every CRC, and undoes all five scanline filter types.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * 3
    assert len(raw) == height * (stride + 1)
    rows: list[list[tuple[int, int, int]]] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride if kind else 0):  # type 0 (None) stores the bytes unchanged
            left = line[i - 3] if i >= 3 else 0
            up, up_left = previous[i], previous[i - 3] if i >= 3 else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
            else:
                assert kind == 0, f"unknown filter type {kind}"
        rows.append([tuple(line[x : x + 3]) for x in range(0, stride, 3)])  # type: ignore[misc]
        previous = line
    return width, height, rows


def cell_pixels(pixels: list[list[tuple[int, int, int]]], row: int, column: int, scale: int = 1) -> list[list]:
    """The 8x16 pixels of one cell (sampling the top-left pixel of each scale x scale block)."""
    return [[pixels[(row * 16 + y) * scale][(column * 8 + x) * scale] for x in range(8)] for y in range(16)]


def expected_pixels(char: int, fg: int, bg: int) -> list[list]:
    glyph = GLYPHS[char]
    return [[PALETTE[fg] if glyph[y] & (0x80 >> x) else PALETTE[bg] for x in range(8)] for y in range(16)]


def test_png_is_640_by_400_rgb() -> None:
    width, height, pixels = decode_png(png_frame(screen(), CURSOR))
    assert (width, height) == (640, 400)
    assert len(pixels) == 400 and all(len(row) == 640 for row in pixels)


def test_png_draws_each_glyph_in_its_colours() -> None:
    _, _, pixels = decode_png(png_frame(screen(), CURSOR))
    assert cell_pixels(pixels, 0, 0) == expected_pixels(ord("H"), 15, 1)  # white on blue
    assert cell_pixels(pixels, 3, 10) == expected_pixels(ord("X"), 4, 0)  # red on black
    assert cell_pixels(pixels, 5, 2) == expected_pixels(ord("B"), 14, 0)  # blink drawn steadily
    assert cell_pixels(pixels, 7, 4) == expected_pixels(0x03, 7, 0)  # the heart


def test_png_blank_cell_is_all_background() -> None:
    _, _, pixels = decode_png(png_frame(screen(), CURSOR))
    assert cell_pixels(pixels, 0, 5) == [[PALETTE[0]] * 8] * 16
    assert cell_pixels(pixels, 24, 79) == [[PALETTE[0]] * 8] * 16


def test_png_cursor_is_an_underline_in_the_foreground_colour() -> None:
    _, _, with_cursor = decode_png(png_frame(screen(), CURSOR))
    underline = [[PALETTE[0]] * 8] * 14 + [[PALETTE[7]] * 8] * 2
    assert cell_pixels(with_cursor, 1, 0) == underline
    _, _, without = decode_png(png_frame(screen(), None))
    assert cell_pixels(without, 1, 0) == [[PALETTE[0]] * 8] * 16
    # Over a character the underline covers the glyph's rows 14-15 only.
    _, _, on_h = decode_png(png_frame(screen(), 0))
    assert cell_pixels(on_h, 0, 0)[:14] == expected_pixels(ord("H"), 15, 1)[:14]
    assert cell_pixels(on_h, 0, 0)[14:] == [[PALETTE[15]] * 8] * 2


def test_png_scale_enlarges_every_pixel() -> None:
    width, height, pixels = decode_png(png_frame(screen(), CURSOR, scale=2))
    assert (width, height) == (1280, 800)
    assert cell_pixels(pixels, 0, 0, scale=2) == expected_pixels(ord("H"), 15, 1)
    assert pixels[1][1] == pixels[0][0] and pixels[3][2] == pixels[2][2]  # 2x2 blocks of one colour
    with pytest.raises(ValueError):
        png_frame(screen(), None, scale=0)


# --- the font ---------------------------------------------------------------------------------------------


def test_font_has_256_glyphs_of_16_rows() -> None:
    assert len(GLYPHS) == 256
    assert all(isinstance(glyph, bytes) and len(glyph) == 16 for glyph in GLYPHS)


def test_font_draws_every_printable_ascii_character_distinctly() -> None:
    printable = range(0x21, 0x7F)
    assert all(code in DRAWN and any(GLYPHS[code]) for code in printable)
    assert len({GLYPHS[code] for code in printable}) == len(printable)
    assert all(GLYPHS[code] != FALLBACK for code in printable)


def test_font_draws_the_cp437_symbols_weensyos_uses() -> None:
    symbols = [0x03, 0x10, 0x11, 0x1E, 0x1F, 0xB0, 0xB1, 0xB2, 0xB3, 0xBF, 0xC0, 0xC4, 0xD9, 0xDA, 0xDB, 0xDC,
               0xDF, 0xF9, 0xFA]  # fmt: skip
    assert all(code in DRAWN and any(GLYPHS[code]) and GLYPHS[code] != FALLBACK for code in symbols)
    assert GLYPHS[0xDB] == b"\xff" * 16
    assert GLYPHS[0xDF] == b"\xff" * 8 + b"\x00" * 8
    assert GLYPHS[0xDC] == b"\x00" * 8 + b"\xff" * 8
    assert GLYPHS[0xC4][0] == 0 and 0xFF in GLYPHS[0xC4]  # a horizontal line across the whole cell
    assert all(row == GLYPHS[0xB3][0] != 0 for row in GLYPHS[0xB3])  # a vertical line from top to bottom


def test_font_blank_and_fallback_glyphs() -> None:
    assert GLYPHS[0x00] == GLYPHS[0x20] == bytes(16)
    assert any(FALLBACK)
    assert GLYPHS[0x80] == FALLBACK and GLYPHS[0x01] == FALLBACK


def test_font_leaves_a_gap_column_between_letters() -> None:
    assert all(not row & 0x01 for code in range(0x21, 0x7F) if code != ord("_") for row in GLYPHS[code])


# --- saving by extension ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("s.txt", lambda: (text_frame(screen()) + "\n").encode()),
        ("s.ansi", lambda: (ansi_frame(screen(), CURSOR) + "\n").encode()),
        ("s.html", lambda: html_frame(screen(), CURSOR).encode()),
        ("s.HTM", lambda: html_frame(screen(), CURSOR).encode()),
        ("s.png", lambda: png_frame(screen(), CURSOR)),
    ],
)
def test_save_screen_picks_the_format_from_the_extension(tmp_path: Path, name: str, expected) -> None:
    save_screen(tmp_path / name, screen(), CURSOR)
    assert (tmp_path / name).read_bytes() == expected()


@pytest.mark.parametrize("name", ["screen.jpg", "screen"])
def test_save_screen_rejects_unknown_extensions_in_one_line(tmp_path: Path, name: str) -> None:
    with pytest.raises(HarnessError) as error:
        save_screen(tmp_path / name, screen(), CURSOR)
    message = str(error.value)
    assert "\n" not in message
    assert all(ext in message for ext in (".txt", ".ansi", ".html", ".png"))
    assert not (tmp_path / name).exists()


def test_save_screen_reports_an_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="cannot save the screen"):
        save_screen(tmp_path / "missing-directory" / "screen.png", screen(), CURSOR)
