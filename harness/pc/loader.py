"""ELF loading and the boot hand-off: the harness acting as the PC's boot loader.

`read_elf` validates a kernel or program file and turns every problem into one clear `LoaderError` line.
`prepare_boot` writes the kernel's segments into guest RAM, the boot page table and GDT the course's boot loader
would have left, the text screen as the BIOS leaves it, and (when there is a command line) a multiboot information
block whose command line names the program(s) to run and whose modules are the user-program ELF files.
`BootState` is the register state at the kernel's entry point.

Where the boot data goes: the information, the module list, the command line and the module names are small and
go in conventional memory (the first free pages at or above 64 KiB, below the course kernel's stack page), as a
real loader leaves them and where a kernel that maps only the low 2 MiB, like the course's, can read them. The
modules themselves are large and go after the kernel, from 2 MiB up, out of the memory such a kernel manages.
Without a command line there is no hand-off at all (EAX is not the multiboot magic): the course's kernels then
run the program compiled into them, as after a boot from their disk.
"""

from __future__ import annotations

import io
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoaderError

PAGE = 0x1000
DEFAULT_RAM_SIZE = 128 << 20  # what QEMU gives the course's q35 machine without -m
DEVICE_HOLE = (0xA0000, 0x100000)  # VGA memory and BIOS ROM on a PC: no kernel segment may land there
BOOT_PML4 = 0x1000
BOOT_PDPT = 0x2000
BOOT_GDT = 0x3000
BOOT_AREA = (BOOT_PML4, BOOT_GDT + PAGE)  # written by the hand-off: kernel segments must not overlap it
BOOT_STACK_TOP = 0x7C00  # the course's boot loader leaves RSP just below its boot sector
BOOT_DATA_MIN = 0x200000  # modules start here or after the kernel, whichever is higher
# The information, module list and strings: the lowest free pages of this window (above our boot loader's stage
# 2 and its buffers, which end below 0x9000 on the disk path; below the course kernel's stack page 0x7F000, which
# its entry code uses at once). Our boot loader (boot.cc) uses the same first address.
BOOT_INFO_WINDOW = (0x10000, 0x7F000)
MB_MODULES_OFFSET = 0x100  # the module list follows the information block
TEXT_MEMORY = (0xB8000, 0xC0000)  # colour text memory; the BIOS leaves it blank: ' ' on light grey (0x0720)
BLANK_CELL = b"\x20\x07"
MULTIBOOT_MAGIC = 0x2BADB002
MB_FLAG_MEMORY = 1 << 0
MB_FLAG_CMDLINE = 1 << 2
MB_FLAG_MODULES = 1 << 3
KERNEL_CS = 0x08
# ELF64 program headers: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz (p_align not needed).
PHDR_FORMAT = "<IIQQQQQ"
PHDR_SIZE = 56
PT_LOAD = 1
PT_DYNAMIC = 2
PN_XNUM = 0xFFFF  # "more program headers than fit": the count is in section 0


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    vaddr: int
    paddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int  # PF_X 1, PF_W 2, PF_R 4

    @property
    def executable(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True)
class ElfImage:
    """A validated x86-64 executable ELF file."""

    path: Path
    data: bytes = field(repr=False)
    entry: int
    segments: tuple[Segment, ...]


