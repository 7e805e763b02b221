"""Symbols of the booted kernel (from its ELF symbol table) for diagnoses: address -> `name+0xoff`.

A table made from an ELF file is read when first asked (with pyelftools, and c++filt for C++ names): most runs
end without naming a single address, and a command-line boot starts in a fraction of the time without that work.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SHDR_SIZE = 64  # an ELF64 section header
SYMBOL_TABLE_TYPES = frozenset({2, 11, 0x6FFFFFF3})  # SHT_SYMTAB, SHT_DYNSYM, SHT_SUNW_LDYNSYM


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str  # demangled (and without parameter list) for C++
    address: int
    size: int
    linkage_name: str = ""  # the mangled name, when it differs


def _short(demangled: str) -> str:
    """`ns::f(int, char*)` -> `ns::f`: the parameter list makes traces long and adds nothing there."""
    depth = 0
    for i, ch in enumerate(demangled):
        if ch == "(" and depth == 0 and i > 0 and not demangled.startswith("(anonymous", i):
            return demangled[:i]
        if ch in "<":
            depth += 1
        elif ch in ">":
            depth -= 1
    return demangled


def demangle(symbols: list[Symbol]) -> list[Symbol]:
    """C++ names (`_Z...`) demangled with binutils' c++filt when it is installed; unchanged otherwise."""
    import shutil
    import subprocess

    mangled = [s.name for s in symbols if s.name.startswith("_Z")]
    tool = shutil.which("c++filt")
    if not mangled or tool is None:
        return symbols
    try:
        result = subprocess.run([tool], input="\n".join(mangled), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return symbols
    names = result.stdout.splitlines()
    if result.returncode != 0 or len(names) != len(mangled):
        return symbols
    plain = dict(zip(mangled, (_short(name) for name in names), strict=True))
    return [Symbol(plain.get(s.name, s.name), s.address, s.size, s.name) for s in symbols]


def _no_symbol_table(data: bytes) -> bool:
    """True when reading `data` with pyelftools surely gives no symbol: no section header is a symbol table's
    (or a header lies outside the file, on which pyelftools gives up). Decided from the section headers alone,
    without importing pyelftools; False (read it) whenever in doubt."""
    try:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return False
        shoff, shentsize, shnum = struct.unpack_from("<Q10xHH", data, 40)
    except (IndexError, struct.error):
        return False
    if shoff == 0:
        return True  # no section table at all
    if shnum == 0:
        return False  # the count is in section 0: let pyelftools read it
    if shentsize < SHDR_SIZE:
        return True  # pyelftools refuses the table
    for index in range(shnum):
        at = shoff + index * shentsize
        if at + SHDR_SIZE > len(data):
            return True  # pyelftools stops at this header: no symbols however many came before
        if struct.unpack_from("<I", data, at + 4)[0] in SYMBOL_TABLE_TYPES:
            return False
    return True


# Reading a symbol table (pyelftools, and c++filt in a new process for C++ names) takes 4-25 ms, and every machine,
# trace and check that names addresses reads its kernel's and programs' tables anew: the symbols found are
# remembered by the file's contents (a few files at a time), as kernelview remembers DWARF layouts.
SYMBOLS_CACHE_SIZE = 16


@functools.lru_cache(maxsize=SYMBOLS_CACHE_SIZE)
def _read_symbols(data: bytes) -> tuple[Symbol, ...]:
    """The function and object symbols of an ELF file's contents; none if it has none or cannot be read."""
    if _no_symbol_table(data):
        return ()
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    symbols: list[Symbol] = []
    try:
        elf = ELFFile(io.BytesIO(data))
        for section in elf.iter_sections():
            if not isinstance(section, SymbolTableSection):
                continue
            for sym in section.iter_symbols():
                kind = sym["st_info"]["type"]
                if kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") and sym.name and sym["st_value"]:
                    if sym["st_shndx"] == "SHN_UNDEF":
                        continue
                    symbols.append(Symbol(sym.name, sym["st_value"], sym["st_size"]))
    except (OSError, ELFError, ConstructError, ValueError, OverflowError, IndexError, KeyError, TypeError,
            struct.error, RecursionError):
        return ()  # a damaged symbol table (pyelftools raises all of these on crafted files)
    return tuple(demangle(symbols))


class SymbolTable:
    """Function and object symbols sorted by address."""

    def __init__(self, symbols: list[Symbol]) -> None:
        self._source: bytes | None = None
        self._fill(symbols)

    def _fill(self, symbols: Sequence[Symbol]) -> None:
        self._symbols = sorted(symbols, key=lambda s: s.address)
        self._addresses = [s.address for s in self._symbols]
        self._by_name = {s.name: s for s in self._symbols}
        self._by_name.update({s.linkage_name: s for s in self._symbols if s.linkage_name})

    @classmethod
    def from_elf(cls, source: Path | bytes) -> SymbolTable:
        """The symbols of an ELF file (a path, or its contents); empty if it has none or cannot be read.
        The file is read now and its symbol table when first used."""
        table = cls([])
        with contextlib.suppress(OSError):  # unreadable: no symbols
            table._source = source if isinstance(source, bytes) else Path(source).read_bytes()
        return table

    def _loaded(self) -> SymbolTable:
        if self._source is not None:
            source, self._source = self._source, None
            self._fill(_read_symbols(source))
        return self

    @property
    def symbols(self) -> list[Symbol]:
        return self._loaded()._symbols

    def __contains__(self, name: str) -> bool:
        return name in self._loaded()._by_name

    def address_of(self, name: str) -> int | None:
        symbol = self._loaded()._by_name.get(name)
        return symbol.address if symbol else None

    def lookup(self, address: int) -> Symbol | None:
        """The symbol containing `address` (or the nearest one before it, within 64 KiB, if sizes are 0)."""
        i = bisect.bisect_right(self._loaded()._addresses, address) - 1
        while i >= 0:
            symbol = self._symbols[i]
            if symbol.size and address < symbol.address + symbol.size:
                return symbol
            if not symbol.size and address - symbol.address < 0x10000:
                return symbol
            if symbol.size:
                return None
            i -= 1
        return None

    def describe(self, address: int) -> str:
        """`0x40123 <kernel_start+0x23>` or just the hex address."""
        symbol = self.lookup(address)
        if symbol is None:
            return f"{address:#x}"
        offset = address - symbol.address
        return f"{address:#x} <{symbol.name}+{offset:#x}>" if offset else f"{address:#x} <{symbol.name}>"
