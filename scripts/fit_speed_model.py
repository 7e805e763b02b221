#!/usr/bin/env python3
"""Fit the harness's CPU speed model (harness/pc/clock.py, ClockCosts) to QEMU's work per timer tick.

The reference figures are QEMU 7.2 TCG's medians in docs/qemu-tick-rates.json (scripts/qemu_tick_rates.py). The
model: virtual time = instructions x ps_per_instruction + syscalls x ns_per_syscall + deliveries x
ns_per_delivery + port accesses x ns_per_port_io + text-memory bytes x ns_per_mmio_byte + halted time (+ the boot
delay, once). For each workload, one run of the harness with the plain instruction clock (10 ns an instruction,
no event costs) counts per unit of work (a yield, a pipe message, a page, a fork) the instructions, system calls,
interrupt/exception deliveries (less the timer's own, which come once a tick whatever the costs), port accesses,
bytes read or written in the text window, and the halted time. A candidate model then predicts the work per
tick; the costs are fitted by least squares on log(predicted / QEMU) over the workloads (a ratio of 2 is as bad
either way). The boot delay is fitted apart: QEMU's time to the first log line is almost all firmware (SeaBIOS,
option ROMs) and QEMU's own start, so it is QEMU's median minus what the harness takes with the fitted costs.

Then the harness runs every workload again with the fitted model, which gives the residuals the model really
has (the counts per unit move a little when the costs change: the timer lands elsewhere).

    .venv/bin/python scripts/fit_speed_model.py [--rates docs/qemu-tick-rates.json] [--json docs/speed-model.json]

Put the printed constants into harness/pc/clock.py (they are data: nothing is measured at run time).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qemu_tick_rates import BOOT, WORKLOADS, make_image, work_done  # noqa: E402

from harness import project  # noqa: E402
from harness.machine import Machine, MachineConfig, StopKind  # noqa: E402
from harness.pc.clock import ClockCosts  # noqa: E402
from harness.pc.events import Kind  # noqa: E402
from harness.pc.symbols import SymbolTable  # noqa: E402

TICK_NS = 10_000_000  # the kernel's 100 Hz timer


@dataclass
class Counts:
    """One workload's run of the harness: what it did per unit of work."""

    name: str
    units: int
    ticks: int
    instructions: float  # per unit
    syscalls: float  # per unit
    deliveries: float  # per unit, the timer's one per tick left out
    port_ios: float  # per unit
    mmio_bytes: float  # per unit: bytes read or written in the text window
    halted_ns: float  # per unit
    rate: float  # units per tick in this run


def run_workload(name: str, image: Path, ticks_at: int, costs: ClockCosts) -> Counts:
    """Run workload `name` with `costs`. The counts start at the kernel's first log line: what the boot did
    before (the BIOS reading the disk, the kernel starting) is not work of the workload. `halted_ns` is all the
    time not counted in instructions (with the plain instruction clock: the halted time)."""
    workload = WORKLOADS[name]
    machine = Machine(MachineConfig(costs=costs))
    machine.boot_disk(image.read_bytes())
    machine.run(until_event=lambda event: event.kind is Kind.LOG, max_time_ns=int(30e9))
    clock = machine.clock
    start = (clock.instructions, machine.syscall_count, machine.cpu.deliveries, clock.skipped_ns,
             struct.unpack_from("<Q", machine.memory, ticks_at)[0], _text_bytes(machine))
    done = f"weensyos: loop {workload.rounds} done"
    stop = machine.run(until=done, max_time_ns=int(600e9))
    if stop.kind is not StopKind.UNTIL:
        raise RuntimeError(f"harness: {image.name} stopped without {done!r}: {stop.message}")
    ticks = struct.unpack_from("<Q", machine.memory, ticks_at)[0]
    units = work_done(workload, machine.screen_text())
    instructions, syscalls, deliveries, skipped, ticks_run, mmio_bytes = (
        now - then for now, then in zip((clock.instructions, machine.syscall_count, machine.cpu.deliveries,
                                         clock.skipped_ns, ticks, _text_bytes(machine)), start, strict=True))
    return Counts(name, units, ticks, instructions / units, syscalls / units,
                  max(0, deliveries - ticks_run) / units, 0.0, mmio_bytes / units, skipped / units, units / ticks)


def _text_bytes(machine: Machine) -> int:
    window = machine.text_window
    return window.bytes_read + window.bytes_written if window is not None else 0


def boot_seconds(image: Path, costs: ClockCosts) -> float:
    machine = Machine(MachineConfig(costs=costs))
    machine.boot_disk(image.read_bytes())
    machine.run(until_event=lambda event: event.kind is Kind.LOG, max_time_ns=int(30e9))
    return next(event for event in machine.events.ring if event.kind is Kind.LOG).time_ns / 1e9


def predicted_rate(counts: Counts, ps: float, syscall: float, delivery: float, port: float, mmio: float) -> float:
    """Units per tick under a model: the timer's own delivery costs `delivery` once a tick."""
    per_unit = counts.instructions * ps / 1000 + counts.syscalls * syscall + counts.deliveries * delivery \
        + counts.port_ios * port + counts.mmio_bytes * mmio + counts.halted_ns
    return (TICK_NS - delivery) / per_unit


