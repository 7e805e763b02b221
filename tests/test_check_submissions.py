"""`python -m harness check --submissions DIR --out OUT`: many submissions graded on Dask distributed.

A directory of submissions (our kernel, two broken variants from tests/kernel_variants.py, a folder without a
kernel) is graded three ways: one `check --results` per submission (serial), on the embedded local cluster, and
on a real Dask scheduler with two workers started as separate processes on loopback. The results must be the
same. A submission whose kernel kills its worker (the documented test hook of harness/front/check/grading.py) is
reported as such while the others are graded. Only a few checks are run (--only), to keep the boots few.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import project
from harness.front.check.checks import CHECKS
from harness.front.check.grading import KILL_HOOK, Progress, plan
from harness.front.check.submissions import find_submissions
from harness.front.cli import main
from harness.pc.errors import ExitCode

from .kernel_variants import VariantBuilds
from .test_readme_examples import README, matches

pytestmark = pytest.mark.cost(6)  # seconds, roughly: the session starts the costly modules first

ONLY = ["no-crash", "kernel-isolation", "exit-frees"]  # two boots per submission: the crash and memory runs
ONLY_ARGS = [word for name in ONLY for word in ("--only", name)]


README_HEADING = "## Grading many submissions: `check --submissions`, on Dask"


def readme_example() -> tuple[list[str], list[str]]:
    """The README's example of grading many submissions: its command's arguments and the output it shows."""
    section = README.read_text().split(README_HEADING, 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("$ .venv/bin/python -m harness check ")
    return shlex.split(block[0])[4:], block[1:]


@pytest.fixture(scope="module")
def submissions(build_tree: project.BuildTree, variant_builds: VariantBuilds,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README example's folder: ours/ (a build directory), leaky/ and open-kernel/ (variants), and empty/
    (no kernel at all)."""
    directory = tmp_path_factory.mktemp("example") / "submissions"
    directory.mkdir()
    (directory / "ours").symlink_to(build_tree.directory)
    (directory / "leaky").symlink_to(variant_builds["leaky-exit"])
    (directory / "open-kernel").symlink_to(variant_builds["user-kernel-page"])
    (directory / "empty").mkdir()
    (directory / "empty" / "README").write_text("forgot to hand in the kernel\n")
    return directory


def results_of(out: Path) -> dict[str, dict[str, object]]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("*/results.json"))}


@dataclass
class Graded:
    status: int
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def local_run(submissions: Path) -> Graded:
    """The README's example, run as shown (on the embedded cluster, two workers) next to its submissions."""
    arguments, _ = readme_example()
    assert arguments == ["check", "--submissions", "submissions", "--out", "graded", "--workers", "2", *ONLY_ARGS]
    result = subprocess.run([sys.executable, "-m", "harness", *arguments], capture_output=True, text=True,
                            timeout=600, cwd=submissions.parent)
    assert "Traceback" not in result.stderr, result.stderr
    return Graded(result.returncode, submissions.parent / "graded", result.stdout, result.stderr)


