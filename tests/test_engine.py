"""Our engine (engine/): it is the library that runs, each of its patches changes speed and never a run, and
translated code is never stale, however the code page is written.

Every patch can be switched off (`MachineConfig(engine_off=...)`); a run with any of them off must be the run
with all of them on: the same instruction count, log, screen, and the same events with full tracing.
"""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness.api import boot_machine
from harness.front.cli import main
from harness.machine import Machine, MachineConfig, StopKind
from harness.observe.syscalls import SyscallTable
from harness.pc import engine
from harness.pc.clock import ClockCosts
from harness.pc.events import Kind

from .conftest import BootFn
from .test_fastpath import fingerprint
from .x86asm import assemble_kernel

pytestmark = pytest.mark.cost(3)  # seconds, roughly: the session starts the costly modules first

PATCHES = sorted(engine.switches())


def test_the_engine_that_runs_is_ours_built_from_the_current_patches(capsys: pytest.CaptureFixture[str]) -> None:
    info = engine.require()
    recipe = engine.recipe()
    assert recipe is not None
    assert info.key == recipe.engine_key()
    assert info.description == f"unicorn 2.1.4 weensy-engine key=k{info.key}"
    assert info.library.is_file() and info.library.parent.name == f"engine-{info.key}"
    assert sorted(name.removesuffix(".patch") for name in recipe.SERIES[1:]) == PATCHES  # all but engine-api
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out.splitlines()
    names = ", ".join(name.removesuffix(".patch") for name in recipe.SERIES)
    assert out[1].startswith(f"engine: Unicorn 2.1.4 built for x86 with our patches {names} (key {info.key}; ")


def test_an_unknown_patch_name_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine.OFF_VARIABLE, "warp-drive")
    with pytest.raises(engine.EngineError, match="WEENSY_ENGINE_OFF: unknown patch 'warp-drive'"):
        Machine(MachineConfig())


def traced_run(build_tree: Any, command: str, off: frozenset[str]) -> tuple[Any, ...]:
    machine = boot_machine(build_tree.kernel, command, build_tree.programs(), MachineConfig(engine_off=off))
    machine.enable_tracing(SyscallTable.load(build_tree.syscall_table), build_tree.programs())
    stop = machine.run(ticks=12, max_time_ns=5_000_000_000)
    assert stop.kind in (StopKind.TICKS, StopKind.POWER_OFF), stop.message
    return (stop.kind, stop.time_ns, stop.rip, machine.clock.instructions, bytes(machine.log.data),
            machine.console.cells(), [fingerprint(e) for e in machine.events.ring], dict(machine.events.counts))


@pytest.fixture(scope="module")
def runs_with_every_patch(build_tree: Any) -> dict[str, tuple[Any, ...]]:
    """command -> its traced run with every patch on, made once for all the patches compared with it."""
    return {command: traced_run(build_tree, command, frozenset()) for command in ("forkexit", "pipe", "friends")}


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("command", ["forkexit", "pipe", "friends"])
def test_switching_a_patch_off_changes_no_run(build_tree: Any, runs_with_every_patch: dict[str, tuple[Any, ...]],
                                              patch: str, command: str) -> None:
    with_all = runs_with_every_patch[command]
    without = traced_run(build_tree, command, frozenset({patch}))
    assert with_all[3] > 1_000_000  # instructions: the run did real work
    assert without == with_all


def test_all_patches_off_is_still_the_same_run(boot: BootFn) -> None:
    on, stop_on = boot("fault hello")
    off, stop_off = boot("fault hello", config=MachineConfig(engine_off=frozenset(PATCHES)))
    assert (stop_on.time_ns, on.clock.instructions, bytes(on.log.data)) == \
           (stop_off.time_ns, off.clock.instructions, bytes(off.log.data))


def test_virtual_time_is_instructions_times_their_cost_plus_time_not_in_instructions(boot: BootFn) -> None:
    machine, stop = boot("hello", config=MachineConfig(costs=ClockCosts.instructions_only(10_000)))
    clock = machine.clock
    assert stop.time_ns == clock.now_ns() == clock.instructions * 10 + clock.skipped_ns
    slow, slow_stop = boot("hello", config=MachineConfig(costs=ClockCosts.instructions_only(20_000)))
    assert slow.clock.instructions == clock.instructions  # the cost changes time, not what runs
    assert slow_stop.time_ns > stop.time_ns