def loss(rows: list[tuple[Counts, float]], x: tuple[float, ...]) -> float:
    return sum(math.log(predicted_rate(c, *x) / q) ** 2 for c, q in rows)


def fit(rows: list[tuple[Counts, float]]) -> tuple[float, float, float, float, float]:
    """Least squares in log space, by a coarse grid then a shrinking pattern search (five knobs, five rows:
    nothing needs a library). The costs stay >= 0 and an instruction costs at least 1 ps."""
    events = (0, *(10 * 4.0 ** i for i in range(6)))
    best = min(((ps, s, d, p, m) for ps in (100 * 1.5 ** i for i in range(15))
                for s in events for d in events for p in events for m in events), key=lambda x: loss(rows, x))
    step = [0.25] * 5
    while max(step) > 1e-5:
        improved = False
        for k in range(5):
            for sign in (1, -1):
                trial = list(best)
                trial[k] = best[k] * (1 + sign * step[k]) if best[k] > 0 else (10.0 if sign > 0 else 0.0)
                trial[0] = max(trial[0], 1.0)
                if loss(rows, tuple(trial)) < loss(rows, best):  # type: ignore[arg-type]
                    best, improved = tuple(trial), True  # type: ignore[assignment]
        if not improved:
            step = [s / 2 for s in step]
    return best  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=Path, default=project.PACKAGE_ROOT / "docs" / "qemu-tick-rates.json")
    parser.add_argument("--json", type=Path, help="write the fit (constants, counts, residuals) here")
    args = parser.parse_args()
    reference = json.loads(args.rates.read_text())
    qemu = {row["name"]: row["qemu_median"] for row in reference["rows"]}
    tree = project.BuildTree(project.default_build_dir())
    source = project.default_source_dir()
    if source is not None:
        project.build(source, tree.directory)
    ticks_at = SymbolTable.from_elf(tree.kernel).address_of("ticks")
    plain = ClockCosts.instructions_only()
    with tempfile.TemporaryDirectory(prefix="weensy-fit-") as tmp:
        images = {name: make_image(tree, "hello" if name == BOOT else f"loop {WORKLOADS[name].command}", Path(tmp))
                  for name in [*WORKLOADS, BOOT]}
        counts = []
        for name in WORKLOADS:
            # The clock charges events without counting them apart: a second run where a port access costs 1 ns
            # (and nothing else costs anything but instructions) has one more ns not in instructions per access.
            halted = run_workload(name, images[name], ticks_at, plain)
            counted = run_workload(name, images[name], ticks_at,
                                   replace(plain, ns_per_port_io=1))
            halted.port_ios = max(0.0, counted.halted_ns * counted.units - halted.halted_ns * halted.units) \
                / halted.units
            counts.append(halted)
        rows = [(c, qemu[c.name]) for c in counts]
        ps, syscall, delivery, port, mmio = fit(rows)
        fitted = ClockCosts(round(ps), round(syscall), round(delivery), round(port), 0, round(mmio),
                            ns_per_mmio=round(port))
        boot_delay = max(0, round((qemu[BOOT] - boot_seconds(images[BOOT], fitted)) * 1e9))
        fitted = replace(fitted, boot_delay_ns=boot_delay)
        checked = {c.name: run_workload(c.name, images[c.name], ticks_at, fitted).rate for c in counts}
        checked[BOOT] = boot_seconds(images[BOOT], fitted)
        before = {c.name: c.rate for c in counts}
        before[BOOT] = boot_seconds(images[BOOT], plain)
    print("fitted constants (harness/pc/clock.py):")
    for key, value in asdict(fitted).items():
        print(f"  {key} = {value}")
    print(f"\n{'workload':<22} {'QEMU median':>12} {'before':>10} {'ratio':>7} {'model':>10} {'after':>10} "
          f"{'ratio':>7} {'log resid':>9}")
    result_rows = []
    for name in [*WORKLOADS, BOOT]:
        model = predicted_rate(next(c for c in counts if c.name == name), ps, syscall, delivery, port, mmio) \
            if name != BOOT else qemu[BOOT]
        ratio_before, ratio_after = before[name] / qemu[name], checked[name] / qemu[name]
        print(f"{name:<22} {qemu[name]:>12.4g} {before[name]:>10.4g} {ratio_before:>7.3f} {model:>10.4g} "
              f"{checked[name]:>10.4g} {ratio_after:>7.3f} {math.log(ratio_after):>+9.3f}")
        result_rows.append({"name": name, "qemu_median": qemu[name], "harness_before": before[name],
                            "ratio_before": ratio_before, "model_prediction": model, "harness_after": checked[name],
                            "ratio_after": ratio_after, "log_residual": math.log(ratio_after)})
    if args.json is not None:
        args.json.write_text(json.dumps({
            "what": "the CPU speed model's fit (scripts/fit_speed_model.py) to QEMU's medians in "
                    + str(args.rates.name),
            "qemu_measured": reference.get("measured"), "qemu": reference.get("qemu"),
            "constants": asdict(fitted), "fit_unrounded": {"ps_per_instruction": ps, "ns_per_syscall": syscall,
                                                          "ns_per_delivery": delivery, "ns_per_port_io": port,
                                                          "ns_per_mmio_byte": mmio},
            "counts_per_unit": [asdict(c) for c in counts], "rows": result_rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
