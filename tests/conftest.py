"""Shared fixtures: one build of WeensyOS per test session, and machines booted from it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import project
from harness.api import boot_machine
from harness.machine import Machine, MachineConfig, Stop

from .kernel_variants import VariantBuilds

pytest_plugins = ["pytester"]

# The suite's modules keep their bytecode (in tests/__pycache__, which git ignores) even where the environment asks
# for none (PYTHONDONTWRITEBYTECODE=1): pytest rewrites the asserts of every test module as it imports it, which
# without a kept copy is done again in every process of every session (the controller and each xdist worker):
# about 1 s of CPU each for this suite's 1,400 asserts, against 0.1 s to load the kept ones. Set here, before
# pytest imports the first test module.
sys.dont_write_bytecode = False


@pytest.fixture(scope="session")
def build_tree(weensy_build: project.BuildTree) -> project.BuildTree:
    """The guest, built once (the harness's pytest plugin does it: see harness/pytest_plugin.py)."""
    return weensy_build


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


@pytest.fixture(scope="session")
def variant_builds(build_tree: project.BuildTree, tmp_path_factory: pytest.TempPathFactory) -> VariantBuilds:
    """The broken variants of our kernel (tests/kernel_variants.py), each built on first use: name -> directory."""
    return VariantBuilds(build_tree, tmp_path_factory.mktemp)
