"""Booting from a disk image (issue 7, the guest's side): the boot loader binary, mkimage.py's layout, the
course-mode kernel, and the images booted in QEMU, the reference PC (skipped when QEMU is not installed, except
where WEENSY_REQUIRE_QEMU=1 makes it required, as .ci/run does)."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from elftools.elf.elffile import ELFFile

from harness import project
from harness.api import boot_machine
from harness.front.qemu import boot_image, qemu_available
from harness.machine import Machine, MachineConfig, StopKind

pytestmark = pytest.mark.cost(2)  # seconds, roughly: the session starts the costly modules first

SOURCE = project.PACKAGE_ROOT / "weensyos-src"
SECTOR = 512
DIRECTORY = struct.Struct("<8sII256s")
ENTRY = struct.Struct("<32sII")

REQUIRE_QEMU = "WEENSY_REQUIRE_QEMU"  # .ci/run sets it: in CI a missing QEMU is a failure, not a skip


def check_qemu() -> None:
    """QEMU is the reference PC the disk images are compared with. Without it these tests are skipped, with
    the reason, except where it is required (`WEENSY_REQUIRE_QEMU=1`, as in CI): there its absence fails."""
    if qemu_available():
        return
    message = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if os.environ.get(REQUIRE_QEMU) == "1":
        pytest.fail(f"{message}, and {REQUIRE_QEMU}=1 requires the cross-check against QEMU")
    pytest.skip(f"{message}: the cross-check against QEMU is skipped")


def needs_qemu(test):  # type: ignore[no-untyped-def]
    @functools.wraps(test)
    def check(*args, **kwargs):  # type: ignore[no-untyped-def]
        check_qemu()
        return test(*args, **kwargs)

    return check


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mkimage() -> ModuleType:
    return _load(SOURCE / "mkimage.py", "weensyos_mkimage")


def _directory(image: bytes) -> tuple[int, str, list[tuple[str, int, int]]]:
    """(version, command, [(name, first sector, size)]) of an image; the boot loader ends at a sector."""
    boot_sectors = 1
    while image[boot_sectors * SECTOR:boot_sectors * SECTOR + 8] != b"WeensyOS":
        boot_sectors += 1
        assert boot_sectors < 300, "no directory"
    base = boot_sectors * SECTOR
    _, version, count, command = DIRECTORY.unpack_from(image, base)
    entries = []
    for i in range(count):
        name, lba, size = ENTRY.unpack_from(image, base + DIRECTORY.size + i * ENTRY.size)
        entries.append((name.rstrip(b"\0").decode(), lba, size))
    return version, command.rstrip(b"\0").decode(), entries


def _segments(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(address, memory size, flags, file bytes) of every loadable segment."""
    elf = ELFFile(io.BytesIO(data))
    return [(s["p_vaddr"], s["p_memsz"], s["p_flags"], s.data()) for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"]


def test_the_boot_loader_is_a_boot_sector_and_whole_sectors(build_tree: project.BuildTree) -> None:
    boot = (build_tree.directory / "boot").read_bytes()
    assert boot[510:512] == b"\x55\xaa"
    assert len(boot) % SECTOR == 0 and SECTOR < len(boot) <= 257 * SECTOR


def test_the_directory_names_the_kernel_and_every_program_with_their_loadable_bytes(
        build_tree: project.BuildTree, mkimage: ModuleType) -> None:
    programs = build_tree.programs()
    image = mkimage.build_image((build_tree.directory / "boot").read_bytes(), build_tree.kernel.read_bytes(),
                                [(name, path.read_bytes()) for name, path in programs.items()], "fault hello")
    assert len(image) % SECTOR == 0
    version, command, entries = _directory(image)
    assert (version, command) == (1, "fault hello")
    assert [name for name, _, _ in entries] == ["kernel", *programs]
    files = [build_tree.kernel, *programs.values()]
    previous_end = 0
    for (name, lba, size), path in zip(entries, files, strict=True):
        assert lba >= previous_end, f"{name} overlaps the file before it"
        previous_end = lba + (size + SECTOR - 1) // SECTOR
        stored = image[lba * SECTOR:lba * SECTOR + size]
        assert _segments(stored) == _segments(path.read_bytes()), name
    assert previous_end * SECTOR <= len(image)


def test_make_builds_a_hello_image_and_a_course_image_with_the_kernel_alone(build_tree: project.BuildTree) -> None:
    _, command, entries = _directory((build_tree.directory / "weensyos.img").read_bytes())
    assert command == "hello" and len(entries) == 1 + len(build_tree.programs())
    _, _, entries = _directory((build_tree.directory / "weensyos-course.img").read_bytes())
    assert [name for name, _, _ in entries] == ["kernel"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--command", "x" * 256], "at most 255 bytes"),
    (["--program", "hello"], "expected NAME=ELF"),
    (["--program", "a b={build}/p-hello"], "no spaces"),
    (["--no-programs", "--program", "hello=x"], "contradict"),
    (["--kernel", "/nonexistent"], "cannot read"),
])
def test_mkimage_refuses_bad_input_with_one_line(build_tree: project.BuildTree, tmp_path: Path,
                                                 arguments: list[str], message: str) -> None:
    arguments = [argument.format(build=build_tree.directory) for argument in arguments]
    result = subprocess.run([sys.executable, str(SOURCE / "mkimage.py"), "--build", str(build_tree.directory),
                             "-o", str(tmp_path / "out.img"), *arguments], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("mkimage: ") and message in result.stderr
    assert not (tmp_path / "out.img").exists()


def test_course_mode_embeds_compact_copies_of_every_program(build_tree: project.BuildTree) -> None:
    for name, path in build_tree.programs().items():
        compact = (build_tree.directory / "obj" / "course" / f"p-{name}").read_bytes()
        assert _segments(compact) == _segments(path.read_bytes()), name
        assert len(compact) < path.stat().st_size // 4


def test_course_mode_takes_the_multiboot_command_line_and_ignores_modules(build_tree: project.BuildTree) -> None:
    machine = boot_machine(build_tree.directory / "kernel-course", "fault hello", {})
    stop = machine.run(max_time_ns=int(5e9))
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert machine.log.lines()[0] == 'weensyos: booting, command "fault hello"'
    assert "Hello from WeensyOS process 2!" in machine.screen_text()


@needs_qemu
@pytest.mark.parametrize("command", ["hello", "fault", "selftest", "eve"])
def test_qemu_boots_the_image_to_the_same_log_and_screen_as_the_elf_path(
        build_tree: project.BuildTree, mkimage: ModuleType, tmp_path: Path, command: str) -> None:
    # One process each, so the output cannot depend on where timer interrupts fall: QEMU's timer runs on
    # wall-clock time (a loaded host preempts sooner), the harness's on virtual time. With two or more
    # processes (even "fault hello") the order of lines on the screen can differ.
    image = tmp_path / "test.img"
    assert mkimage.main(["--build", str(build_tree.directory), "--command", command, "-o", str(image)]) == 0
    run = boot_image(image, timeout=20)
    assert run.powered_off, run.log
    # The same image in the harness, from its boot sector (the disk path) ...
    disk = Machine(MachineConfig())
    disk.boot_disk(image.read_bytes())
    stop = disk.run(max_time_ns=int(10e9))
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert disk.log.lines() == run.log.splitlines()
    assert disk.screen_text() == run.text
    # ... and the same kernel and programs through the harness's own hand-off (the ELF path).
    machine = boot_machine(build_tree.kernel, command, build_tree.programs())
    stop = machine.run(max_time_ns=int(10e9))
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert run.log.splitlines() == machine.log.lines()
    assert run.text == machine.screen_text()


@needs_qemu
def test_qemu_boots_the_course_image_without_multiboot_to_the_compiled_in_command(
        build_tree: project.BuildTree) -> None:
    image = build_tree.directory / "weensyos-course.img"
    run = boot_image(image, timeout=20)
    assert run.powered_off, run.log
    assert run.log.splitlines()[0] == 'weensyos: booting, command "hello"'
    assert run.lines[0].startswith("Hello from WeensyOS process 1!")
    disk = Machine(MachineConfig())  # the harness's disk path: a kernel that embeds its programs, no multiboot
    disk.boot_disk(image.read_bytes())
    stop = disk.run(max_time_ns=int(10e9))
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert disk.log.lines() == run.log.splitlines()
    assert disk.screen_text() == run.text


@pytest.mark.parametrize(("required", "outcome"), [("", "1 skipped"), ("1", "1 failed")])
def test_without_qemu_the_cross_check_is_skipped_with_its_reason_unless_required(
        build_tree: project.BuildTree, tmp_path: Path, required: str, outcome: str) -> None:
    """QEMU hidden from PATH: the QEMU test is skipped and says why, or fails where it is required."""
    env = {**os.environ, "PATH": str(tmp_path), "WEENSY_BUILD_DIR": str(build_tree.directory),
           "WEENSY_NO_BUILD": "1", REQUIRE_QEMU: required}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rsf",
                             f"{Path(__file__)}::test_qemu_boots_the_course_image_without_multiboot_to_the_"
                             "compiled_in_command"], capture_output=True, text=True, env=env, timeout=300,
                            cwd=project.PACKAGE_ROOT)
    assert outcome in result.stdout, result.stdout
    assert "qemu-system-x86_64 is not installed" in result.stdout
