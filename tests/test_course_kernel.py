"""A kernel built to the course's contract boots the same from its ELF file and from its disk image, and as QEMU
boots it: `build/kernel-course` switches to a page table that maps only the low 2 MiB before it reads its command
line, and without a command line runs the program compiled into it (`WEENSYOS_FIRST_PROCESS`)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import project
from harness.api import boot_machine
from harness.front.qemu import boot_image
from harness.machine import Machine, MachineConfig, StopKind
from harness.observe.syscalls import choose_table
from harness.pc.loader import read_elf
from harness.pc.symbols import SymbolTable

from .cli_in_process import run_cli
from .test_disk_image import needs_qemu

pytestmark = pytest.mark.cost(2)  # seconds, roughly: the session starts the costly modules first

SOURCE = project.PACKAGE_ROOT / "weensyos-src"
TEXT_PAGE = (0xB8000, 0x1000)  # the screen, then (in the same page) the kernel's and programs' cursor position
TICKS_MIRROR = 0xFF0  # offset in that page of the kernel's copy of its tick count


@dataclass(frozen=True)
class Outcome:
    """Everything deterministic a run leaves: how it ended, the log, the whole text page (screen and the
    cursor position the kernel keeps there), the hardware cursor and the kernel's own tick count."""

    stop: StopKind
    log: list[str]
    text_page: bytes
    cursor: int
    ticks: int


def finish(machine: Machine, kernel: Path, max_time: float = 10.0) -> Outcome:
    stop = machine.run(max_time_ns=int(max_time * 1e9))
    ticks_at = SymbolTable.from_elf(kernel).address_of("ticks")
    assert ticks_at is not None
    start, length = TEXT_PAGE
    return Outcome(stop.kind, machine.log.lines(), bytes(machine.memory[start:start + length]),
                   machine.console.cursor(), struct.unpack_from("<Q", machine.memory, ticks_at)[0])


def from_elf(kernel: Path, command: str | None) -> Outcome:
    return finish(boot_machine(kernel, command, {}), kernel)


def from_disk(image: Path, kernel: Path) -> Outcome:
    machine = Machine(MachineConfig())
    machine.boot_disk(image.read_bytes())
    return finish(machine, kernel)


def course_image_with_command(build_tree: project.BuildTree, tmp_path: Path, command: str) -> Path:
    """kernel-course and every program, with a command: our loader then hands over a multiboot command line
    (the course-mode kernel ignores the modules and starts its own copies of the programs)."""
    image = tmp_path / "course-command.img"
    subprocess.run([sys.executable, str(SOURCE / "mkimage.py"), "--build", str(build_tree.directory), "--kernel",
                    str(build_tree.directory / "kernel-course"), "--command", command, "-o", str(image)],
                   check=True, capture_output=True)
    return image


