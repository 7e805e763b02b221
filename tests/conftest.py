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


# -- the order of the session: the costliest modules first -----------------------------------------------------------
# A module that takes long declares it: `pytestmark = pytest.mark.cost(SECONDS)`, about the seconds its tests take
# together on one idle core (their subprocesses and waits included). The modules run in that order, costliest
# first, each module's tests in their own order (so a module-scoped fixture is made once), and the others after
# them as collected. With xdist (`-n 2`), each worker takes a whole module at a time and comes back for the next
# when it is done: the long modules are taken first and the short ones fill in at the end, so the workers finish
# together (chunks of the alphabetical collection could leave one worker with a long module while the other had
# nothing left). The order changes no result.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cost(seconds): about the seconds a module's tests take (the run's order)")


def module_cost(item: pytest.Item) -> float:
    marker = item.get_closest_marker("cost")
    return float(marker.args[0]) if marker is not None else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -module_cost(item))  # stable: a module's tests stay together, in their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """xdist's default distribution (`load`: tests dealt out in chunks of the collection) becomes one module at a
    time, in collection order (xdist's `loadscope` without its reordering by module size)."""
    if config.getvalue("dist") != "load":
        return None  # a distribution asked for by name
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # (read by LoadScopeScheduling.schedule: keep the collection's order)
    return LoadScopeScheduling(config, log)


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
def variant_builds(build_tree: project.BuildTree, tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> VariantBuilds:
    """The broken variants of our kernel (tests/kernel_variants.py), each built on first use: name -> directory
    (kept in pytest's cache for later sessions while their sources are the same; without the cache, this
    session's temporary directory)."""
    cache = request.config.cache if hasattr(request.config, "cache") else None
    keep = cache.mkdir("weensy-variants") if cache is not None else None
    return VariantBuilds(build_tree, tmp_path_factory.mktemp, keep)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Python's cyclic garbage collector took 5% of the suite's CPU: the machines' runs make objects by the
    million (events, records), and each 700 of them started a collection that walked every young object, then
    every 10th of those the older ones too, the session's collected tests and imported modules included. Those
    live as long as the session: frozen, no collection walks them again; and a collection starts every 10,000
    new objects (GC time 1.1 s -> 0.5 s of the 19 s of test_fastpath, test_check, test_snapshot_files and
    test_engine). Memory is freed as before: most objects go when their last reference does."""
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
