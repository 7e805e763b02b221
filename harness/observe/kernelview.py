"""Reading the guest kernel's own state: which process is running, and the process table.

The harness knows nothing of a kernel's internals beyond public contracts: its ELF symbols and DWARF. From
DWARF it learns the layout of `struct proc` (the members `pid`, `state`, `name`, `pagetable`); from the symbol
table, where `current` and `ptable` live. A course kernel (same names, no `name` member) works the same way;
a kernel without them simply has no pids in its traces.
"""

from __future__ import annotations

import functools
import io
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..pc.paging import PageFault, PhysicalFault, translate
from ..pc.symbols import SymbolTable

_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def read_virtual_frame(memory: memoryview, cr3: int, page: int) -> int:
    """The physical frame behind a supervisor access to virtual `page`."""
    frame = translate(memory, cr3, page)
    if frame + 0x1000 > len(memory):
        raise PhysicalFault(frame)
    return frame


@dataclass(frozen=True)
class ProcLayout:
    """Where the interesting members of `struct proc` sit."""

    size: int
    pid: int
    state: int | None = None
    name: int | None = None
    name_size: int = 0
    pagetable: int | None = None


# The course contract's fixed offsets (pagetable 0, pid 8, state 12), used when the kernel has no DWARF.
CONTRACT_LAYOUT = ProcLayout(size=0, pid=8, state=12, pagetable=0)

# Reading a kernel's DWARF takes 7-36 ms, and every trace, check, audit and diagnosis of a run makes its view of
# the kernel anew: the layouts found are remembered by the kernel's contents (a few kernels at a time).
LAYOUT_CACHE_SIZE = 8


def _by_contents(read: Any) -> Any:
    """`read(source, *args)`, remembered by the contents of the ELF file `source` (a path or its contents); None
    when the file cannot be read, as `read` itself answers."""
    remembered = functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)(read)

    @functools.wraps(read)
    def layout(source: Path | bytes, *args: str) -> Any:
        if not isinstance(source, bytes):
            try:
                source = Path(source).read_bytes()
            except OSError:
                return None
        return remembered(source, *args)

    return layout


def _member_offset(die) -> int | None:  # type: ignore[no-untyped-def]
    location = die.attributes.get("DW_AT_data_member_location")
    if location is None:
        return None
    value = location.value
    return value if isinstance(value, int) else None


def _dies(source: Path | bytes) -> Iterator[Any]:
    """Every debugging-information entry of an ELF file (a path or its contents); none without DWARF.

    The contents are held in memory, so a DIE stays readable after the caller stops iterating. pyelftools is
    imported here, when DWARF is first read: a run that never needs it starts faster without it."""
    from elftools.elf.elffile import ELFFile

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    elf = ELFFile(io.BytesIO(data))
    if not elf.has_dwarf_info():
        return
    for cu in elf.get_dwarf_info().iter_CUs():
        yield from cu.iter_DIEs()


def proc_layout_from_dwarf(source: Path | bytes) -> ProcLayout | None:
    """Find `struct proc` in the kernel's DWARF; None when there is no debug information or no such struct."""
    from elftools.common.exceptions import ELFError

    try:
        for die in _dies(source):
            if die.tag != "DW_TAG_structure_type":
                continue
            name = die.attributes.get("DW_AT_name")
            if name is None or name.value != b"proc" or "DW_AT_byte_size" not in die.attributes:
                continue
            members = {}
            name_size = 0
            for child in die.iter_children():
                if child.tag == "DW_TAG_member" and "DW_AT_name" in child.attributes:
                    member = child.attributes["DW_AT_name"].value.decode()
                    members[member] = _member_offset(child)
                    if member == "name":
                        array = child.get_DIE_from_attribute("DW_AT_type")
                        for sub in array.iter_children():
                            bound = sub.attributes.get("DW_AT_upper_bound") or sub.attributes.get(
                                "DW_AT_count")
                            if bound is not None:
                                name_size = bound.value + (1 if "DW_AT_upper_bound" in sub.attributes
                                                           else 0)
            if members.get("pid") is None:
                return None
            return ProcLayout(size=die.attributes["DW_AT_byte_size"].value, pid=members["pid"],
                              state=members.get("state"), name=members.get("name"),
                              name_size=name_size, pagetable=members.get("pagetable"))
    except (OSError, ELFError, ValueError, KeyError, AttributeError):
        return None
    return None


