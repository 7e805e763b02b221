"""A command starts with what it runs: `boot` of a disk image imports neither the checker, the trace formats, the
snapshot format, the screenshot renderer nor pyelftools, reads no symbol table it does not need, and leaves
without tearing the interpreter down, with nothing lost. (How fast that is, the bench's "boot to the first log
line" row measures; these tests look only at what is imported and what comes out, never at the host's speed.)
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness import project
from harness.front import bench
from harness.front.cli import main
from harness.front.cliparser import build_parser, requested_command
from harness.pc.errors import ExitCode
from harness.pc.loader import LoaderError, parse_elf
from harness.pc.symbols import SymbolTable
from tests.elfmaker import EHDR_SIZE, PHDR_SIZE, make_elf

UNTIL = "weensyos: booting"

# What a boot of a disk image never needs: the checker, the bench and QEMU, the gdb stub, the live console, the
# screenshot renderer, the trace formats and everything that reads DWARF, the snapshot format, pyelftools
# (the image's kernel has no symbols, and the build's are read only to name an address), capstone, and no
# subprocess at all (c++filt, make).
NEVER_IN_A_BOOT = ("harness.front.check", "harness.front.bench", "harness.front.qemu", "harness.front.gdbstub",
                   "harness.front.liveconsole", "harness.front.screenshot", "harness.front.render",
                   "harness.front.font8x16", "harness.observe.traceformat", "harness.observe.kernelview",
                   "harness.observe.audit", "harness.observe.regaudit", "harness.pc.snapshot",
                   "harness.pc.snapshotschema", "harness.pc.cpustate", "elftools", "capstone", "subprocess")

# Runs `main(ARGS)` as `python -m harness ARGS` would, then writes the names of every module imported to FILE.
MODULES_AFTER = """
import json, sys
from harness.front.cli import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"status": int(status), "modules": sorted(sys.modules)}, out)
"""


@pytest.fixture(scope="module")
def hello_image(build_tree: project.BuildTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench._make_image(build_tree.directory, "hello", tmp_path_factory.mktemp("startup") / "hello.img")


def modules_of_a_run(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    record = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", MODULES_AFTER, str(record), *args], check=True, capture_output=True,
                   timeout=120)
    result = json.loads(record.read_text())
    return result["status"], set(result["modules"])


def imported(modules: set[str], package: str) -> list[str]:
    return sorted(name for name in modules if name == package or name.startswith(package + "."))


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "with-summary"])
def test_a_disk_boot_imports_only_what_it_runs(hello_image: Path, tmp_path: Path, quiet: bool) -> None:
    status, modules = modules_of_a_run(["boot", "--disk", str(hello_image), "--headless", "--until", UNTIL]
                                       + (["-q"] if quiet else []), tmp_path)
    assert status == 0
    assert "harness.machine" in modules and "unicorn" in modules  # (the record is of a real boot)
    assert [name for package in NEVER_IN_A_BOOT for name in imported(modules, package)] == []
    # The diagnosis is for a run that failed, or for the summary line: a quiet success needs neither.
    assert ("harness.observe.diagnosis" in modules) is not quiet


def test_a_failed_boot_still_gets_its_diagnosis(hello_image: Path, tmp_path: Path) -> None:
    status, modules = modules_of_a_run(["boot", "--disk", str(hello_image), "--headless", "--max-time", "0.000001"],
                                       tmp_path)
    assert status == ExitCode.BUDGET
    assert "harness.observe.diagnosis" in modules


def test_the_check_command_gets_its_full_parser() -> None:
    parser = build_parser(requested_command(["check", "--help"]))
    commands = next(a for a in parser._actions if a.dest == "command")
    assert "checks:" in commands.choices["check"].format_help()  # with the list of the checks


def test_a_parser_built_for_one_command_shows_the_same_help(capsys: pytest.CaptureFixture[str]) -> None:
    """The other commands are there by name and help only: --help and a misspelt command read the same."""
    assert build_parser("boot").format_help() == build_parser().format_help()
    whole = next(a for a in build_parser()._actions if a.dest == "command")
    narrow = next(a for a in build_parser("boot")._actions if a.dest == "command")
    assert list(narrow.choices) == list(whole.choices)
    assert narrow.choices["boot"].format_help() == whole.choices["boot"].format_help()
    assert requested_command(["--version"]) is None and requested_command(["bogus"]) is None
    assert requested_command(["trace", "hello"]) == "trace"
    with pytest.raises(SystemExit) as usage:
        main(["bogus"])
    assert usage.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_python_m_harness_leaves_at_once_with_everything_written(hello_image: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The quick exit of `python -m harness` loses nothing: the same screen, summary, log file and status as
    the same command run in this process."""
    args = ["boot", "--disk", str(hello_image), "--headless", "--until", "process 1 started"]
    spawned = subprocess.run([sys.executable, "-m", "harness", *args, "--log", str(tmp_path / "spawned.log")],
                             capture_output=True, text=True, timeout=120)
    status = main([*args, "--log", str(tmp_path / "here.log")])
    here = capsys.readouterr()
    assert (spawned.returncode, spawned.stdout, spawned.stderr) == (status, here.out, here.err)
    assert "process 1 started" in (tmp_path / "spawned.log").read_text()
    assert (tmp_path / "spawned.log").read_text() == (tmp_path / "here.log").read_text()


