"""Grading many submissions on Dask distributed: one task per (submission, run) boot, any number of machines.

Why tasks are boots: the checks of one submission share their runs (checks.Runs: the memory checks all read one
`forkexit` run), so a task is the group of checks that read the same run, and it boots that run once, as `check`
does. Which run a check reads is found without booting anything: the check is asked with a stand-in for Runs
that stops it at the first run it asks for (`run_of`). A check added to the registry is grouped the same way.

Why Dask: the same code runs on an embedded LocalCluster (this machine's cores, one single-threaded worker
process each: the engine holds the GIL while it emulates, so threads would not run side by side) and on any Dask
cluster (`--scheduler tcp://HOST:PORT`). A slow kernel holds one worker, bounded by its runs' budgets in virtual
time and their wall-clock guards; a worker process that dies (a kernel that crashes or exhausts the harness) is
replaced by its nanny and its task tried again on another worker, and when the task has killed its worker more
times than the scheduler allows (Dask's KilledWorker), its checks fail with that explanation while the other
submissions are graded. A task that died alongside a killer (queued on the same worker) gets one more try.

Test hook: a worker whose environment sets WEENSY_CHECK_TEST_KILL_WORKER=NAME kills itself (SIGKILL) when it starts
a task of the submission NAME. No kernel of ours crashes the harness, so the tests need this to make one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, cast

from ...pc.errors import HarnessError
from .checks import CHECKS, Check, Runs, Status
from .submissions import Submission
from .target import Target

if TYPE_CHECKING:
    from distributed import Client, Future

KILL_HOOK = "WEENSY_CHECK_TEST_KILL_WORKER"
ALLOWED_FAILURES = 2  # the embedded cluster's: a task that killed 3 workers is the kernel's doing
SECOND_CHANCES = 1  # tries again for a task reported killed (it may have been queued with the killer)
CONNECT_TIMEOUT_S = 20


@dataclass(frozen=True)
class Outcome:
    """One check's verdict as it travels back from a worker: the screen as PNG bytes, not a live machine."""

    check: str
    status: Status
    explanation: str
    screen: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Task:
    """One boot: the checks of one submission that read the same run."""

    submission: str
    target: Target
    checks: tuple[str, ...]


class _FirstRun(Exception):
    def __init__(self, run: str) -> None:
        self.run = run


class _RunFinder:
    """Stands in for Runs: it has the target, and stops the check at the first run it asks for."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def __getattr__(self, name: str) -> object:
        raise _FirstRun(name)


def run_of(check: Check, target: Target) -> str:
    """The run a check reads first (its group), or its own name when it reads none (its own task)."""
    try:
        check.run(cast(Runs, _RunFinder(target)))
    except _FirstRun as first:
        return first.run
    except Exception:  # noqa: BLE001 - a check that fails on the stand-in simply gets a task of its own
        pass
    return f"check:{check.name}"


def plan(submission: Submission, checks: list[Check]) -> list[Task]:
    """The tasks of one submission: its checks grouped by the run they read, in the registry's order."""
    assert submission.target is not None
    groups: dict[str, list[str]] = {}
    for check in checks:
        groups.setdefault(run_of(check, submission.target), []).append(check.name)
    return [Task(submission.name, submission.target, tuple(names)) for names in groups.values()]


def grade_task(target: Target, names: tuple[str, ...], screens: bool) -> list[Outcome]:
    """On a worker: boot the run once and give each check's verdict (with the failed run's screen as PNG)."""
    if os.environ.get(KILL_HOOK) == target.label:
        os.kill(os.getpid(), signal.SIGKILL)
    from ..screenshot import png_frame

    by_name = {check.name: check for check in CHECKS}
    runs = Runs(target)
    outcomes = []
    for name in names:
        verdict = by_name[name].run(runs)
        screen = None
        if screens and verdict.status is Status.FAIL and verdict.machine is not None:
            console = verdict.machine.console
            screen = png_frame(console.cells(), console.cursor())
        outcomes.append(Outcome(name, verdict.status, verdict.explanation, screen))
    return outcomes


def workers_killed(error: BaseException) -> int:
    """How many workers died running the task, from Dask's KilledWorker message (1 when it does not say)."""
    found = re.search(r"on (\d+) different workers", str(error))
    return int(found.group(1)) if found else 1


def killed_outcomes(task: Task, deaths: int) -> list[Outcome]:
    text = (f"the kernel killed the grading worker: the worker process running this check died each time it "
            f"was tried ({deaths} workers died); the harness was crashed or its memory exhausted, so the check "
            f"could not finish")
    return [Outcome(name, Status.FAIL, text) for name in task.checks]