# A tiny kernel that runs a routine, rewrites it, runs it again, for each way a code page can be written. Page
# tables at 0x10000: 0-2 MiB identity, 2-4 MiB a second mapping of the same 0-2 MiB (an alias), 4-6 MiB a
# "process" mapping of physical 6 MiB, 6-8 MiB the kernel's own window on physical 6 MiB. What the routine
# returned each time goes to 0x9000.
# The start of each tiny kernel that makes its own page tables: a stack, and at 0x10000 a PML4 -> PDPT -> page
# directory (at 0x12000) whose first 2 MiB page maps physical 0; the kernel adds its own entries after it.
PAGE_TABLES_AT_0x10000 = r"""
    mov $0x80000, %rsp
    movq $0x11003, 0x10000
    movq $0x12003, 0x11000
    movq $0x000083, 0x12000       # 0-2 MiB -> physical 0
"""

SELF_MODIFYING = PAGE_TABLES_AT_0x10000 + r"""
    movq $0x000083, 0x12008       # 2-4 MiB -> physical 0 again
    movq $0x600083, 0x12010       # 4-6 MiB -> physical 6 MiB: the "process"
    movq $0x600083, 0x12018       # 6-8 MiB -> physical 6 MiB: the kernel's window on it
    mov $0x10000, %rax
    mov %rax, %cr3
    lea routine(%rip), %rbx

    call *%rbx                    # 1: as assembled
    mov %eax, 0x9000
    movl $2, 0x200001(%rbx)       # through the alias, a mapping that never executed the routine
    call *%rbx
    mov %eax, 0x9004
    movl $3, 1(%rbx)              # through the mapping that executes it
    call *%rbx
    mov %eax, 0x9008
    call patch_in_block           # a store into the block that is running
    mov %eax, 0x900c

    # A process image: the kernel copies the routine in through its window, the process runs it at 4 MiB.
    mov %rbx, %rsi
    mov $0x600000, %rdi
    mov $6, %ecx
    rep movsb                     # mov $3, %eax; ret
    mov $0x400000, %rcx
    call *%rcx
    mov %eax, 0x9010
    # Page reuse: the process is gone (unmapped), the kernel writes the next image into the same physical
    # page through its window, and a new process maps it at the same address.
    movq $0, 0x12010
    mov %cr3, %rax
    mov %rax, %cr3
    movl $5, 0x600001
    movq $0x600083, 0x12010
    mov %cr3, %rax
    mov %rax, %cr3
    call *%rcx
    mov %eax, 0x9014
    # The kernel's window is still in the TLB and wrote that page before: it must still catch the new code.
    movl $8, 0x600001
    call *%rcx
    mov %eax, 0x9018
    cli
    hlt

patch_in_block:
    lea in_block(%rip), %rdx
    movl $7, 1(%rdx)
in_block:
    mov $6, %eax                  # rewritten to 7 by the store just above, in the same translation block
    ret

    .balign 4096
routine:
    mov $1, %eax
    ret
    .balign 4096
"""


@pytest.mark.parametrize("off", [frozenset(), *(frozenset({p}) for p in PATCHES), frozenset(PATCHES)],
                         ids=["all-on", *(f"without-{p}" for p in PATCHES), "all-off"])
def test_rewritten_code_runs_as_rewritten_under_every_mapping(tmp_path: Path, off: frozenset[str]) -> None:
    """Self-modifying code, code written through another mapping of its page, a process image written by the
    kernel, a page reused for other code: the CPU always runs the bytes in memory, never a stale translation."""
    from harness.pc.loader import read_elf

    kernel = assemble_kernel(SELF_MODIFYING, tmp_path / "kernel")
    machine = Machine(MachineConfig(engine_off=off))
    machine.boot(read_elf(kernel, "kernel"), "", [])
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.HANG, stop.message
    assert struct.unpack_from("<7I", machine.memory, 0x9000) == (1, 2, 3, 7, 3, 5, 8)


