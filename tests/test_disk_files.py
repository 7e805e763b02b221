"""Disk images are untrusted files: checked, mapped lazily (never read whole), and a damaged one boots or fails
with one clear line; the guest's disk writes never reach the file."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness import project
from harness.machine import Machine, MachineConfig, StopKind
from harness.pc.devices import ata
from harness.pc.diskimage import open_image
from harness.pc.errors import HarnessError
from harness.pc.symbols import SymbolTable

from .cli_in_process import run_cli
from .test_disk import boot_sector as assemble_boot_sector

POWER_OFF = """
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
1:  hlt
    jmp 1b
"""


def boot_sector(body: str) -> bytes:
    """`body` (16-bit assembly) then a power-off, as a boot sector."""
    return assemble_boot_sector(f"    .code16\n    .globl _start\n_start:\n{body}\n{POWER_OFF}\n    .org 510\n"
                                "    .byte 0x55, 0xaa\n")


def harness_process(build_tree: project.BuildTree, *args: str) -> subprocess.CompletedProcess[str]:
    """A real process: for a file that could make the harness wait forever, and for its peak memory."""
    return subprocess.run([sys.executable, "-m", "harness", "boot", "--headless", "--no-build", "--build-dir",
                           str(build_tree.directory), *args], capture_output=True, text=True, timeout=120)


def harness(build_tree: project.BuildTree, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("boot", "--headless", "--no-build", "--build-dir", str(build_tree.directory), *args)


def one_clear_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_dev_zero_as_a_disk_is_one_clear_line_not_an_endless_read(build_tree: project.BuildTree) -> None:
    one_clear_line(harness_process(build_tree, "--disk", "/dev/zero"), "not a regular file")


def test_a_fifo_as_a_disk_is_refused_without_waiting_for_a_writer(build_tree: project.BuildTree,
                                                                   tmp_path: Path) -> None:
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    one_clear_line(harness_process(build_tree, "--disk", str(fifo)), "not a regular file")


def test_tiny_and_missing_images_are_one_clear_line(build_tree: project.BuildTree, tmp_path: Path) -> None:
    (tmp_path / "tiny.img").write_bytes(b"\x55\xaa")
    one_clear_line(harness(build_tree, "--disk", str(tmp_path / "tiny.img")), "smaller than one 512-byte")
    one_clear_line(harness(build_tree, "--disk", str(tmp_path / "none.img")), "no such file")
    one_clear_line(harness(build_tree, "--disk", str(tmp_path)), "not a regular file")


def test_a_3_gb_image_boots_without_being_read_into_memory(build_tree: project.BuildTree, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        f.write(boot_sector("    mov $0x0e41, %ax\n    int $0x10"))
        f.truncate(3 << 30)  # sparse: 3 GB on paper, nothing on disk
    result = harness_process(build_tree, "--disk", str(image))
    assert result.returncode == 0, result.stderr
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 1 << 20, f"a child used {peak_kib >> 10} MiB: the image was read whole"


def test_guest_writes_to_a_mapped_image_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    original = bytes(range(256)) * 8
    path.write_bytes(original)
    disk = ata.AtaDisk(open_image(path))
    disk.io_write(ata.PORT_SECTOR_COUNT, 1, 1)
    disk.io_write(ata.PORT_LBA_LOW, 1, 1)
    disk.io_write(ata.PORT_DRIVE_HEAD, 1, 0xE0)
    disk.io_write(ata.PORT_STATUS, 1, ata.CMD_WRITE_SECTORS)
    for _ in range(256):
        disk.io_write(ata.PORT_DATA, 2, 0xBEEF)
    assert disk.disk[512:514] == b"\xef\xbe"  # the guest sees its write
    assert path.read_bytes() == original  # the file does not


def test_a_last_partial_sector_reads_zero_padded(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(512) + b"\x11" * 100)  # one sector and a bit
    disk = ata.AtaDisk(open_image(path))
    disk.io_write(ata.PORT_SECTOR_COUNT, 1, 1)
    disk.io_write(ata.PORT_LBA_LOW, 1, 1)
    disk.io_write(ata.PORT_DRIVE_HEAD, 1, 0xE0)
    disk.io_write(ata.PORT_STATUS, 1, ata.CMD_READ_SECTORS)
    words = [disk.io_read(ata.PORT_DATA, 2) for _ in range(256)]
    data = b"".join(struct.pack("<H", w) for w in words)
    assert data == b"\x11" * 100 + bytes(412)


def test_a_bios_disk_packet_outside_ram_fails_the_call_not_the_harness() -> None:
    image = boot_sector("""
    mov $0xffff, %ax
    mov %ax, %ds
    mov $0xfff0, %si            # DS:SI = 0x10ffe0: past the end of 1 MiB of RAM
    mov $0x42, %ah
    mov $0x80, %dl
    int $0x13
    jnc 2f
    mov $0x0e46, %ax            # 'F': the BIOS reported the failure
    int $0x10
2:""")
    machine = Machine(MachineConfig(ram_size=1 << 20))
    machine.boot_disk(image + bytes(512))
    stop = machine.run(max_time_ns=100_000_000)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert machine.screen_text().startswith("F")


def test_a_kernel_with_a_damaged_symbol_table_still_boots_without_symbols(build_tree: project.BuildTree) -> None:
    kernel = bytearray(build_tree.kernel.read_bytes())
    shoff, = struct.unpack_from("<Q", kernel, 0x28)
    shentsize, _, shstrndx = struct.unpack_from("<HHH", kernel, 0x3A)
    struct.pack_into("<Q", kernel, shoff + shstrndx * shentsize + 24, 0xFFFF_FFFF_FFFF_FF00)  # its sh_offset
    assert SymbolTable.from_elf(build_tree.kernel).address_of("syscall") is not None
    assert SymbolTable.from_elf(bytes(kernel)).address_of("syscall") is None  # unreadable: no symbols
    image = (build_tree.directory / "weensyos.img").read_bytes()
    at = 4096
    while image[at:at + 4] != b"\x7fELF":  # the image's own (stripped) kernel starts on a sector boundary
        at += 512
    crafted = image[:at] + bytes(kernel)  # the full kernel, with its damaged section headers, in its place
    machine = Machine(MachineConfig())
    machine.boot_disk(crafted)
    assert machine.symbols.address_of("syscall") is None
    machine.run(max_time_ns=20_000_000)  # whatever the guest makes of it, the harness goes on


def test_open_image_refuses_special_files() -> None:
    with pytest.raises(HarnessError, match="not a regular file"):
        open_image(Path("/dev/null"))