@pytest.fixture(scope="module")
def pipe_course(build_tree: project.BuildTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build whose course kernel has `pipe` compiled in (make WEENSYOS_FIRST_PROCESS=pipe), made from a copy of
    the session's build so that make rebuilds only the course kernel and its image."""
    directory = tmp_path_factory.mktemp("course-pipe") / "build"
    shutil.copytree(build_tree.directory, directory)  # copy2 keeps the times: the rest stays up to date
    result = subprocess.run(["make", "-C", str(SOURCE), f"BUILD={directory}", "WEENSYOS_FIRST_PROCESS=pipe",
                             str(directory / "kernel-course"), str(directory / "weensyos-course.img")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def test_without_a_command_line_the_elf_runs_the_compiled_in_program(pipe_course: Path) -> None:
    kernel = pipe_course / "kernel-course"
    machine = boot_machine(kernel, None, {})
    assert machine.registers()["rax"] != 0x2BADB002  # no multiboot hand-off at all, as from the course's disk
    outcome = finish(machine, kernel)
    assert outcome.stop is StopKind.POWER_OFF
    assert outcome.log[0] == 'weensyos: booting, command "pipe"'
    assert "200 messages in" in machine.screen_text() and "200 intact" in machine.screen_text()


@pytest.mark.parametrize("which", ["hello", "pipe"])
def test_the_compiled_in_program_runs_the_same_from_the_elf_and_from_the_disk_image(
        build_tree: project.BuildTree, pipe_course: Path, which: str) -> None:
    directory = build_tree.directory if which == "hello" else pipe_course
    kernel = directory / "kernel-course"
    elf = from_elf(kernel, None)
    disk = from_disk(directory / "weensyos-course.img", kernel)
    assert elf.stop is StopKind.POWER_OFF and elf.log[0] == f'weensyos: booting, command "{which}"'
    assert elf == disk


def test_named_programs_run_the_same_from_the_elf_and_from_the_disk_image(build_tree: project.BuildTree,
                                                                          tmp_path: Path) -> None:
    kernel = build_tree.directory / "kernel-course"
    elf = from_elf(kernel, "fault hello")
    disk = from_disk(course_image_with_command(build_tree, tmp_path, "fault hello"), kernel)
    assert elf.stop is StopKind.POWER_OFF
    assert elf.log[0] == 'weensyos: booting, command "fault hello"'
    assert any(line.startswith("process 2 (hello) exited with status 0;") for line in elf.log)
    assert elf == disk


def test_the_course_kernel_reads_its_command_line_only_through_the_low_2_mib(
        build_tree: project.BuildTree) -> None:
    """What a loader that leaves the command line above 2 MiB does to a course kernel (the harness's loader did
    until it placed the boot information in low memory): a kernel page fault before any process exists."""
    kernel = build_tree.directory / "kernel-course"
    machine = boot_machine(kernel, "fault hello", {})
    info = machine.registers()["rbx"]
    cmdline = struct.unpack_from("<I", machine.memory, info + 16)[0]
    assert cmdline < 0x200000
    high = 0x300000
    machine.memory[high:high + 12] = bytes(machine.memory[cmdline:cmdline + 12])
    struct.pack_into("<I", machine.memory, info + 16, high)
    stop = machine.run(max_time_ns=int(5e9))
    assert stop.kind is StopKind.PANIC
    assert stop.message.startswith(f"PANIC: Kernel page fault on {high:#x} (read, missing page")


def harness_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("boot", "--headless", "--no-build", *args)


def test_the_cli_gives_a_kernel_a_command_line_only_when_asked(build_tree: project.BuildTree) -> None:
    kernel = str(build_tree.directory / "kernel-course")
    alone = harness_cli("--kernel", kernel)
    assert alone.returncode == 0 and alone.stdout.startswith("Hello from WeensyOS process 1!")
    named = harness_cli("--kernel", kernel, "fault", "hello")
    assert named.returncode == 0 and named.stdout.startswith("fault: about to touch kernel memory")
    given = harness_cli("--kernel", kernel, "--command", "fault hello")
    assert given.returncode == 0 and given.stdout == named.stdout
    both = harness_cli("--kernel", kernel, "--command", "hello", "fault")
    assert both.returncode == 1 and both.stderr == "harness: error: give PROGRAMs or --command, not both\n"
    usage = run_cli("boot", "--help")
    assert "no command line and no hand-off" in " ".join(usage.stdout.split())


@needs_qemu
@pytest.mark.parametrize("command", [None, "selftest", "eve", "fault"])
def test_qemu_and_both_harness_paths_leave_the_same_log_and_text_page(
        build_tree: project.BuildTree, tmp_path: Path, command: str | None) -> None:
    """One process, so that nothing on the screen depends on where QEMU's wall-clock timer falls."""
    kernel = build_tree.directory / "kernel-course"
    image = build_tree.directory / "weensyos-course.img" if command is None else \
        course_image_with_command(build_tree, tmp_path, command)
    vga_writes = tmp_path / "vga-writes.log"
    run = boot_image(image, timeout=20, read=(TEXT_PAGE,), extra=("-trace", "vga_std_write_io", "-D", str(vga_writes)))
    assert run.powered_off, run.log
    assert run.memory is not None
    elf, disk = from_elf(kernel, command), from_disk(image, kernel)
    assert elf == disk  # tick count and hardware cursor included
    assert elf.ticks == 0  # each program ends within its first 10 ms of virtual time
    assert elf.log == run.log.splitlines()
    # The screen, the blank rest of the page and cursorpos at 0xB8FFC; not the kernel's copy of its tick count
    # at 0xB8FF0: QEMU's timer runs on the host's wall clock, so on a loaded host a tick can fall inside even
    # these short runs.
    qemu_page = run.memory[TEXT_PAGE[0]]
    assert elf.text_page[:TICKS_MIRROR] == qemu_page[:TICKS_MIRROR]
    assert elf.text_page[TICKS_MIRROR + 8:] == qemu_page[TICKS_MIRROR + 8:]
    assert elf.cursor == crtc_cursor(vga_writes.read_text())  # the hardware cursor where QEMU's VGA left it


def crtc_cursor(vga_writes: str) -> int:
    """The cursor cell that QEMU's CRTC registers 14 and 15 hold at the end of a run, replayed from QEMU's trace
    of the writes to its VGA ports (`-trace vga_std_write_io`: one line a byte, `addr 0x3d4, val 0xe`)."""
    registers, index = {14: 0, 15: 0}, 0
    writes = re.findall(r"vga_std_write_io addr (0x[0-9a-f]+), val (0x[0-9a-f]+)", vga_writes)
    assert writes, "QEMU traced no VGA port writes"
    for address, value in ((int(a, 16), int(v, 16)) for a, v in writes):
        if address == 0x3D4:
            index = value
        elif address == 0x3D5 and index in registers:
            registers[index] = value
    return (registers[14] << 8 | registers[15]) & 0x3FFF


def foreign_kernel(build_tree: project.BuildTree, tmp_path: Path) -> Path:
    """The course-mode kernel without our ABI string (test-only patch): to the harness, a kernel that is not
    ours, like the course's, whose system-call numbers mean other things."""
    data = (build_tree.directory / "kernel-course").read_bytes()
    abi = json.loads(build_tree.syscall_table.read_text())["abi"].encode() + b"\0"
    assert data.count(abi) == 1
    path = tmp_path / "kernel-foreign"
    path.write_bytes(data.replace(abi, b"x" * (len(abi) - 1) + b"\0"))
    return path


def trace_syscalls(*args: str) -> list[str]:
    result = run_cli("trace", "--no-build", "--filter", "syscall", *args)
    assert result.returncode == 0, result.stderr
    return [re.sub(r"^\S+ \[[^]]*\] ", "", line) for line in result.stdout.splitlines()]  # no time, no pid


def test_system_calls_are_decoded_by_the_kernels_identity_not_its_path(build_tree: project.BuildTree,
                                                                        tmp_path: Path) -> None:
    ours = str(build_tree.directory / "kernel-course")
    assert trace_syscalls("--kernel", ours)[:2] == ["getpid() = 1 <0.005 ms>",
                                                    'getsysname(buf="WeensyOS-Unicorn 0.1") = 0 <0.005 ms>']
    foreign = foreign_kernel(build_tree, tmp_path)
    by_number = trace_syscalls("--kernel", str(foreign))
    assert by_number[:2] == ["syscall_1(0x0, 0x0, 0x0, 0x0) = 1 <0.005 ms>",
                             "syscall_5(0x2fffd0, 0x0, 0x0, 0x0) = 0 <0.005 ms>"]
    # From a disk image in the build directory, next to build/syscalls.json: still not our ABI.
    image = tmp_path / "foreign.img"
    subprocess.run([sys.executable, str(SOURCE / "mkimage.py"), "--build", str(build_tree.directory), "--kernel",
                    str(foreign), "--no-programs", "-o", str(image)], check=True, capture_output=True)
    assert [line.split(" <")[0] for line in trace_syscalls("--disk", str(image))][:2] == \
        ["syscall_1(0x0, 0x0, 0x0, 0x0) = 1", "syscall_5(0x2fffd0, 0x0, 0x0, 0x0) = 0"]
    # A table the user names: the course's pset numbering, where 5 is fork.
    assert trace_syscalls("--kernel", str(foreign), "--syscalls", "course-pset3")[:2] == [
        "getpid() = 1 <0.005 ms>", "fork() = 0 <0.005 ms>"]
    unknown = run_cli("trace", "--no-build", "--kernel", str(foreign), "--syscalls", "course-nosuch")
    assert unknown.returncode == 1 and unknown.stderr == (
        "harness: error: no system-call table at course-nosuch (give a JSON file or one of: course-kernels1, "
        "course-pset3)\n")


def test_the_table_is_chosen_by_what_the_kernel_holds(build_tree: project.BuildTree, tmp_path: Path) -> None:
    ours, foreign = read_elf(build_tree.kernel), read_elf(foreign_kernel(build_tree, tmp_path))
    table = build_tree.syscall_table
    assert choose_table(ours, None, table).name(5) == "getsysname"
    assert choose_table(read_elf(build_tree.directory / "kernel-course"), None, table).name(5) == "getsysname"
    assert choose_table(foreign, None, table).name(5) == "syscall_5"
    assert choose_table(None, None, table).name(5) == "syscall_5"  # a disk image whose kernel was not found
    assert choose_table(foreign, table, table).name(5) == "getsysname"  # named by the user: always used
    assert choose_table(ours, Path("course-kernels1"), table).name(8) == "piperead"
    assert choose_table(ours, Path("course-pset3"), table).name(6) == "exit"
