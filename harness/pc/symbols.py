"""Symbols of the booted kernel (from its ELF symbol table) for diagnoses: address -> `name+0xoff`."""

from __future__ import annotations

import bisect
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


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


class SymbolTable:
    """Function and object symbols sorted by address."""

    def __init__(self, symbols: list[Symbol]) -> None:
        self.symbols = sorted(symbols, key=lambda s: s.address)
        self._addresses = [s.address for s in self.symbols]
        self._by_name = {s.name: s for s in self.symbols}
        self._by_name.update({s.linkage_name: s for s in self.symbols if s.linkage_name})

    @classmethod
    def from_elf(cls, source: Path | bytes) -> SymbolTable:
        """The symbols of an ELF file (a path, or its contents); empty if it has none or cannot be read."""
        symbols: list[Symbol] = []
        try:
            with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as f:  # noqa: SIM115
                elf = ELFFile(f)
                for section in elf.iter_sections():
                    if not isinstance(section, SymbolTableSection):
                        continue
                    for sym in section.iter_symbols():
                        kind = sym["st_info"]["type"]
                        if kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") and sym.name and sym["st_value"]:
                            if sym["st_shndx"] == "SHN_UNDEF":
                                continue
                            symbols.append(Symbol(sym.name, sym["st_value"], sym["st_size"]))
        except (OSError, ELFError, ValueError):
            return cls([])
        return cls(demangle(symbols))

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def address_of(self, name: str) -> int | None:
        symbol = self._by_name.get(name)
        return symbol.address if symbol else None

    def lookup(self, address: int) -> Symbol | None:
        """The symbol containing `address` (or the nearest one before it, within 64 KiB, if sizes are 0)."""
        i = bisect.bisect_right(self._addresses, address) - 1
        while i >= 0:
            symbol = self.symbols[i]
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
