"""The README's examples run as shown, so that it cannot drift from the program.

Every ```console block is a transcript: each `$ .venv/bin/python -m harness ...` (or `$ cat FILE`) command is
run in a scratch directory against the session's build, and its output (standard output, then standard error)
must match the lines shown. Virtual times, addresses and tick counts are normalised (they move whenever the
clock or the kernel's layout changes), everything else must be the same text; a line `...` stands for any
number of lines. Counts of timer ticks and system calls are normalised too (a run bounded in time makes as many as
fit). The exit-status table must be the one generated from `harness.pc.errors.EXIT_MEANINGS`, and
every option of every command must be documented.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import project
from harness.front.cliparser import build_parser
from harness.pc.errors import exit_status_table

from .cli_in_process import run_cli

pytestmark = pytest.mark.cost(3)  # seconds, roughly: the session starts the costly modules first

README = project.PACKAGE_ROOT / "README.md"
HARNESS = ".venv/bin/python -m harness"


@dataclass
class Example:
    command: str
    expected: list[str]
    line: int  # in README.md, for the test's name


def transcripts() -> list[list[Example]]:
    """The README's console blocks, as lists of the commands this test runs (in order: a command may read
    what the one before it wrote, as `cat log.txt` after `--log log.txt`)."""
    blocks: list[list[Example]] = []
    lines = README.read_text().splitlines()
    inside = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            inside = line == "```console"
            if inside:
                blocks.append([])
            continue
        if not inside:
            continue
        if line.startswith("$ "):
            blocks[-1].append(Example(line[2:], [], number))
        elif blocks[-1]:
            blocks[-1][-1].expected.append(line)
    runnable = [[e for e in block if e.command.startswith((HARNESS, "cat ")) and not e.command.endswith("&")]
                for block in blocks]
    return [block for block in runnable if block]


def normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+", "0x_", text)
    text = re.sub(r"\d+\.\d+", "N.N", text)
    text = re.sub(r"\b\d+ timer ticks?\b", "N timer ticks", text)
    text = re.sub(r"\b\d+ system calls?\b", "N system calls", text)  # spinner's loop yields by iterations
    text = re.sub(r" +$", "", text, flags=re.M)
    return text


def matches(expected: list[str], actual: str) -> bool:
    pattern = "".join("(?:.*\n)*?" if line.strip() == "..." else re.escape(normalise(line)) + "\n"
                      for line in expected)
    return re.fullmatch(pattern, normalise(actual)) is not None


def run(example: Example, tree: project.BuildTree, cwd: Path) -> str:
    words = shlex.split(example.command.split("  #")[0])
    if words[0] == "cat":
        return (cwd / words[1]).read_text()
    words = [str(tree.directory / w[len("build/"):]) if w.startswith("build/") else w for w in words[3:]]
    # `check` is given its build as an argument and never builds; the others are told which build to use
    options = [] if words[0] == "check" else ["--no-build", "--build-dir", str(tree.directory)]
    result = subprocess.run([sys.executable, "-m", "harness", *words, *options], capture_output=True, text=True,
                            cwd=cwd, timeout=300)
    return (result.stdout + result.stderr).replace(str(tree.directory), "build")  # the build as the README names it


TRANSCRIPTS = transcripts()


def test_the_readme_has_examples_to_run() -> None:
    assert sum(len(block) for block in TRANSCRIPTS) >= 12


@pytest.mark.parametrize("block", TRANSCRIPTS, ids=[f"line{block[0].line}" for block in TRANSCRIPTS])
def test_a_readme_transcript_gives_the_output_shown(build_tree: project.BuildTree, tmp_path: Path,
                                                   block: list[Example]) -> None:
    for example in block:
        actual = run(example, build_tree, tmp_path)
        expected = "\n".join(example.expected)
        assert matches(example.expected, actual), (
            f"README.md line {example.line}: $ {example.command}\n--- shown:\n{expected}\n--- actual:\n{actual}")


def test_the_matching_ignores_times_and_addresses_but_not_text() -> None:
    shown = ["harness: power-off at 0.001149 s virtual time [0 timer ticks, 5 system calls]", "..."]
    assert matches(shown, "harness: power-off at 0.002 s virtual time [3 timer ticks, 5 system calls]\nmore\n")
    assert not matches(shown, "harness: power-off at 0.002 s virtual time [3 timer ticks, 5 syscalls]\n")
    assert not matches(["Hello from WeensyOS process 1!"], "Hello from WeensyOS process 2!\n")
    assert matches(["  at 0x101334 <process_main+0x14>"], "  at 0x101344 <process_main+0x24>\n")


def test_the_exit_status_table_is_generated_from_the_code() -> None:
    assert f"\n{exit_status_table()}\n" in README.read_text(), "run: python3 scripts/update_readme.py"


def test_every_option_of_every_command_is_documented() -> None:
    readme = README.read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in commands.choices.items():
        assert f"python -m harness {name}" in readme or f"`{name}`" in readme, name
        for action in parser._actions:
            longest = max(action.option_strings, key=len, default=None)
            if longest is not None and longest != "--help" and f"`{longest}" not in readme:
                missing.append(f"{name} {longest}")
    assert missing == []


def test_every_key_of_the_jsonl_schema_is_documented(build_tree: project.BuildTree) -> None:
    readme = README.read_text()
    schema = readme[readme.index("### The JSONL schema"):]
    keys: set[str] = set()
    for command in ("fault hello", "pipe", "panicker"):
        result = run_cli("trace", *command.split(), "--format", "jsonl", "--no-build", "--build-dir",
                         str(build_tree.directory))
        for line in result.stdout.splitlines():
            record = json.loads(line)
            keys |= set(record)
            for step in record.get("walk", []):
                keys |= set(step)
    undocumented = sorted(key for key in keys if f"`{key}`" not in schema)
    assert undocumented == []


def gdb_transcript() -> tuple[list[str], list[str]]:
    """The README's gdb session: (the commands typed at `(gdb)`, the lines gdb printed)."""
    readme = README.read_text()
    start = readme.index("```console\n$ .venv/bin/python -m harness boot hello --headless --gdb")
    block = readme[start:readme.index("```", start + 10)].splitlines()[1:]
    after = block.index("$ gdb build/kernel")
    commands = [line[len("(gdb) "):] for line in block[after + 1:] if line.startswith("(gdb) ")]
    printed = [line for line in block[after + 1:] if not line.startswith("(gdb) ")]
    return commands, printed