# A process's code page is poisoned and written again, as when the kernel frees a child's pages and forks the
# next: the same bytes, then other bytes, then the same bytes with a code hook added on them meanwhile.
REWRITTEN_PROCESS_PAGE = PAGE_TABLES_AT_0x10000 + r"""
    movq $0x600083, 0x12010       # 4-6 MiB -> physical 6 MiB: the "process"
    mov $0x10000, %rax
    mov %rax, %cr3
    lea first(%rip), %rsi
    call install_and_run
    mov %eax, 0x9000
    lea first(%rip), %rsi
    call install_and_run          # the same bytes again, after the page held others
    mov %eax, 0x9004
    lea second(%rip), %rsi
    call install_and_run          # other bytes at the same address
    mov %eax, 0x9008
    lea first(%rip), %rsi
    call install_and_run
    mov %eax, 0x900c
hooked:
    nop                           # the test adds a code hook on the process's code here
    lea first(%rip), %rsi
    call install_and_run          # bytes a block was made from, but with no hook
    mov %eax, 0x9010
    cli
    hlt

install_and_run:                  # poison the process's page, copy 8 bytes from %rsi there, jump to them
    mov $0x400000, %rdi
    mov $0xcc, %al
    mov $64, %ecx
    rep stosb
    mov $0x400000, %rdi
    mov $8, %ecx
    rep movsb
    mov $0x400000, %rax
    jmp *%rax

    .balign 8
first:
    mov $1, %eax
    ret
    .balign 8
second:
    mov $2, %eax
    ret
    .balign 8
"""


@pytest.mark.parametrize("off", [frozenset(), frozenset({"reuse"})], ids=["reused", "translated"])
def test_code_written_again_runs_as_written_and_as_hooked_now(tmp_path: Path, off: frozenset[str]) -> None:
    """A block whose page was overwritten is used again only for the very bytes it was made from, and only if
    the hooks are those it was made with: the same bytes run as before, other bytes as written, and a code hook
    added since is called."""
    from unicorn import UC_HOOK_CODE
    from unicorn import x86_const as X

    from harness.pc.cpu import NOT_AN_ADDRESS
    from harness.pc.loader import read_elf

    machine = Machine(MachineConfig(engine_off=off))
    machine.boot(read_elf(assemble_kernel(REWRITTEN_PROCESS_PAGE, tmp_path / "kernel"), "kernel"), "", [])
    uc = machine.uc
    hooked = machine.symbols.address_of("hooked")
    stopper = uc.hook_add(UC_HOOK_CODE, lambda uc_, address, size, data: uc.emu_stop(), None, hooked, hooked)
    machine.clock._set_deadline(machine.clock.instructions + 100_000)
    uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), NOT_AN_ADDRESS)
    assert uc.reg_read(X.UC_X86_REG_RIP) == hooked
    assert struct.unpack_from("<4I", machine.memory, 0x9000) == (1, 1, 2, 1)
    uc.hook_del(stopper)
    calls = []
    uc.hook_add(UC_HOOK_CODE, lambda uc_, address, size, data: calls.append(address), None, 0x400000, 0x400007)
    stop = machine.run(max_time_ns=1_000_000_000)
    assert stop.kind is StopKind.HANG, stop.message
    assert struct.unpack_from("<I", machine.memory, 0x9010)[0] == 1
    assert calls == [0x400000, 0x400005]  # mov, ret


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("until", ["process 2 started: hello", "Hello from WeensyOS process 2!", None],
                         ids=["log-line", "screen-text", "power-off"])
def test_a_stop_requested_by_a_hook_lands_at_the_same_instruction(build_tree: Any, patch: str,
                                                                  until: str | None) -> None:
    """Stops requested from a port hook (a log line, the ACPI power-off) or at a system call (text on the
    screen) land where they land with the patch off: same instruction, same registers, same count."""
    landed = []
    for off in (frozenset(), frozenset({patch})):
        machine = boot_machine(build_tree.kernel, "fault hello", build_tree.programs(),
                               MachineConfig(engine_off=off))
        stop = machine.run(until=until, max_time_ns=5_000_000_000)
        assert stop.kind is (StopKind.POWER_OFF if until is None else StopKind.UNTIL), stop.message
        machine.cpu.save()
        landed.append((stop.rip, stop.time_ns, machine.clock.instructions, tuple(machine.cpu.regs)))
    assert landed[0] == landed[1]


