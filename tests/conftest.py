"""Shared fixtures: one build of WeensyOS per test session, and machines booted from it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import project
from harness.api import boot_machine
from harness.machine import Machine, MachineConfig, Stop


@pytest.fixture(scope="session")
def build_tree() -> project.BuildTree:
    """The guest, built once; parallel workers (pytest -n) take turns on a lock file.

    WEENSY_BUILD_DIR=DIR tests the kernel and programs in DIR; WEENSY_NO_BUILD=1 uses them as they are."""
    source = project.default_source_dir()
    build_dir = project.default_build_dir()
    if source is not None and not os.environ.get("WEENSY_NO_BUILD"):
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(build_dir.parent / ".weensyos-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            project.build(source, build_dir)
    tree = project.BuildTree(build_dir)
    if not tree.kernel.exists():
        pytest.fail(f"no kernel at {tree.kernel}")
    return tree


BootFn = Callable[..., tuple[Machine, Stop]]


@pytest.fixture
def boot(build_tree: project.BuildTree) -> BootFn:
    """boot("fault hello", ticks=None, max_time=5.0) -> (machine, stop), the run already finished."""

    def run(command: str = "hello", *, ticks: int | None = None, max_time: float = 5.0,
            config: MachineConfig | None = None) -> tuple[Machine, Stop]:
        machine = boot_machine(build_tree.kernel, command, build_tree.programs(), config)
        stop = machine.run(ticks=ticks, max_time_ns=int(max_time * 1e9))
        return machine, stop

    return run


@pytest.fixture
def repo_root() -> Path:
    return project.PACKAGE_ROOT
