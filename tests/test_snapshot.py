"""Snapshots: a run saved mid-way and resumed ends exactly as the uninterrupted run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness import project
from harness.api import boot_machine
from harness.machine import Machine
from harness.observe.syscalls import SyscallTable
from harness.pc import snapshot as snapshots
from harness.pc.errors import HarnessError

from .cli_in_process import run_cli

COMMAND = "spinner fault hello"


def machine_for(tree: project.BuildTree, traced: bool = True) -> Machine:
    machine = boot_machine(tree.kernel, COMMAND, tree.programs())
    if traced:
        machine.enable_tracing(SyscallTable.load(tree.syscall_table), tree.programs())
    return machine


def test_resuming_a_snapshot_gives_the_same_screen_log_and_trace(build_tree: project.BuildTree) -> None:
    uninterrupted = machine_for(build_tree)
    uninterrupted.run(ticks=8)

    first = machine_for(build_tree)
    first.run(ticks=3)
    snapshot = first.snapshot()
    resumed = machine_for(build_tree)
    resumed.restore(snapshot)
    resumed.run(ticks=5)

    assert resumed.screen_text() == uninterrupted.screen_text()
    assert bytes(resumed.log.data) == bytes(uninterrupted.log.data)
    assert list(resumed.events) == list(uninterrupted.events)
    assert resumed.clock.now_ns() == uninterrupted.clock.now_ns()
    assert resumed.timer_ticks == uninterrupted.timer_ticks == 8


def test_a_snapshot_file_round_trips(build_tree: project.BuildTree, tmp_path: Path) -> None:
    original = machine_for(build_tree, traced=False)
    original.run(ticks=2)
    path = tmp_path / "mid.snap"
    original.save_snapshot(path)
    copy = machine_for(build_tree, traced=False)
    copy.load_snapshot(path)
    original.run(ticks=3)
    copy.run(ticks=3)
    assert copy.screen_text() == original.screen_text()
    assert list(copy.events) == list(original.events)


def test_a_snapshot_of_another_kernel_is_refused(build_tree: project.BuildTree, tmp_path: Path) -> None:
    machine = machine_for(build_tree, traced=False)
    snapshot = machine.snapshot()
    snapshot.kernel_sha256 = "0" * 64
    with pytest.raises(HarnessError, match="different kernel"):
        machine_for(build_tree, traced=False).restore(snapshot)


def test_a_damaged_snapshot_file_is_one_clear_error(build_tree: project.BuildTree, tmp_path: Path) -> None:
    path = tmp_path / "bad.snap"
    path.write_bytes(snapshots.MAGIC + b"\x05\x00\x00\x00{oops")
    with pytest.raises(HarnessError, match="damaged snapshot"):
        machine_for(build_tree, traced=False).load_snapshot(path)
    path.write_bytes(b"hello")
    with pytest.raises(HarnessError, match="not a harness snapshot"):
        machine_for(build_tree, traced=False).load_snapshot(path)


def test_cli_saves_and_resumes(build_tree: project.BuildTree, tmp_path: Path) -> None:
    path = tmp_path / "cli.snap"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("boot", "spinner", "--headless", "--no-build", "--build-dir", str(build_tree.directory), *extra)

    whole = run("--ticks", "6")
    assert run("--ticks", "2", "--save-snapshot", str(path)).returncode == 0
    resumed = run("--ticks", "4", "--load-snapshot", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == whole.stdout
    when = re.compile(r"at (\d+\.\d+) s virtual time")
    assert when.search(resumed.stderr).group(1) == when.search(whole.stderr).group(1)  # type: ignore[union-attr]