# A loop of one 4-instruction block, entered after a short prelude; %rax counts its iterations, so a stop at the
# start of the loop's block has executed (prelude) + 4 x %rax instructions.
FOUR_INSTRUCTION_LOOP = r"""
    xor %eax, %eax
    xor %ebx, %ebx
loop:
    inc %rax
    add $3, %rbx
    lea 1(%rbx), %rcx
    jmp loop
"""


@pytest.mark.parametrize("off", [frozenset(), frozenset({"instruction-clock"})], ids=["inline", "helper"])
def test_a_deadline_stops_at_the_first_block_start_at_or_past_it_however_far(tmp_path: Path,
                                                                             off: frozenset[str]) -> None:
    """The engine's 16-bit budget (QEMU's icount layout) holds at most 65,023 instructions: nearer deadlines stop
    the engine where the budget runs out, farther ones are reached through refills, and either way the stop is at
    the start of the first block that begins at or past the deadline, with the count exact."""
    from unicorn import x86_const as X

    from harness.pc.cpu import NOT_AN_ADDRESS
    from harness.pc.loader import read_elf

    machine = Machine(MachineConfig(engine_off=off))
    machine.boot(read_elf(assemble_kernel(FOUR_INSTRUCTION_LOOP, tmp_path / "kernel"), "kernel"), "", [])
    clock, uc = machine.clock, machine.uc

    def run_to(deadline: int) -> int:
        stops = clock.deadline_stops
        clock._set_deadline(deadline)
        uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), NOT_AN_ADDRESS)
        assert clock.deadline_stops == stops + 1
        assert clock.counter.deadline == (1 << 64) - 1  # a deadline stops the engine once
        return uc.reg_read(X.UC_X86_REG_RAX)

    iterations = run_to(clock.instructions + 10)
    prelude = clock.instructions - 4 * iterations
    loop_start = uc.reg_read(X.UC_X86_REG_RIP)
    for distance in (1, 2, 3, 4, 5, 510, 511, 512, 513, 65_022, 65_023, 65_024, 65_535, 65_536, 131_071,
                     1_000_003):
        deadline = clock.instructions + distance
        iterations = run_to(deadline)
        assert clock.instructions == prelude + 4 * iterations  # exact, and at the loop's block start
        assert deadline <= clock.instructions < deadline + 4  # the first block start at or past the deadline
        assert uc.reg_read(X.UC_X86_REG_RIP) == loop_start


