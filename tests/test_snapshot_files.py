"""Snapshot files are untrusted data: crafted ones end in one clear error and never reach the engine or the host.

Each case here is an attack that used to work: raw engine state (with its host pointers) copied from the file
into Unicorn, a small file inflating to gigabytes, a page list that never ends, fields of the wrong type that
ended in a traceback. The machine a refused snapshot was meant for is left as it was.
"""

from __future__ import annotations

import ctypes
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from harness import project
from harness.api import boot_machine
from harness.machine import Machine, MachineConfig
from harness.pc import cpustate, snapshotschema
from harness.pc import snapshot as snapshots
from harness.pc.errors import HarnessError

from . import campaign

pytestmark = pytest.mark.cost(3)  # seconds, roughly: the session starts the costly modules first

COMMAND = "spinner hello"
BREAKPOINT_POINTERS = (cpustate.OFF_DR + 64, cpustate.OFF_DR + 96)  # Unicorn's CPUBreakpoint *[4], after dr[8]


def fresh(tree: project.BuildTree) -> Machine:
    return boot_machine(tree.kernel, COMMAND, tree.programs())


def header_of(machine: Machine) -> dict[str, Any]:
    snapshot = machine.snapshot()
    return {"cpu": snapshot.cpu, "ram_size": snapshot.ram_size, "state": snapshot.state,
            "kernel_sha256": snapshot.kernel_sha256}


def write(path: Path, header: dict[str, Any] | bytes, ram: bytes = b"", magic: bytes = snapshots.MAGIC) -> Path:
    data = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(magic + struct.pack("<I", len(data)) + data + zlib.compress(ram))
    return path


def registers(machine: Machine) -> dict[str, Any]:
    return cpustate.capture(machine.cpu)


def breakpoint_words(machine: Machine) -> bytes:
    machine.cpu.save()
    start, end = BREAKPOINT_POINTERS
    return ctypes.string_at(cpustate.data_address(machine.cpu) + start, end - start)


@pytest.fixture(scope="module")
def running(build_tree: project.BuildTree) -> Machine:
    """A machine two ticks into COMMAND, booted once for the module: the tests only read it (its registers, its
    state, the header of a snapshot of it) and build their files and machines from that."""
    machine = fresh(build_tree)
    machine.run(ticks=2)
    return machine


def test_a_restored_cpu_has_every_named_field_of_the_original(build_tree: project.BuildTree,
                                                               running: Machine) -> None:
    copy = fresh(build_tree)
    copy.restore(running.snapshot())
    assert registers(copy) == registers(running)


def test_the_cpu_state_never_includes_the_engines_host_pointers() -> None:
    numbers, raw = cpustate.fields()
    start, end = BREAKPOINT_POINTERS
    for field in numbers:
        assert not start <= field.offset < end, field.name
    for blob in raw:
        assert blob.offset + blob.size <= start or blob.offset >= end, blob.name


def test_raw_engine_state_in_a_file_is_refused(build_tree: project.BuildTree, running: Machine,
                                               tmp_path: Path) -> None:
    header = header_of(running)
    header["cpu"] = "AAAA" * 1402  # a version-1 style base64 blob with forged pointers
    target = fresh(build_tree)
    before = breakpoint_words(target)
    with pytest.raises(HarnessError, match="damaged snapshot .*named fields"):
        target.load_snapshot(write(tmp_path / "blob.snap", header))
    assert breakpoint_words(target) == before
    with pytest.raises(HarnessError, match="version 1 snapshot"):
        target.load_snapshot(write(tmp_path / "v1.snap", header, magic=b"WEENSYOS-SNAPSHOT 1\n"))


def test_armed_debug_registers_are_refused_before_the_engine_is_touched(build_tree: project.BuildTree,
                                                                        running: Machine, tmp_path: Path) -> None:
    header = header_of(running)
    header["cpu"]["dr7"] = 0x403  # L0 and G0: would make Unicorn walk its breakpoint list
    header["cpu"]["dr0"] = 0xFFFF_8000_0000_0000
    target = fresh(build_tree)
    state = registers(target)
    with pytest.raises(HarnessError, match="dr7"):
        target.load_snapshot(write(tmp_path / "dr7.snap", header))
    assert registers(target) == state


@pytest.mark.parametrize("field, value, message", [
    ("rip", -1, "rip"), ("rip", "0x1000", "rip"), ("rip", 1 << 64, "rip"), ("cr0", 1 << 40, "cr0"),
    ("hflags", 1 << 19, "hflags"), ("efer", 1 << 12, "efer"), ("fpstt", 9, "fpstt"), ("xmm3", "zz" * 16, "xmm3"),
    ("st0", "00", "st0"), ("cs.selector", 0x10000, "cs.selector"), ("rflags", 1 << 17, "rflags"),
])
def test_each_cpu_field_is_type_and_range_checked(build_tree: project.BuildTree, running: Machine,
                                                  tmp_path: Path, field: str, value: Any, message: str) -> None:
    header = header_of(running)
    header["cpu"][field] = value
    with pytest.raises(HarnessError, match=f"damaged snapshot .*{message}"):
        fresh(build_tree).load_snapshot(write(tmp_path / "field.snap", header))