proc_layout_from_dwarf = _by_contents(proc_layout_from_dwarf)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: int | None
    name: str | None
    pagetable: int | None


class KernelView:
    """Reads `current` and `ptable` of the running kernel from guest memory."""

    def __init__(self, memory: memoryview, symbols: SymbolTable, kernel_path: Path | bytes | None) -> None:
        self.memory = memory
        self.symbols = symbols
        self.current_address = symbols.address_of("current")
        self.ptable_address = symbols.address_of("ptable")
        ptable = symbols.lookup(self.ptable_address) if self.ptable_address is not None else None
        self.layout: ProcLayout | None = None
        if self.current_address is not None or self.ptable_address is not None:
            layout = proc_layout_from_dwarf(kernel_path) if kernel_path is not None else None
            self.layout = layout or CONTRACT_LAYOUT
        self._frames: dict[tuple[int, int], int] = {}  # (cr3, page) -> physical frame, or -1 if unmapped
        self._translations: dict[tuple[int, int], int | None] = {}  # (cr3, page) -> its frame, None: a fault
        self.nproc = 0
        if ptable is not None and self.layout is not None and self.layout.size:
            self.nproc = ptable.size // self.layout.size

    @property
    def available(self) -> bool:
        return self.layout is not None and self.current_address is not None

    def _read(self, cr3: int, address: int, length: int) -> bytes | None:
        """Kernel memory by virtual address: through `cr3` if it maps it, else identity (VA = PA).

        Where the kernel's own data lives does not change while it runs, so the frame of each (page table,
        page) pair is looked up once and remembered: tracing reads `current` on every system call and the
        process table (several pages) at every context switch."""
        page = address & ~0xFFF
        if (address + length - 1) & ~0xFFF == page:
            frame = self._frames.get((cr3, page))
            if frame is None:
                try:
                    frame = read_virtual_frame(self.memory, cr3, page)
                except (PageFault, PhysicalFault):
                    frame = page if page + 0x1000 <= len(self.memory) else -1
                self._frames[(cr3, page)] = frame
            if frame < 0:
                return None
            start = frame + (address & 0xFFF)
            return self.memory[start:start + length].tobytes()
        spans = self._spans(cr3, address, length)
        if spans is not None:
            start, end = spans[0][0], spans[-1][1]
            if end - start == length:  # physically contiguous (the usual case): one copy
                return self.memory[start:end].tobytes()
            return b"".join(self.memory[first:last] for first, last in spans)
        if address + length <= len(self.memory):
            return bytes(self.memory[address:address + length])
        return None

    def _spans(self, cr3: int, address: int, length: int) -> list[tuple[int, int]] | None:
        """The physical (start, end) of each page's part of a read through `cr3` (as paging.read_virtual reads
        it), or None where that read would fault; the translation of each page is remembered (see `_read`)."""
        spans = []
        size = len(self.memory)
        translations = self._translations
        while length > 0:
            page, offset = address & ~0xFFF, address & 0xFFF
            key = (cr3, page)
            frame = translations.get(key, -1)
            if frame == -1:
                try:
                    frame = translate(self.memory, cr3, page)
                except (PageFault, PhysicalFault):
                    frame = None
                translations[key] = frame
            chunk = min(length, 0x1000 - offset)
            if frame is None or frame + offset + chunk > size:
                return None
            start = frame + offset
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], start + chunk)
            else:
                spans.append((start, start + chunk))
            address += chunk
            length -= chunk
        return spans

    def read_kernel(self, cr3: int, address: int, length: int) -> bytes | None:
        """Public form of the cached kernel-memory read (the machine reads interrupt frames with it)."""
        return self._read(cr3, address, length)

    def current_pid(self, cr3: int) -> int | None:
        """The pid of the kernel's `current` process, or None if unknown."""
        if self.layout is None or self.current_address is None:
            return None
        frame = self._frames.get((cr3, self.current_address & ~0xFFF), -1)
        if frame >= 0 and self.current_address & 0xFFF <= 0xFF8:  # the usual case, read in place
            pointer = _U64.unpack_from(self.memory, frame + (self.current_address & 0xFFF))[0]
        else:
            raw = self._read(cr3, self.current_address, 8)
            if raw is None:
                return None
            pointer = _U64.unpack(raw)[0]
        if not pointer:
            return None
        raw = self._read(cr3, pointer + self.layout.pid, 4)
        return _I32.unpack(raw)[0] if raw is not None else None

    def live_names(self, cr3: int) -> dict[int, str | None]:
        """pid -> name of every live slot (as `processes` lists them), with Python work only for live slots:
        the tracer looks at every context switch."""
        layout = self.layout
        if (layout is None or self.ptable_address is None or not self.nproc or layout.state is None
                or layout.size % 4 or layout.state % 4 or layout.pid % 4 or sys.byteorder != "little"):
            return {proc.pid: proc.name for proc in self.processes(cr3)}
        length = layout.size * self.nproc
        spans = self._spans(cr3, self.ptable_address, length)
        table: memoryview | bytes | None
        if spans is not None and spans[-1][1] - spans[0][0] == length:
            table = self.memory[spans[0][0]:spans[-1][1]]  # in place: only the words looked at are read
        else:
            table = self._read(cr3, self.ptable_address, length)
            if table is None:
                return {}
        size, stride, name, name_size = layout.size, layout.size // 4, layout.name, layout.name_size
        words = memoryview(table).cast("i")
        live = [i for i, state in enumerate(words[layout.state // 4::stride]) if state]
        pids = words[layout.pid // 4::stride]
        if name is None or not name_size:
            return {pids[i]: None for i in live}
        return {pids[i]: bytes(table[i * size + name:i * size + name + name_size]).split(b"\0")[0].decode("latin-1")
                or None for i in live}

    def processes(self, cr3: int) -> list[ProcInfo]:
        """Every slot of `ptable` whose state is not 0 (free)."""
        layout = self.layout
        if layout is None or self.ptable_address is None or not self.nproc:
            return []
        raw = self._read(cr3, self.ptable_address, layout.size * self.nproc)
        if raw is None:
            return []
        size = layout.size
        states: list[int | None]
        if layout.state is not None and size % 4 == 0 and layout.state % 4 == 0 and sys.byteorder == "little":
            # Every slot's state in one strided read of the table as int32s; only live slots are decoded further.
            states = memoryview(raw).cast("i")[layout.state // 4::size // 4].tolist()
        else:
            states = [_I32.unpack_from(raw, i * size + layout.state)[0] if layout.state is not None else None
                      for i in range(self.nproc)]
        live = [i for i, state in enumerate(states) if state != 0]
        out = []
        for i in live:
            base = i * size
            pid = _I32.unpack_from(raw, base + layout.pid)[0]
            name = None
            if layout.name is not None and layout.name_size:
                name = raw[base + layout.name:base + layout.name + layout.name_size].split(b"\0")[0].decode(
                    "latin-1") or None
            pagetable = _U64.unpack_from(raw, base + layout.pagetable)[0] if layout.pagetable is not None else None
            out.append(ProcInfo(pid, states[i], name, pagetable))
        return out


@dataclass(frozen=True)
class ArrayLayout:
    """An array of structs found in DWARF: its element size, count and member offsets (name -> offset, size)."""

    element_size: int
    count: int
    members: dict[str, tuple[int, int]]


def _type_size(die) -> int | None:  # type: ignore[no-untyped-def]
    while die is not None:
        if "DW_AT_byte_size" in die.attributes:
            return die.attributes["DW_AT_byte_size"].value
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
    return None


def array_layout_from_dwarf(source: Path | bytes, variable: str) -> ArrayLayout | None:
    """The layout of a global array of structs (e.g. `physpages`), from the kernel's DWARF."""
    from elftools.common.exceptions import ELFError

    try:
        for die in _dies(source):
            if die.tag != "DW_TAG_variable" or die.attributes.get("DW_AT_name") is None:
                continue
            if die.attributes["DW_AT_name"].value.decode() != variable or "DW_AT_type" not in die.attributes:
                continue
            array = die.get_DIE_from_attribute("DW_AT_type")
            while array.tag in ("DW_TAG_typedef", "DW_TAG_volatile_type", "DW_TAG_const_type"):
                array = array.get_DIE_from_attribute("DW_AT_type")
            if array.tag != "DW_TAG_array_type":
                continue
            count = None
            for sub in array.iter_children():
                if "DW_AT_upper_bound" in sub.attributes:
                    count = sub.attributes["DW_AT_upper_bound"].value + 1
                elif "DW_AT_count" in sub.attributes:
                    count = sub.attributes["DW_AT_count"].value
            element = array.get_DIE_from_attribute("DW_AT_type")
            while element.tag in ("DW_TAG_typedef", "DW_TAG_volatile_type", "DW_TAG_const_type"):
                element = element.get_DIE_from_attribute("DW_AT_type")
            size = _type_size(element)
            if count is None or not size:
                return None
            members = {}
            for child in element.iter_children():
                if child.tag == "DW_TAG_member" and "DW_AT_name" in child.attributes:
                    offset = _member_offset(child)
                    member_size = _type_size(child)
                    if offset is not None and member_size:
                        members[child.attributes["DW_AT_name"].value.decode()] = (offset, member_size)
            return ArrayLayout(size, count, members)
    except (OSError, ELFError, ValueError, KeyError, AttributeError):
        return None
    return None


array_layout_from_dwarf = _by_contents(array_layout_from_dwarf)


class PageAccounting:
    """Counts free physical pages from the kernel's own page-information array (`physpages`).

    A page is free when its `owner` is 0 (our kernel) or, for kernels without an owner field, its `refcount`
    is 0 (the course's). This is the harness-side check that exit and fork lose no page.
    """

    def __init__(self, memory: memoryview, symbols: SymbolTable, kernel_path: Path | bytes | None) -> None:
        self.memory = memory
        self.address = symbols.address_of("physpages")
        self.layout = array_layout_from_dwarf(kernel_path, "physpages") if kernel_path and self.address else None
        field = None
        if self.layout is not None:
            field = self.layout.members.get("owner") or self.layout.members.get("refcount")
        self.field = field

    @property
    def available(self) -> bool:
        return self.layout is not None and self.field is not None and self.address is not None

    def owners(self) -> list[int]:
        """The owner (or refcount) value of every page, as the kernel records it (VA = PA for the kernel)."""
        if not self.available:
            raise RuntimeError("the kernel has no physpages array with an owner or refcount field in its DWARF")
        assert self.layout is not None and self.field is not None and self.address is not None
        offset, size = self.field
        code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
        element = self.layout.element_size
        raw = self.memory[self.address:self.address + element * self.layout.count].tobytes()
        # Unpacked in C (the auditor and the checks ask at every return to user mode): a one-byte field (ours:
        # int8_t owner) is every element-th byte, read as signed bytes; a wider one, one record per element.
        if size == 1:
            return memoryview(raw[offset::element]).cast("b").tolist()
        record = struct.Struct(f"<{offset}x{code}{element - offset - size}x")
        return [value for (value,) in record.iter_unpack(raw)]

    def free_pages(self) -> int:
        return self.owners().count(0)
