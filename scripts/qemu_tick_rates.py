#!/usr/bin/env python3
"""Measure how much work QEMU (TCG) does per timer tick on our workloads: the reference figures that a CPU speed
model for the harness is to be fitted to. This script only measures; it changes nothing in the harness.

A student knows how fast things go under QEMU by what the screen shows per tick of the kernel's 100 Hz timer: how
many yields, pipe messages, allocated pages or forks happen per tick, how long boot takes. So each workload is
measured in ticks of the kernel's own counter: QEMU boots a disk image of our kernel whose command line has the
kernel's `loop` option (the programs start again whenever the last one exits), the run stops once the log says
`weensyos: loop N done`, and the kernel's `ticks` (read from guest memory through QMP after QEMU stops) says how
many ticks the N rounds took. Work per tick = N x (work per round) / ticks. Boot is measured from QEMU's start to
the first byte of the log, in wall seconds (QEMU's timer is the host's wall clock: 100 ticks a second).

The same images run in the harness, from their boot sectors, give the same figures in its virtual time; the
table shows both and their ratio (harness / QEMU). Each figure is the median of --repeat runs, with the spread.

    .venv/bin/python scripts/qemu_tick_rates.py [--repeat 5] [--json docs/qemu-tick-rates.json] [workload ...]

The JSON records the QEMU figures (every run), the QEMU version, the host and the harness figures of the same
runs. QEMU's own figures depend on the host's speed (TCG translates and runs guest code on it): record them on
the machine class the harness should feel like, and keep the file with the script that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import project  # noqa: E402
from harness.front.qemu import QEMU, boot_image, qemu_available  # noqa: E402
from harness.machine import Machine, MachineConfig, StopKind  # noqa: E402
from harness.pc.events import Kind  # noqa: E402
from harness.pc.symbols import SymbolTable  # noqa: E402

HZ = 100  # the kernel's timer rate: QEMU's LAPIC timer counts at 1 GHz of (host) wall time


@dataclass(frozen=True)
class Workload:
    """`rounds` runs of `command` (with the kernel's `loop` option); each round does `per_round` units of work,
    or, if `per_round` is 0, as many as the screen's last match of `count_pattern` says."""

    command: str
    unit: str
    rounds: int
    per_round: int = 0
    count_pattern: str = ""
    note: str = ""


WORKLOADS = {
    "yield loop": Workload("yielder", "yields", 30, 10_000, note="10,000 sys_yield per round, one process"),
    "pipe messages": Workload("pipe", "messages", 10, 200, note="pipewriter -> pipereader, 200 messages a round"),
    "allocator pages": Workload("allocator", "pages", 30, count_pattern=r"allocator \d+: (\d+) pages",
                                note="page_alloc, stamp, 20,000 spins and a yield per page, until memory is full"),
    "fork+exit": Workload("forkexit", "forks", 3, 1_000, note="1,000 children that allocate, check and exit"),
    "memory viewer redraw": Workload("memviewer yielder", "yields", 30, 10_000,
                                     note="the yield loop with the memory viewer redrawn on every tick: its cost "
                                          "is the yields lost against the plain yield loop"),
}
BOOT = "boot to first log line"


@dataclass
class Row:
    name: str
    unit: str  # "<unit>/tick", or "s" for boot
    qemu: list[float] = field(default_factory=list)
    harness: list[float] = field(default_factory=list)
    note: str = ""
    qemu_load: list[float] = field(default_factory=list)  # the host's 1-minute load average before each QEMU run

    @staticmethod
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        h, q = self.median(self.harness), self.median(self.qemu)
        return h / q if h is not None and q else None


def make_image(tree: project.BuildTree, command: str, directory: Path) -> Path:
    image = directory / (re.sub(r"\W+", "-", command) + ".img")
    subprocess.run([sys.executable, str(project.PACKAGE_ROOT / "weensyos-src" / "mkimage.py"), "--build",
                    str(tree.directory), "--command", command, "-o", str(image)], check=True, capture_output=True)
    return image


def work_done(workload: Workload, screen: str) -> int:
    if workload.per_round:
        return workload.rounds * workload.per_round
    counts = re.findall(workload.count_pattern, screen)
    if not counts:
        raise RuntimeError(f"no {workload.count_pattern!r} on the screen:\n{screen}")
    return workload.rounds * int(counts[-1])


def qemu_rate(workload: Workload, image: Path, ticks_at: int) -> float:
    done = f"weensyos: loop {workload.rounds} done"
    run = boot_image(image, timeout=300, until=done, read=((ticks_at, 8),))
    if done not in run.log:
        raise RuntimeError(f"QEMU: {image.name} did not log {done!r} in time; log tail: {run.log[-300:]}")
    assert run.memory is not None
    ticks = struct.unpack("<Q", run.memory[ticks_at])[0]
    return work_done(workload, run.text) / ticks


def harness_rate(workload: Workload, image: Path, ticks_at: int) -> float:
    machine = Machine(MachineConfig())
    machine.boot_disk(image.read_bytes())
    done = f"weensyos: loop {workload.rounds} done"
    stop = machine.run(until=done, max_time_ns=int(600e9))
    if stop.kind is not StopKind.UNTIL:
        raise RuntimeError(f"harness: {image.name} stopped without {done!r}: {stop.message}")
    ticks = struct.unpack_from("<Q", machine.memory, ticks_at)[0]
    return work_done(workload, machine.screen_text()) / ticks


def qemu_boot_seconds(image: Path) -> float:
    run = boot_image(image, timeout=30)
    if run.first_log_seconds is None:
        raise RuntimeError("QEMU never wrote to the log")
    return run.first_log_seconds


def harness_boot_seconds(image: Path) -> float:
    """Virtual seconds from power-on to the first log line (the harness's virtual time starts at power-on)."""
    machine = Machine(MachineConfig())
    machine.boot_disk(image.read_bytes())
    machine.run(until_event=lambda event: event.kind is Kind.LOG, max_time_ns=int(30e9))
    first = next(event for event in machine.events.ring if event.kind is Kind.LOG)
    return first.time_ns / 1e9


def measure(name: str, image: Path, ticks_at: int, *, qemu: bool) -> float:
    """One run of workload `name` (or boot) on QEMU or on the harness."""
    if name == BOOT:
        return qemu_boot_seconds(image) if qemu else harness_boot_seconds(image)
    workload = WORKLOADS[name]
    return qemu_rate(workload, image, ticks_at) if qemu else harness_rate(workload, image, ticks_at)


def qemu_version() -> str:
    try:
        return subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}-{max(values):.4g}" if len(values) > 1 else ""


