"""Time grading N submissions one after another against `check --submissions` on a local Dask cluster.

    .venv/bin/python scripts/time_submissions.py [-n 20] [--workers 2] [--variants]

Makes N submission folders in a temporary directory: copies of our kernel's build (kernel, programs, tables),
and with --variants every other one a broken variant of it (tests/kernel_variants.py, built once). Then times:

    serial (processes)   `python -m harness check SUB --results F`, once per submission, one after another
    serial (one process) `python -m harness check SUB1 ... SUBN` (no start-up cost per submission)
    --submissions        `python -m harness check --submissions DIR --out OUT --workers W`, cluster start included

and prints a table of wall-clock seconds, the ratio to the serial run, and the load average before and after (the
machine's other work slows every row). It also checks that every submission's results.json is the same both ways.
Timing is a measurement for the docs; no test asserts it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import project  # noqa: E402

KEEP = ("kernel", "syscalls.json", "commands.json")


def copy_build(build: Path, folder: Path) -> None:
    """The files `check` reads from a build directory: the kernel, the programs and the tables."""
    folder.mkdir(parents=True)
    for path in build.iterdir():
        if path.name in KEEP or (path.name.startswith(project.PROGRAM_PREFIX) and "." not in path.name):
            shutil.copy2(path, folder / path.name)


def build_variants(build: project.BuildTree, scratch: Path) -> list[Path]:
    from tests.kernel_variants import VARIANTS, build_variant

    directories = []
    for variant in VARIANTS:
        (scratch / variant.name).mkdir(parents=True)
        directories.append(build_variant(variant, build, scratch / variant.name))
    return directories


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def timed(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of the processes it started, the cluster's workers included)."""
    start, cpu = time.monotonic(), children_cpu()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.monotonic() - start, children_cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="how many submissions (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the local cluster (default 2)")
    parser.add_argument("--variants", action="store_true", help="every other submission a broken variant")
    parser.add_argument("--no-one-process", action="store_true", help="skip the serial run in one process")
    args = parser.parse_args()
    build = project.BuildTree(project.default_build_dir())
    harness = [sys.executable, "-m", "harness", "check"]
    with tempfile.TemporaryDirectory(prefix="time-submissions-") as scratch_name:
        scratch = Path(scratch_name)
        sources = [build.directory]
        if args.variants:
            sources += build_variants(build, scratch / "variants")
        subs = scratch / "subs"
        variants = sources[1:]
        for i in range(args.n):  # ours, a variant, ours, the next variant...
            source = variants[(i // 2) % len(variants)] if variants and i % 2 else sources[0]
            copy_build(source, subs / f"s{i:03d}")
        folders = sorted(subs.iterdir())
        load_before = os.getloadavg()
        rows = []
        serial = scratch / "serial"
        serial.mkdir()
        start, cpu = time.monotonic(), children_cpu()
        for folder in folders:
            subprocess.run([*harness, str(folder), "--results", str(serial / f"{folder.name}.json")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        rows.append(("serial (a process per submission)", (time.monotonic() - start, children_cpu() - cpu)))
        if not args.no_one_process:
            rows.append(("serial (one process, N kernels)", timed([*harness, *map(str, folders)])))
        out = scratch / "out"
        rows.append((f"--submissions, {args.workers} local workers",
                     timed([*harness, "--submissions", str(subs), "--out", str(out), "--workers", str(args.workers)])))
        load_after = os.getloadavg()
        same = all(json.loads((serial / f"{f.name}.json").read_text()) ==
                   json.loads((out / f.name / "results.json").read_text()) for f in folders)
    base = rows[0][1][0]
    print(f"{args.n} submissions (copies of {len(sources)} builds), {os.cpu_count()} cores; load average "
          f"before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"| {'how':<38} | {'wall s':>7} | {'vs serial':>9} | {'CPU s':>7} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 11}|{'-' * 9}|")
    for name, (seconds, cpu_seconds) in rows:
        print(f"| {name:<38} | {seconds:7.1f} | {seconds / base:9.2f} | {cpu_seconds:7.1f} |")
    print(f"results.json the same both ways: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
