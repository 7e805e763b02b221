"""The in-guest system-call fuzzer (weensyos-src/p-fuzz.cc) against our kernel, with the isolation auditor on.

`fuzzfriends` runs `fuzz` (random and adversarial system calls, each checked against the ABI's model) next to
`spectator` (a well-behaved process that works, checks a stamped page and yields). The kernel must survive every
call (no panic, no fault, no isolation violation), the fuzzer must find every result as the ABI says, the
spectator must keep running all along, and every page must come back.

The fuzzer's seed and call count, and the spectator's rounds, are constants in the programs' .rodata with symbols
of their own; the tests patch copies of the ELF files. CI runs a short form (5,000 calls); the full campaign is

    WEENSY_SYSCALL_FUZZ_CALLS=100000 .venv/bin/python -m pytest tests/test_syscall_fuzz.py

(about 80 s of wall time with the auditor on; WEENSY_SYSCALL_FUZZ_SEED=0x... picks another seed). The campaign of
10^6 calls is the same test with WEENSY_SYSCALL_FUZZ_CALLS=1000000 (and -s for its campaign line): measured at
42 min of wall time on a heavily loaded 2-core machine (542 s of CPU time), 1.3 GB resident, 15.5 s virtual.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness.machine import StopKind
from harness.pc.events import Event, Kind
from harness.pytest_plugin import Guest, WeensyOS

from .weensyos_state import baseline_free_pages, exits

FULL_CALLS = 100_000  # the program's own default
CALLS = int(os.environ.get("WEENSY_SYSCALL_FUZZ_CALLS", "5000"))
SEED = int(os.environ.get("WEENSY_SYSCALL_FUZZ_SEED", "0"), 0)  # 0: the program's own seed
SPECTATOR_ROUNDS_PER_CALL = 0.03  # the spectator does about 0.021 rounds per fuzzer call: outlast it
SUMMARY_RE = re.compile(r"fuzz: (\d+) system calls, seed (0x[0-9a-f]+), (\d+) errors, (\d+) unexpected")
IN_ALL_RE = re.compile(r"fuzz (\d+): (\d+) system calls in all, helpers included")


def patched(program: Path, directory: Path, values: dict[str, int]) -> Path:
    """A copy of `program` with each named 8-byte constant (a symbol in a loadable segment) set to a new value."""
    data = bytearray(program.read_bytes())
    with program.open("rb") as f:
        elf = ELFFile(f)
        symbols = elf.get_section_by_name(".symtab")
        segments = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for name, value in values.items():
            found = symbols.get_symbol_by_name(name)
            assert found, f"{program.name} has no symbol {name!r}"
            address = found[0]["st_value"]
            segment = next(s for s in segments if s["p_vaddr"] <= address < s["p_vaddr"] + s["p_filesz"])
            offset = segment["p_offset"] + address - segment["p_vaddr"]
            data[offset:offset + 8] = value.to_bytes(8, "little")
    out = directory / program.name
    out.write_bytes(data)
    return out


def programs_for(weensyos: WeensyOS, directory: Path, calls: int, seed: int,
                 spectator_rounds: int | None = None) -> dict[str, Path]:
    programs = dict(weensyos.tree.programs())
    constants = {"fuzz_calls": calls} | ({"fuzz_seed": seed} if seed else {})
    programs["fuzz"] = patched(programs["fuzz"], directory, constants)
    if spectator_rounds is not None:
        programs["spectator"] = patched(programs["spectator"], directory, {"spectator_rounds": spectator_rounds})
    return programs


def console_lines(guest: Guest) -> list[str]:
    """Every screen row as it was when it changed, in order (the screen itself scrolls)."""
    return [line for event in guest.events(Kind.CONSOLE) for line in event.text.splitlines()]


def syscalls_of(guest: Guest, pid: int) -> list[Event]:
    return guest.syscalls(pid=pid)


def test_the_fuzzer_keeps_no_writable_data_in_its_image(weensyos: WeensyOS) -> None:
    """Its model of its own memory says every page of its image is read-only: a .data or .bss would be a page
    the kernel rightly writes and the model says it must refuse. Its constants are patchable symbols."""
    with weensyos.tree.programs()["fuzz"].open("rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads and all(not s["p_flags"] & 2 for s in loads), "p-fuzz has a writable segment"
        symbols = elf.get_section_by_name(".symtab")
        for name in ("fuzz_seed", "fuzz_calls"):
            assert symbols.get_symbol_by_name(name), name


def test_the_kernel_survives_the_fuzzer_while_the_spectator_runs(weensyos: WeensyOS, tmp_path: Path) -> None:
    rounds = int(CALLS * SPECTATOR_ROUNDS_PER_CALL) + 100
    guest = weensyos.boot("fuzzfriends", programs=programs_for(weensyos, tmp_path, CALLS, SEED, rounds),
                          fresh=True)
    guest.machine.enable_audit()
    # The wall-clock guard: generous (about 10x what a loaded machine needs) so that only a harness gone slow
    # fires it, even over a campaign of 10^6 calls.
    stop = guest.run(max_time=5.0 + CALLS * 5e-5, max_wall=600 + CALLS * 0.01)

    # The machine ran to its end: no panic, no isolation violation, nobody killed by a fault.
    assert stop.kind is StopKind.POWER_OFF, stop.message
    assert guest.machine.violation is None
    assert guest.machine.auditor is not None and guest.machine.auditor.audits >= CALLS
    assert not [line for line in guest.log if "PANIC" in line or "page fault" in line]
    assert not [e for e in guest.events(Kind.EXCEPTION) if e.user], "a process faulted"

    # The fuzzer's own account: every result as the model said, and how many calls it made.
    lines = console_lines(guest)
    summary = next((m for m in map(SUMMARY_RE.search, lines) if m), None)
    assert summary is not None, "no summary line from the fuzzer"
    calls, seed, errors, unexpected = int(summary[1]), int(summary[2], 16), int(summary[3]), int(summary[4])
    assert (calls, unexpected) == (CALLS, 0), summary[0]
    assert seed == (SEED or 0x5EED0F0F1234ABCD)
    assert 0 < errors < calls  # most calls are meant to fail, not all
    statuses = {(pid, name): status for pid, name, status, _ in exits(guest.machine)}
    assert statuses[(1, "fuzz")] == 0
    assert statuses[(2, "spectator")] == 0  # its stamped page was intact every round

    # The harness's account: the fuzzer's system calls, helpers included, plus its exit.
    in_all = next((m for m in map(IN_ALL_RE.search, lines) if m), None)
    assert in_all is not None
    fuzz_calls = syscalls_of(guest, 1)
    assert len(fuzz_calls) == int(in_all[2]) + 1
    assert len(fuzz_calls) >= CALLS
    assert guest.machine.events.counts[Kind.SYSCALL] >= len(fuzz_calls) + rounds

    # The spectator kept going while the fuzzer ran: its system calls fall in every tenth of the fuzzer's life,
    # and its lines appear between the fuzzer's first and last.
    start, end = fuzz_calls[0].time_ns, fuzz_calls[-1].time_ns
    spectator = [e.time_ns for e in syscalls_of(guest, 2) if start <= e.time_ns <= end]
    tenths = {min(9, (t - start) * 10 // (end - start)) for t in spectator}
    assert tenths == set(range(10)), f"the spectator ran in only {len(tenths)} of 10 parts of the fuzzer's life"
    first = next(i for i, line in enumerate(lines) if "system calls, seed" in line)
    last = next(i for i, line in enumerate(lines) if SUMMARY_RE.search(line))
    assert any(re.search(r"spectator 2: round \d+", line) for line in lines[first:last])

    audits = guest.machine.auditor.audits
    print(f"\ncampaign: {summary[0]}; {len(fuzz_calls)} system calls by the fuzzer, "
          f"{guest.machine.events.counts[Kind.SYSCALL]} in all; {audits} audits (page tables and registers, "
          f"{guest.machine.auditor.registers.entries} kernel entries recorded); "
          f"{stop.time_ns / 1e9:.3f} s virtual")

    # Every page came back: the kernel's log and its own physpages agree with the count at boot.
    baseline = baseline_free_pages(guest.machine)
    assert exits(guest.machine)[-1][3] == baseline
    assert guest.free_pages() == baseline


def fuzz_alone(weensyos: WeensyOS, directory: Path, seed: int) -> tuple[list[tuple[int, tuple[int, ...], int]], str]:
    guest = weensyos.boot("fuzz", programs=programs_for(weensyos, directory, 2000, seed), fresh=True)
    stop = guest.run(max_time=5.0)
    assert stop.kind is StopKind.POWER_OFF, stop.message
    summary = next(m[0] for m in map(SUMMARY_RE.search, console_lines(guest)) if m)
    return [(e.number, e.args, e.ret or 0) for e in syscalls_of(guest, 1)], summary


def test_the_fuzzer_is_reproducible_from_its_seed(weensyos: WeensyOS, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, summary = fuzz_alone(weensyos, tmp_path / "a", 0x1234)
    again, summary_again = fuzz_alone(weensyos, tmp_path / "b", 0x1234)
    other, other_summary = fuzz_alone(weensyos, tmp_path, 0x4321)
    assert first == again and summary == summary_again
    assert "seed 0x1234," in summary and summary.endswith(" 0 unexpected")
    assert other != first and other_summary.endswith(" 0 unexpected")