def test_the_readme_gdb_session_gives_the_output_shown(build_tree: project.BuildTree) -> None:
    assert shutil.which("gdb"), "gdb is needed (apt-get install gdb; .ci/run installs it)"
    commands, printed = gdb_transcript()
    harness = subprocess.Popen([sys.executable, "-m", "harness", "boot", "hello", "--headless", "--gdb", "0",
                                "--no-build", "--build-dir", str(build_tree.directory)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert harness.stderr is not None
        port = re.search(r"127\.0\.0\.1:(\d+)", harness.stderr.readline())[1]  # type: ignore[index]
        arguments = [argument for command in commands
                     for argument in ("-ex", command.replace(":1234", f":{port}"))]
        gdb = subprocess.run(["gdb", "-batch", "-nx", *arguments, str(build_tree.kernel)], capture_output=True,
                             text=True, timeout=60, cwd=project.PACKAGE_ROOT)
        harness.communicate(timeout=60)
    finally:
        harness.kill()

    def tidy(text: str) -> str:  # source paths as seen from the checkout; line numbers move with the source
        text = text.replace(f"{project.PACKAGE_ROOT}/", "")
        text = re.sub(r"(line |\.S:|\.cc:)\d+", r"\1N", text)
        return re.sub(r"^\d+\t", "N\t", text, flags=re.M)

    shown = [tidy(line) for line in printed if line.strip()]
    actual = [line for line in tidy(gdb.stdout).splitlines() if line.strip()]
    assert [normalise(line) for line in actual] == [normalise(line) for line in shown], gdb.stdout + gdb.stderr
