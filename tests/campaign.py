"""The hostile-input campaign: mutated kernel ELFs, program ELFs, disk images, snapshots, system-call tables and
gdb packets, each of which must end in success or one clear error line; never a traceback, a crash or a hang.

    .venv/bin/python -m tests.campaign --total 100000 [--seed N] [--kinds snapshot,gdb] [--json out.json]

Cases run in forked workers, in process (fast), and report each outcome through a pipe; a worker killed by a
signal (a SIGSEGV in the engine) is a "crash" for the case it was on, a case silent for longer than the wall guard
is a "hang" (the worker is killed), and the campaign goes on with a fresh worker. Outcomes are counted by kind and
class: ok (accepted; runnable inputs also ran for a short virtual budget), clear-error (a HarnessError of one
line), wall-stop (the machine's own wall guard ended the run after CASE_WALL_S: not a failure, but each is printed
with its seed), traceback (any other exception: the first of each type is printed with its seed), crash, hang.
Each case is reproducible from (seed, kind, index).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import project
from harness.pc.errors import HarnessError

KINDS = ("kernel", "program", "disk", "snapshot", "syscalls", "gdb")
# Shares of the total, by cost: a gdb packet or a table takes microseconds, a disk boot in real mode a second.
SHARE = {"kernel": 0.08, "program": 0.08, "disk": 0.01, "snapshot": 0.10, "syscalls": 0.08, "gdb": 0.65}
RUN_NS = 3_000_000  # virtual time each accepted runnable input runs for
RAM = 16 << 20
WALL_GUARD_S = 60.0  # a case silent this long is a hang
CASE_WALL_S = 10.0  # the run loop's own wall guard: a run still going after this is stopped ("wall-stop")
SLICE_NS = 200_000
SYSCALL_RUN_NS = 4_000_000  # long enough for p-fuzz to make a few hundred system calls


class Inputs:
    """The real files the mutations start from, and the machinery to try a mutated one (built per worker)."""

    def __init__(self, build: Path) -> None:
        from harness.machine import Machine, MachineConfig
        from harness.pc import snapshot as snapshots
        from harness.pc.loader import Module, parse_elf

        self.build = build
        self.kernel = (build / "kernel").read_bytes()
        self.programs = {p.name[2:]: p.read_bytes() for p in sorted(build.glob("p-*"))}
        self.modules = [Module(name, parse_elf(data, name)) for name, data in self.programs.items()]
        self.disk = (build / "weensyos.img").read_bytes()
        self.syscalls = (build / "syscalls.json").read_bytes()
        self.tmp = Path(tempfile.mkdtemp(prefix="weensy-campaign-"))
        source = self.machine()
        source.run(for_ns=RUN_NS)
        snapshot = source.snapshot()
        self.snapshot_header = {"cpu": snapshot.cpu, "ram_size": snapshot.ram_size, "state": snapshot.state,
                                "kernel_sha256": snapshot.kernel_sha256}
        self.snapshot_ram = snapshot.ram
        path = self.tmp / "original.snap"
        snapshots.save(snapshot, path)
        self.snapshot_bytes = path.read_bytes()
        self.target: Any = None
        self.target_uses = 0
        self._Machine, self._MachineConfig, self._parse_elf = Machine, MachineConfig, parse_elf

    def machine(self, command: str = "spinner hello") -> Any:
        from harness.machine import Machine, MachineConfig
        from harness.pc.loader import parse_elf

        machine = Machine(MachineConfig(ram_size=RAM))
        machine.boot(parse_elf(self.kernel, "kernel"), command, self.modules)
        return machine

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


def run_guarded(machine: Any, budget_ns: int = RUN_NS, wall_s: float = CASE_WALL_S) -> str:
    """Run for `budget_ns` of virtual time in short slices, stopping at `wall_s` of wall time: "ok", or
    "wall-stop" when the wall guard ended the run (a guest whose virtual time is slow in host time)."""
    started = time.monotonic()
    from harness.machine import StopKind

    while machine.clock.now_ns() < budget_ns:
        left = wall_s - (time.monotonic() - started)
        if left <= 0:
            return "wall-stop"
        stop = machine.run(for_ns=SLICE_NS, max_wall_s=left)  # the machine's own guard, inside the slice too
        if stop.kind is StopKind.WALL:
            return "wall-stop"
        if stop.kind is not StopKind.PAUSED:
            return "ok"
    return "ok"


def _run(machine: Any) -> str:
    return run_guarded(machine)


def case_kernel(inputs: Inputs, rng: random.Random) -> str:
    from tests.mutators import mutate_bytes

    data = mutate_bytes(rng, inputs.kernel, hot=4096)
    image = inputs._parse_elf(data, "kernel")
    machine = inputs._Machine(inputs._MachineConfig(ram_size=RAM))
    machine.boot(image, "hello", inputs.modules)
    return _run(machine)


def case_program(inputs: Inputs, rng: random.Random) -> str:
    from harness.pc.loader import Module
    from tests.mutators import mutate_bytes

    name = rng.choice(sorted(inputs.programs))
    data = mutate_bytes(rng, inputs.programs[name], hot=4096)
    image = inputs._parse_elf(data, f"program '{name}'")
    modules = [m if m.name != name else Module(name, image) for m in inputs.modules]
    machine = inputs._Machine(inputs._MachineConfig(ram_size=RAM))
    machine.boot(inputs._parse_elf(inputs.kernel, "kernel"), name, modules)
    return _run(machine)


def case_disk(inputs: Inputs, rng: random.Random) -> str:
    from harness.pc.diskimage import open_image
    from tests.mutators import mutate_bytes

    roll = rng.random()
    if roll < 0.7:  # the boot loader, the directory and the kernel's headers
        data = mutate_bytes(rng, inputs.disk, hot=96 * 512)
    elif roll < 0.85:  # truncated or padded to odd sizes
        size = rng.choice([0, 1, 511, 512, 513, rng.randrange(len(inputs.disk)), len(inputs.disk) + 1])
        data = inputs.disk[:size] + bytes(max(0, size - len(inputs.disk)))
    else:  # a random boot sector
        data = bytes(rng.randrange(256) for _ in range(510)) + b"\x55\xaa" + inputs.disk[512:]
    image = open_image(inputs.file("disk.img", data))
    machine = inputs._Machine(inputs._MachineConfig(ram_size=RAM))
    machine.boot_disk(image, label="disk image")
    return run_guarded(machine, RUN_NS // 3)  # real-mode code is slow in wall time: a shorter budget


def case_snapshot(inputs: Inputs, rng: random.Random) -> str:
    from tests.mutators import mutate_snapshot

    data = mutate_snapshot(rng, inputs.snapshot_header, inputs.snapshot_ram, inputs.snapshot_bytes)
    if inputs.target is None or inputs.target_uses >= 50:
        inputs.target, inputs.target_uses = inputs.machine(), 0
    inputs.target_uses += 1
    target = inputs.target
    target.load_snapshot(inputs.file("case.snap", data))
    inputs.target = None  # a restored machine runs on: the next case gets a fresh one
    return run_guarded(target, target.clock.now_ns() + RUN_NS)


def case_syscalls(inputs: Inputs, rng: random.Random) -> str:
    """A mutated table as --syscalls gives it; one that loads also decodes a short traced run (strace lines,
    JSON records and the summary), where odd names, types and argument lists meet the formatter."""
    from harness.observe import traceformat
    from harness.observe.syscalls import SyscallTable
    from tests.mutators import mutate_bytes, mutate_json

    if rng.random() < 0.5:
        data = mutate_bytes(rng, inputs.syscalls, hot=len(inputs.syscalls))
    else:
        data = json.dumps(mutate_json(rng, json.loads(inputs.syscalls))).encode()
    table = SyscallTable.load(inputs.file("syscalls.json", data))
    machine = inputs.machine("fuzz hello")  # p-fuzz makes system calls with random arguments
    machine.enable_tracing(table, {name: inputs.build / f"p-{name}" for name in inputs.programs})
    outcome = run_guarded(machine, SYSCALL_RUN_NS)
    events = list(machine.events)
    for event in events:
        traceformat.strace_lines(machine.tracer, event)
        json.dumps(traceformat.jsonl_record(machine.tracer, event))
    traceformat.summary_table(traceformat.summary(machine.tracer, events))
    return outcome


def case_gdb(inputs: Inputs, rng: random.Random) -> str:
    from harness.front.gdbstub import GdbStub
    from tests.mutators import gdb_packet

    if not hasattr(inputs, "stub"):
        inputs.stub = GdbStub(inputs.machine(), 0, announce=lambda _: None)  # type: ignore[attr-defined]
        inputs.stub.server.close()  # type: ignore[attr-defined]
    reply = inputs.stub._answer(gdb_packet(rng))  # type: ignore[attr-defined]
    if not isinstance(reply, bytes) or any(b < 32 or b > 126 or b in b"$#" for b in reply):
        raise AssertionError(f"gdb reply does not frame: {reply!r}")
    return "ok"


CASES: dict[str, Callable[[Inputs, random.Random], str]] = {
    "kernel": case_kernel, "program": case_program, "disk": case_disk, "snapshot": case_snapshot,
    "syscalls": case_syscalls, "gdb": case_gdb,
}


def classify(case: Callable[[Inputs, random.Random], str], inputs: Inputs, rng: random.Random) -> tuple[str, str]:
    """(outcome class, traceback text for a "traceback") of one case."""
    try:
        return case(inputs, rng), ""
    except HarnessError as e:
        message = str(e)
        if "\n" in message or not message:
            return "traceback", f"HarnessError not one line: {message[:200]!r}"
        return "clear-error", ""
    except Exception as e:  # noqa: BLE001 - any other exception is what the campaign looks for
        return "traceback", "".join(traceback.format_exception(e)[-6:])


def worker(build: Path, plan: list[tuple[str, int]], seed: int, out: int) -> None:
    """Run the cases of `plan` (kind, index) in order, writing one JSON line per case to `out`."""
    inputs = Inputs(build)
    with os.fdopen(out, "w", buffering=1) as pipe:
        for kind, index in plan:
            rng = random.Random(f"{seed}:{kind}:{index}")
            started = time.monotonic()
            outcome, detail = classify(CASES[kind], inputs, rng)
            pipe.write(json.dumps([kind, index, outcome, detail, time.monotonic() - started]) + "\n")
    os._exit(0)


def campaign(build: Path, plan: list[tuple[str, int]], seed: int, report: Callable[[str], None]) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    seconds: Counter[str] = Counter()
    firsts: dict[str, str] = {}
    position = 0
    started = time.monotonic()
    while position < len(plan):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                worker(build, plan[position:], seed, write)
            finally:
                os._exit(70)
        os.close(write)
        pending = b""
        last = time.monotonic()
        import select

        while True:
            # Wait for the next line, or until the worker has been silent for WALL_GUARD_S (no later).
            ready, _, _ = select.select([read], [], [], max(0.0, WALL_GUARD_S - (time.monotonic() - last)))
            if ready:
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    kind, index, outcome, detail, took = json.loads(line)
                    counts[kind][outcome] += 1
                    seconds[kind] += took
                    position += 1
                    if outcome == "wall-stop":  # not a failure (the guard ended it), but worth a look
                        report(f"WALL-STOP {kind} #{index} (seed {seed}): {took:.1f} s")
                    if outcome == "traceback":
                        key = detail.strip().splitlines()[-1][:120] if detail.strip() else "?"
                        if key not in firsts:
                            firsts[key] = f"{kind} #{index} (seed {seed}):\n{detail}"
                            report(f"TRACEBACK {kind} #{index}: {key}")
                    if position % 2000 == 0:
                        report(f"{position}/{len(plan)} cases, {time.monotonic() - started:.0f} s")
                last = time.monotonic()
            elif time.monotonic() - last > WALL_GUARD_S:
                os.kill(pid, signal.SIGKILL)
                kind, index = plan[position]
                counts[kind]["hang"] += 1
                report(f"HANG {kind} #{index} (seed {seed})")
                position += 1
                break
        os.close(read)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL and position < len(plan):
            kind, index = plan[position]
            counts[kind]["crash"] += 1
            report(f"CRASH {kind} #{index} (seed {seed}): signal {os.WTERMSIG(status)}")
            position += 1
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0 and position < len(plan):
            kind, index = plan[position]
            counts[kind]["crash"] += 1
            report(f"CRASH {kind} #{index} (seed {seed}): worker exit {os.WEXITSTATUS(status)}")
            position += 1
    return {"seed": seed, "cases": len(plan), "wall_s": round(time.monotonic() - started, 1),
            "counts": {kind: dict(c) for kind, c in counts.items()},
            "case_seconds": {kind: round(s, 1) for kind, s in seconds.items()},
            "tracebacks": firsts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--build", type=Path, default=project.PACKAGE_ROOT / "build")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    share = sum(SHARE[k] for k in kinds)
    plan = []
    for kind in kinds:
        plan += [(kind, i) for i in range(round(args.total * SHARE[kind] / share))]
    random.Random(args.seed).shuffle(plan)
    result = campaign(args.build, plan, args.seed, lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    bad = sum(c.get(o, 0) for c in result["counts"].values() for o in ("traceback", "crash", "hang"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