def test_without_the_built_engine_the_harness_refuses_to_run_with_one_line(tmp_path: Path) -> None:
    """No silent fall-back to the stock Unicorn library that the binding would load instead."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WEENSY_ENGINE_CACHE=str(tmp_path / "empty-cache"))
    env.pop("LIBUNICORN_PATH", None)
    for argv in (["boot", "hello", "--headless"], ["--version"]):
        result = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "harness: error: the patched Unicorn engine is not built for these patches"), result.stderr
        assert "pip install -e ." in lines[0]


def test_building_without_a_c_compiler_fails_with_one_line_naming_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = engine.recipe()
    assert recipe is not None
    monkeypatch.setenv("WEENSY_ENGINE_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(recipe.shutil, "which", lambda name: None)
    with pytest.raises(recipe.EngineBuildError) as failure:
        recipe.build()
    assert str(failure.value) == ("cannot build the patched Unicorn engine: no C compiler (cc or gcc) found "
                                  "(install it: apt-get install build-essential)")


def _fake_sdist(recipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmake_lists: str,
                c_source: str) -> Path:
    """A source tree laid out like Unicorn's sdist, given to the build with no patches to apply; returns where the
    build log will be."""
    top = f"unicorn-{recipe.UNICORN_VERSION}"
    source = tmp_path / "tree" / top / "src"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text(cmake_lists)
    (source / "engine.c").write_text(c_source)
    sdist = tmp_path / f"{top}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(tmp_path / "tree" / top, arcname=top)
    monkeypatch.setenv("WEENSY_UNICORN_SDIST", str(sdist))
    monkeypatch.setenv("WEENSY_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(recipe, "SERIES", ())
    return tmp_path / "cache" / f"engine-{recipe.engine_key()}-build.log"


def test_a_failed_compile_shows_the_end_of_its_log_then_one_error_line(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The build log may be out of reach (inside a failed `docker build`): the compiler's error must reach
    standard error, with the one error line still the last. The real cmake and ninja run on a C file that does
    not compile."""
    recipe = engine.recipe()
    assert recipe is not None
    log_file = _fake_sdist(recipe, tmp_path, monkeypatch,
                           "cmake_minimum_required(VERSION 3.16)\nproject(broken C)\n"
                           "add_library(unicorn SHARED engine.c)\n",
                           "int broken(void) { return undeclared_name_from_the_test; }\n")

    assert recipe.main([]) == 1

    lines = capsys.readouterr().err.rstrip("\n").splitlines()
    assert lines[-1] == f"error: cannot build the patched Unicorn engine: compiling (ninja) failed (log: {log_file})"
    assert lines[0].startswith("--- the last ") and lines[-2] == "---", lines
    shown = lines[1:-2]
    assert 0 < len(shown) <= recipe.LOG_TAIL_LINES
    assert shown == log_file.read_text().rstrip("\n").splitlines()[-len(shown):]
    assert any("undeclared_name_from_the_test" in line and "error" in line for line in shown), shown


def test_an_error_of_unicorns_configure_stops_the_build_before_compiling(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Unicorn's CMakeLists.txt runs its configure script without checking it: a configure that stopped (as it
    does without pkg-config) must be named as the cause, not surface later as an unrelated compile error."""
    recipe = engine.recipe()
    assert recipe is not None
    log_file = _fake_sdist(recipe, tmp_path, monkeypatch,
                           "cmake_minimum_required(VERSION 3.16)\nproject(configured C)\n"
                           "execute_process(COMMAND sh -c\n"
                           "  \"echo; echo 'ERROR: the test tool not found' >&2; exit 1\")\n"
                           "add_library(unicorn SHARED engine.c)\n",
                           "int broken(void) { return never_compiled_because_configure_failed; }\n")

    assert recipe.main([]) == 1

    lines = capsys.readouterr().err.rstrip("\n").splitlines()
    assert lines[-1] == ("error: cannot build the patched Unicorn engine: Unicorn's configure failed: "
                         f"the test tool not found (log: {log_file})")
    assert "never_compiled_because_configure_failed" not in log_file.read_text()


def test_building_without_pkg_config_fails_with_one_line_naming_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = engine.recipe()
    assert recipe is not None
    monkeypatch.setenv("WEENSY_ENGINE_CACHE", str(tmp_path))
    which = recipe.shutil.which
    monkeypatch.setattr(recipe.shutil, "which", lambda name: None if name == "pkg-config" else which(name))
    with pytest.raises(recipe.EngineBuildError) as failure:
        recipe.build()
    assert str(failure.value) == ("cannot build the patched Unicorn engine: `pkg-config` not found "
                                  "(install it: apt-get install pkg-config)")


def test_the_count_is_exact_one_per_instruction_run(build_tree: Any) -> None:
    """The engine's count equals a count made by a hook on every instruction (slow; a short run with no fault,
    where no instruction is started twice). Blocks left early give back what did not run, also when a hook
    moved the PC (the harness does the kernel's `rdmsr` of the APIC base itself and counts it)."""
    from unicorn import UC_HOOK_CODE

    machine = boot_machine(build_tree.kernel, "hello", build_tree.programs())
    hooked = [0]

    def count(uc: object, address: int, size: int, user_data: object) -> None:
        hooked[0] += 1

    machine.uc.hook_add(UC_HOOK_CODE, count)
    stop = machine.run(max_time_ns=5_000_000_000)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert machine.events.counts.get(Kind.EXCEPTION, 0) == 0
    assert machine.clock.instructions == hooked[0] > 50_000
