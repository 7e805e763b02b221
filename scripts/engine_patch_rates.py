#!/usr/bin/env python3
"""The harness's workload rates with each engine patch switched off in turn (engine/README.md's per-patch table).

Each workload is run as `python -m harness bench` runs it (a disk image whose kernel repeats the command, less a
`hello` run), in CPU time, once per switch setting per round; the rounds interleave the settings so that the
host's load falls on all of them alike. Prints the median and the spread of each.

    .venv/bin/python scripts/engine_patch_rates.py [--rounds 3] [--off PATCH[+PATCH...]] ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import project  # noqa: E402
from harness.front import bench  # noqa: E402
from harness.pc import engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--off", action="append", metavar="PATCH[+PATCH...]",
                        help="a setting to measure (default: none off, then each switchable patch off)")
    args = parser.parse_args()
    settings = [s.split("+") for s in args.off] if args.off else [[]] + [[p] for p in sorted(engine.switches())]
    tree = project.BuildTree(project.default_build_dir())
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for workload in bench.WORKLOADS.values():
            for command in ("hello", f"loop {workload.command}", workload.command):
                path = Path(tmp) / f"{command.replace(' ', '-')}.img"
                if not path.exists():
                    bench._make_image(tree.directory, command, path)
                images[command] = path.read_bytes()
        per_round = {}
        for name, workload in bench.WORKLOADS.items():
            if workload.per_round is None:  # compute: the exact instruction count of one run beyond a hello run
                counts = [bench._harness_disk_run(images[c], False, tree)[1].clock.instructions
                          for c in (workload.command, "hello")]
                per_round[name] = (counts[0] - counts[1]) / 1e6
            else:
                per_round[name] = workload.per_round
        for _ in range(args.rounds):
            for name, workload in bench.WORKLOADS.items():
                for off in settings:
                    os.environ[engine.OFF_VARIABLE] = ",".join(off)
                    hello = bench._harness_disk_run(images["hello"], False, tree, cpu_time=True)[0]
                    total = bench._harness_disk_run(images[f"loop {workload.command}"], False, tree,
                                                    rounds=workload.rounds, cpu_time=True)[0]
                    key = (name, "+".join(off) or "none")
                    rates.setdefault(key, []).append(per_round[name] * workload.rounds / (total - hello))
    for (name, off), values in rates.items():
        print(f"{name:32s} off: {off:40s} {statistics.median(values):12,.0f}  "
              f"({min(values):,.0f}-{max(values):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
