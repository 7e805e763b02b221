"""`python -m harness bench`: how fast the harness runs WeensyOS, against QEMU (TCG) on the same disk image.

Rows (each the median of several runs, with the spread):
- boot: process start to the kernel's first log line (a fresh `python -m harness boot` process; QEMU from its
  start), and, in process, Machine creation to the first user instruction;
- compute: a fixed amount of register-only work (`compute`); guest instructions per second;
- yield loop (10,000 system calls), page faults (1,000 forked children that fault and are killed), fork+exit
  (1,000 cycles), pipe (200 messages): as rates, each over several rounds (the kernel's `loop` option runs the
  command again when it ends);
- tracing overhead: the same workloads with the full trace on, as a ratio of wall times.
QEMU boots the same disk image (one per command, made with weensyos-src/mkimage.py), the harness boots it from
its boot sector too, so both machines do the same work. Each workload's rate is measured as a difference: the
time of a run from power-on to power-off minus the time of a `hello` run made just before it, so that neither
machine's start-up and boot (QEMU's process and firmware, the harness's Python) is counted as workload time.
Results are printed as a table and written as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unicorn.unicorn_py3.unicorn import uclib

from .. import project
from ..machine import Machine, MachineConfig, StopKind
from ..observe.syscalls import SyscallTable
from ..pc import fastpath
from ..pc.events import Kind
from ..pc.loader import Module, read_elf
from .qemu import boot_image, qemu_available


@dataclass
class Row:
    name: str
    unit: str
    harness: list[float] = field(default_factory=list)
    qemu: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    note: str = ""

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        """harness / QEMU, oriented so that above 1 means the harness is better."""
        h, q = self._median(self.harness), self._median(self.qemu)
        if not h or not q:
            return None
        return h / q if self.higher_is_better else q / h

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.update(harness_median=self._median(self.harness), qemu_median=self._median(self.qemu),
                    ratio=self.ratio)
        return data


@dataclass(frozen=True)
class Workload:
    command: str  # a program (or pseudo-program) of our WeensyOS
    unit: str
    per_round: int | None  # work units per run of the command; None: count the guest instructions
    rounds: int  # runs of the command in one measurement (the kernel's `loop` option repeats it)


WORKLOADS = {
    "compute": Workload("compute", "Minsn/s", None, 2),
    "yield loop": Workload("yielder", "syscalls/s", 10_000, 20),
    "page faults (fork, fault, kill)": Workload("faulter", "faults/s", 1_000, 4),
    "fork+exit": Workload("forkexit", "cycles/s", 1_000, 4),
    "pipe": Workload("pipe", "messages/s", 200, 40),
}


def _make_image(build: Path, command: str, out: Path) -> Path:
    subprocess.run([sys.executable, str(project.PACKAGE_ROOT / "weensyos-src" / "mkimage.py"), "--build", str(build),
                    "--command", command, "-o", str(out)], check=True, capture_output=True)
    return out


def _round_marker(rounds: int) -> str:
    return f"weensyos: loop {rounds} done"  # what the kernel logs when its `loop` option restarts the command


def _harness_disk_run(image: bytes, traced: bool, tree: project.BuildTree, count_instructions: bool = False,
                      rounds: int | None = None) -> tuple[float, Machine]:
    """Boot `image` to power-off, or (`rounds`) until the kernel logs that many rounds of its command done.
    The log is looked at every virtual millisecond (a stop condition on the log alone would make the harness
    watch every system call, which is not what is measured)."""
    start = time.perf_counter()
    machine = Machine(MachineConfig(count_instructions=count_instructions))
    # The image's kernel is the build's, loaded by the boot sector; its ELF (with symbols) lets the tracer
    # name processes, as when tracing the ELF path.
    machine.boot_disk(image, kernel=read_elf(tree.kernel, "kernel"))
    if traced:
        machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    if rounds is None:
        stop = machine.run(max_time_ns=120_000_000_000)
        ok = stop.kind is StopKind.POWER_OFF
    else:
        marker = _round_marker(rounds).encode()
        ok, stop = False, None
        while not ok and machine.clock.now_ns() < 600_000_000_000:
            stop = machine.run(for_ns=1_000_000, max_time_ns=600_000_000_000)
            ok = marker in machine.log.data
            if stop.kind is not StopKind.PAUSED:
                break
    elapsed = time.perf_counter() - start
    if not ok:
        raise RuntimeError(f"the harness did not finish the workload: {stop.message if stop else ''}")
    return elapsed, machine


def _qemu_seconds(image: Path, rounds: int | None = None) -> float | None:
    if rounds is None:
        result = boot_image(image, timeout=120)
        return result.seconds if result.powered_off else None
    result = boot_image(image, timeout=300, until=_round_marker(rounds))
    return result.seconds if _round_marker(rounds) in result.log else None


def _rates(work: float, runs: list[float], baselines: list[float]) -> list[float]:
    """Work per second of workload time: each run minus the baseline run made just before it."""
    return [work / (run - base) for run, base in zip(runs, baselines, strict=True) if run > base]


def run(repeat: int = 3, use_qemu: bool = True, progress: Callable[[str], None] = print) -> dict[str, object]:
    source = project.default_source_dir()
    tree = project.BuildTree(project.default_build_dir())
    if source is not None:
        project.build(source, tree.directory)
    use_qemu = use_qemu and qemu_available()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="weensy-bench-") as tmp:
        images = {command: _make_image(tree.directory, command, Path(tmp) / f"{command.replace(' ', '-')}.img")
                  for command in ["hello"] + [w.command for w in WORKLOADS.values()]
                  + [f"loop {w.command}" for w in WORKLOADS.values()]}

        progress("boot ...")
        boot = Row("boot to the first log line", "s", higher_is_better=False,
                   note="a new process: Python start-up and imports, or QEMU's start and firmware, included")
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "harness", "boot", "--disk", str(images["hello"]), "--headless",
                            "--until", "weensyos: booting", "-q"], check=True, capture_output=True)
            boot.harness.append(time.perf_counter() - start)
            if use_qemu:
                result = boot_image(images["hello"], timeout=30, until="weensyos: booting")
                if result.first_log_seconds is not None:
                    boot.qemu.append(result.first_log_seconds)
        rows.append(boot)

        first_user = Row("Machine() to the first user instruction (in process)", "ms", higher_is_better=False,
                         note="harness only: QEMU has no in-process equivalent")
        kernel = read_elf(tree.kernel, "kernel")
        hello = read_elf(tree.programs()["hello"], "program")
        for _ in range(repeat):
            start = time.perf_counter()
            machine = Machine(MachineConfig())
            machine.boot(kernel, "hello", [Module("hello", hello)])
            machine.add_breakpoint(hello.entry)
            machine.run(max_time_ns=1_000_000_000)
            first_user.harness.append((time.perf_counter() - start) * 1e3)
        rows.append(first_user)

        hello_image = images["hello"].read_bytes()
        for name, workload in WORKLOADS.items():
            progress(f"{name} ...")
            command, rounds = workload.command, workload.rounds
            image = images[f"loop {command}"].read_bytes()
            row = Row(name, workload.unit)
            traced = Row(f"{name}: tracing on / off", "ratio", higher_is_better=False,
                         note="wall time of the whole run with the full trace divided by wall time without")
            times: dict[str, list[float]] = {"harness": [], "harness hello": [], "qemu": [], "qemu hello": []}
            for _ in range(repeat):
                times["harness hello"].append(_harness_disk_run(hello_image, False, tree)[0])
                elapsed, machine = _harness_disk_run(image, False, tree, rounds=rounds)
                times["harness"].append(elapsed)
                traced_elapsed, _ = _harness_disk_run(image, True, tree, rounds=rounds)
                traced.harness.append(traced_elapsed / elapsed)
                if use_qemu:
                    base = _qemu_seconds(images["hello"])
                    total = _qemu_seconds(images[f"loop {command}"], rounds)
                    if base is not None and total is not None:
                        times["qemu hello"].append(base)
                        times["qemu"].append(total)
            if workload.per_round is None:  # compute: guest instructions, counted exactly (same every run)
                single = images[command].read_bytes()
                counts = [_harness_disk_run(data, False, tree, count_instructions=True)[1].clock.instructions
                          for data in (single, hello_image)]
                per_round = (counts[0].value - counts[1].value) if counts[0] and counts[1] else 0
                work = per_round * rounds / 1e6
                row.note = (f"{rounds} x {per_round / 1e6:.0f} M guest instructions (beyond a hello run), "
                            f"less a hello run's time")
            else:
                work = workload.per_round * rounds
                row.note = f"{rounds} x {workload.per_round:,} per run, less a hello run's time"
            row.harness = _rates(work, times["harness"], times["harness hello"])
            row.qemu = _rates(work, times["qemu"], times["qemu hello"])
            if workload.per_round is None:
                rows.append(row)
                rows.append(_unclocked_compute(tree, per_round / 1e6, repeat, row))
                rows.append(traced)
                continue
            if name == "yield loop":
                row.note += f"; {machine.events.counts[Kind.SYSCALL]:,} system calls counted by the harness"
            if name.startswith("page faults"):
                row.note += f"; {machine.events.counts[Kind.EXCEPTION]:,} exceptions counted by the harness"
            rows.append(row)
            rows.append(traced)
    return {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "cpu model": _cpu_model(), "hot paths": fastpath.status()},
            "qemu": use_qemu, "repeat": repeat, "rows": [row.summary() for row in rows]}


def _unclocked_compute(tree: project.BuildTree, work: float, repeat: int, clocked: Row) -> Row:
    """The compute workload on Unicorn with no hook at all (no block clock, so no timer: not deterministic and
    not how the harness runs): how fast Unicorn itself runs this guest code, to tell its share of the gap to
    QEMU from the clock's. ELF boot, less a hello run, like the other rows."""
    row = Row("compute: Unicorn alone, without the block clock (reference)", "Minsn/s",
              note="the harness's own clock hook removed; the timer never fires; for the profile only")
    kernel = read_elf(tree.kernel, "kernel")
    programs = tree.programs()

    def elapsed(command: str, clocked_run: bool) -> float:
        start = time.perf_counter()
        machine = Machine(MachineConfig())
        machine.boot(kernel, command, [Module(command, read_elf(programs[command], "program"))])
        if not clocked_run:
            uclib.uc_hook_del(machine.uc._uch, machine.clock.hook_handle)
        stop = machine.run(max_time_ns=120_000_000_000)
        if stop.kind is not StopKind.POWER_OFF:
            raise RuntimeError(f"compute did not power off: {stop.message}")
        return time.perf_counter() - start

    runs, bases = [], []
    for _ in range(repeat):
        bases.append(elapsed("hello", False))
        runs.append(elapsed("compute", False))
    row.harness = _rates(work, runs, bases)
    row.qemu = list(clocked.qemu)
    return row


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _figure(value: object) -> str:
    """A median as people read it: thousands separated, three significant figures, never an exponent."""
    if not isinstance(value, float):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(result: dict[str, object]) -> str:
    """The rows as plain text, columns sized to their longest entry."""
    header = ("workload", "unit", "harness", "QEMU", "harness/QEMU", "spread (harness)")
    rows = [header]
    for row in result["rows"]:  # type: ignore[union-attr]
        runs: list[float] = row["harness"]  # type: ignore[index]
        spread = f"{_figure(min(runs))}-{_figure(max(runs))}" if runs else ""
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"  # type: ignore[index]
        rows.append((row["name"], row["unit"], _figure(row["harness_median"]),  # type: ignore[index]
                     _figure(row["qemu_median"]), ratio, spread))  # type: ignore[index]
    widths = [max(len(line[i]) for line in rows) for i in range(len(header))]
    return "\n".join(f"{name:<{widths[0]}}  {unit:<{widths[1]}}  {h:>{widths[2]}}  {q:>{widths[3]}}  "
                     f"{r:>{widths[4]}}  {spread}".rstrip() for name, unit, h, q, r, spread in rows)


