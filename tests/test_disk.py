"""The disk-boot path: a boot sector in real mode, BIOS calls, the ATA disk in PIO mode, power-off."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import project
from harness.machine import Machine, MachineConfig, StopKind
from harness.pc.errors import LoaderError
from harness.pc.wallguard import CHECK_EVERY_NS

from .cli_in_process import run_cli

BOOT_SECTOR = r"""
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $0xec00, %ax            # tell the BIOS we will run in long mode (CF must come back clear)
    mov $2, %bx
    int $0x15
    jc fail
    mov $0x0e48, %ax            # teletype 'H', 'i'
    int $0x10
    mov $0x0e69, %ax
    int $0x10
    # ATA PIO: read sector 1 (LBA28) to 0x8000
    mov $0x1f2, %dx
    mov $1, %al
    out %al, %dx
    mov $0x1f3, %dx
    mov $1, %al
    out %al, %dx
    mov $0x1f4, %dx
    xor %al, %al
    out %al, %dx
    mov $0x1f5, %dx
    out %al, %dx
    mov $0x1f6, %dx
    mov $0xe0, %al
    out %al, %dx
    mov $0x1f7, %dx
    mov $0x20, %al
    out %al, %dx
wait:
    in %dx, %al
    and $0xc0, %al
    cmp $0x40, %al
    jne wait
    mov $0x8000, %di
    mov $128, %cx
    mov $0x1f0, %dx
    cld
    rep insl
    # log the first byte of the sector on the parallel port, then power off
    mov 0x8000, %al
    mov $0x378, %dx
    out %al, %dx
    mov $0x37a, %dx
    mov $0x0d, %al
    out %al, %dx
    mov $0x0c, %al
    out %al, %dx
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
fail:
    hlt
    jmp fail
    .org 510
    .byte 0x55, 0xaa
"""


def boot_sector(source: str = BOOT_SECTOR) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "b.s").write_text(source)
        subprocess.run(["as", "--32", "-o", d / "b.o", d / "b.s"], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "-e", "_start", "--oformat", "binary",
                        "-o", d / "b.bin", d / "b.o"], check=True, capture_output=True)
        return (d / "b.bin").read_bytes()


def test_a_boot_sector_uses_the_bios_reads_the_disk_and_powers_off() -> None:
    sector1 = b"W" + bytes(range(1, 256)) + bytes(256)
    image = boot_sector() + sector1 + bytes(512 * 6)
    machine = Machine(MachineConfig(ram_size=8 << 20))
    machine.boot_disk(image)
    stop = machine.run(max_time_ns=100_000_000)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert machine.screen_text().startswith("Hi")
    assert bytes(machine.memory[0x8000:0x8200]) == sector1  # rep insl through the ATA data port
    assert bytes(machine.log.data) == b"W"


DIVIDE_ERROR_LOOP = r"""
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    movw $handler, 0            # IVT[0] (#DE) -> handler, which returns to the faulting `div`
    movw $0, 2
again:
    xor %bx, %bx
    mov $1, %ax
    div %bl
    jmp again
handler:
    iret
    .org 510
    .byte 0x55, 0xaa
"""


def test_a_real_mode_divide_error_loop_is_ended_by_the_wall_clock_guard_inside_its_slice() -> None:
    """Each #DE is delivered by the harness (a call into Python) and costs a few instructions of virtual time,
    so a virtual millisecond takes seconds of host time (over 4,000x): the guard, looked at between slices
    only, fired 24 s late. Its watchdog now stops the engine inside the slice, with the guard's own line."""
    machine = Machine(MachineConfig(ram_size=8 << 20))
    machine.boot_disk(boot_sector(DIVIDE_ERROR_LOOP) + bytes(512 * 3))
    started = machine.clock.now_ns()
    stop = machine.run(max_time_ns=30 * 10**9, max_wall_s=0.2)
    assert stop.kind is StopKind.WALL, stop
    assert stop.message.startswith("the wall-clock guard fired") and "(budget 30 s)" in stop.message
    assert machine.cpu.deliveries > 0  # the loop ran ...
    assert machine.clock.now_ns() - started < CHECK_EVERY_NS  # ... and was stopped inside its first slice


def test_an_image_without_a_boot_signature_is_refused() -> None:
    machine = Machine(MachineConfig(ram_size=8 << 20))
    with pytest.raises(LoaderError, match="no boot signature"):
        machine.boot_disk(bytes(1024))


def _trace_disk(image: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run_cli("trace", "--disk", str(image), "--no-build", *options)


def test_trace_of_an_image_from_our_build_finds_the_build_s_symbols(build_tree: project.BuildTree) -> None:
    for image in ("weensyos.img", "weensyos-course.img"):
        result = _trace_disk(build_tree.directory / image, "--build-dir", str(build_tree.directory))
        assert result.returncode == 0, result.stderr
        assert "[pid 1] getpid() = 1" in result.stdout and "[kernel]" not in result.stdout
        assert "note:" not in result.stderr


def test_trace_of_an_image_without_symbols_says_once_how_to_give_them(build_tree: project.BuildTree,
                                                                      tmp_path: Path) -> None:
    image = build_tree.directory / "weensyos.img"
    result = _trace_disk(image, "--build-dir", str(tmp_path))  # no build there to match
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("note:") == 1 and "give its ELF with --kernel" in result.stderr
    with_kernel = _trace_disk(image, "--build-dir", str(tmp_path), "--kernel", str(build_tree.kernel))
    assert "[pid 1] +++ created hello +++" in with_kernel.stdout and "note:" not in with_kernel.stderr
