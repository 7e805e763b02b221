"""Every traced system call is one entry and one resolution, in every output format, with time going forward.

A call that blocks is shown when it blocks (`<unfinished ...>`, JSONL `unfinished: true`) and once more when it
completes (`<... name resumed>`, JSONL `resumes: <seq of the entry>`); `exit` never returns: it is resolved at
once as `= ?` and followed by the process's `+++ exited with N +++`. forkexit (many exits while others run),
pipe (calls that block) and fork are the programs that used to show duplicated and unresolved records.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from harness import project

from .cli_in_process import run_cli

pytestmark = pytest.mark.cost(2)  # seconds, roughly: the session starts the costly modules first

PROGRAMS = ["forkexit", "pipe", "fork"]


@functools.cache
def trace(tree: project.BuildTree, program: str, *options: str) -> str:
    """`python -m harness trace PROGRAM OPTIONS` (run in this process), its standard output. The same command gives
    the same trace every time (the harness is deterministic), so each is run once per test process: the JSONL
    trace of a program serves both the JSONL test and the Perfetto test's count of calls."""
    result = run_cli("trace", program, *options, "--no-build", "--build-dir", str(tree.directory))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("program", PROGRAMS)
def test_jsonl_numbers_are_unique_time_goes_forward_and_each_unfinished_call_is_resolved_once(
        build_tree: project.BuildTree, program: str) -> None:
    records = [json.loads(line) for line in trace(build_tree, program, "--format", "jsonl").splitlines()]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(set(seqs)), "seq must be unique and increasing"
    times = [r["t_ns"] for r in records]
    assert times == sorted(times), "t_ns must never go back"
    calls = [r for r in records if r["type"] == "syscall"]
    entries = {r["seq"] for r in calls if r["unfinished"]}
    resolutions = Counter(r["resumes"] for r in calls if r["resumes"] is not None)
    assert set(resolutions) == entries and all(n == 1 for n in resolutions.values())
    exits = [r for r in calls if r["name"] == "exit"]
    assert exits and all(r["ret"] is None and not r["unfinished"] and r["resumes"] is None for r in exits)
    unresolved = [r for r in calls if r["ret"] is None and r["name"] != "exit" and not r["unfinished"]]
    assert unresolved == []
    exited = [r for r in records if r["type"] == "process" and r["event"] == "exited"]
    assert len(exited) == len(exits) and all(r["status"] == 0 for r in exited)


@pytest.mark.parametrize("program", PROGRAMS)
def test_strace_text_has_one_line_per_entry_and_resolution(build_tree: project.BuildTree, program: str) -> None:
    lines = trace(build_tree, program, "--filter", "syscall,process").splitlines()
    assert len(lines) == len(set(lines)), "no line may be repeated"
    times = [float(line.split()[0]) for line in lines]
    assert times == sorted(times)
    open_calls: dict[str, str] = {}
    for line in lines:
        pid = re.match(r"\S+ \[pid (\d+)\]", line)
        assert pid is not None, line
        if line.endswith("<unfinished ...>"):
            assert pid[1] not in open_calls, line
            open_calls[pid[1]] = re.search(r"\] (\w+)\(", line)[1]  # type: ignore[index]
        elif "resumed>" in line:
            assert re.search(rf"<\.\.\. {open_calls.pop(pid[1])} resumed> \(", line), line
        elif " exit(" in line:
            assert line.endswith(") = ?"), line
    assert open_calls == {}
    exits = [line for line in lines if " exit(" in line]
    assert len(exits) == sum(line.endswith("+++ exited with 0 +++") for line in lines)


@pytest.mark.parametrize("program", PROGRAMS)
def test_perfetto_has_one_slice_per_system_call(build_tree: project.BuildTree, program: str, tmp_path: Path) -> None:
    records = [json.loads(line) for line in trace(build_tree, program, "--format", "jsonl").splitlines()]
    calls = [r for r in records if r["type"] == "syscall" and not r["unfinished"]]
    document = json.loads(trace(build_tree, program, "--format", "perfetto"))
    slices = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(calls)
    assert len({(e["pid"], e["ts"], e["name"]) for e in slices}) == len(slices), "a slice is duplicated"
    assert all(e["dur"] >= 0 for e in slices)
