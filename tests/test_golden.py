"""Golden traces: the full JSONL trace of a few deterministic runs, compared line by line.

A kernel or harness change that alters any system call, result, fault explanation, switch or virtual time
shows up here as the first differing line. When the change is intended, regenerate and review the diff:

    .venv/bin/python -m pytest tests/test_golden.py --update-golden && git diff tests/golden
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.pytest_plugin import WeensyOS

RUNS = {
    "hello.jsonl": "hello",
    "fault-hello.jsonl": "fault hello",
    "selftest.jsonl": "selftest",
    "pipe.jsonl": "pipe",
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_trace_matches_its_golden_file(weensyos: WeensyOS, golden: Callable[[str, list[str]], None],
                                       name: str) -> None:
    guest = weensyos.boot(RUNS[name])
    stop = guest.run()
    assert stop.ok, stop.message
    golden(name, guest.jsonl())
