"""File fuzzing: mutated snapshot files, disk images and system-call tables either work or fail with one clear
error line; never a traceback.

Hypothesis draws the seed of each case; tests/mutators.py turns it into byte flips, truncations, insertions,
rewritten header values, CPU fields and page lists. Every snapshot that loads is also run for a short virtual
budget, so an accepted-but-odd state must end in a clean stop. CI runs a short form;
`WEENSY_FUZZ_CASES=5000 pytest tests/test_fuzz_files.py` a longer one, and `python -m tests.campaign` the
100,000-input campaign, in forked workers that also catch crashes and hangs.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import project
from harness.pc.errors import HarnessError

from . import campaign
from .mutators import mutate_bytes, mutate_json

pytestmark = pytest.mark.cost(2.5)  # seconds, roughly: the session starts the costly modules first

CASES = int(os.environ.get("WEENSY_FUZZ_CASES", "60"))
DISK_CASES = max(CASES // 12, 5)  # a disk boot runs real-mode code: much slower per case
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def inputs(build_tree: project.BuildTree) -> campaign.Inputs:
    return campaign.Inputs(build_tree.directory)


def clean(kind: str, inputs: campaign.Inputs, seed: int) -> str:
    """Run one campaign case; a HarnessError must be one line, anything else fails the test."""
    try:
        return campaign.CASES[kind](inputs, random.Random(f"test:{kind}:{seed}"))
    except HarnessError as e:
        assert str(e) and "\n" not in str(e), f"not one clear line: {e!r}"
        return "clear-error"


@FUZZ
@given(seed=st.integers(0, 1 << 32))
def test_mutated_snapshot_files_restore_and_run_or_fail_cleanly(inputs: campaign.Inputs, seed: int) -> None:
    assert clean("snapshot", inputs, seed) in ("ok", "clear-error", "wall-stop")


@settings(FUZZ, max_examples=DISK_CASES)
@given(seed=st.integers(0, 1 << 32))
def test_mutated_disk_images_boot_or_fail_cleanly(inputs: campaign.Inputs, seed: int) -> None:
    assert clean("disk", inputs, seed) in ("ok", "clear-error", "wall-stop")


@FUZZ
@given(seed=st.integers(0, 1 << 32))
def test_mutated_syscall_tables_load_or_fail_cleanly(inputs: campaign.Inputs, seed: int) -> None:
    assert clean("syscalls", inputs, seed) in ("ok", "clear-error")


def test_the_mutators_reach_past_the_parsers(inputs: campaign.Inputs) -> None:
    """Not every mutated snapshot is refused at the door: some get past JSON and zlib into the field checks,
    some are accepted and run (otherwise the fuzz tests above would only exercise the parsers). The seeds are
    tried in order until both outcomes have been seen, 60 at most (the sixth does it today)."""
    outcomes: set[str] = set()
    for seed in range(60):
        outcomes.add(clean("snapshot", inputs, seed))
        if outcomes >= {"ok", "clear-error"}:
            break
    assert outcomes >= {"ok", "clear-error"}
    rng = random.Random(5)
    assert mutate_bytes(rng, b"abcdef" * 10) != b"abcdef" * 10
    document = {"a": [1, 2, {"b": 3}]}
    assert any(mutate_json(random.Random(i), document) != document for i in range(5))
    json.dumps(mutate_json(random.Random(9), {"x": [[], {}]}))  # never a cycle


def test_the_campaign_counts_crashes_hangs_and_tracebacks(build_tree: project.BuildTree,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The campaign's worker machinery itself: a case that kills its worker is a crash, one that stops
    answering is a hang, an exception other than HarnessError a traceback; the cases after them still run."""
    def crashing(inputs: campaign.Inputs, rng: random.Random) -> str:
        faulthandler.disable()  # pytest's dump of the dying worker's stack is noise here
        os.kill(os.getpid(), signal.SIGSEGV)
        return "ok"

    def hanging(inputs: campaign.Inputs, rng: random.Random) -> str:
        import time
        time.sleep(3600)
        return "ok"

    def raising(inputs: campaign.Inputs, rng: random.Random) -> str:
        raise KeyError("boom")

    monkeypatch.setitem(campaign.CASES, "kernel", crashing)
    monkeypatch.setitem(campaign.CASES, "program", hanging)
    monkeypatch.setitem(campaign.CASES, "disk", raising)
    # The hanging case is silent past the guard; a fresh worker sets up and answers a gdb case in about 0.1 s:
    # the guard leaves ten times that (it was 2.0 s: a second more of this test, sleeping).
    monkeypatch.setattr(campaign, "WALL_GUARD_S", 1.0)
    plan = [("kernel", 0), ("gdb", 0), ("program", 0), ("gdb", 1), ("disk", 0), ("gdb", 2)]
    result = campaign.campaign(Path(build_tree.directory), plan, 1, lambda line: None)
    counts = result["counts"]
    assert counts["kernel"] == {"crash": 1}
    assert counts["program"] == {"hang": 1}
    assert counts["disk"] == {"traceback": 1}
    assert counts["gdb"] == {"ok": 3}