def table(rows: list[Row]) -> str:
    lines = [f"{'workload':<22} {'unit':<16} {'QEMU (median)':>14} {'spread':>19} {'harness':>12} {'h/QEMU':>7}"]
    for row in rows:
        q, h, ratio = row.median(row.qemu), row.median(row.harness), row.ratio
        lines.append(f"{row.name:<22} {row.unit:<16} {q if q is not None else float('nan'):>14.4g} "
                     f"{spread(row.qemu):>19} {h if h is not None else float('nan'):>12.4g} "
                     f"{ratio if ratio is not None else float('nan'):>7.3g}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                        help=f"any of: {', '.join([*WORKLOADS, BOOT])} (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--no-harness", action="store_true", help="measure QEMU only")
    args = parser.parse_args()
    unknown = [name for name in args.workloads if name not in WORKLOADS and name != BOOT]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r} (choose from: {', '.join([*WORKLOADS, BOOT])})")
    if not qemu_available():
        print(f"{QEMU} is not installed", file=sys.stderr)
        return 1
    names = args.workloads or [*WORKLOADS, BOOT]
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the host is busy (load average {load:.1f} on {os.cpu_count()} CPUs): QEMU's timer follows "
              f"the wall clock, so its work per tick will come out low; measure on an idle host", file=sys.stderr)
    tree = project.BuildTree(project.default_build_dir())
    source = project.default_source_dir()
    if source is not None:
        project.build(source, tree.directory)
    ticks_at = SymbolTable.from_elf(tree.kernel).address_of("ticks")
    if ticks_at is None:
        print(f"{tree.kernel} has no `ticks` symbol", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="weensy-rates-") as tmp:
        for name in names:
            if name == BOOT:
                row = Row(BOOT, "s", note="QEMU: wall time from its start; harness: virtual time from power-on")
            else:
                row = Row(name, f"{WORKLOADS[name].unit}/tick", note=WORKLOADS[name].note)
            image = make_image(tree, "hello" if name == BOOT else f"loop {WORKLOADS[name].command}", Path(tmp))
            for _ in range(args.repeat):
                row.qemu_load.append(os.getloadavg()[0])
                row.qemu.append(measure(name, image, ticks_at, qemu=True))
                if not args.no_harness:
                    row.harness.append(measure(name, image, ticks_at, qemu=False))
            print(f"  {name}: QEMU {row.median(row.qemu):.4g} {row.unit} (runs: "
                  + ", ".join(f"{q:.4g} at load {load:.1f}" for q, load in zip(row.qemu, row.qemu_load, strict=True))
                  + ")", file=sys.stderr, flush=True)
            rows.append(row)
    print(table(rows))
    if args.json is not None:
        record = {
            "what": "work per tick of the kernel's 100 Hz timer under QEMU TCG (and the harness), by "
                    "scripts/qemu_tick_rates.py",
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "qemu": qemu_version(),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "load_average_1min": os.getloadavg()[0]},
            "repeat": args.repeat,
            "workloads": {name: {"command": f"loop {w.command}", "rounds": w.rounds, "unit": w.unit}
                          for name, w in WORKLOADS.items() if name in names},
            "rows": [{**asdict(row), "qemu_median": row.median(row.qemu),
                      "harness_median": row.median(row.harness), "harness_over_qemu": row.ratio} for row in rows],
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