def test_the_readme_example_gives_the_output_shown(local_run: Graded) -> None:
    _, shown = readme_example()
    assert matches(shown, local_run.stdout), local_run.stdout


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two single-threaded workers, each its own process, on loopback: the address."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    dask = str(Path(sys.executable).parent / "dask")  # the command the README starts them with
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        from distributed import Client

        for name in ("a", "b"):
            processes.append(subprocess.Popen(
                [dask, "worker", "--scheduler-file", str(scheduler_file), "--no-nanny",  # (nothing to restart)
                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", name,
                 "--local-directory", str(tmp_path / name)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        # The workers first, and only then the scheduler: a worker that sees its scheduler go while it is being
        # terminated tries to reconnect first (8 s here, against 0.4 s in this order).
        workers, scheduler = processes[1:], processes[0]
        for group in (workers, [scheduler]):
            for process in group:
                process.terminate()
            for process in group:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def test_the_local_cluster_grades_each_submission_as_check_does_one_by_one(
        local_run: Graded, submissions: Path, tmp_path: Path) -> None:
    assert local_run.status == ExitCode.CHECK_FAILED
    local = results_of(local_run.out)
    assert list(local) == ["empty", "leaky", "open-kernel", "ours"]
    for name in ("leaky", "open-kernel", "ours"):
        serial = tmp_path / f"{name}.json"
        main(["check", str(submissions / name), *ONLY_ARGS, "--results", str(serial)])
        assert json.loads(serial.read_text()) == local[name], name
    assert local["ours"]["score"] == 3 and local["ours"]["max_score"] == 3
    assert [(t["name"], t["score"]) for t in local["leaky"]["tests"]] == [  # type: ignore[union-attr]
        ("no-crash", 1), ("kernel-isolation", 1), ("exit-frees", 0)]
    assert [(t["name"], t["score"]) for t in local["open-kernel"]["tests"]] == [  # type: ignore[union-attr]
        ("no-crash", 1), ("kernel-isolation", 0), ("exit-frees", 1)]
    assert local["empty"]["tests"] == [{"name": "submission", "score": 0, "max_score": 1, "status": "failed",
                                        "output": "FAIL: no kernel: expected a build directory (with `kernel`), "
                                                  "a kernel ELF or a disk image (.img)"}]


def test_the_summary_has_a_row_per_submission_a_column_per_check_and_each_failures_screen(
        local_run: Graded) -> None:
    out = local_run.out
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["submission"] for row in rows] == ["empty", "leaky", "open-kernel", "ours"]
    assert list(rows[0]) == ["submission", "score", "max_score", *ONLY, "note"]
    assert [row["exit-frees"] for row in rows] == ["", "FAIL", "PASS", "PASS"]
    assert [row["kernel-isolation"] for row in rows] == ["", "PASS", "FAIL", "PASS"]
    assert rows[0]["note"].startswith("no kernel")
    assert sorted(path.relative_to(out).as_posix() for path in out.glob("*/*.png")) == [
        "leaky/exit-frees.png", "open-kernel/kernel-isolation.png"]
    page = (out / "summary.html").read_text()
    assert page.count("<tr><td>") == 4
    for screen in ("leaky/exit-frees.png", "open-kernel/kernel-isolation.png"):
        assert f'<a href="{screen}"><img src="{screen}"' in page
        assert (out / screen).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "kernel isolation is broken" in page and "pages are not free" in page
    # the progress as plain lines (not a terminal): one per task, two tasks per kernel
    progress = re.findall(r"grading: (\d+)/(\d+) tasks done", local_run.stderr)
    assert progress == [(str(i), "6") for i in range(1, 7)]


def test_an_external_dask_scheduler_gives_the_same_results_as_the_local_cluster(
        dask_cluster: str, local_run: Graded, submissions: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status = main(["check", "--submissions", str(submissions), "--out", str(out), "--scheduler", dask_cluster,
                   *ONLY_ARGS])
    assert status == ExitCode.CHECK_FAILED
    local_out = local_run.out
    assert results_of(out) == results_of(local_out)
    assert (out / "summary.csv").read_text() == (local_out / "summary.csv").read_text()


def test_a_kernel_that_kills_its_worker_is_reported_and_the_others_are_graded(
        build_tree: project.BuildTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "subs"
    directory.mkdir()
    (directory / "killer").symlink_to(build_tree.directory)
    (directory / "ours").symlink_to(build_tree.directory)
    monkeypatch.setenv(KILL_HOOK, "killer")  # the workers inherit it: each that starts killer's task dies
    out = tmp_path / "out"
    status = main(["check", "--submissions", str(directory), "--out", str(out), "--workers", "2",
                   "--only", "no-crash"])
    assert status == ExitCode.CHECK_FAILED
    found = results_of(out)
    assert found["ours"]["score"] == 1
    killed = found["killer"]["tests"]
    assert len(killed) == 1 and killed[0]["score"] == 0  # type: ignore[index]
    # each of two tries (a second chance) killed 3 workers: the embedded scheduler allows 2 deaths a task
    assert killed[0]["output"] == ("FAIL: the kernel killed the grading worker: the worker process running this "  # type: ignore[index]
                                   "check died each time it was tried (6 workers died); the harness was crashed "
                                   "or its memory exhausted, so the check could not finish")
    assert "killer: 0 passed, 1 failed" in capsys.readouterr().out


def test_the_checks_of_a_submission_that_share_a_run_are_one_task(build_tree: project.BuildTree,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "ours").symlink_to(build_tree.directory)
    [submission] = find_submissions(tmp_path, build_tree)
    tasks = plan(submission, CHECKS)
    assert [task.checks for task in tasks] == [("no-crash",),
                                               ("kernel-isolation", "process-isolation", "fork", "exit-frees"),
                                               ("overlapping-address-spaces", "out-of-memory"),
                                               ("virtual-page-allocation",), ("confused-deputy",)]
    assert sorted(name for task in tasks for name in task.checks) == sorted(check.name for check in CHECKS)


@pytest.mark.parametrize(("words", "message"), [
    (["build", "--submissions", "DIR", "--out", "OUT"], "with --submissions DIR the kernels are its folders"),
    (["--submissions", "DIR"], "--submissions DIR needs --out OUT"),
    (["build", "--out", "OUT"], "--out go(es) with --submissions DIR"),
    ([], "give a KERNEL to check, or --submissions DIR"),
    (["--submissions", "DIR", "--out", "OUT", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"],
     "--workers sizes the embedded local cluster"),
    (["--submissions", "DIR", "--out", "OUT", "--results", "r.json"], "--results is written for every submission"),
    (["--submissions", "DIR", "--out", "OUT", "--workers", "0"], "not a number of workers: 0"),
])
def test_options_that_do_not_go_together_are_a_usage_error(words: list[str], message: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["check", *words])
    assert raised.value.code == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_a_missing_directory_or_an_unreachable_scheduler_is_one_line(
        tmp_path: Path, build_tree: project.BuildTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--submissions", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == \
        ExitCode.HARNESS_ERROR
    assert capsys.readouterr().err == f"harness: error: {tmp_path / 'none'}: no such directory of submissions\n"
    (tmp_path / "subs" / "ours").mkdir(parents=True)
    status = main(["check", "--submissions", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
                   "--scheduler", "tcp://127.0.0.1:9"])
    assert status == ExitCode.HARNESS_ERROR
    err = capsys.readouterr().err
    assert err.startswith("harness: error: --scheduler tcp://127.0.0.1:9: cannot connect to a Dask scheduler there")
    assert err.count("\n") == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_is_one_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(4, stream)
        for note in ("alice: no-crash", "alice: fork", "bob: no-crash", "bob: fork"):
            progress.step(note)
    frames = terminal.getvalue().split("\r")[1:]
    assert frames[1].startswith("grading [" + "#" * 15 + "." * 15 + "] 2/4 tasks  alice: fork")
    assert frames[3].startswith("grading [" + "#" * 30 + "] 4/4 tasks  bob: fork") and frames[3].endswith("\n")
    assert terminal.getvalue().count("\n") == 1  # the bar is redrawn in place, one line in the end
    assert log.getvalue().splitlines() == [f"grading: {i}/4 tasks done ({note})" for i, note in enumerate(
        ("alice: no-crash", "alice: fork", "bob: no-crash", "bob: fork"), 1)]
