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
QEMU runs twice per measurement: TCG as the course runs it, and with `-icount shift=0,sleep=off`, which makes it
deterministic like the harness (one instruction per virtual nanosecond, no sleeping when idle). The harness's
rounds end on a callback on the kernel's log line that says the last round is done (QEMU's when the line is in
its log file). Results are printed as a table (medians, each machine's spread) and written as JSON, with the
engine that ran (harness/pc/engine.py) and the machine's load average.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import project
from ..machine import Machine, MachineConfig, StopKind
from ..observe.syscalls import SyscallTable
from ..pc import engine, fastpath
from ..pc.events import Kind
from ..pc.loader import Module, read_elf
from .qemu import boot_image, qemu_available


@dataclass
class Row:
    name: str
    unit: str
    harness: list[float] = field(default_factory=list)
    qemu: list[float] = field(default_factory=list)
    qemu_icount: list[float] = field(default_factory=list)  # QEMU with -icount shift=0,sleep=off
    higher_is_better: bool = True
    note: str = ""

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def _ratio(self, reference: list[float]) -> float | None:
        h, q = self._median(self.harness), self._median(reference)
        if not h or not q:
            return None
        return h / q if self.higher_is_better else q / h

    @property
    def ratio(self) -> float | None:
        """harness / QEMU, oriented so that above 1 means the harness is better."""
        return self._ratio(self.qemu)

    @property
    def ratio_icount(self) -> float | None:
        """harness / QEMU -icount, oriented the same way."""
        return self._ratio(self.qemu_icount)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.update(harness_median=self._median(self.harness), qemu_median=self._median(self.qemu),
                    qemu_icount_median=self._median(self.qemu_icount), ratio=self.ratio,
                    ratio_icount=self.ratio_icount)
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


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _harness_disk_run(image: bytes, traced: bool, tree: project.BuildTree, rounds: int | None = None,
                      cpu_time: bool = False) -> tuple[float, Machine]:
    """Boot `image` to power-off, or (`rounds`) until the kernel logs that many rounds of its command done: a
    callback on the log's lines asks for the stop (an `until` text would also make the harness look at the
    screen at every system call, which is not what is measured). `cpu_time`: the process's CPU time instead of
    wall time (a shared machine's load then matters far less)."""
    timer = time.process_time if cpu_time else time.perf_counter
    start = timer()
    machine = Machine(MachineConfig())
    # The image's kernel is the build's, loaded by the boot sector; its ELF (with symbols) lets the tracer
    # name processes, as when tracing the ELF path.
    machine.boot_disk(image, kernel=read_elf(tree.kernel, "kernel"))
    if traced:
        machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    if rounds is None:
        stop = machine.run(max_time_ns=120_000_000_000)
        ok = stop.kind is StopKind.POWER_OFF
    else:
        marker = _round_marker(rounds)
        log_line = machine.log.on_line

        def on_line(line: str) -> None:
            log_line(line)
            if marker in line:
                machine._request_stop(StopKind.UNTIL, f"{marker!r} appeared in the log")

        machine.log.on_line = on_line
        stop = machine.run(max_time_ns=600_000_000_000)
        ok = stop.kind is StopKind.UNTIL and marker.encode() in machine.log.data
    elapsed = timer() - start
    if not ok:
        raise RuntimeError(f"the harness did not finish the workload: {stop.message if stop else ''}")
    return elapsed, machine


QEMU_ICOUNT = ("-icount", "shift=0,sleep=off")  # deterministic QEMU: 1 instruction per virtual ns, no sleeping


def _qemu_seconds(image: Path, rounds: int | None = None, extra: tuple[str, ...] = (),
                  cpu_time: bool = False) -> float | None:
    """Wall time of a QEMU run, or (`cpu_time`) the CPU time QEMU's process used, all its threads."""
    before = _children_cpu_seconds()
    if rounds is None:
        result = boot_image(image, timeout=120, extra=extra)
        ok = result.powered_off
    else:
        result = boot_image(image, timeout=300, until=_round_marker(rounds), extra=extra)
        ok = _round_marker(rounds) in result.log
    if not ok:
        return None
    return _children_cpu_seconds() - before if cpu_time else result.seconds


def _rates(work: float, runs: list[float], baselines: list[float]) -> list[float]:
    """Work per second of workload time: each run minus the baseline run made just before it."""
    return [work / (run - base) for run, base in zip(runs, baselines, strict=True) if run > base]


def run(repeat: int = 3, use_qemu: bool = True, progress: Callable[[str], None] = print,
        cpu_time: bool = False) -> dict[str, object]:
    source = project.default_source_dir()
    tree = project.BuildTree(project.default_build_dir())
    if source is not None:
        project.build(source, tree.directory)
    use_qemu = use_qemu and qemu_available()
    load_before = list(os.getloadavg())
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
                for extra, column in (((), boot.qemu), (QEMU_ICOUNT, boot.qemu_icount)):
                    result = boot_image(images["hello"], timeout=30, until="weensyos: booting", extra=extra)
                    if result.first_log_seconds is not None:
                        column.append(result.first_log_seconds)
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
            times: dict[str, list[float]] = {"harness": [], "harness hello": [], "qemu": [], "qemu hello": [],
                                             "icount": [], "icount hello": []}
            for _ in range(repeat):
                times["harness hello"].append(_harness_disk_run(hello_image, False, tree, cpu_time=cpu_time)[0])
                elapsed, machine = _harness_disk_run(image, False, tree, rounds=rounds, cpu_time=cpu_time)
                times["harness"].append(elapsed)
                traced_elapsed, _ = _harness_disk_run(image, True, tree, rounds=rounds, cpu_time=cpu_time)
                traced.harness.append(traced_elapsed / elapsed)
                if use_qemu:
                    for extra, column in (((), "qemu"), (QEMU_ICOUNT, "icount")):
                        base = _qemu_seconds(images["hello"], extra=extra, cpu_time=cpu_time)
                        total = _qemu_seconds(images[f"loop {command}"], rounds, extra=extra, cpu_time=cpu_time)
                        if base is not None and total is not None:
                            times[f"{column} hello"].append(base)
                            times[column].append(total)
            if workload.per_round is None:  # compute: guest instructions, counted exactly (same every run)
                single = images[command].read_bytes()
                counts = [_harness_disk_run(data, False, tree)[1].clock.instructions for data in (single, hello_image)]
                per_round = counts[0] - counts[1]
                work = per_round * rounds / 1e6
                row.note = (f"{rounds} x {per_round / 1e6:.0f} M guest instructions (beyond a hello run), "
                            f"less a hello run's time")
            else:
                work = workload.per_round * rounds
                row.note = f"{rounds} x {workload.per_round:,} per run, less a hello run's time"
            row.harness = _rates(work, times["harness"], times["harness hello"])
            row.qemu = _rates(work, times["qemu"], times["qemu hello"])
            row.qemu_icount = _rates(work, times["icount"], times["icount hello"])
            if workload.per_round is None:
                rows.append(row)
                rows.append(traced)
                continue
            if name == "yield loop":
                row.note += f"; {machine.events.counts[Kind.SYSCALL]:,} system calls counted by the harness"
            if name.startswith("page faults"):
                row.note += f"; {machine.events.counts[Kind.EXCEPTION]:,} exceptions counted by the harness"
            rows.append(row)
            rows.append(traced)
    switched_off = engine.switched_off_from_environment()
    return {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "cpu model": _cpu_model(), "hot paths": fastpath.status(),
                        "engine": engine.require().summary(switched_off, where=False),
                        "engine patches off": sorted(switched_off),
                        "load average before": load_before, "load average after": list(os.getloadavg())},
            "qemu": use_qemu, "repeat": repeat, "time": "cpu" if cpu_time else "wall",
            "rows": [row.summary() for row in rows]}


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


