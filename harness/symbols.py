"""Symbols of the booted kernel (from its ELF symbol table) for diagnoses: address -> `name+0xoff`."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int


class SymbolTable:
    """Function and object symbols sorted by address."""

    def __init__(self, symbols: list[Symbol]) -> None:
        self.symbols = sorted(symbols, key=lambda s: s.address)
        self._addresses = [s.address for s in self.symbols]
        self._by_name = {s.name: s for s in self.symbols}

    @classmethod
    def from_elf(cls, path: Path) -> SymbolTable:
        symbols: list[Symbol] = []
        try:
            with open(path, "rb") as f:
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
        return cls(symbols)

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