def error_outcomes(task: Task, error: BaseException) -> list[Outcome]:
    text = f"the harness failed while grading this check ({type(error).__name__}: {error}): not the student's doing"
    return [Outcome(name, Status.FAIL, text) for name in task.checks]


class Progress:
    """One bar for the whole run on a terminal; plain lines otherwise (a log, CI)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def step(self, note: str) -> None:
        self.done += 1
        if self.tty:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(f"\rgrading [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                              f"tasks  {note[:40]:<40}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"grading: {self.done}/{self.total} tasks done ({note})\n")
        self.stream.flush()


def _refuse_unreachable(scheduler: str) -> None:
    """A tcp:// address where nothing listens is one error line at once, not after Dask's connect timeout."""
    found = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/]+):(\d+)/?", scheduler)
    if found is None:
        return  # another protocol (tls://, ...): Dask's own connect says what is wrong
    host, port = found.group(1).strip("[]"), int(found.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise HarnessError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there "
                           f"({e.strerror or e})") from None


def _worker_start_settings() -> dict[str, object]:
    """How the embedded cluster starts its worker processes: forked from a server process that has imported
    Dask once (multiprocessing's forkserver, where the platform has it), not each a new interpreter that imports
    it again (spawn): a worker, and each one that replaces a worker a kernel killed, starts for much less CPU
    (a grading with 6 workers killed: 3.3 s -> 1.7 s of CPU in all). Forked workers inherit the server's environment,
    as it was when the server started, not the grading process's: the test hook is handed to them explicitly."""
    import multiprocessing

    settings: dict[str, object] = {}
    if "forkserver" in multiprocessing.get_all_start_methods():
        settings["distributed.worker.multiprocessing-method"] = "forkserver"
    if KILL_HOOK in os.environ:
        settings["distributed.nanny.environ"] = {KILL_HOOK: os.environ[KILL_HOOK]}
    return settings


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the cluster at `scheduler`, or of an embedded LocalCluster of `workers` processes."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        _refuse_unreachable(scheduler)
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as e:
            raise HarnessError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there ({e})") from None
        with client:
            yield client
        return
    count = workers or os.cpu_count() or 1
    settings: dict[str, object] = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                                   "distributed.scheduler.worker-saturation": 1.0}  # a worker holds only its task
    settings.update(_worker_start_settings())
    with dask.config.set(settings), LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        yield client


def grade_all(submissions: list[Submission], checks: list[Check], client: Client, screens: bool,
              progress: TextIO | None = None) -> dict[str, list[Outcome]]:
    """Every check of every submission (those without a target are not sent), by name, in `checks`' order."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    tasks = [task for sub in submissions if sub.target is not None for task in plan(sub, checks)]
    tasks.sort(key=lambda task: -len(task.checks))  # the long runs (shared by many checks) first: less idle at the end
    bar = Progress(len(tasks), progress if progress is not None else sys.stderr)
    run_id = uuid.uuid4().hex[:8]

    def submit(task: Task, attempt: int) -> Future:
        key = f"check-{run_id}-{task.submission}-{'+'.join(task.checks)}-{attempt}"
        return client.submit(grade_task, task.target, task.checks, screens, key=key, pure=False)

    pending: dict[Future, tuple[Task, int, int]] = {submit(task, 0): (task, 0, 0) for task in tasks}
    found: dict[str, list[Outcome]] = {sub.name: [] for sub in submissions}
    queue = as_completed(list(pending))
    for future in queue:
        task, attempt, deaths = pending.pop(future)
        if future.status == "finished":
            outcomes = future.result()
        else:
            try:
                error = future.exception()  # (waits for the task if it runs again)
            except Exception as e:  # noqa: BLE001 - cancelled (the scheduler lost it): say so for its checks
                error = e
            if isinstance(error, KilledWorker):
                deaths += workers_killed(error)
                if attempt < SECOND_CHANCES:
                    retry = submit(task, attempt + 1)
                    pending[retry] = (task, attempt + 1, deaths)
                    queue.add(retry)
                    continue
            if error is None and future.status == "finished":
                # Its result was lost with a worker that died after computing it (a killer's next task there),
                # and the scheduler computed it again elsewhere: that is its result.
                outcomes = future.result()
            else:
                outcomes = killed_outcomes(task, deaths) if isinstance(error, KilledWorker) else \
                    error_outcomes(task, error)
        future.release()
        found[task.submission].extend(outcomes)
        bar.step(f"{task.submission}: {', '.join(task.checks)}")
    order = {check.name: i for i, check in enumerate(checks)}
    return {name: sorted(outcomes, key=lambda o: order[o.check]) for name, outcomes in found.items()}