def read_elf(path: Path | str, what: str = "kernel") -> ElfImage:
    """Read and validate an x86-64 ELF executable; every failure is one clear LoaderError."""
    path = Path(path)
    label = f"{what} {path}"
    if not path.exists():
        raise LoaderError(f"{label}: no such file")
    if not path.is_file():
        raise LoaderError(f"{label}: not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LoaderError(f"{label}: cannot read ({e.strerror})") from None
    return parse_elf(data, label, path)


def parse_elf(data: bytes, label: str, path: Path | None = None) -> ElfImage:
    """Validate ELF contents (`label` names it in errors); trailing bytes after the file are allowed."""
    path = path or Path(label)
    if data[:4] != b"\x7fELF":
        raise LoaderError(f"{label}: not an ELF file (bad magic number)")
    if len(data) < 64:
        raise LoaderError(f"{label}: truncated ELF header ({len(data)} bytes)")
    if data[4] != 2:
        bits = {1: "32-bit"}.get(data[4], f"class {data[4]}")
        raise LoaderError(f"{label}: {bits} ELF, but the machine needs a 64-bit ELF")
    if data[5] != 1:
        raise LoaderError(f"{label}: big-endian ELF, but x86-64 is little-endian")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != 62:
        raise LoaderError(f"{label}: ELF for machine {e_machine}, not x86-64 (62)")
    if e_type != 2:
        kind = {0: "ET_NONE", 1: "a relocatable object (ET_REL)", 3: "a shared object or PIE (ET_DYN)",
                4: "a core file (ET_CORE)"}.get(e_type, f"ELF type {e_type}")
        raise LoaderError(f"{label}: {kind}, not an executable (ET_EXEC)")
    entry, e_phoff, e_phentsize, e_phnum = struct.unpack_from("<QQ14xHH", data, 24)
    if e_phnum and (e_phentsize < PHDR_SIZE or e_phoff + e_phentsize * e_phnum > len(data)):
        raise LoaderError(f"{label}: truncated (program headers end at {e_phoff + e_phentsize * e_phnum:#x}"
                          f" but the file has {len(data):#x} bytes)")
    headers = [struct.unpack_from(PHDR_FORMAT, data, e_phoff + i * e_phentsize)
               for i in range(e_phnum if e_phnum != PN_XNUM else 0)]
    if e_phnum == PN_XNUM or any(header[0] == PT_DYNAMIC for header in headers):
        segments = _segments_by_pyelftools(data, label)
    else:
        segments = [Segment(i, vaddr, paddr, offset, filesz, memsz, flags)
                    for i, (p_type, flags, offset, vaddr, paddr, filesz, memsz) in enumerate(headers)
                    if p_type == PT_LOAD and memsz != 0]
    if not segments:
        raise LoaderError(f"{label}: no loadable segments")
    for seg in segments:
        if seg.filesz > seg.memsz:
            raise LoaderError(f"{label}: segment {seg.index} has more file bytes ({seg.filesz:#x}) than memory"
                              f" bytes ({seg.memsz:#x})")
        if seg.offset + seg.filesz > len(data):
            raise LoaderError(f"{label}: truncated (segment {seg.index} needs file bytes {seg.offset:#x}-"
                              f"{seg.offset + seg.filesz:#x} but the file has {len(data):#x})")
    if not any(s.executable and s.vaddr <= entry < s.vaddr + s.memsz for s in segments):
        raise LoaderError(f"{label}: entry point {entry:#x} is not inside an executable segment")
    return ElfImage(path, data, entry, tuple(segments))


def _segments_by_pyelftools(data: bytes, label: str) -> list[Segment]:
    """The loadable segments as pyelftools reads them, for the headers that make it read more of the file than
    the program headers (a PT_DYNAMIC segment: the section table, to find its strings; PN_XNUM: section 0), so
    that such a file is accepted or refused exactly as pyelftools decides. Imported here: a kernel or program
    never needs it."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        segments = []
        for i, seg in enumerate(elf.iter_segments()):
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            segments.append(Segment(i, seg["p_vaddr"], seg["p_paddr"], seg["p_offset"], seg["p_filesz"],
                                    seg["p_memsz"], seg["p_flags"]))
    except (ELFError, struct.error, ValueError, KeyError, IndexError, OverflowError) as e:
        raise LoaderError(f"{label}: malformed ELF ({e})") from None
    return segments


def check_kernel_placement(image: ElfImage, ram_size: int) -> None:
    """Every kernel segment must land in RAM, outside the device hole and the hand-off's own pages."""
    for seg in image.segments:
        start, end = seg.paddr, seg.paddr + seg.memsz
        where = f"kernel {image.path}: segment {seg.index} at physical {start:#x}-{end:#x}"
        if end > ram_size or end < start:
            raise LoaderError(f"{where} lies outside RAM (0x0-{ram_size:#x})")
        if start < DEVICE_HOLE[1] and end > DEVICE_HOLE[0]:
            raise LoaderError(f"{where} overlaps the device hole {DEVICE_HOLE[0]:#x}-{DEVICE_HOLE[1]:#x}")
        if start < BOOT_AREA[1] and end > BOOT_AREA[0]:
            raise LoaderError(f"{where} overlaps the boot page table and GDT at {BOOT_AREA[0]:#x}-"
                              f"{BOOT_AREA[1]:#x}")
        if start < PAGE:
            raise LoaderError(f"{where} overlaps page 0, which the machine keeps unused")


@dataclass(frozen=True)
class Module:
    """A user program handed to the kernel as a multiboot module."""

    name: str
    image: ElfImage


@dataclass(frozen=True)
class BootState:
    """Where the kernel starts and what it finds there."""

    entry: int
    multiboot_info: int
    stack_top: int
    gdt_base: int
    gdt_limit: int
    page_table: int
    boot_data_end: int  # end of the highest page the boot data uses (0 without a hand-off)
    multiboot: bool = True  # EAX = the multiboot magic, RBX = the information


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def write_boot_page_table(mem: memoryview) -> None:
    """The course boot loader's page table: PA 0..1 GiB at VA 0, 0xFFFF8000_00000000 and 0xFFFFFFFF_80000000."""
    mem[BOOT_PML4:BOOT_PDPT + PAGE] = bytes(2 * PAGE)
    present_writable = 0x3
    for slot in (0, 256, 511):
        struct.pack_into("<Q", mem, BOOT_PML4 + 8 * slot, BOOT_PDPT | present_writable)
    huge = 0x80
    for slot in (0, 510):
        struct.pack_into("<Q", mem, BOOT_PDPT + 8 * slot, 0 | present_writable | huge)


def write_boot_gdt(mem: memoryview) -> int:
    """Null descriptor and a 64-bit ring-0 code segment at selector 0x08; returns the GDT limit."""
    code64 = (0xA << 40) | (1 << 44) | (1 << 47) | (1 << 53) | (1 << 55) | 0xFFFF | (0xF << 48)
    struct.pack_into("<QQ", mem, BOOT_GDT, 0, code64)
    return 15


def blank_text_memory(mem: memoryview) -> None:
    """The colour text memory as the BIOS leaves it after setting mode 3: every cell ' ' in light grey on black."""
    start, end = TEXT_MEMORY
    if end <= len(mem):
        mem[start:end] = BLANK_CELL * ((end - start) // 2)


def _overlaps(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start < high and end > low for low, high in ranges)


def place_boot_info(kernel: ElfImage, size: int) -> int | None:
    """The lowest page in BOOT_INFO_WINDOW where `size` bytes of boot information overlap no kernel segment (the
    boot page table and GDT lie below the window); None if the window has no such room."""
    taken = [(seg.paddr & ~(PAGE - 1), _align_up(seg.paddr + seg.memsz, PAGE)) for seg in kernel.segments]
    low, high = BOOT_INFO_WINDOW
    candidates = sorted({low} | {end for _, end in taken if low <= end < high})
    for start in candidates:
        end = start + size
        if end <= high and not _overlaps(start, end, taken):
            return start
    return None


def prepare_boot(mem: memoryview, kernel: ElfImage, command_line: str | None,
                 modules: list[Module]) -> BootState:
    """Load the kernel and the boot data into `mem` (all of guest RAM); return the entry state.

    `command_line` None: no multiboot hand-off (and so no modules), as the course's boot loader does it."""
    ram_size = len(mem)
    check_kernel_placement(kernel, ram_size)
    blank_text_memory(mem)
    for seg in kernel.segments:
        mem[seg.paddr:seg.paddr + seg.filesz] = kernel.data[seg.offset:seg.offset + seg.filesz]
        mem[seg.paddr + seg.filesz:seg.paddr + seg.memsz] = bytes(seg.memsz - seg.filesz)
    write_boot_page_table(mem)
    gdt_limit = write_boot_gdt(mem)
    kernel_end = max(seg.paddr + seg.memsz for seg in kernel.segments)
    if command_line is None:
        return BootState(entry=kernel.entry, multiboot_info=0, stack_top=BOOT_STACK_TOP, gdt_base=BOOT_GDT,
                         gdt_limit=gdt_limit, page_table=BOOT_PML4, boot_data_end=0, multiboot=False)

    strings_offset = MB_MODULES_OFFSET + 16 * len(modules)
    blob = bytearray()

    def add_string(text: str) -> int:
        offset = strings_offset + len(blob)
        blob.extend(text.encode("utf-8") + b"\0")
        return offset

    cmdline_offset = add_string(command_line)
    name_offsets = [add_string(module.name) for module in modules]
    info_size = strings_offset + len(blob)
    modules_start = _align_up(max(BOOT_DATA_MIN, kernel_end), PAGE)
    info = place_boot_info(kernel, info_size)
    if info is None:  # a kernel that fills low memory: the information goes after it, before the modules
        info, modules_start = modules_start, _align_up(modules_start + info_size, PAGE)
    cursor = modules_start
    placed = []
    for module in modules:
        size = len(module.image.data)
        placed.append((cursor, cursor + size))
        cursor = _align_up(cursor + size, PAGE)
    end = max(cursor, _align_up(info + info_size, PAGE))
    if end > ram_size or end > 1 << 32:
        raise LoaderError(f"the kernel and {len(modules)} program(s) need {end >> 20} MiB, more than the "
                          f"{ram_size >> 20} MiB of RAM (multiboot addresses are 32-bit)")
    info_end = _align_up(info + info_size, PAGE)
    mem[info:info_end] = bytes(info_end - info)
    mem[info + strings_offset:info + info_size] = blob
    if cursor > modules_start:
        mem[modules_start:cursor] = bytes(cursor - modules_start)
    entries = info + MB_MODULES_OFFSET
    for i, ((start, stop), module, name_offset) in enumerate(zip(placed, modules, name_offsets, strict=True)):
        mem[start:stop] = module.image.data
        struct.pack_into("<IIII", mem, entries + 16 * i, start, stop, info + name_offset, 0)
    flags = MB_FLAG_MEMORY | MB_FLAG_CMDLINE | MB_FLAG_MODULES
    mem_lower_kib = 640
    mem_upper_kib = (ram_size - 0x100000) // 1024
    struct.pack_into("<IIIIIII", mem, info, flags, mem_lower_kib, mem_upper_kib, 0, info + cmdline_offset,
                     len(modules), entries)
    return BootState(entry=kernel.entry, multiboot_info=info, stack_top=BOOT_STACK_TOP, gdt_base=BOOT_GDT,
                     gdt_limit=gdt_limit, page_table=BOOT_PML4, boot_data_end=end)


KERNEL_SEARCH_BYTES = 64 << 20  # the kernel is looked for (and may extend) this far into a disk image


def find_kernel_in_image(image: bytes | mmap.mmap) -> ElfImage | None:
    """The kernel ELF inside a disk image: the first x86-64 executable that starts on a sector boundary.

    Both our image layout and the course's (the kernel at sector 1) keep the kernel file whole and
    sector-aligned, so the harness can know the kernel's code without being told. The search is bounded, so a
    huge image (mapped, not read) is read only in its first KERNEL_SEARCH_BYTES."""
    at = image.find(b"\x7fELF\x02\x01", 512, KERNEL_SEARCH_BYTES)
    while at >= 0:
        if at % 512 == 0:
            try:
                return parse_elf(bytes(image[at:at + KERNEL_SEARCH_BYTES]),
                                 f"kernel in the disk image at sector {at // 512}")
            except LoaderError:
                pass
        at = image.find(b"\x7fELF\x02\x01", at + 1, KERNEL_SEARCH_BYTES)
    return None
