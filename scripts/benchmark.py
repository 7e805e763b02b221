#!/usr/bin/env python3
"""Measure how fast the harness runs WeensyOS: guest instructions/s, blocks/s, system calls/s.

Each scenario boots the kernel and runs to power-off or for a number of timer ticks, timed on the host clock.
A second, slower run of the same deterministic scenario counts exact instructions with a per-instruction hook;
since both runs execute the same guest code, instructions / (wall time of the fast run) is the fast run's rate.

    .venv/bin/python scripts/benchmark.py [--repeat 3] [scenario ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import project  # noqa: E402
from harness.api import boot_machine  # noqa: E402
from harness.machine import MachineConfig  # noqa: E402
from harness.observe.syscalls import SyscallTable  # noqa: E402
from harness.pc.events import Kind  # noqa: E402

SCENARIOS = {
    "hello": ("hello", None),  # boot, greet, exit, power off
    "spinner-100-ticks": ("spinner", 100),  # compute-bound user code preempted by the 100 Hz timer
    "yielder": ("yielder", None),  # 10,000 yield system calls in a tight loop
    "pipe": ("pipe", None),  # 200 messages through the kernel's pipe
    "forkexit": ("forkexit", None),  # fork and exit in a loop
}


def run(tree: project.BuildTree, command: str, ticks: int | None, count: bool,
        traced: bool = False) -> tuple[float, object]:
    machine = boot_machine(tree.kernel, command, tree.programs(), MachineConfig(count_instructions=count))
    if traced:
        machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    start = time.perf_counter()
    stop = machine.run(ticks=ticks, max_time_ns=60_000_000_000)
    return time.perf_counter() - start, (machine, stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    source = project.default_source_dir()
    tree = project.BuildTree(project.default_build_dir())
    if source:
        project.build(source, tree.directory)
    programs = tree.programs()
    print(f"{'scenario':<20} {'wall s':>8} {'virtual s':>9} {'Minsn':>8} {'Minsn/s':>8} {'Mblocks/s':>9} "
          f"{'syscalls':>8} {'syscalls/s':>10} {'traced/plain':>12}")
    for name in args.scenarios:
        command, ticks = SCENARIOS[name]
        if command not in programs and command not in tree.commands():
            print(f"{name:<20} (program {command!r} not built)")
            continue
        walls = []
        for _ in range(args.repeat):
            wall, (machine, stop) = run(tree, command, ticks, count=False)
            walls.append(wall)
        wall = statistics.median(walls)
        traced = statistics.median(run(tree, command, ticks, count=False, traced=True)[0]
                                   for _ in range(args.repeat))
        _, (exact, _) = run(tree, command, ticks, count=True)
        instructions = exact.clock.instructions.value
        syscalls = machine.events.counts[Kind.SYSCALL]
        print(f"{name:<20} {wall:8.3f} {stop.time_ns / 1e9:9.3f} {instructions / 1e6:8.1f} "
              f"{instructions / wall / 1e6:8.1f} {machine.clock.blocks / wall / 1e6:9.2f} {syscalls:8d} "
              f"{syscalls / wall:10.0f} {traced / wall:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