@pytest.mark.parametrize("path, value, message", [
    (("clock", "instructions"), -5, "state.clock.instructions"),
    (("clock", "instructions"), (1 << 64) - 1, "state.clock.instructions"),  # every deadline wrapped: no progress
    (("clock", "skipped_ns"), 1 << 63, "state.clock.skipped_ns"),
    (("machine", "storm"), [1], "state.machine.storm"),
    (("machine", "panic"), ["boom", 1, 2, ["main+3"]], r"state.machine.panic\[3\]\[0\]"),
    (("machine", "entropy", "drawn"), -1, "state.machine.entropy.drawn"),
    (("machine", "entropy", "last_tsc"), 1 << 64, "state.machine.entropy.last_tsc"),
    (("unassigned_pages",), [0x1000], r"unassigned_pages: 0x1000 is not a free page beyond RAM"),
    (("unassigned_pages",), [0xFEE00000], r"unassigned_pages: 0xfee00000"),  # the local APIC's registers
    (("unassigned_pages",), [0x4000_0000_0010], r"unassigned_pages: 0x400000000010"),
    (("unassigned_pages",), list(range(1 << 32, (1 << 32) + 5000 * 4096, 4096)), "more than 4096 entries"),
    (("events", "ring"), [{"kind": "no-such-kind", "time_ns": 0}], r"state.events.ring\[0\].kind"),
    (("events", "ring"), [{"kind": {"a": 1}, "time_ns": 0}], r"state.events.ring\[0\].kind"),
    (("events", "counts"), {"syscall": []}, r"state.events.counts.syscall"),
    (("log",), "not base64!", "state.log"),
    (("devices", "console", "crtc"), [0] * 3, "devices.console.crtc has 3 entries"),
    (("devices", "pic", "master"), {"imr": 0}, "devices.pic.master"),
    (("devices", "pci", "functions", "00:00.0"), "00" * 8, r"devices.pci.functions.00:00.0 is not a string"),
    (("devices", "pci", "functions", "00:00.0"), "zz" * 256, r"devices.pci.functions.00:00.0 is not hex"),
    (("devices", "ata0"), {}, "devices"),
    (("devices", "lapic", "initial_count"), 0, "lapic timer is running with an initial count of 0"),
    (("devices", "lapic", "svr"), 1 << 40, "lapic.svr"),
    (("devices", "lapic", "timer_interrupts_taken"), 1 << 64, "lapic.timer_interrupts_taken"),
    (("devices", "lapic", "timer_interrupts_taken"), -1, "lapic.timer_interrupts_taken"),
    (("devices", "lapic", "timer_expirations"), 1 << 70, "lapic.timer_expirations"),
    (("tracer", "names"), [[1, 2]], r"state.tracer.names\[0\]\[1\]"),
    (("tracer", "exit_status"), [[1, "zero"]], r"state.tracer.exit_status\[0\]\[1\]"),
    (("tracer", "exit_status"), [[1, 2, 3]], r"state.tracer.exit_status\[0\] is not a pair"),
])
def test_each_saved_state_field_is_checked(build_tree: project.BuildTree, running: Machine, tmp_path: Path,
                                           path: tuple[str, ...], value: Any, message: str) -> None:
    header = header_of(running)
    where = header["state"]
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    target = fresh(build_tree)
    screen = target.screen_text()
    with pytest.raises(HarnessError, match=f"damaged snapshot .*{message}"):
        target.load_snapshot(write(tmp_path / "state.snap", header))
    assert target.screen_text() == screen


def test_the_campaigns_snapshot_with_a_clock_at_the_end_of_its_range_is_one_clear_error(
        build_tree: project.BuildTree) -> None:
    """Campaign case 2028:snapshot:746 set the clock's instruction count to 2^64-1: every deadline the run loop
    armed wrapped into the past, each slice stopped before its first block, and `run(for_ns=...)` looped for
    ever in the harness. The clock's range is now part of the schema, so the case is refused before the machine
    is touched."""
    inputs = campaign.Inputs(build_tree.directory)
    outcome = campaign.classify(campaign.case_snapshot, inputs, random.Random("2028:snapshot:746"))
    assert outcome == ("clear-error", "")
    with pytest.raises(HarnessError, match=r"damaged snapshot \(state.clock.instructions = 18446744073709551615 "):
        inputs.machine().load_snapshot(inputs.tmp / "case.snap")


