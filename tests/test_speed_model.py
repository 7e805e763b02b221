"""The calibrated CPU speed model (harness/pc/clock.py, ClockCosts): work per timer tick as under QEMU.

The QEMU figures are the medians that scripts/qemu_tick_rates.py recorded once in docs/qemu-tick-rates.json;
the harness's figures are its own deterministic virtual time, so nothing here depends on the host's speed or
needs QEMU. docs/speed-model.md has the fit and its residuals.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness import project
from harness.machine import Machine, MachineConfig, StopKind
from harness.pc.clock import ClockCosts
from harness.pc.events import Kind
from harness.pc.symbols import SymbolTable

from .test_cpu import build_world, run_kernel_code

pytestmark = pytest.mark.cost(4)  # seconds, roughly: the session starts the costly modules first

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "docs" / "qemu-tick-rates.json").read_text())
QEMU_MEDIAN = {row["name"]: row["qemu_median"] for row in REFERENCE["rows"]}

# harness / QEMU must stay within this factor of 1 on every workload (the bar; docs/speed-model.md has
# the fit's residuals, all far inside it).
BOUND = 1.5
WORKLOADS = ["yield loop", "pipe messages", "allocator pages", "fork+exit", "memory viewer redraw",
             "boot to first log line"]


def _rates_script():
    spec = importlib.util.spec_from_file_location("qemu_tick_rates", ROOT / "scripts" / "qemu_tick_rates.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("qemu_tick_rates", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# Rounds the harness runs here where the script's are more than the rate needs: the rate is the same work per
# tick over fewer rounds of the same command (each round starts it anew), and comes out within 0.6% of the
# script's 30 rounds for the two yield loops (a tick more or less in about 170 or 5,000) and equal for fork+exit
# (31.25 forks a tick over 1 or 3 rounds). The other workloads are short and change more with fewer rounds.
TEST_ROUNDS = {"yield loop": 10, "memory viewer redraw": 10, "fork+exit": 1}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_work_per_tick_is_within_the_bound_of_qemus_median(build_tree: project.BuildTree, tmp_path: Path,
                                                           workload: str) -> None:
    rates = _rates_script()
    ticks_at = SymbolTable.from_elf(build_tree.kernel).address_of("ticks")
    command = "hello" if workload == rates.BOOT else f"loop {rates.WORKLOADS[workload].command}"
    image = rates.make_image(build_tree, command, tmp_path)
    if workload in TEST_ROUNDS:
        harness = rates.harness_rate(replace(rates.WORKLOADS[workload], rounds=TEST_ROUNDS[workload]), image,
                                     ticks_at)
    else:
        harness = rates.measure(workload, image, ticks_at, qemu=False)
    ratio = harness / QEMU_MEDIAN[workload]
    assert 1 / BOUND <= ratio <= BOUND, f"{workload}: harness {harness:.4g}, QEMU {QEMU_MEDIAN[workload]:.4g}"


def _first(machine: Machine, kind: Kind) -> int:
    machine.run(until_event=lambda event: event.kind is kind, max_time_ns=int(1e9))
    return next(event for event in machine.events.ring if event.kind is kind).time_ns


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_each_event_costs_exactly_its_knob_on_both_paths(build_tree: project.BuildTree, fast_paths: bool) -> None:
    """Same instructions, same events: the first system call comes later by the boot delay, its own charge,
    the port accesses and the text-memory bytes before it, and not a nanosecond more."""
    image = (build_tree.directory / "weensyos.img").read_bytes()
    plain = ClockCosts.instructions_only()

    def first_syscall(costs: ClockCosts) -> tuple[int, int, int]:
        machine = Machine(MachineConfig(costs=costs, fast_paths=fast_paths))
        machine.boot_disk(image)
        window = machine.text_window
        assert window is not None and window.native is fast_paths
        at = _first(machine, Kind.SYSCALL)
        return at, machine.clock.instructions, window.bytes_read + window.bytes_written

    unpriced, unpriced_instructions, text_bytes = first_syscall(plain)
    ports, _, _ = first_syscall(replace(plain, ns_per_port_io=1))  # 1 ns an access: counts them
    charged, instructions, charged_bytes = first_syscall(replace(
        plain, ns_per_syscall=7_000, ns_per_port_io=3, boot_delay_ns=5_000_000, ns_per_mmio_byte=11))
    assert instructions == unpriced_instructions and charged_bytes == text_bytes  # costs change time, not what runs
    assert charged - unpriced == 5_000_000 + 7_000 + 3 * (ports - unpriced) + 11 * text_bytes
    assert ports > unpriced  # the BIOS and the kernel did port I/O before the first system call
    mmio, _, _ = first_syscall(replace(plain, ns_per_mmio=1))  # 1 ns a charged memory-mapped access
    assert mmio == unpriced  # none: the model was fitted without that knob
    assert text_bytes > 2 * 80 * 25  # the kernel cleared the screen (a store per byte at least) and printed


# Two instructions and one 2-byte store to text memory, again and again: a charge of 54 ns in every block.
TEXT_STORE_LOOP = r"""
loop:
    movw $0x0741, 0xb8000
    jmp loop
