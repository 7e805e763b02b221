"""The loader turns every bad kernel or program file into one clear error, and places a good one exactly."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.pc.errors import LoaderError
from harness.pc.loader import (
    BOOT_DATA_MIN,
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
    assert info >= BOOT_DATA_MIN
    flags, _, _, _, cmdline, count, entries = struct.unpack_from("<7I", memory, info)
    assert flags & MB_FLAG_CMDLINE and flags & MB_FLAG_MODULES and count == 1
    assert bytes(memory[cmdline:cmdline + 12]) == b"hello world\0"
    start, end, name, _ = struct.unpack_from("<4I", memory, entries)
    assert bytes(memory[start:end]) == program.data and start % 4096 == 0
    assert bytes(memory[name:name + 6]) == b"hello\0"
