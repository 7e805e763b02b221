#!/usr/bin/env python3
"""Small programs that each exercise one cost of the speed model, timed under QEMU 7.2 TCG and in the harness:
the check from outside the fit that docs/speed-model.md reports.

The fit (scripts/fit_speed_model.py) has about as many costs as workloads, so its small residuals say little by
themselves. These probes isolate what the costs stand for: stores to RAM (the baseline, with the round's
process start and exit), stores to text memory, loads from text memory, and a register spin loop. Each is a
program written here into a scratch copy of weensyos-src (never into the tree: the course-mode kernel embeds
every program, and these are not part of the OS), built, and run with the kernel's `loop` option as
scripts/qemu_tick_rates.py runs the workloads: milliseconds of the kernel's own ticks per round, QEMU's median
of --repeat runs (with the host's load average before each) against the harness's deterministic figure.

    .venv/bin/python scripts/speed_probes.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qemu_tick_rates import Workload, harness_rate, make_image, qemu_rate  # noqa: E402

from harness import project  # noqa: E402
from harness.front.qemu import QEMU, qemu_available  # noqa: E402
from harness.pc.symbols import SymbolTable  # noqa: E402

STORES = 200_000  # 16-bit accesses a round (100 passes over the 2,000 cells of the screen)
SPINS = 2_000_000



def _store_passes(cells: str) -> str:
    """A probe program's C source: 100 passes of 16-bit stores over the 2,000 cells at `cells`."""
    return f"""
void process_main() {{
    volatile uint16_t* c = {cells};
    for (int pass = 0; pass != 100; ++pass)
        for (int i = 0; i != 2000; ++i) c[i] = 0x0700 | 'a';
    sys_exit(0);
}}"""


PROBES: dict[str, tuple[str, int, str]] = {  # program -> (what a round does, rounds, source)
    "proberam": (f"{STORES:,} 16-bit stores to RAM", 200,
                 "static uint16_t cells[2000];\n" + _store_passes("cells")),
    "probevgastore": (f"{STORES:,} 16-bit stores to text memory", 20,
                      _store_passes("reinterpret_cast<volatile uint16_t*>(0xB8000)")),
    "probevgaload": (f"{STORES:,} 16-bit loads from text memory", 20, """
void process_main() {
    volatile uint16_t* c = reinterpret_cast<volatile uint16_t*>(0xB8000);
    unsigned sum = 0;
    for (int pass = 0; pass != 100; ++pass)
        for (int i = 0; i != 2000; ++i) sum += c[i];
    asm volatile("" : : "r"(sum));
    sys_exit(0);
}"""),
    "probespin": (f"{SPINS:,} rounds of spin()", 50, f"""
void process_main() {{
    spin({SPINS});
    sys_exit(0);
}}"""),
}


def build(directory: Path) -> project.BuildTree:
    """A scratch copy of weensyos-src with the probes, built without the course-mode kernel (which would have
    to embed them)."""
    source = directory / "src"
    shutil.copytree(project.PACKAGE_ROOT / "weensyos-src", source)
    for name, (_, _, body) in PROBES.items():
        (source / f"p-{name}.cc").write_text('#include "u-lib.hh"\n// A speed probe (scripts/speed_probes.py).\n'
                                             + body.lstrip("\n") + "\n")
    out = directory / "build"
    targets = [str(out / name) for name in ("kernel", "boot", "syscalls.json", "commands.json")]
    targets += [str(out / f"p-{path.stem[2:]}") for path in source.glob("p-*.cc")]
    subprocess.run(["make", "-s", "-C", str(source), f"BUILD={out}", *targets], check=True, capture_output=True)
    return project.BuildTree(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="QEMU runs per probe (default 3)")
    args = parser.parse_args()
    if not qemu_available():
        print(f"{QEMU} is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="weensy-probes-") as tmp:
        tree = build(Path(tmp))
        ticks_at = SymbolTable.from_elf(tree.kernel).address_of("ticks")
        assert ticks_at is not None
        print(f"{'probe':<16} {'a round':<40} {'QEMU ms':>8} {'harness ms':>10}  QEMU runs (load average)")
        for name, (what, rounds, _) in PROBES.items():
            workload = Workload(name, "rounds", rounds, 1)
            image = make_image(tree, f"loop {name}", Path(tmp))
            runs = []
            for _ in range(args.repeat):
                load = os.getloadavg()[0]
                runs.append((10 / qemu_rate(workload, image, ticks_at), load))  # ms a round: 10 ms a tick
            harness = 10 / harness_rate(workload, image, ticks_at)
            qemu = statistics.median(ms for ms, _ in runs)
            print(f"{name:<16} {what:<40} {qemu:>8.3f} {harness:>10.3f}  "
                  + ", ".join(f"{ms:.3f} ({load:.1f})" for ms, load in runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