def test_under_a_profiler_python_m_harness_exits_as_python_does(hello_image: Path, tmp_path: Path) -> None:
    """A profiler writes its results when the interpreter exits: that exit must still happen."""
    profile = tmp_path / "boot.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "harness", "boot",
                             "--disk", str(hello_image), "--headless", "--until", UNTIL, "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert profile.stat().st_size > 0


def test_symbols_are_read_when_first_asked(build_tree: project.BuildTree) -> None:
    table = SymbolTable.from_elf(build_tree.kernel)
    assert table._source is not None  # read from disk, not parsed yet
    assert table.address_of("kernel_start") is not None
    assert table._source is None and table.lookup(table.address_of("kernel_start")).name == "kernel_start"


def test_a_kernel_without_a_symbol_table_is_known_empty_without_pyelftools(tmp_path: Path) -> None:
    code = ("import sys; from harness.pc.symbols import SymbolTable; "
            "print(len(SymbolTable.from_elf(sys.argv[1]).symbols), 'elftools' in sys.modules)")
    kernel = tmp_path / "stripped"
    kernel.write_bytes(make_elf())  # program headers only: no section table
    result = subprocess.run([sys.executable, "-c", code, str(kernel)], capture_output=True, text=True, check=True,
                            timeout=60)
    assert result.stdout.split() == ["0", "False"]


def elf_with_headers(p_types: list[int], section_table_beyond_end: bool) -> bytes:
    """An executable whose program headers have these types, the first a loadable code segment."""
    count = len(p_types)
    code_at = EHDR_SIZE + PHDR_SIZE * count
    shoff, shnum = (0x100000, 1) if section_table_beyond_end else (0, 0)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x40000, EHDR_SIZE, shoff, 0, EHDR_SIZE, PHDR_SIZE, count, 64, shnum, 0)
    headers = b"".join(struct.pack("<IIQQQQQQ", p_type, 5, code_at, 0x40000, 0x40000, 16, 0x1000, 0x1000)
                       for p_type in p_types)
    return header + headers + b"\xf4" * 16


def test_a_dynamic_segment_is_still_judged_by_pyelftools() -> None:
    """The program headers are read with struct; a PT_DYNAMIC header makes pyelftools read the section table too,
    so such a file still goes through it and is refused or accepted as before."""
    assert parse_elf(elf_with_headers([1], section_table_beyond_end=True), "kernel k").entry == 0x40000
    assert parse_elf(elf_with_headers([1, 2], section_table_beyond_end=False), "kernel k").entry == 0x40000
    with pytest.raises(LoaderError, match=r"^kernel k: malformed ELF \("):
        parse_elf(elf_with_headers([1, 2], section_table_beyond_end=True), "kernel k")
