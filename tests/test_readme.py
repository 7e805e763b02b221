"""The README is the front door: its two set-up commands must be the ones CI really runs."""

from __future__ import annotations

from pathlib import Path

TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -n auto"
BOOT_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -e . && "
                ".venv/bin/python -m harness boot hello")


def test_readme_gives_the_test_command_that_ci_runs(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    ci = (repo_root / ".ci" / "run").read_text()
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in ci.splitlines()


def test_readme_gives_the_boot_command(repo_root: Path) -> None:
    assert BOOT_COMMAND in (repo_root / "README.md").read_text()