def _spread(values: list[float], show: Callable[[object], str]) -> str:
    return f"{show(min(values))}-{show(max(values))}" if values else "-"


def table(result: dict[str, object]) -> str:
    """The rows as plain text, columns sized to their longest entry; each machine's spread last."""
    header = ("workload", "unit", "harness", "QEMU", "QEMU -icount", "harness/QEMU", "harness/QEMU -icount",
              "spread (harness; QEMU; QEMU -icount)")
    rows = [header]
    for row in result["rows"]:  # type: ignore[union-attr]
        spreads = "; ".join(_spread(row.get(key) or [], _figure) for key in ("harness", "qemu", "qemu_icount"))  # type: ignore[union-attr]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"  # type: ignore[index]
        ratio_icount = f"{row['ratio_icount']:.2f}" if row.get("ratio_icount") else "-"  # type: ignore[union-attr]
        rows.append((row["name"], row["unit"], _figure(row["harness_median"]), _figure(row["qemu_median"]),  # type: ignore[index]
                     _figure(row.get("qemu_icount_median")), ratio, ratio_icount, spreads))  # type: ignore[union-attr]
    widths = [max(len(line[i]) for line in rows) for i in range(len(header))]
    return "\n".join((f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  "
                      + "  ".join(f"{cell:>{width}}" for cell, width in zip(line[2:7], widths[2:7], strict=True))
                      + f"  {line[7]}").rstrip() for line in rows)


def markdown(result: dict[str, object]) -> str:
    """The rows as a Markdown table (what the README shows), medians with three significant figures."""

    show = _figure
    lines = ["| workload | unit | harness | QEMU | QEMU -icount | harness/QEMU | harness/QEMU -icount "
             "| spread (harness) | spread (QEMU) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:  # type: ignore[union-attr]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"  # type: ignore[index]
        ratio_icount = f"{row['ratio_icount']:.2f}" if row.get("ratio_icount") else "-"  # type: ignore[index, union-attr]
        lines.append(f"| {row['name']} | {row['unit']} | {show(row['harness_median'])} | "  # type: ignore[index]
                     f"{show(row['qemu_median'])} | {show(row.get('qemu_icount_median'))} | {ratio} | "  # type: ignore[index, union-attr]
                     f"{ratio_icount} | {_spread(row['harness'], show)} | {_spread(row['qemu'], show)} |")  # type: ignore[index]
    return "\n".join(lines)


def _describe_machine(result: dict[str, object]) -> str:
    machine: dict[str, object] = result.get("machine", {})  # type: ignore[assignment]
    repeat = result.get("repeat", "?")
    text = (f"{machine.get('cpu model', '?')}, {machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}; "
            f"hot paths: {machine.get('hot paths', '?')}; median of {repeat} run{'' if repeat == 1 else 's'}"
            + ("; workload rows in CPU time" if result.get("time") == "cpu" else ""))
    before, after = machine.get("load average before"), machine.get("load average after")
    if isinstance(before, list) and isinstance(after, list):
        text += f"; load average {before[0]:.2f} before, {after[0]:.2f} after"
    if machine.get("engine"):
        text += f"\n{machine['engine']}"
    return text


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


def main(repeat: int, output: Path | None, use_qemu: bool, as_markdown: bool = False, cpu_time: bool = False) -> int:
    result = run(repeat, use_qemu, progress=lambda text: print(text, file=sys.stderr, flush=True), cpu_time=cpu_time)
    print(markdown(result) if as_markdown else table(result))
    print(_describe_machine(result))
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"(written to {output})", file=sys.stderr)
    return 0
