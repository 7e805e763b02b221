"""The loader turns every bad kernel or program file into one clear error, and places a good one exactly."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.pc.errors import LoaderError
from harness.pc.loader import (
    BOOT_DATA_MIN,
    BOOT_INFO_WINDOW,
    MB_FLAG_CMDLINE,
    MB_FLAG_MODULES,
    ElfImage,
    Module,
    prepare_boot,
    read_elf,
)

from .elfmaker import ElfSpec, make_elf


def write(tmp_path: Path, data: bytes, name: str = "kernel") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(LoaderError) as info:
        read_elf(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_a_well_formed_executable_is_accepted(tmp_path: Path) -> None:
    image = read_elf(write(tmp_path, make_elf()))
    assert image.entry == 0x40000
    assert [(s.paddr, s.filesz, s.memsz) for s in image.segments] == [(0x40000, 16, 0x1000)]


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in load_error(tmp_path / "nothing-here")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    assert "not a file" in load_error(tmp_path)


def test_not_elf(tmp_path: Path) -> None:
    assert "not an ELF file" in load_error(write(tmp_path, b"#!/bin/sh\necho hello\n"))


def test_32_bit_elf(tmp_path: Path) -> None:
    assert "32-bit ELF" in load_error(write(tmp_path, make_elf(ElfSpec(elf_class=1))))


def test_wrong_machine(tmp_path: Path) -> None:
    assert "not x86-64" in load_error(write(tmp_path, make_elf(ElfSpec(machine=183))))  # AArch64


@pytest.mark.parametrize("e_type, words", [(1, "relocatable object"), (3, "shared object or PIE"), (4, "core")])
def test_not_an_executable(tmp_path: Path, e_type: int, words: str) -> None:
    message = load_error(write(tmp_path, make_elf(ElfSpec(e_type=e_type))))
    assert words in message and "not an executable" in message


def test_truncated_segment(tmp_path: Path) -> None:
    data = make_elf()
    assert "truncated" in load_error(write(tmp_path, data[:-8]))


def test_truncated_header(tmp_path: Path) -> None:
    assert "truncated" in load_error(write(tmp_path, make_elf()[:40]))


def test_truncated_program_headers(tmp_path: Path) -> None:
    assert "truncated" in load_error(write(tmp_path, make_elf()[:80]))


def test_entry_outside_code(tmp_path: Path) -> None:
    assert "entry point 0x999999" in load_error(write(tmp_path, make_elf(ElfSpec(entry=0x999999))))


def boot_error(tmp_path: Path, spec: ElfSpec) -> str:
    image = read_elf(write(tmp_path, make_elf(spec)))
    memory = memoryview(bytearray(16 << 20))
    with pytest.raises(LoaderError) as info:
        prepare_boot(memory, image, "", [])
    return str(info.value)


def test_segment_outside_ram(tmp_path: Path) -> None:
    spec = ElfSpec(entry=0x2000000, segments=[(0x2000000, 0x2000000, 5, b"\xf4", 0x1000)])
    assert "outside RAM" in boot_error(tmp_path, spec)


def test_segment_over_the_device_hole(tmp_path: Path) -> None:
    spec = ElfSpec(entry=0xB8000, segments=[(0xB8000, 0xB8000, 5, b"\xf4", 0x1000)])
    assert "device hole 0xa0000-0x100000" in boot_error(tmp_path, spec)


def test_segment_over_the_boot_page_table(tmp_path: Path) -> None:
    spec = ElfSpec(entry=0x1000, segments=[(0x1000, 0x1000, 5, b"\xf4", 0x1000)])
    assert "boot page table" in boot_error(tmp_path, spec)


def test_hand_off_places_kernel_page_table_and_multiboot_modules(tmp_path: Path) -> None:
    kernel = read_elf(write(tmp_path, make_elf()))
    program = ElfImage(tmp_path / "p-x", make_elf(), 0x40000, kernel.segments)
    memory = memoryview(bytearray(16 << 20))
    state = prepare_boot(memory, kernel, "hello world", [Module("hello", program)])
    assert memory[0x40000:0x40010] == b"\xf4" * 16 and memory[0x40010:0x41000] == bytes(0xFF0)
    pml4 = struct.unpack_from("<512Q", memory, 0x1000)
    assert pml4[0] == pml4[256] == pml4[511] == 0x2003
    pdpt = struct.unpack_from("<512Q", memory, 0x2000)
    assert pdpt[0] == 0x83 and pdpt[510] == 0x83
    info = state.multiboot_info
    assert state.multiboot and info == BOOT_INFO_WINDOW[0]  # low memory: a kernel mapping only 2 MiB reads it
    flags, _, _, _, cmdline, count, entries = struct.unpack_from("<7I", memory, info)
    assert flags & MB_FLAG_CMDLINE and flags & MB_FLAG_MODULES and count == 1
    assert bytes(memory[cmdline:cmdline + 12]) == b"hello world\0" and cmdline < 0x200000
    start, end, name, _ = struct.unpack_from("<4I", memory, entries)
    assert bytes(memory[start:end]) == program.data and start % 4096 == 0
    assert start >= BOOT_DATA_MIN  # modules stay out of the memory a course kernel manages
    assert bytes(memory[name:name + 6]) == b"hello\0" and name < 0x200000


def boot_info_address(tmp_path: Path, segments: list[tuple[int, int, int, bytes, int]]) -> int:
    kernel = read_elf(write(tmp_path, make_elf(ElfSpec(entry=segments[0][0], segments=segments))))
    memory = memoryview(bytearray(32 << 20))
    state = prepare_boot(memory, kernel, "hello", [])
    info_end = state.multiboot_info + 0x100 + len("hello") + 1
    for seg in kernel.segments:  # never on the kernel
        assert info_end <= seg.paddr or state.multiboot_info >= seg.paddr + seg.memsz
    assert bytes(memory[struct.unpack_from("<I", memory, state.multiboot_info + 16)[0]:][:6]) == b"hello\0"
    return state.multiboot_info


def test_boot_information_goes_to_the_first_free_low_pages_around_the_kernel(tmp_path: Path) -> None:
    assert boot_info_address(tmp_path, [(0x10000, 0x10000, 5, b"\xf4", 0x1800)]) == 0x12000
    assert boot_info_address(tmp_path, [(0x10000, 0x10000, 5, b"\xf4", 0x1000),
                                        (0x11000, 0x11000, 6, b"", 0x3000)]) == 0x14000


def test_a_kernel_filling_low_memory_gets_its_boot_information_after_it(tmp_path: Path) -> None:
    assert boot_info_address(tmp_path, [(0x8000, 0x8000, 5, b"\xf4", 0x98000)]) == BOOT_DATA_MIN
    assert boot_info_address(tmp_path, [(0x8000, 0x8000, 5, b"\xf4", 0x98000),
                                        (0x1000000, 0x1000000, 4, b"symbols", 0x5000)]) == 0x1005000


def test_without_a_command_line_there_is_no_hand_off_and_the_screen_is_as_the_bios_leaves_it(
        tmp_path: Path) -> None:
    kernel = read_elf(write(tmp_path, make_elf()))
    memory = memoryview(bytearray(16 << 20))
    state = prepare_boot(memory, kernel, None, [])
    assert not state.multiboot and state.multiboot_info == 0
    assert bytes(memory[BOOT_INFO_WINDOW[0]:BOOT_INFO_WINDOW[0] + 0x1000]) == bytes(0x1000)
    assert bytes(memory[0xB8000:0xC0000]) == b"\x20\x07" * 0x4000  # ' ' in light grey on black
    assert memory[0xB7FFF] == 0 and memory[0xC0000] == 0


def test_a_symbol_table_segment_at_16_mib_stays_whole_and_the_boot_data_avoids_it(tmp_path: Path) -> None:
    """Like the course's obj/kernel: text at 0x40000 and its symbol table loaded at 0x1000000 (SYMTAB_ADDR)."""
    symbols = bytes(range(256)) * 19
    kernel = read_elf(write(tmp_path, make_elf(ElfSpec(segments=[(0x40000, 0x40000, 5, b"\xf4" * 16, 0x28000),
                                                                 (0x1000000, 0x1000000, 4, symbols, len(symbols))]))))
    program = ElfImage(tmp_path / "p-x", make_elf(), 0x40000, kernel.segments)
    memory = memoryview(bytearray(32 << 20))
    state = prepare_boot(memory, kernel, "hello", [Module("hello", program)])
    assert state.multiboot_info == BOOT_INFO_WINDOW[0]
    assert bytes(memory[0x1000000:0x1000000 + len(symbols)]) == symbols
    start, end, _, _ = struct.unpack_from("<4I", memory, state.multiboot_info + 0x100)
    assert start == 0x1002000 and bytes(memory[start:end]) == program.data  # the first page after it