def markdown(result: dict[str, object]) -> str:
    """The rows as a Markdown table (what the README shows), medians with three significant figures."""

    show = _figure
    lines = ["| workload | unit | harness | QEMU | harness/QEMU | spread (harness) |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:  # type: ignore[union-attr]
        spread = f"{show(min(row['harness']))}-{show(max(row['harness']))}" if row["harness"] else "-"  # type: ignore[index]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"  # type: ignore[index]
        lines.append(f"| {row['name']} | {row['unit']} | {show(row['harness_median'])} | "  # type: ignore[index]
                     f"{show(row['qemu_median'])} | {ratio} | {spread} |")  # type: ignore[index]
    return "\n".join(lines)


def _describe_machine(result: dict[str, object]) -> str:
    machine = result.get("machine", {})
    return (f"{machine.get('cpu model', '?')}, {machine.get('cpus', '?')} CPUs, Python "  # type: ignore[union-attr]
            f"{machine.get('python', '?')}; hot paths: {machine.get('hot paths', '?')}; "  # type: ignore[union-attr]
            f"median of {result.get('repeat', '?')} run{'' if result.get('repeat') == 1 else 's'}")


def show_saved(path: Path, as_markdown: bool) -> int:
    """Print results saved by --json, without measuring anything."""
    try:
        result = json.loads(path.read_text())
        text = markdown(result) if as_markdown else table(result)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"harness: error: cannot read benchmark results from {path}: {error}", file=sys.stderr)
        return 1
    print(text)
    print(_describe_machine(result))
    return 0


def main(repeat: int, output: Path | None, use_qemu: bool, as_markdown: bool = False) -> int:
    result = run(repeat, use_qemu, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(markdown(result) if as_markdown else table(result))
    print(_describe_machine(result))
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"(written to {output})", file=sys.stderr)
    return 0
