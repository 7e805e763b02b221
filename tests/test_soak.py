"""Soak: one long run of WeensyOS with full tracing, and the harness's memory must stay flat.

The guest runs `loop forkexit pipe`: forkexit (1000 forks and exits) next to pipewriter and pipereader (200
messages), and when all three have exited the kernel's `loop` option logs its free pages and starts them again,
for as long as the run lasts. The run goes in slices of virtual time; after each one the test samples the
process's resident memory (VmRSS) and checks the event ring is within its capacity. After a warm-up (the first
loop) RSS may not grow by more than RSS_GROWTH_LIMIT; the kernel's free pages must be back at the boot value
after every loop.

Instructions are estimated from translation blocks (INSTRUCTIONS_PER_BLOCK, measured exactly on this workload)
unless WEENSY_SOAK_EXACT=1, which counts every instruction (MachineConfig(count_instructions=True), about five
times slower). CI runs 10^8 instructions; the full soak is

    WEENSY_SOAK_INSTRUCTIONS=1e9 .venv/bin/python -m pytest -s tests/test_soak.py

(it prints instructions, wall time, loops, peak RSS and RSS growth).
"""

from __future__ import annotations

import os
import re
import time

from harness import project
from harness.api import boot_machine
from harness.machine import MachineConfig, StopKind
from harness.observe.syscalls import SyscallTable
from harness.pc.events import Kind

from .weensyos_state import baseline_free_pages, exits

INSTRUCTIONS = int(float(os.environ.get("WEENSY_SOAK_INSTRUCTIONS", "1e8")))
EXACT = os.environ.get("WEENSY_SOAK_EXACT", "") == "1"
# Counted exactly (WEENSY_SOAK_EXACT=1): 1,010,406,811 instructions in 135,000,054 blocks, 7.48 a block (one pass
# alone: 65,387,672 in 8,764,551, 7.46).
INSTRUCTIONS_PER_BLOCK = 7.48
SLICE_NS = 50_000_000  # virtual time between samples
RSS_GROWTH_LIMIT = 20 << 20
LOOP_RE = re.compile(r"weensyos: loop (\d+) done; (\d+) free pages")


def resident_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, in bytes."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def test_a_long_run_keeps_the_harness_memory_flat(build_tree: project.BuildTree) -> None:
    config = MachineConfig(count_instructions=EXACT)
    machine = boot_machine(build_tree.kernel, "loop forkexit pipe", build_tree.programs(), config)
    machine.enable_tracing(SyscallTable.load(build_tree.syscall_table), build_tree.programs())
    capacity = machine.events.ring.maxlen
    assert capacity is not None

    def instructions() -> int:
        if machine.clock.instructions is not None:
            return machine.clock.instructions.value
        return int(machine.clock.blocks * INSTRUCTIONS_PER_BLOCK)

    started = time.monotonic()
    warm: int | None = None  # RSS once the first loop is done
    samples: list[int] = []
    events_seen = 0
    while instructions() < INSTRUCTIONS or warm is None:
        stop = machine.run(for_ns=SLICE_NS)
        assert stop.kind is StopKind.PAUSED, stop.message
        assert len(machine.events) <= capacity
        total = sum(machine.events.counts.values())
        assert total > events_seen  # the machine is busy: events keep coming
        events_seen = total
        rss, _ = resident_bytes()
        if warm is None:
            if b"weensyos: loop 1 done" in machine.log.data:
                warm = rss
            continue
        samples.append(rss)
    wall = time.monotonic() - started

    # The guest did its work, every time: no panic, no failure, every page back after every loop.
    lines = machine.log.lines()
    assert not [line for line in lines if "PANIC" in line or "page fault" in line]
    baseline = baseline_free_pages(machine)
    loops = [(int(m[1]), int(m[2])) for m in map(LOOP_RE.fullmatch, lines) if m]
    assert loops and all(free == baseline for _, free in loops), loops
    assert [n for n, _ in loops] == list(range(1, len(loops) + 1))
    assert all(status == 0 for _, _, status, _ in exits(machine))
    assert machine.events.counts[Kind.SYSCALL] > 1000 * len(loops)

    _, peak = resident_bytes()
    growth = max(samples, default=warm) - warm
    report = (f"{instructions():,} instructions ({'exact' if EXACT else 'estimated from blocks'}), "
              f"{machine.clock.blocks:,} blocks, {machine.clock.now_ns() / 1e9:.2f} s virtual, {wall:.1f} s wall, "
              f"{len(loops)} loops, {machine.events.counts[Kind.SYSCALL]:,} system calls; RSS after the first "
              f"loop {warm / 2**20:.1f} MiB, then at most {max(samples, default=warm) / 2**20:.1f} MiB (growth "
              f"{growth / 2**20:.2f} MiB, {growth / 2**20 / max(1, len(loops) - 1):.2f} MiB a loop), VmHWM "
              f"{peak / 2**20:.1f} MiB; kernel log {len(machine.log.data):,} bytes")
    print(f"\nsoak: {report}")
    assert growth <= RSS_GROWTH_LIMIT, f"the harness's memory grew after the warm-up: {report}"
