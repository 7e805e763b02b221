"""`python -m harness bench`: how fast the harness runs WeensyOS, against QEMU (TCG) on the same disk image.

Rows (each the median of several runs, with the spread):
- boot: process start to the kernel's first log line (a fresh `python -m harness boot` process; QEMU from its
  start), and, in process, Machine creation to the first user instruction;
- compute: a fixed amount of register-only work (`compute`), to power-off; guest instructions per second;
- yield loop (10,000 system calls), pipe (200 messages), fork+exit (1,000 cycles): to power-off, as rates;
- tracing overhead: the same workloads with the full trace on, as a ratio.
QEMU boots the same disk image (one per command, made with weensyos-src/mkimage.py), the harness boots it from
its boot sector too, so both machines do the same work. Results are printed as a table and written as JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import project
from .events import Kind
from .loader import Module, read_elf
from .machine import Machine, MachineConfig, StopKind
from .qemu import boot_image, qemu_available
from .syscalls import SyscallTable


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


WORKLOADS = {  # name -> (command, unit of work, work done)
    "compute": ("compute", "Minsn/s", None),
    "yield loop": ("yielder", "syscalls/s", 10_000),
    "pipe": ("pipe", "messages/s", 200),
    "fork+exit": ("forkexit", "cycles/s", 1_000),
}


def _make_image(build: Path, command: str, out: Path) -> Path:
    subprocess.run([sys.executable, str(project.PACKAGE_ROOT / "weensyos-src" / "mkimage.py"), "--build", str(build),
                    "--command", command, "-o", str(out)], check=True, capture_output=True)
    return out


def _harness_disk_run(image: bytes, traced: bool, tree: project.BuildTree) -> tuple[float, Machine]:
    start = time.perf_counter()
    machine = Machine(MachineConfig())
    machine.boot_disk(image)
    if traced:
        machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    stop = machine.run(max_time_ns=120_000_000_000)
    elapsed = time.perf_counter() - start
    if stop.kind is not StopKind.POWER_OFF:
        raise RuntimeError(f"the harness did not power off: {stop.message}")
    return elapsed, machine


def run(repeat: int = 3, use_qemu: bool = True, progress: Callable[[str], None] = print) -> dict[str, object]:
    source = project.default_source_dir()
    tree = project.BuildTree(project.default_build_dir())
    if source is not None:
        project.build(source, tree.directory)
    use_qemu = use_qemu and qemu_available()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="weensy-bench-") as tmp:
        images = {command: _make_image(tree.directory, command, Path(tmp) / f"{command}.img")
                  for command in ["hello"] + [w[0] for w in WORKLOADS.values()]}

        progress("boot ...")
        boot = Row("boot to the first log line", "s", higher_is_better=False)
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

        for name, (command, unit, work) in WORKLOADS.items():
            progress(f"{name} ...")
            image = images[command].read_bytes()
            row = Row(name, unit)
            traced = Row(f"{name}: tracing on / off", "ratio", higher_is_better=False,
                         note="wall time with the full trace divided by wall time without")
            plain_times = []
            for _ in range(repeat):
                elapsed, machine = _harness_disk_run(image, False, tree)
                plain_times.append(elapsed)
                traced_elapsed, _ = _harness_disk_run(image, True, tree)
                traced.harness.append(traced_elapsed / elapsed)
                if use_qemu:
                    result = boot_image(images[command], timeout=120)
                    if result.powered_off:
                        row.qemu.append(result.seconds)
            if work is None:  # compute: instructions per second, from one exact count of the same run
                exact = Machine(MachineConfig(count_instructions=True))
                exact.boot_disk(image)
                exact.run(max_time_ns=120_000_000_000)
                instructions = exact.clock.instructions.value if exact.clock.instructions else 0
                row.harness = [instructions / t / 1e6 for t in plain_times]
                row.qemu = [instructions / t / 1e6 for t in row.qemu]  # the same guest work in QEMU's time
                row.note = f"{instructions / 1e6:.0f} M guest instructions, boot to power-off"
            else:
                row.harness = [work / t for t in plain_times]
                row.qemu = [work / t for t in row.qemu]
                row.note = f"{work} in a run from boot to power-off (boot time included)"
            if name == "yield loop":
                calls = machine.events.counts[Kind.SYSCALL]
                row.note += f"; {calls} system calls counted by the harness"
            rows.append(row)
            rows.append(traced)
    return {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine()},
            "qemu": use_qemu, "repeat": repeat, "rows": [row.summary() for row in rows]}


def table(result: dict[str, object]) -> str:
    lines = [f"{'workload':<52} {'unit':<11} {'harness':>10} {'QEMU':>10} {'harness/QEMU':>13}  spread (harness)"]
    for row in result["rows"]:  # type: ignore[union-attr]
        h, q, r = row["harness_median"], row["qemu_median"], row["ratio"]  # type: ignore[index]
        spread = f"{min(row['harness']):.3g}-{max(row['harness']):.3g}" if row["harness"] else ""  # type: ignore[index]

        def show(value: object) -> str:
            return f"{value:10.3g}" if isinstance(value, float) else f"{'-':>10}"

        ratio = f"{r:13.2f}" if r else f"{'-':>13}"
        lines.append(f"{row['name']:<52} {row['unit']:<11} {show(h)} {show(q)} {ratio}  {spread}")  # type: ignore[index]
    return "\n".join(lines)


def main(repeat: int, output: Path | None, use_qemu: bool) -> int:
    result = run(repeat, use_qemu, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(table(result))
    if output is not None:
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"(written to {output})", file=sys.stderr)
    return 0