def test_the_schema_lists_exactly_the_run_state_and_tracer_keys(running: Machine) -> None:
    """The schema's one list of run-state keys (and of tracer keys) is the board's and the tracer's: a key added
    to either without its check would make every snapshot refused, a check left for a removed key hides it."""
    assert set(running.run_state()) == set(snapshotschema.RUN_STATE_FIELDS)
    assert set(running.tracer.snapshot_state(lambda event: {})) == set(snapshotschema.TRACER_FIELDS)


@pytest.mark.parametrize("command, seed", [("panicker", None), ("fault hello", None), ("fuzz", None),
                                           ("forkexit", None), ("spinner", 12345)])
def test_every_state_a_real_run_passes_through_is_accepted(build_tree: project.BuildTree, command: str,
                                                           seed: int | None) -> None:
    """The checks refuse nothing a real machine produces: snapshots taken all along runs that panic, fault,
    make random system calls and fork, or run with a seed (a timer phase), are each accepted by a fresh
    machine."""
    config = MachineConfig(seed=seed) if seed is not None else None
    machine = boot_machine(build_tree.kernel, command, build_tree.programs(), config)
    target = boot_machine(build_tree.kernel, command, build_tree.programs(), config)
    for _ in range(40):
        stop = machine.run(for_ns=500_000)
        snapshots.check(target, machine.snapshot())
        if stop.kind.value != "paused":
            break


def test_every_state_of_a_disk_boot_is_accepted_and_resumes_exactly(build_tree: project.BuildTree) -> None:
    """A machine booted from the disk image, snapshotted all along its boot (real mode, ATA transfers in
    flight), is accepted by a fresh disk-booted machine, which then runs on exactly like the original."""
    image = (build_tree.directory / "weensyos.img").read_bytes()

    def disk_machine() -> Machine:
        machine = Machine(MachineConfig())
        machine.boot_disk(image)
        return machine

    machine = disk_machine()
    for _ in range(12):  # through the boot loader's disk reads, into the kernel
        assert machine.run(for_ns=300_000).kind.value == "paused"
        snapshot = machine.snapshot()
        snapshots.check(disk_machine(), snapshot)
    copy = disk_machine()
    copy.restore(snapshot)
    machine.run(for_ns=20_000_000)
    copy.run(for_ns=20_000_000)
    assert copy.screen_text() == machine.screen_text()
    assert registers(copy) == registers(machine)


def test_a_small_file_that_inflates_beyond_ram_is_refused(build_tree: project.BuildTree,
                                                                  running: Machine, tmp_path: Path) -> None:
    header = header_of(running)
    compressor = zlib.compressobj(9)
    zeros = bytes(16 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(9)) + compressor.flush()  # 144 MiB, past the RAM
    path = tmp_path / "bomb.snap"
    data = json.dumps(header).encode()
    path.write_bytes(snapshots.MAGIC + struct.pack("<I", len(data)) + data + bomb)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(HarnessError, match="inflates beyond 134.* bytes"):  # stopped at what 128 MiB can hold
        fresh(build_tree).load_snapshot(path)


@pytest.mark.parametrize("pages, message", [
    ([5, 5], "out of order"), ([7, 3], "out of order"), ([1 << 31], "outside"), ([0xFFFFFFFF], "outside"),
])
def test_page_lists_must_be_increasing_and_inside_ram(build_tree: project.BuildTree, running: Machine,
                                                     tmp_path: Path, pages: list[int], message: str) -> None:
    ram = b"".join(struct.pack("<I", page) + bytes(4096) for page in pages)
    with pytest.raises(HarnessError, match=message):
        fresh(build_tree).load_snapshot(write(tmp_path / "pages.snap", header_of(running), ram))


@pytest.mark.parametrize("header, message", [
    (b"[" * 100000 + b"]" * 100000, "damaged snapshot"),  # nesting deep enough to exhaust Python's stack
    (b'{"cpu": {}}', "not a snapshot header"),
    (b"1" * 5000, "damaged snapshot"),  # an integer too long to convert
])
def test_malformed_headers_are_one_clear_error(build_tree: project.BuildTree, tmp_path: Path,
                                               header: bytes, message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        fresh(build_tree).load_snapshot(write(tmp_path / "header.snap", header))


def test_a_header_length_past_the_end_of_the_file_is_refused(build_tree: project.BuildTree, tmp_path: Path) -> None:
    path = tmp_path / "short.snap"
    path.write_bytes(snapshots.MAGIC + struct.pack("<I", 0xFFFFFFFF) + b"{}")
    with pytest.raises(HarnessError, match="runs past the file"):
        fresh(build_tree).load_snapshot(path)


def test_special_files_are_refused_without_reading_them(build_tree: project.BuildTree) -> None:
    with pytest.raises(HarnessError, match="not a regular file"):
        fresh(build_tree).load_snapshot(Path("/dev/zero"))