"""


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_a_deadline_is_kept_exactly_through_any_number_of_charges(tmp_path: Path, fast_paths: bool) -> None:
    """A stop armed for a virtual time (a timer, a pause) lands at the first block start at or past it, however
    many charges the slice makes: each charge brings the deadline closer by exactly its time, not by its
    instructions rounded down (37,000 charges of 54 ns once lost 8 us)."""
    from harness.pc.loader import read_elf

    from .x86asm import assemble_kernel

    machine = Machine(MachineConfig(fast_paths=fast_paths))
    machine.boot(read_elf(assemble_kernel(TEXT_STORE_LOOP, tmp_path / "kernel"), "kernel"), "", [])
    start = machine.clock.now_ns()
    stop = machine.run(for_ns=2_000_000)
    assert stop.kind is StopKind.PAUSED, stop.message
    late = machine.clock.now_ns() - (start + 2_000_000)
    assert 0 <= late < 54 + 1  # within the block that crosses it: one store's charge, two instructions
    assert machine.text_window is not None and machine.text_window.bytes_written > 2 * 30_000


def test_the_text_window_is_guest_ram_seen_through_device_memory(build_tree: project.BuildTree) -> None:
    """The window's loads and stores reach the same RAM the console, snapshots and the debugger read, on both
    paths, and both paths count the same bytes."""
    image = (build_tree.directory / "weensyos.img").read_bytes()
    runs = []
    for fast_paths in (True, False):
        machine = Machine(MachineConfig(fast_paths=fast_paths))
        machine.boot_disk(image)
        machine.run(max_time_ns=int(5e9))
        window = machine.text_window
        assert window is not None
        runs.append((machine.screen_text(), window.bytes_read, window.bytes_written, machine.clock.now_ns()))
    assert runs[0] == runs[1]
    assert runs[0][0].startswith("Hello from WeensyOS process 1!")


@pytest.mark.parametrize("fast_paths", [True, False], ids=["native-paths", "python-paths"])
def test_code_run_from_text_memory_stops_the_machine_with_where(fast_paths: bool) -> None:
    """Device memory cannot hold code for the engine: a guest that jumps into the text window gets a machine
    fault that says so, at the window's address, and the harness carries on."""
    machine = Machine(MachineConfig(fast_paths=fast_paths))
    build_world(machine, "nop\n")
    run_kernel_code(machine, "movl $0x90909090, 0xb8100\nmovb $0xf4, 0xb8104\nmov $0xb8100, %rax\njmp *%rax\n")
    stop = machine.stop
    assert stop is not None and stop.kind is StopKind.MACHINE_FAULT
    assert stop.rip == 0xB8100 and "Fetch from non-executable memory" in stop.message
    assert bytes(machine.memory[0xB8100:0xB8105]) == b"\x90\x90\x90\x90\xf4"  # the stores reached RAM
